"""Repair methods, registered by name: each says its outer loss and whether it uses the tail penalty.

* ``pgd-at`` (Madry et al.): cross-entropy on the adversarial logits.
* ``at-bsl`` (Yue et al. 2024): Balanced Softmax on the adversarial logits.
* ``reat`` (Li, Xu, Zhang 2023): Balanced Softmax plus the tail feature penalty; its RBL
  attack weights come from the previous epoch's adversarial prediction counts.

Every method uses the same training attack (PGD, sign or normalised steps), so RBL's
weighting, which cannot change such steps, is computed and logged but not applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from audit.registry import METHODS, register_method

from .losses import balanced_softmax_loss, tail_penalty_pairwise, tail_penalty_reference


@dataclass
class LossContext:
    """Per-run constants the losses need (on the training device)."""

    log_n: torch.Tensor  # (C,) log of the training-split counts
    is_tail: torch.Tensor  # (C,) bool, tail group of the audit
    v: torch.Tensor  # (C,) sqrt(sum N / N_c)
    penalty: str  # pairwise | reference | off
    tail_lambda: float
    margin: float


class RepairMethod:
    """Base: plain cross-entropy, no penalty, no RBL counts."""

    name = "base"
    uses_rbl = False
    default_penalty = "off"
    description = ""

    @property
    def needs_features(self) -> bool:
        return self.default_penalty != "off"

    def outer_loss(self, logits: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y)

    def loss(self, logits: torch.Tensor, features: Optional[torch.Tensor], y: torch.Tensor,
             ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, tail penalty term) for one batch of adversarial logits/features."""
        outer = self.outer_loss(logits, y, ctx)
        if ctx.penalty == "off" or features is None or ctx.tail_lambda == 0:
            return outer, outer.detach() * 0.0
        if ctx.penalty == "pairwise":
            pen = tail_penalty_pairwise(features, y, ctx.is_tail, ctx.v, ctx.margin)
        else:
            pen = tail_penalty_reference(features, y, ctx.is_tail, ctx.v)
        return outer + ctx.tail_lambda * pen, pen.detach()


@register_method("pgd-at")
class PGDAT(RepairMethod):
    name = "pgd-at"
    description = "PGD-AT: cross-entropy on PGD adversarial examples"


@register_method("at-bsl")
class ATBSL(RepairMethod):
    name = "at-bsl"
    description = "AT-BSL: Balanced Softmax (logits + log N) on PGD adversarial examples"

    def outer_loss(self, logits: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return balanced_softmax_loss(logits, y, ctx.log_n)


@register_method("reat")
class REAT(ATBSL):
    name = "reat"
    uses_rbl = True
    default_penalty = "pairwise"
    description = "REAT: RBL attack counts, Balanced Softmax outer loss, tail feature penalty"


def get_method(name: str) -> RepairMethod:
    """An instance of the registered method ``name`` (ConfigError listing the known ones otherwise)."""
    return METHODS.get(name)()


__all__ = ["ATBSL", "LossContext", "PGDAT", "REAT", "RepairMethod", "get_method"]
