"""``RepairConfig``: everything a repair run needs, validated up front and dumped into its outputs."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Sequence

from audit.config import AttackSpec, AuditConfig

from audit.options import check_config, register_config

from .errors import RepairError
from .options import (AUGMENTS, EPS_SCHEDULES, FORMATS, GUIDES, PENALTIES, SAMPLERS, SCHEDULES,  # noqa: F401
                      SMOOTHING_SHAPES, SMOOTHINGS, declare_repair_options)

# Fields that change the trained weights: a --resume must agree on all of them.
TRAINING_KEYS = ("method", "epochs", "steps_total", "evaluations", "sampler", "trades_beta",
                 "lr", "batch_size", "momentum", "weight_decay", "schedule", "train_eps",
                 "train_steps", "train_step_size", "tail_penalty", "tail_lambda", "margin", "val_fraction", "val_root",
                 "val_split", "grad_clip",
                 "augment", "amp", "seed", "norm", "min_clean_kept", "guide", "lbgat_beta", "smoothing",
                 "smoothing_head", "smoothing_tail", "smoothing_shape", "eps_schedule", "eps_per_class",
                 "shift_bn")
MIN_CLEAN_KEPT = 0.8  # a fine-tuned checkpoint keeps at least this share of the input's validation clean accuracy


@dataclass
class RepairConfig:
    """A repair run: the audit settings (used before and after, unchanged) plus the fine-tuning settings.

    ``train_eps``/``train_step_size`` default to the audit's eps and eps/4 (10 steps: 8/255 with
    2/255 steps on CIFAR-like data, as in the paper); ``tail_penalty`` None means the method's
    default (REAT: pairwise, falling back to logits with a warning when the model has no
    penultimate layer; an explicit pairwise/reference without features is an error).
    Defaults are for *fine-tuning* a pretrained model: lr 0.05 with cosine decay, and a budget
    in optimizer steps: ``steps_total`` (``--train-steps-total``) or ``epochs`` whole passes,
    at most one of them; neither means the automatic budget of :mod:`reat_finetune.budget`.
    ``sampler`` "class-balanced" draws every class equally often into the adversarial batch;
    "auto" does so only when every class has enough training images (:func:`.train.resolve_sampler`).
    """

    audit: AuditConfig
    method: str = "reat"
    epochs: Optional[int] = None
    steps_total: Optional[int] = None
    evaluations: int = 10
    sampler: str = "auto"
    trades_beta: float = 6.0
    lr: Optional[float] = None  # None: a short search picks it within the budget (reat_finetune.adapt)
    grad_clip: Optional[float] = None  # cap on the gradient norm of each update (off: measured no gain, docs/repair.md)
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    train_eps: Optional[float] = None
    train_steps: int = 10
    train_step_size: Optional[float] = None
    tail_penalty: Optional[str] = None
    tail_lambda: float = 1.0
    margin: float = 0.1
    val_fraction: float = 0.2  # share of each class's evaluation points carved off for checkpoint selection
    val_root: Optional[str] = None  # the user's validation folder (<class>/ images) instead of carving
    val_split: Optional[str] = None  # ... or its name under the audit's --data-root (e.g. "val")
    augment: str = "none"
    min_clean_kept: float = MIN_CLEAN_KEPT
    guide: str = "frozen"  # lbgat: the input model as a frozen or learnable guide
    lbgat_beta: float = 0.0  # lbgat: weight of KL(clean || adversarial); 0 keeps the most clean accuracy
    smoothing: str = "off"  # label-aware: MiSLAS's smoothing on every label loss
    smoothing_head: float = 0.3
    smoothing_tail: float = 0.0
    smoothing_shape: str = "concave"
    # eps_schedule: chosen by the CIFAR-10-LT comparison (docs/benchmarks.md "Repair", docs/repair.md "ε schedules")
    eps_schedule: str = "warmup"
    eps_per_class: bool = False
    shift_bn: bool = False  # re-estimate BatchNorm statistics on class-balanced clean batches before export
    out: Optional[str] = None
    resume: Optional[str] = None
    formats: Sequence[str] = FORMATS
    quiet: bool = False
    sync_bn: bool = True  # under torchrun on GPUs: SyncBatchNorm (--no-sync-bn keeps per-rank statistics)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Paths (``pathlib.Path``) from Python become the text the command line gives."""
        import os

        for name in ("out", "resume"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))

    # -- derived -------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return int(self.audit.seed)

    @property
    def amp(self) -> str:
        return self.audit.amp

    @property
    def eps(self) -> float:
        """Radius of the training attack (the audit's eps unless set)."""
        return float(self.train_eps if self.train_eps is not None else self.audit.eps)

    @property
    def step_size(self) -> float:
        return float(self.train_step_size if self.train_step_size is not None else self.eps / 4)

    def train_attack_spec(self) -> AttackSpec:
        """PGD with random start under the audit's norm: the training (and validation) attack."""
        from audit.attacks import make_spec

        return make_spec("pgd", self.audit.norm, self.eps, name="pgd-train", steps=int(self.train_steps),
                         step_size=self.step_size, random_start=True)

    def validation_specs(self) -> list[AttackSpec]:
        """The audit's gradient attacks at the training radius, step count and step size (model selection).

        Score-based attacks (Square) are left out: thousands of queries at every evaluation would
        cost more than the fine-tuning itself.
        """
        from dataclasses import fields

        from audit.registry import ATTACKS

        specs = []
        for s in self.audit.attack_specs():
            cls = ATTACKS.get(s.kind)
            if cls.gradient_free:
                continue
            params = s.params if s.params is not None else cls.Params()
            names = {f.name for f in fields(params)}
            over = {k: v for k, v in (("steps", int(self.train_steps)), ("step_size", self.step_size),
                                      ("random_start", True)) if k in names}
            specs.append(replace(s, eps=self.eps, params=replace(params, **over)))
        return specs or [self.train_attack_spec()]

    def resolved_penalty(self, method_default: str) -> str:
        return self.tail_penalty if self.tail_penalty is not None else method_default

    # -- checks --------------------------------------------------------------------------
    def validate(self) -> None:
        """Reject settings that make no sense, one actionable sentence each (RepairError, exit code 2)."""
        from audit.errors import ConfigError
        from audit.values import check_field_types

        check_field_types(self, RepairError)
        try:
            self.audit.validate()
        except ConfigError as exc:
            raise RepairError(str(exc)) from None
        check_config(self, "repair", RepairError)  # bounds and choices: the declared options (reat_finetune/options.py)
        if self.epochs is not None and self.steps_total is not None:
            raise RepairError("--epochs and --train-steps-total both set the fine-tuning budget; give one of them "
                              "(or neither, for the automatic budget)")
        if not _finite(self.momentum) or not 0 <= self.momentum < 1:
            raise RepairError(f"momentum must be in [0, 1), got {self.momentum}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise RepairError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.tail_penalty in ("pairwise", "reference") and self.method != "reat":
            raise RepairError(f"--tail-penalty {self.tail_penalty} belongs to --method reat; {self.method} trains "
                              "without a feature penalty (drop the flag or use --method reat)")
        if self.val_root is not None and self.val_split is not None:
            raise RepairError("--val-root and --val-split both name the validation images; give one of them")
        if self.val_split is not None and not self.audit.data_root:
            raise RepairError(f"--val-split {self.val_split} names a folder under --data-root; give --data-root DIR "
                              "(or the whole path with --val-root DIR)")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise RepairError(f"report formats must be html and/or pdf, got {', '.join(bad)}")

    # -- dumps ---------------------------------------------------------------------------
    def training_dict(self) -> dict[str, Any]:
        """The settings that determine the trained weights (compared on --resume)."""
        d = {k: getattr(self, k) for k in TRAINING_KEYS if k not in ("train_eps", "train_step_size", "seed",
                                                                        "amp", "norm")}
        d.update(train_eps=self.eps, train_step_size=self.step_size, seed=self.seed, amp=self.amp,
                 norm=self.audit.norm)
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, audit=None))  # the audit's in-memory model and data are named, never copied
        d["audit"] = self.audit.to_dict()
        d["formats"] = list(self.formats)
        d["resolved"] = {"train_eps": self.eps, "train_step_size": self.step_size}
        return d


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


register_config("repair", RepairConfig)
declare_repair_options()
