"""Targeted APGD on the targeted DLR loss (AutoAttack's second attack).

For each point the targets are the classes with the highest clean logits after the top one
(9 by default, C - 1 when there are fewer classes); each target gets ``steps`` iterations
and ``restarts`` runs, and a point leaves as soon as it is misclassified (as anything).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from ..bounds import MAX_RESTARTS, MAX_STEPS, MAX_TARGETS
from ..registry import register_attack
from .apgd import APGD, targeted_dlr_loss
from .base import AttackParams



@dataclass(frozen=True)
class APGDTParams(AttackParams):
    """``steps`` iterations per target and run, ``restarts`` runs per target, ``targets`` classes."""

    steps: int = 100
    restarts: int = 1
    targets: int = 9
    bounds: ClassVar[dict] = {"steps": (1, MAX_STEPS, "--steps"), "restarts": (1, MAX_RESTARTS, "--restarts"),
                              "targets": (1, MAX_TARGETS, "--targets")}


@register_attack("apgd-t")
class APGDT(APGD):
    """APGD on the targeted DLR loss over the top target classes by clean logit."""

    display_name = "APGD-T"
    Params = APGDTParams

    @property
    def n_targets(self) -> int:  # type: ignore[override]
        return int(self.params.targets)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        assert target is not None
        return targeted_dlr_loss(logits, y, target)

    def _targets(self, model: nn.Module, x: torch.Tensor, ctx) -> list[Optional[torch.Tensor]]:
        with torch.no_grad(), (ctx or contextlib.nullcontext)():
            logits = model(x).float()
        order = logits.argsort(dim=1, descending=True)
        k = min(int(self.params.targets), logits.shape[1] - 1)
        return [order[:, j] for j in range(1, k + 1)]
