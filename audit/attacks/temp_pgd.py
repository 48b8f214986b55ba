"""Temperature-PGD (Tian et al., KDD 2021): PGD on ``CE(softmax(z / T), y)``.

T < 1 concentrates the loss on the strongest competing class (close to a margin loss);
T > 1 keeps gradients alive for very confident images. Not torchattacks' "TPGD".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import AttackSpec
from ..errors import ConfigError
from ..registry import register_attack
from .base import Attack


@register_attack("temp-pgd")
class TemperaturePGD(Attack):
    """PGD ascending the cross-entropy of temperature-scaled logits."""

    def __init__(self, spec: AttackSpec) -> None:
        super().__init__(spec)
        if spec.temperature is None or spec.temperature <= 0:
            raise ConfigError("Temperature-PGD needs a positive --temperature")
        self.temperature = float(spec.temperature)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits / self.temperature, y, reduction="none")
