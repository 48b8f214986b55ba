"""Targeted APGD on the targeted DLR loss (AutoAttack's second attack).

For each point the targets are, by default, the classes with the highest clean logits after
the top one (AutoAttack's rule; 9 by default, C - 1 when there are fewer classes). With
``ranking="malt"`` they are the ``targets`` best of the top ``candidates`` classes by MALT's
linear estimate of the distance to each class boundary (Melamed, Yehudai and Shamir, NeurIPS
2024): for target t, (z_y - z_t) / ||grad_x (z_y - z_t)||_* with the dual norm of the threat
model (L1 for L-inf, L2 for L2), one gradient per candidate, counted in the attack's forward
passes and time. Each target gets ``steps`` iterations and ``restarts`` runs, and a point
leaves as soon as it is misclassified (as anything). docs/attacks.md has the measurements.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from ..bounds import MAX_RESTARTS, MAX_STEPS, MAX_TARGETS
from ..contract.model import APGDT_CANDIDATES
from ..errors import ConfigError
from ..registry import register_attack
from .apgd import APGD, targeted_dlr_loss
from .base import AttackParams

RANKINGS = ("logit", "malt")


@dataclass(frozen=True)
class APGDTParams(AttackParams):
    """``steps`` iterations per target and run, ``restarts`` runs per target, ``targets`` classes."""

    steps: int = 100
    restarts: int = 1
    targets: int = 9
    ranking: str = "logit"  # "logit" (AutoAttack) or "malt"
    candidates: int = APGDT_CANDIDATES  # MALT ranks the top ``candidates`` classes by clean logit (capped at C - 1)
    bounds: ClassVar[dict] = {"steps": (1, MAX_STEPS, "--steps"), "restarts": (1, MAX_RESTARTS, "--restarts"),
                              "targets": (1, MAX_TARGETS, "--targets"),
                              "candidates": (1, MAX_TARGETS, "--rank-candidates")}

    def validate(self, attack: str) -> None:
        super().validate(attack)
        if self.ranking not in RANKINGS:
            raise ConfigError(f"--target-ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")


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

    def label(self) -> str:
        if self.params.ranking == "malt":
            return f"{self.display_name}-{self.params.steps} (MALT, {self.params.targets} of {self.params.candidates})"
        return super().label()

    def _targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx) -> list[Optional[torch.Tensor]]:
        with torch.no_grad(), (ctx or contextlib.nullcontext)():
            logits = model(x).float()
        m = min(int(self.params.candidates if self.params.ranking == "malt" else self.params.targets),
                logits.shape[1] - 1)
        # the classes after the top one (the true class of a point still robust), highest clean logit first
        by_logit = logits.argsort(dim=1, descending=True)[:, 1:m + 1]
        if self.params.ranking == "malt":
            by_logit = by_logit.gather(1, self._malt_order(model, x, y, by_logit, ctx))
        k = min(int(self.params.targets), m)
        return [by_logit[:, j] for j in range(k)]

    def _malt_order(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cand: torch.Tensor,
                    ctx) -> torch.Tensor:
        """Column order of ``cand`` by MALT's estimated distance to each boundary, nearest first (ties: logit order)."""
        dual = 1 if self.spec.norm == "linf" else 2
        dist = torch.empty(cand.shape, dtype=torch.float32, device=x.device)
        for j in range(cand.shape[1]):
            xg = x.detach().clone().requires_grad_(True)
            with torch.enable_grad(), (ctx or contextlib.nullcontext)():
                z = model(xg).float()
                gap = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, cand[:, j:j + 1]).squeeze(1)
                (grad,) = torch.autograd.grad(gap.sum(), xg)
            size = grad.detach().flatten(1).norm(p=dual, dim=1)
            dist[:, j] = gap.detach() / size.clamp_min(1e-12)  # a flat gradient: far away, ranked last
        return dist.argsort(dim=1, stable=True)
