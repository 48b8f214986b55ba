"""Repair methods, registered by name: each says its outer loss and whether it uses the tail penalty.

* ``pgd-at`` (Madry et al.): cross-entropy on the adversarial logits.
* ``at-bsl`` (Yue et al. 2024): Balanced Softmax on the adversarial logits.
* ``reat`` (Li, Xu, Zhang 2023): Balanced Softmax plus the tail feature penalty; its RBL
  attack weights come from the previous epoch's adversarial prediction counts.
* ``trades-bsl``: the TRADES objective (Zhang et al. 2019) with a Balanced Softmax natural
  term, ``BSL(f(x), y) + beta * KL(p(x) || p(x'))``, x' maximising that KL (docs/repair.md).
* ``lbgat`` (Cui et al. 2021): the model's adversarial logits are pulled towards a guide's clean
  logits, ``MSE(f(x'), g(x)) / s^2 + beta * KL(p(x) || p(x'))``; the guide is a copy of the
  input model, frozen (default) or learnable (Balanced Softmax, smaller learning rate).

Every method's label loss can use MiSLAS's label-aware smoothing (``--smoothing label-aware``)
and every training attack an ε schedule (``--eps-schedule warmup``, ``--eps-per-class``).

Class-balanced sampling of the batch is orthogonal to the loss: ``--sampler class-balanced``
works with every method (Balanced Softmax then uses the uniform prior the batches are drawn
from, which makes it plain cross-entropy).

Every method uses the same training attack (PGD, sign or normalised steps), so RBL's
weighting, which cannot change such steps, is computed and logged but not applied.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F

from audit.registry import METHODS, register_method

from audit.attacks import PGD, Attack, create_attack
from audit.values import AttackSpec

from .errors import RepairError
from .heads import ResLTHead, ScaledLinear, feature_stats, fold_head, require_linear, swap_head
from .losses import KLAttack, tail_penalty_pairwise, tail_penalty_reference
from .schedules import PerSampleEps, class_eps_factors, eps_scale
from .smoothing import smoothed_cross_entropy


class ScheduledPGD(PerSampleEps, PGD):
    """The training PGD with a per-image radius (warm-up share x class factor)."""


class ScheduledKL(PerSampleEps, KLAttack):
    """TRADES' KL attack with a per-image radius."""


@dataclass
class LossContext:
    """Per-run constants the losses need (on the training device)."""

    log_n: torch.Tensor  # (C,) log of the class prior the batches are drawn from (split counts, or uniform)
    is_tail: torch.Tensor  # (C,) bool, tail group of the audit
    v: torch.Tensor  # (C,) sqrt(sum N / N_c)
    penalty: str  # pairwise | reference | off
    tail_lambda: float
    margin: float
    smoothing: Optional[torch.Tensor] = None  # (C,) label-aware smoothing per class, or None


def label_loss(logits: torch.Tensor, y: torch.Tensor, ctx: LossContext, balanced: bool) -> torch.Tensor:
    """Cross-entropy, on ``logits + log N`` when ``balanced`` (Balanced Softmax), label-aware smoothed when set."""
    z = logits.float() + ctx.log_n.to(logits.device) if balanced else logits.float()
    if ctx.smoothing is not None:
        return smoothed_cross_entropy(z, y, ctx.smoothing)
    return F.cross_entropy(z, y)


@dataclass(frozen=True)
class MethodParams:
    """A method's settings (as attacks have ``Params``), built from the repair's config before any hook runs.

    Each field is the :class:`~.config.RepairConfig` field of the same name, unless its metadata names
    another (``config``); RepairConfig checks them against the declared options (reat_finetune/options.py).
    """

    eps_schedule: str = "constant"  # the training radius's schedule (reat_finetune/schedules.py)
    eps_per_class: bool = False  # RobustLT's class-wise radii

    @classmethod
    def from_config(cls, config: Any) -> "MethodParams":
        """The settings this method reads from ``config`` (a RepairConfig)."""
        return cls(**{f.name: getattr(config, f.metadata.get("config", f.name)) for f in fields(cls)})


@dataclass(frozen=True)
class LBGATParams(MethodParams):
    guide: str = "frozen"  # the input model as a frozen or learnable guide
    beta: float = field(default=0.0, metadata={"config": "lbgat_beta"})  # weight of KL(clean || adversarial)


@dataclass(frozen=True)
class TRADESParams(MethodParams):
    beta: float = field(default=6.0, metadata={"config": "trades_beta"})  # weight of KL(clean || adversarial)


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

    Params: ClassVar[type[MethodParams]] = MethodParams
    uses_clean_logits = False  # the loss also needs the model's logits on the clean batch (train mode)
    attack_class: type = PGD  # the training attack (ScheduledPGD when an ε schedule is on)
    scheduled_class: type = ScheduledPGD

    def __init__(self, params: Optional[MethodParams] = None) -> None:
        self.params = params if params is not None else self.Params()
        self.class_factors: Optional[Any] = None  # class-wise radius factors (set by :meth:`configure`)

    def configure(self, config: Any, train_counts: Sequence[int]) -> None:
        """Hook: the run's settings (:attr:`params` from ``config``) and class-wise radii from the training counts."""
        self.params = self.Params.from_config(config)
        self.class_factors = class_eps_factors(train_counts) if self.params.eps_per_class else None

    @property
    def needs_features(self) -> bool:
        return self.default_penalty != "off"

    @property
    def scheduled(self) -> bool:
        return self.params.eps_schedule != "constant" or self.class_factors is not None

    def training_attack(self, spec: AttackSpec) -> Attack:
        """The attack that makes the training batch's adversarial examples (PGD on cross-entropy)."""
        if self.scheduled:
            return self.scheduled_class(spec)
        return self.attack_class(spec) if self.attack_class is not PGD else create_attack(spec)

    def trainable_parameters(self, net: torch.nn.Module) -> list[torch.nn.Parameter]:
        """Hook: the parameters the optimizer updates (default: all of them)."""
        return list(net.parameters())

    def make_guide(self, model: torch.nn.Module) -> Optional[torch.nn.Module]:
        """Hook: a guide model (pixels -> logits) evaluated on each clean batch, or None (default)."""
        return None

    preferred_sampler: Optional[str] = None  # what --sampler auto resolves to for this method (None: the rule)
    default_smoothing = False  # label-aware smoothing even without --smoothing (MiSLAS)

    def check_model(self, linear: Optional[torch.nn.Linear], groups: Sequence[Optional[str]]) -> None:
        """Hook: RepairError when :meth:`prepare_model` would refuse this model, checked before any audit."""

    def prepare_model(self, model: torch.nn.Module, linear: Optional[torch.nn.Linear],
                      batches: Sequence[torch.Tensor], groups: Sequence[Optional[str]]) -> None:
        """Hook: change the model's head before training (MiSLAS, ResLT); ``batches`` are clean training images."""

    def set_train_mode(self, model: torch.nn.Module) -> None:
        """Hook: the mode of the model during the update (default: train mode everywhere)."""
        model.train()

    def finalize(self, net: torch.nn.Module) -> None:
        """Hook: fold whatever :meth:`prepare_model` added back into the input's architecture (before export)."""

    def attack_at(self, spec: AttackSpec, step: int, total: int) -> Attack:
        """Hook: the training attack at optimizer step ``step`` of ``total`` (default: constant ε, built once)."""
        attack = getattr(self, "_attack", None)
        if attack is None:
            attack = self._attack = self.training_attack(spec)
        if isinstance(attack, PerSampleEps):
            attack.scale = eps_scale(self.params.eps_schedule, step, total)
            attack.class_factors = self.class_factors
        return attack

    def prepare_attack(self, attack: Attack, model: torch.nn.Module, x: torch.Tensor,
                       autocast=None) -> None:  # noqa: ANN001
        """Called with the eval-mode model before each batch's attack (TRADES: the clean predictions)."""

    def outer_loss(self, logits: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return label_loss(logits, y, ctx, balanced=False)

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
        return label_loss(logits, y, ctx, balanced=True)


@register_method("reat")
class REAT(ATBSL):
    name = "reat"
    uses_rbl = True
    default_penalty = "pairwise"
    description = "REAT: RBL attack counts, Balanced Softmax outer loss, tail feature penalty"


class KLTrained(RepairMethod):
    """Methods whose training attack is TRADES' KL attack against the clean prediction (and need clean logits)."""

    uses_clean_logits = True
    attack_class, scheduled_class = KLAttack, ScheduledKL

    @torch.no_grad()
    def prepare_attack(self, attack: Attack, model: torch.nn.Module, x: torch.Tensor,
                       autocast=None) -> None:  # noqa: ANN001
        import contextlib

        with (autocast or contextlib.nullcontext)():
            attack.reference = F.softmax(model(x).float(), dim=1)  # type: ignore[attr-defined]


@register_method("trades-bsl")
class TRADESBSL(KLTrained):
    """TRADES with a Balanced Softmax natural term; the adversarial example maximises the KL term."""

    name = "trades-bsl"
    description = "TRADES-BSL: Balanced Softmax on clean logits + beta * KL(clean || adversarial)"
    Params = TRADESParams

    def loss(self, logits: torch.Tensor, features: Optional[torch.Tensor], y: torch.Tensor,
             ctx: LossContext, clean_logits: Optional[torch.Tensor] = None,
             guide_logits: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if clean_logits is None:
            raise ValueError("trades-bsl needs the clean logits")
        natural = label_loss(clean_logits, y, ctx, balanced=True)
        return natural + self.params.beta * kl_clean_adv(clean_logits, logits), natural.detach() * 0.0


def kl_clean_adv(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p(x) || p(x'))`` averaged over the batch (TRADES' robustness term)."""
    return F.kl_div(F.log_softmax(adv_logits.float(), 1), F.log_softmax(clean_logits.float(), 1),
                    reduction="batchmean", log_target=True)


@register_method("lbgat")
class LBGAT(KLTrained):
    """Learnable Boundary Guided AT with the user's model as the guide (docs/repair.md, "LBGAT").

    Loss ``MSE(f(x'), g(x)) / s^2 [+ BSL(g(x), y), learnable guide] + beta * KL(p(x) || p(x'))``, where
    ``s^2`` is the mean square of the guide's batch logits after removing each row's mean (detached):
    a converged model's logits can be in the tens, and the normalisation keeps the MSE's weight the
    same whatever their scale. x' maximises ``KL(p(x) || p(x'))`` (TRADES' attack, as in LBGAT).
    """

    name = "lbgat"
    description = "LBGAT: adversarial logits pulled to the input model's clean logits (MSE) + beta * KL"
    Params = LBGATParams
    params: LBGATParams

    @property
    def learnable(self) -> bool:
        return self.params.guide == "learnable"

    @property
    def beta(self) -> float:
        return float(self.params.beta)

    def make_guide(self, model: torch.nn.Module) -> Optional[torch.nn.Module]:
        guide = copy.deepcopy(model)
        guide.requires_grad_(self.learnable)
        return guide.train(self.learnable)

    def loss(self, logits: torch.Tensor, features: Optional[torch.Tensor], y: torch.Tensor,
             ctx: LossContext, clean_logits: Optional[torch.Tensor] = None,
             guide_logits: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if guide_logits is None or clean_logits is None:
            raise ValueError("lbgat needs the guide's and the model's clean logits")
        target = guide_logits.float()
        centred = target.detach() - target.detach().mean(1, keepdim=True)
        scale = centred.pow(2).mean().clamp_min(1e-6)
        loss = F.mse_loss(logits.float(), target if self.learnable else target.detach()) / scale
        if self.learnable:
            loss = loss + label_loss(target, y, ctx, balanced=True)
        if self.beta:
            loss = loss + self.beta * kl_clean_adv(clean_logits, logits)
        return loss, loss.detach() * 0.0


class HeadMethod(RepairMethod):
    """Methods that swap the final linear layer for a trainable head and fold it back at export."""

    head: Optional[torch.nn.Module] = None

    def check_model(self, linear: Optional[torch.nn.Linear], groups: Sequence[Optional[str]]) -> None:
        require_linear(linear, self.name)

    def finalize(self, net: torch.nn.Module) -> None:
        if self.head is not None:
            fold_head(self.head)
            self.head = None


@register_method("mislas")
class MiSLAS(HeadMethod):
    """MiSLAS's second stage under attack: backbone frozen (eval mode), the classifier and a per-class scale
    trained on adversarial logits with label-aware smoothing on class-balanced batches.

    It rebalances the classes' decision regions and calibrates them; it cannot make a non-robust
    backbone robust (the features an attacker moves are not trained).
    """

    name = "mislas"
    preferred_sampler = "class-balanced"
    default_smoothing = True
    description = ("MiSLAS stage 2 under attack: classifier + per-class scaling on a frozen backbone, "
                   "label-aware smoothing, class-balanced batches")

    def prepare_model(self, model: torch.nn.Module, linear: Optional[torch.nn.Linear],
                      batches: Sequence[torch.Tensor], groups: Sequence[Optional[str]]) -> None:
        self.head = swap_head(model, linear, ScaledLinear, self.name)

    def trainable_parameters(self, net: torch.nn.Module) -> list[torch.nn.Parameter]:
        assert self.head is not None
        return list(self.head.parameters())

    def set_train_mode(self, model: torch.nn.Module) -> None:
        model.eval()  # the backbone's BatchNorm statistics stay the input model's


RESLT_ALPHA = 0.998  # ResLT's CIFAR-10-LT value (rho 0.01 / 0.02): the branch losses dominate


@register_method("reslt")
class ResLT(HeadMethod):
    """ResLT: three BatchNorm branches on the features (all / medium+tail / tail classes, by training-count rank)
    sharing the classifier, ``alpha * branch CE + (1 - alpha) * CE(fused)`` on adversarial logits."""

    name = "reslt"
    description = "ResLT: head / medium+tail / tail branches sharing the classifier, folded into one layer at export"

    def check_model(self, linear: Optional[torch.nn.Linear], groups: Sequence[Optional[str]]) -> None:
        if not any(g == "tail" for g in groups):
            raise RepairError("--method reslt needs a long-tailed training set (its branches are the medium and "
                              "tail classes); this one is balanced: use another --method")
        require_linear(linear, self.name)

    def prepare_model(self, model: torch.nn.Module, linear: Optional[torch.nn.Linear],
                      batches: Sequence[torch.Tensor], groups: Sequence[Optional[str]]) -> None:
        self.check_model(linear, groups)
        tail = torch.tensor([g == "tail" for g in groups])
        mid_tail = torch.tensor([g in ("medium", "tail") for g in groups])
        self.members = torch.stack([torch.ones_like(tail), mid_tail, tail])  # (3, C) branch class sets
        self.head = swap_head(model, linear, lambda lin: ResLTHead(lin, feature_stats(model, lin, batches)), self.name)

    def loss(self, logits: torch.Tensor, features: Optional[torch.Tensor], y: torch.Tensor,
             ctx: LossContext, clean_logits: Optional[torch.Tensor] = None,
             guide_logits: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.head is not None and self.head.last_branch_logits is not None
        members = self.members.to(y.device)[:, y]  # (3, B): does sample i belong to branch b?
        pairs = members.sum().clamp_min(1)
        branch = sum(F.cross_entropy(z.float(), y, reduction="none")[members[b]].sum()
                     for b, z in enumerate(self.head.last_branch_logits)) / pairs
        fused = label_loss(logits, y, ctx, balanced=False)
        loss = RESLT_ALPHA * branch + (1 - RESLT_ALPHA) * fused
        return loss, loss.detach() * 0.0


def get_method(name: str, config: Any = None) -> RepairMethod:
    """An instance of the registered method ``name`` (ConfigError listing the known ones otherwise), with its
    :class:`MethodParams` built from ``config`` (a RepairConfig) when given, before any hook runs."""
    cls = METHODS.get(name)
    return cls(cls.Params.from_config(config) if config is not None else None)


__all__ = ["ATBSL", "HeadMethod", "LBGAT", "LBGATParams", "MethodParams", "MiSLAS", "ResLT", "LossContext", "PGDAT",
           "REAT", "RepairMethod", "TRADESBSL", "TRADESParams", "get_method", "label_loss"]
