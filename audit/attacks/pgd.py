"""PGD (Madry et al.): ascend the cross-entropy of the logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_attack
from .base import Attack


@register_attack("pgd")
class PGD(Attack):
    """Projected gradient descent on cross-entropy, random start in the ball."""

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none")
