"""Repair methods, registered by name: each says its outer loss and whether it uses the tail penalty.

* ``pgd-at`` (Madry et al.): cross-entropy on the adversarial logits.
* ``at-bsl`` (Yue et al. 2024): Balanced Softmax on the adversarial logits.
* ``reat`` (Li, Xu, Zhang 2023): Balanced Softmax plus the tail feature penalty; its RBL
  attack weights come from the previous epoch's adversarial prediction counts.
* ``trades-bsl``: the TRADES objective (Zhang et al. 2019) with a Balanced Softmax natural
  term, ``BSL(f(x), y) + beta * KL(p(x) || p(x'))``, x' maximising that KL (docs/repair.md).

Class-balanced sampling of the batch is orthogonal to the loss: ``--sampler class-balanced``
works with every method (Balanced Softmax then uses the uniform prior the batches are drawn
from, which makes it plain cross-entropy).

Every method uses the same training attack (PGD, sign or normalised steps), so RBL's
weighting, which cannot change such steps, is computed and logged but not applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from audit.registry import METHODS, register_method

from audit.attacks import Attack, create_attack
from audit.config import AttackSpec

from .losses import KLAttack, balanced_softmax_loss, tail_penalty_pairwise, tail_penalty_reference


@dataclass
class LossContext:
    """Per-run constants the losses need (on the training device)."""

    log_n: torch.Tensor  # (C,) log of the class prior the batches are drawn from (split counts, or uniform)
    is_tail: torch.Tensor  # (C,) bool, tail group of the audit
    v: torch.Tensor  # (C,) sqrt(sum N / N_c)
    penalty: str  # pairwise | reference | off
    tail_lambda: float
    margin: float
    trades_beta: float = 6.0


class RepairMethod:
    """Base: plain cross-entropy, no penalty, no RBL counts.

    The trainer's hooks (:class:`~.train.Trainer`) are methods here, so a new method overrides
    them instead of touching the loop: :meth:`trainable_parameters` (which parameters train),
    :meth:`make_guide` (a model whose clean logits the loss sees as ``guide_logits``),
    :meth:`attack_at` (the training attack of each step: its ε schedule) and :meth:`loss`.
    """

    name = "base"
    uses_rbl = False
    default_penalty = "off"
    description = ""

    uses_clean_logits = False  # the loss also needs the model's logits on the clean batch (train mode)

    @property
    def needs_features(self) -> bool:
        return self.default_penalty != "off"

    def training_attack(self, spec: AttackSpec) -> Attack:
        """The attack that makes the training batch's adversarial examples (PGD on cross-entropy)."""
        return create_attack(spec)

    def trainable_parameters(self, net: torch.nn.Module) -> list[torch.nn.Parameter]:
        """Hook: the parameters the optimizer updates (default: all of them)."""
        return list(net.parameters())

    def make_guide(self, model: torch.nn.Module) -> Optional[torch.nn.Module]:
        """Hook: a guide model (pixels -> logits) evaluated on each clean batch, or None (default)."""
        return None

    def attack_at(self, spec: AttackSpec, step: int, total: int) -> Attack:
        """Hook: the training attack at optimizer step ``step`` of ``total`` (default: constant ε, built once)."""
        attack = getattr(self, "_attack", None)
        if attack is None:
            attack = self._attack = self.training_attack(spec)
        return attack

    def prepare_attack(self, attack: Attack, model: torch.nn.Module, x: torch.Tensor, autocast=None) -> None:  # noqa: ANN001
        """Called with the eval-mode model before each batch's attack (TRADES: the clean predictions)."""

    def outer_loss(self, logits: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y)

    def loss(self, logits: torch.Tensor, features: Optional[torch.Tensor], y: torch.Tensor,
             ctx: LossContext, clean_logits: Optional[torch.Tensor] = None,
             guide_logits: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
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


@register_method("trades-bsl")
class TRADESBSL(RepairMethod):
    """TRADES with a Balanced Softmax natural term; the adversarial example maximises the KL term."""

    name = "trades-bsl"
    uses_clean_logits = True
    description = "TRADES-BSL: Balanced Softmax on clean logits + beta * KL(clean || adversarial)"

    def training_attack(self, spec: AttackSpec) -> Attack:
        return KLAttack(spec)

    @torch.no_grad()
    def prepare_attack(self, attack: Attack, model: torch.nn.Module, x: torch.Tensor, autocast=None) -> None:  # noqa: ANN001
        import contextlib

        with (autocast or contextlib.nullcontext)():
            attack.reference = F.softmax(model(x).float(), dim=1)  # type: ignore[attr-defined]

    def loss(self, logits: torch.Tensor, features: Optional[torch.Tensor], y: torch.Tensor,
             ctx: LossContext, clean_logits: Optional[torch.Tensor] = None,
             guide_logits: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if clean_logits is None:
            raise ValueError("trades-bsl needs the clean logits")
        natural = balanced_softmax_loss(clean_logits, y, ctx.log_n)
        kl = F.kl_div(F.log_softmax(logits.float(), 1), F.log_softmax(clean_logits.float(), 1), reduction="batchmean",
                      log_target=True)
        return natural + ctx.trades_beta * kl, natural.detach() * 0.0


def get_method(name: str) -> RepairMethod:
    """An instance of the registered method ``name`` (ConfigError listing the known ones otherwise)."""
    return METHODS.get(name)()


__all__ = ["ATBSL", "LossContext", "PGDAT", "REAT", "RepairMethod", "TRADESBSL", "get_method"]
