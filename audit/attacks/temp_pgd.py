"""Temperature-PGD (Tian et al., KDD 2021): PGD on ``CE(softmax(z / T), y)``.

T < 1 concentrates the loss on the strongest competing class (close to a margin loss);
T > 1 keeps gradients alive for very confident images. Not torchattacks' "TPGD".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..bounds import MAX_STEPS
from ..registry import register_attack
from .pgd import PGD, PGDParams


@dataclass(frozen=True)
class TempPGDParams(PGDParams):
    """PGD's parameters plus the temperature ``T`` (0 < T <= 1000)."""

    temperature: float = 0.5
    bounds: ClassVar[dict] = {"steps": (1, MAX_STEPS, "--steps"), "step_size": (0.0, 1.0, "--step-size"),
                              "temperature": (1e-6, 1000.0, "--temperature")}


@register_attack("temp-pgd")
class TemperaturePGD(PGD):
    """PGD ascending the cross-entropy of temperature-scaled logits."""

    display_name = "Temperature-PGD"
    Params = TempPGDParams

    def label(self) -> str:
        return f"{self.display_name}-{self.params.steps} (T = {self.params.temperature:g})"

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits / float(self.params.temperature), y, reduction="none")
