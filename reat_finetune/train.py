"""The fine-tuning loop: training attack in eval mode, update in train mode, validation, checkpoints.

The budget is a number of optimizer steps (:mod:`.budget`), walked in epochs (passes over
the training split; the last may be partial). Validation and model selection
(:mod:`.selection`) happen at the budget's evaluation steps; checkpoints are written there
and at every epoch end.

Determinism: every epoch draws its batch order, attack starts and augmentation from
generators seeded by (seed, epoch); their states, the global torch RNG, the optimiser and
the schedule position go into each checkpoint, so a resumed run ends with the same weights
as an uninterrupted one. Ctrl-C is deferred to the next batch boundary, where a checkpoint
is written before :class:`RepairInterrupted` is raised.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from audit.attacks import Attack, BatchNoise
from audit.values import AttackSpec
from audit.run.distributed import launched, launcher_rank
from audit.phases import fit_images, score_points
from audit.contract.files import write_json
from audit.contract.codec import from_json
from audit.contract.repair import TrainingLog

from .checkpoint import rng_state, restore_rng, save_checkpoint, state_dict_cpu
from .config import RepairConfig
from .ddp import TrainDist
from .errors import RepairError, RepairInterrupted
from .features import FeatureModel
from .losses import rbl_weights
from .smoothing import label_aware_eps
from .methods import LossContext, RepairMethod
from .budget import Budget
from .adapt import (DEFAULT_LR, LOWER, MAX_RECOVERIES, SearchPlan, Watch, collapsed, copy_state, lower_sentence,
                    run_search, selection_subset)
from .selection import (GUARD_METRIC, METRIC, Floors, ValidationPlan, better, ineligible_because, score,  # noqa: F401
                        seen_reasons)

log = logging.getLogger(__name__)

IN_MEMORY_LIMIT = 2 << 30  # bytes of float32 pixels kept in memory; larger training sets stream from disk
VAL_BATCH = 256
GUIDE_LR_SCALE = 0.1  # lbgat --guide learnable: the guide's learning rate relative to --lr

Autocast = Optional[Callable[[], contextlib.AbstractContextManager]]


# --------------------------------------------------------------------------- data


class BatchSource:
    """Images of a split by index: in memory when small enough, else decoded from the dataset per batch."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, labels: np.ndarray, image_shape: tuple[int, ...],
                 workers: int = 0) -> None:
        self.workers = int(workers)  # DataLoader processes decoding images (--workers)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.y = torch.as_tensor(np.asarray(labels)[self.indices], dtype=torch.long)
        self.dataset = dataset
        self.x: Optional[torch.Tensor] = None
        nbytes = len(self.indices) * int(np.prod(image_shape)) * 4
        if nbytes <= IN_MEMORY_LIMIT and len(self.indices):
            loader = DataLoader(Subset(dataset, self.indices.tolist()), batch_size=512, shuffle=False,
                                num_workers=self.workers)
            self.x = torch.cat([xb.float() for xb, _ in loader])

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at positions ``pos`` (0..len-1) of the split."""
        if self.x is not None:
            return self.x[pos], self.y[pos]
        if self.workers:  # decode the batch in worker processes
            sub = Subset(self.dataset, [int(self.indices[int(p)]) for p in pos])
            xs, _ = next(iter(DataLoader(sub, batch_size=len(sub), num_workers=min(self.workers, len(sub)))))
            return xs.float(), self.y[pos]
        items = [self.dataset[int(self.indices[int(p)])] for p in pos]
        return torch.stack([it[0].float() for it in items]), self.y[pos]


def augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """``flip-crop``: random horizontal flip and random 4-pixel-padded crop, vectorised; ``none``: as is."""
    if kind == "none":
        return x
    B, C, H, W = x.shape
    flip = torch.rand(B, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = 4
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    rows = (dy[:, None] + torch.arange(H)[None, :])[:, :, None]
    cols = (dx[:, None] + torch.arange(W)[None, :])[:, None, :]
    out = xp.permute(0, 2, 3, 1)[torch.arange(B)[:, None, None], rows, cols]
    return out.permute(0, 3, 1, 2).contiguous()


CB_MIN_CLASS = 20  # "auto" samples class-balanced only when the smallest class has this many training images


def resolve_sampler(sampler: str, counts: Sequence[int]) -> tuple[str, str]:
    """(shuffle | class-balanced, why) for ``--sampler`` auto/shuffle/class-balanced and the split's counts.

    Class-balanced batches help when the rare classes have dozens of images (CIFAR-10-LT); with a
    handful they repeat the same few images in every batch and overfit them (the digits demo).
    """
    if sampler != "auto":
        return sampler, f"--sampler {sampler}"
    low = min(int(c) for c in counts)
    if low >= CB_MIN_CLASS:
        return "class-balanced", f"auto: the smallest class has {low} training images (>= {CB_MIN_CLASS})"
    return "shuffle", f"auto: the smallest class has {low} training image(s) (< {CB_MIN_CLASS})"


def epoch_order(labels: torch.Tensor, sampler: str, gen: torch.Generator) -> torch.Tensor:
    """Positions of one pass: a permutation (``shuffle``), or as many draws with replacement where every
    class is equally likely and images are uniform within their class (``class-balanced``)."""
    n = int(labels.shape[0])
    if sampler == "shuffle":
        return torch.randperm(n, generator=gen)
    counts = torch.bincount(labels)
    w = 1.0 / counts[labels].double()
    return torch.multinomial(w, n, replacement=True, generator=gen)


# --------------------------------------------------------------------------- attack + step


def perturb(attack: Attack, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
            autocast: Autocast = None) -> torch.Tensor:
    """The final PGD iterate (not the first fooling one), drawn from one generator for the batch.

    ``model`` must be in eval mode (BatchNorm statistics untouched); gradients go to the input only.
    """
    return attack.perturb(model, x, y, noise=BatchNoise(gen, x.shape[0]), autocast=autocast)


def train_step(fm: FeatureModel, attack: Attack, method: RepairMethod, ctx: LossContext, x: torch.Tensor,
               y: torch.Tensor, opt: torch.optim.Optimizer, gen: torch.Generator,
               autocast: Autocast = None, forward: Optional[Callable] = None,
               guide: Optional[torch.nn.Module] = None,
               grad_clip: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One adversarial training step; returns (loss, tail penalty, adversarial predictions), detached.

    ``forward`` is the training forward when it is not ``fm``/its pixel model (the DDP wrapper);
    ``guide`` (the method's, e.g. a frozen copy of the input model) gives ``guide_logits`` on
    the clean batch to the loss.
    """
    pm = fm.pixel_model
    pm.eval()
    method.prepare_attack(attack, pm, x, autocast)
    x_adv = perturb(attack, pm, x, y, gen, autocast)
    method.set_train_mode(pm)  # hook: train mode (a frozen backbone stays in eval mode)
    ac = autocast or contextlib.nullcontext
    fwd = forward or (fm if ctx.penalty != "off" else pm)  # [distributed] DDP around the same module
    with ac():
        if ctx.penalty != "off":
            feats, logits = fwd(x_adv)
        else:
            feats, logits = None, fwd(x_adv)
        clean = pm(x).float() if method.uses_clean_logits else None
        learn_guide = guide is not None and any(p.requires_grad for p in guide.parameters())
        with torch.set_grad_enabled(learn_guide):
            guided = guide(x).float() if guide is not None else None
    loss, pen = method.loss(logits.float(), feats.float() if feats is not None else None, y, ctx, clean_logits=clean,
                            guide_logits=guided)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:  # --grad-clip: the update's gradient norm capped (docs/repair.md, "Settings that adapt")
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()
    return loss.detach(), pen, logits.detach().argmax(1)


def lr_at(iteration: int, total: int, base: float, schedule: str, epochs: int) -> float:
    """Cosine decay per iteration to 0, or step decay x0.1 at 75% and 90% of the epochs."""
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(iteration, total) / max(1, total)))
    epoch = int(iteration * epochs // max(1, total))
    drops = sum(epoch >= m for m in (int(0.75 * epochs), int(0.9 * epochs)) if m > 0)
    return base * (0.1 ** drops)


# --------------------------------------------------------------------------- validation


def evaluate(model: torch.nn.Module, source: BatchSource, spec: AttackSpec | Sequence[AttackSpec], *,
             device: torch.device, input_size: tuple[int, int, int], num_classes: int, seed: int,
             amp: str = "off") -> dict[str, Any]:
    """Clean and worst-case robust accuracy on a split, overall and class-balanced.

    The audit's own evaluation (:func:`audit.phases.score_points`): ``spec`` is one attack or a
    cascade, a point is robust when it is clean-correct and no attack of the cascade fools it,
    each point's noise is seeded by its position in the split, and a bf16 run's verdicts are
    re-checked in fp32. Balanced = mean over the classes that have images in the split (the test
    set is balanced, so this is the figure the audit cares about). Non-finite logits of a model
    being trained count as wrong answers, not as an error.
    """
    specs = [spec] if isinstance(spec, AttackSpec) else list(spec)
    n = len(source)
    if n == 0:
        return {"val_clean_acc": None, "val_robust_acc": None, "val_clean_acc_overall": None,
                "val_robust_acc_overall": None, "val_robust_per_class": [None] * num_classes, "val_collapse": None}

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for s in range(0, n, VAL_BATCH):
            pos = torch.arange(s, min(n, s + VAL_BATCH))
            yield (*source.batch(pos), pos)

    got = score_points(model, batches(), specs, n_total=n, num_classes=num_classes, input_size=input_size,
                       device=device, seed=seed, amp=amp)  # in eval mode
    clean, robust = got.clean, got.robust
    acc_clean, acc_robust = got.clean_by_class, got.robust_by_class  # NaN for classes without images
    present = ~np.isnan(acc_clean)
    per_rob = [float(a) if ok else None for a, ok in zip(acc_robust, present)]
    return {
        "val_clean_acc": float(acc_clean[present].mean()),
        "val_robust_acc": float(acc_robust[present].mean()),
        "val_clean_acc_overall": float(clean.mean()),
        "val_robust_acc_overall": float(robust.mean()),
        "val_robust_per_class": per_rob,
        "val_collapse": got.collapse,
    }


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainSetup:
    """What the loop trains and on which data (built by repair.py)."""

    fm: FeatureModel
    method: RepairMethod
    train: BatchSource
    val: BatchSource
    train_counts: list[int]
    is_tail: torch.Tensor
    v: torch.Tensor
    device: torch.device
    input_size: tuple[int, int, int]
    num_classes: int
    fingerprint: dict[str, Any]
    penalty: str
    feature_source: str
    budget: Budget
    plan: ValidationPlan
    guard: Optional[BatchSource] = None  # training images of the classes missing from validation
    prior_counts: Optional[list[float]] = None  # class prior of the batches (Balanced Softmax); None: train_counts
    sampler: str = "shuffle"  # resolved: shuffle | class-balanced
    sampler_rule: str = ""
    search: Optional[SearchPlan] = None  # the learning-rate search (adapt.plan_search); None or empty: none


@dataclass
class TrainHooks:
    """Optional callbacks (tests, benches), called at consistent points (a KeyboardInterrupt there is clean).

    ``on_epoch_end(epoch, log_entry or None)`` after each epoch's checkpoint (the entry when that
    epoch end was an evaluation); ``on_evaluation(step, log_entry)`` after each evaluation's
    checkpoint; ``on_batch_end(epoch, done)`` after each optimiser step.
    """

    on_epoch_end: Optional[Callable[[int, Optional[dict[str, Any]]], None]] = None
    on_batch_end: Optional[Callable[[int, int], None]] = None  # (epoch, batches done in it)
    on_evaluation: Optional[Callable[[int, dict[str, Any]], None]] = None  # (optimizer steps done, entry)


@dataclass
class TrainResult:
    best_epoch: int  # the epoch in which the kept checkpoint was taken (1-based)
    best_step: int
    best_state: dict[str, torch.Tensor]
    log: list[dict[str, Any]]
    seconds: float  # training + validation over all sessions of the run (resumes included)
    session_seconds: float  # wall time of this call
    warnings: list[str] = field(default_factory=list)
    best_note: Optional[str] = None
    state: Optional["TrainState"] = None  # the final training state (for the log)


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.at = 0.0


@contextlib.contextmanager
def deferred_sigint() -> Iterator[_StopFlag]:
    """First Ctrl-C sets a flag checked at batch boundaries; a second one interrupts at once."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            if launched() and time.monotonic() - flag.at < 5:  # [distributed] torchrun relays the terminal's Ctrl-C
                return
            raise KeyboardInterrupt
        flag.requested = True
        flag.at = time.monotonic()
        if launcher_rank() != 0:
            return
        print("\ntailaudit: stopping after this batch to save a checkpoint (Ctrl-C again to abort at once)",
              file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class _Positions:
    """Some positions of a :class:`BatchSource`, as a source of their own (the search's selection subset)."""

    def __init__(self, source: BatchSource, positions: np.ndarray) -> None:
        self.source, self.pos = source, torch.as_tensor(np.asarray(positions, np.int64))

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    def batch(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.batch(self.pos[pos])


def _search_order(labels: torch.Tensor, sampler: str, seed: int, batch: int, steps: int) -> torch.Tensor:
    """Training positions for ``steps`` search batches: passes drawn like the main run's, from their own seeds."""
    out, e = [], 0
    while sum(len(o) for o in out) < steps * batch:
        out.append(epoch_order(labels, sampler, torch.Generator().manual_seed(_mix(seed, 10_000 + e, 1))))
        e += 1
    return torch.cat(out)


def _mix(seed: int, epoch: int, stream: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + stream) % (2 ** 63 - 1)


@dataclass
class Window:
    """Accumulators of the steps since the last evaluation (one log entry)."""

    lr_start: float
    loss: float = 0.0
    penalty: float = 0.0
    n: int = 0
    adv_correct: int = 0
    train_s: float = 0.0
    counts: Optional[list[int]] = None


@dataclass
class Kept:
    """The checkpoint selection keeps so far (step 0: the input model)."""

    epoch: int
    step: int
    score: Optional[float]
    model: dict[str, torch.Tensor]


@dataclass
class TrainState:
    """Everything a resumed run needs to continue bit-identically (saved in every checkpoint)."""

    counts_prev: list[int]  # adversarial predictions per class of the previous pass (RBL); first pass: N_i
    window: Window
    next_epoch: int = 1
    pos: int = 0  # batches done in the current epoch
    iteration: int = 0  # optimizer steps done
    accum_counts: Optional[list[int]] = None  # this pass's adversarial predictions so far (None between passes)
    gens: Optional[dict[str, torch.Tensor]] = None  # attack/augmentation generator states within a pass
    log: list[dict[str, Any]] = field(default_factory=list)
    kept: Optional[Kept] = None
    floors: Optional[Floors] = None
    elapsed_s: float = 0.0
    lr_base: float = DEFAULT_LR  # the rate the schedule starts from (--lr, or the search's choice)
    lr_factor: float = 1.0  # x LOWER after each divergence caught
    divergences: list[dict[str, Any]] = field(default_factory=list)
    lr_search: Optional[dict[str, Any]] = None

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain data and tensors only (read back with ``weights_only=True``)."""
        return {"counts_prev": list(self.counts_prev), "window": asdict(self.window), "next_epoch": self.next_epoch,
                "pos": self.pos, "iteration": self.iteration, "accum_counts": self.accum_counts, "gens": self.gens,
                "log": self.log, "kept": asdict(self.kept) if self.kept else None,
                "floors": self.floors.to_dict() if self.floors else None, "elapsed_s": self.elapsed_s,
                "lr_base": self.lr_base, "lr_factor": self.lr_factor, "divergences": self.divergences,
                "lr_search": self.lr_search}

    @classmethod
    def from_checkpoint(cls, d: dict[str, Any]) -> "TrainState":
        try:
            return cls(counts_prev=[int(c) for c in d["counts_prev"]], window=Window(**d["window"]),
                       next_epoch=int(d["next_epoch"]), pos=int(d["pos"]), iteration=int(d["iteration"]),
                       accum_counts=d["accum_counts"], gens=d["gens"], log=list(d["log"]),
                       kept=Kept(**d["kept"]) if d["kept"] else None,
                       floors=Floors(**d["floors"]) if d["floors"] else None, elapsed_s=float(d["elapsed_s"]),
                       lr_base=float(d["lr_base"]), lr_factor=float(d["lr_factor"]),
                       divergences=list(d["divergences"]), lr_search=d["lr_search"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RepairError(f"--resume: the checkpoint's training state is damaged ({type(exc).__name__}: "
                              f"{exc}); start afresh with another --out") from None


def make_optimizer(method: RepairMethod, net: torch.nn.Module, guide: Optional[torch.nn.Module],
                   config: RepairConfig) -> torch.optim.SGD:
    """SGD over the method's trainable parameters of ``net`` (the others frozen), plus a learnable guide's
    parameters as a second group at a tenth of the learning rate (the resume check builds the same one)."""
    params = method.trainable_parameters(net)  # hook: which parameters train
    chosen = {id(p) for p in params}
    for p in net.parameters():  # the others get no gradient (a frozen backbone costs no weight grads)
        p.requires_grad_(id(p) in chosen)
    groups: list[dict[str, Any]] = [{"params": params}]
    guide_params = [p for p in guide.parameters() if p.requires_grad] if guide is not None else []
    if guide_params:  # a learnable guide trains at a tenth of the learning rate
        groups.append({"params": guide_params, "lr_scale": GUIDE_LR_SCALE})
    # the schedule sets each step's rate (from --lr or the search's choice); DEFAULT_LR only fills the constructor
    return torch.optim.SGD(groups, lr=config.lr or DEFAULT_LR, momentum=config.momentum,
                           weight_decay=config.weight_decay)


class Trainer:
    """Adversarial fine-tuning of ``setup.fm`` with ``setup.method`` for ``setup.budget``, as a list of phases.

    The method supplies the hooks (:class:`~.methods.RepairMethod`): which parameters train, an
    optional guide model whose clean logits the loss sees, and the training attack for each
    step (its ε schedule). Writes ``out_dir/checkpoint.pt`` at every evaluation and epoch end,
    and ``out_dir/training_log.json``.
    """

    def __init__(self, setup: TrainSetup, config: RepairConfig, out_dir: Path, hooks: Optional[TrainHooks] = None,
                 progress: bool = True) -> None:
        self.setup, self.config, self.hooks = setup, config, hooks or TrainHooks()
        self.dev = setup.device
        self.pm = setup.fm.pixel_model
        self.net = self.pm.net
        self.ckpt_path, self.log_path = out_dir / "checkpoint.pt", out_dir / "training_log.json"
        self.out_dir = out_dir
        bud = setup.budget
        self.B, self.nb, self.T, self.E = int(config.batch_size), bud.steps_per_epoch, bud.steps_total, bud.epochs
        self.eval_at = set(bud.eval_steps)
        n_train = len(setup.train)
        if n_train < 2 or self.nb < 1:
            raise RepairError(f"the training split has {n_train} image(s); repair needs a training set "
                              "(use more data)")
        self.dd = TrainDist(sync_bn=getattr(config, "sync_bn", True))  # [distributed] no-ops in a plain run
        self.dd.n_batches(n_train, self.B, lambda n, b: self.nb)  # [distributed] the global batch splits
        self.val_specs = config.validation_specs()
        self.autocast: Autocast = None
        if config.amp == "bf16":
            self.autocast = lambda: torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16)  # noqa: E731
        prior = setup.prior_counts if setup.prior_counts is not None else setup.train_counts
        self.ctx = LossContext(
            log_n=torch.tensor(np.log(np.maximum(np.asarray(prior, dtype=np.float64), 1.0)),
                               dtype=torch.float32, device=self.dev),
            is_tail=setup.is_tail.to(self.dev), v=setup.v.to(self.dev), penalty=setup.penalty,
            tail_lambda=float(config.tail_lambda), margin=float(config.margin))
        method = setup.method
        method.configure(config, setup.train_counts)  # hook: ε schedule, class-wise radii, method options
        if config.smoothing == "label-aware" or method.default_smoothing:
            self.ctx.smoothing = label_aware_eps(setup.train_counts, config.smoothing_head, config.smoothing_tail,
                                                 config.smoothing_shape).to(self.dev)
        self.guide = method.make_guide(self.pm)  # hook: a guide model (None for most methods)
        self.opt = make_optimizer(method, self.net, self.guide, config)
        self.guide_params = self.opt.param_groups[1]["params"] if len(self.opt.param_groups) > 1 else []
        self.forward = self.dd.wrap(setup.fm if setup.penalty != "off" else self.pm, self.net, self.dev)
        self.progress = progress and self.dd.is_main
        self.warnings: list[str] = []
        self.state: Optional[TrainState] = None
        self._consistent = True  # False while a batch is half done (Ctrl-C then keeps the last checkpoint)
        self.watch = Watch()  # divergence: loss spikes and non-finite losses
        self._good: Optional[dict[str, Any]] = None  # the last good state (weights + optimizer) and its step
        self._halt = False  # too many divergences: training stops, the kept checkpoint stands

    # -- phases ----------------------------------------------------------------------------
    def run(self, resume: Optional[dict[str, Any]] = None) -> TrainResult:
        """Start (validate the input model) or resume, train every remaining pass, return the kept checkpoint."""
        t_start = time.perf_counter()
        self._check_validation()
        if resume is not None:
            self.state = self._resume(resume)
        else:
            record = self._search() if self.setup.search is not None and self.setup.search.grid else None
            self.state = self._start(record)
        self._good = {**copy_state(self.net, self.opt), "step": self.state.kept.step if self.state.kept else 0}
        if self.state.kept is not None and self.state.iteration:  # resumed: the kept checkpoint is a good state
            self._good["model"] = self.state.kept.model
        with deferred_sigint() as stop:
            try:
                while self.state.next_epoch <= self.E and not self._halt:
                    self._epoch(self.state.next_epoch, stop)
            except KeyboardInterrupt as exc:
                if isinstance(exc, RepairInterrupted):
                    raise
                self._interrupted()
        self.dd.finish()
        return self._result(time.perf_counter() - t_start)

    def _check_validation(self) -> None:
        if len(self.setup.val) == 0:
            self.warnings.append("the selection split is empty (every class is too small to give up an image); "
                                 "checkpoints are compared on the guard alone")
            log.warning("%s", self.warnings[-1])

    def _start(self, record: Optional[dict[str, Any]]) -> TrainState:
        torch.manual_seed(self.config.seed)
        base_lr = record["chosen_lr"] if record else (self.config.lr or DEFAULT_LR)
        if record:
            log.info("learning rate %g chosen by a %d-step search (%s)", base_lr, record["steps"], record["reason"])
        t0 = time.perf_counter()
        base = self._validate(0)
        entry0 = {"epoch": 0, "step": 0, "loss": None, "lr": None, "time_s": time.perf_counter() - t0, **base,
                  "note": "the input model, before fine-tuning", "eligible": True, "ineligible_because": []}
        floors = Floors.of_input(entry0, self.setup.num_classes, self.config.min_clean_kept)
        log.info("step 0 (input model): selection clean %s, worst-case robust %s", _pct(base["val_clean_acc"]),
                 _pct(base["val_robust_acc"]))
        return TrainState(counts_prev=[int(c) for c in self.setup.train_counts],
                          window=Window(lr_at(0, self.T, base_lr, self.config.schedule, self.E)),
                          log=[entry0], kept=Kept(0, 0, score(entry0), state_dict_cpu(self.net)), floors=floors,
                          elapsed_s=float(entry0["time_s"]), lr_base=float(base_lr), lr_search=record)

    def _resume(self, resume: dict[str, Any]) -> TrainState:
        state = TrainState.from_checkpoint(resume["state"])  # every field checked already (resume_state.py)
        try:
            self.net.load_state_dict(resume["model"])
            if self.guide_params:
                self.guide.load_state_dict(resume["guide"])  # type: ignore[union-attr]
            self.opt.load_state_dict(resume["optimizer"])
            restore_rng(resume["rng"], self.dev)
            if self.dd.active:  # [distributed] this rank's own streams
                mine = resume["ranks"][self.dd.rank]
                state.gens = mine["gens"]
                restore_rng(mine["rng"], self.dev)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise RepairError(f"--resume: the checkpoint does not fit this model or run ({type(exc).__name__}: "
                              f"{_first(exc)}); start afresh with another --out") from None
        log.info("resuming at epoch %d, batch %d/%d (step %d of %d)", state.next_epoch, state.pos, self.nb,
                 state.iteration, self.T)
        return state

    def _epoch(self, epoch: int, stop: "_StopFlag") -> None:
        """One pass over the training split (the last may stop early), then the epoch-end checkpoint."""
        st, cfg, setup = self.state, self.config, self.setup
        assert st is not None
        n_this = min(self.nb, self.T - (epoch - 1) * self.nb)
        order = epoch_order(setup.train.y, setup.sampler, torch.Generator().manual_seed(_mix(cfg.seed, epoch, 1)))
        att_gen, aug_gen = torch.Generator(device=self.dev), torch.Generator()
        if st.pos == 0 and st.accum_counts is None:
            att_gen.manual_seed(_mix(cfg.seed, epoch, self.dd.stream(2)))
            aug_gen.manual_seed(_mix(cfg.seed, epoch, self.dd.stream(3)))
            st.accum_counts = [0] * setup.num_classes
            st.gens = {"attack": att_gen.get_state(), "augment": aug_gen.get_state()}
        else:
            att_gen.set_state(st.gens["attack"])  # type: ignore[index]
            aug_gen.set_state(st.gens["augment"])  # type: ignore[index]
        weights = rbl_weights(setup.train_counts, st.counts_prev) if setup.method.uses_rbl else None
        entry: Optional[dict[str, Any]] = None
        # one bar per epoch: only on a terminal (in a log file every update would be a line of its own)
        bar = tqdm(total=n_this, initial=st.pos, desc=f"epoch {epoch}/{self.E}", unit="batch", file=sys.stderr,
                   disable=not self.progress or not sys.stderr.isatty(), dynamic_ncols=True, leave=False)
        try:
            for b in range(st.pos, n_this):
                if self.dd.stop(stop.requested):
                    raise KeyboardInterrupt
                if self._halt:
                    break
                self._consistent = False
                k, dt = self._batch(order[b * self.B:(b + 1) * self.B], epoch, b, att_gen, aug_gen)
                st.pos = b + 1
                st.gens = {"attack": att_gen.get_state(), "augment": aug_gen.get_state()}
                bar.update(1)
                bar.set_postfix(loss=f"{st.window.loss / max(1, st.window.n):.3f}", img_s=f"{k / max(dt, 1e-9):.0f}")
                if st.iteration in self.eval_at:
                    entry = self._evaluation(epoch, weights, save=b + 1 < n_this)
                    self._consistent = True
                    if self.hooks.on_evaluation is not None:
                        self.hooks.on_evaluation(st.iteration, entry)
                self._consistent = True
                if self.hooks.on_batch_end is not None:
                    self.hooks.on_batch_end(epoch, b + 1)
        finally:
            bar.close()
        if self.dd.stop(stop.requested):
            raise KeyboardInterrupt
        st.counts_prev = list(st.accum_counts or [])  # the RBL counts of the next pass
        st.next_epoch, st.pos, st.accum_counts, st.gens = epoch + 1, 0, None, None
        self._checkpoint()
        self._write_log()
        if self.hooks.on_epoch_end is not None:
            self.hooks.on_epoch_end(epoch, entry if entry is not None and entry["step"] == st.iteration else None)

    def _batch(self, positions: torch.Tensor, epoch: int, b: int, att_gen: torch.Generator,
               aug_gen: torch.Generator) -> tuple[int, float]:
        """One optimizer step on a global batch; returns (images in it, seconds)."""
        st, setup, cfg = self.state, self.setup, self.config
        assert st is not None
        t0 = time.perf_counter()
        x, y = setup.train.batch(self.dd.local(positions))  # [distributed] this rank's part
        x = augment(x, cfg.augment, aug_gen)
        x = fit_images(x.to(self.dev, non_blocking=True).float(), setup.input_size)
        y = y.to(self.dev, non_blocking=True)
        for g in self.opt.param_groups:
            g["lr"] = self._lr(st.iteration) * g.get("lr_scale", 1.0)
        attack = setup.method.attack_at(cfg.train_attack_spec(), st.iteration, self.T)  # hook: the ε schedule
        loss, pen, pred = train_step(setup.fm, attack, setup.method, self.ctx, x, y, self.opt, att_gen,
                                     self.autocast, self.forward, self.guide, cfg.grad_clip)
        loss, pen, pred, y = self.dd.batch_outcome(loss, pen, pred, y)  # [distributed] the global batch
        loss_v = float(loss)
        k, w = int(y.shape[0]), st.window
        why = self.watch.check(loss_v)
        if why is not None:  # this step's update is thrown away with the rest since the last good state
            self._recover(why)
            st.iteration += 1
            return k, time.perf_counter() - t0
        w.loss += loss_v * k
        w.penalty += float(pen) * k
        w.n += k
        w.adv_correct += int((pred == y).sum())
        bc = torch.bincount(pred, minlength=setup.num_classes).cpu().tolist()
        st.accum_counts = [a + int(c) for a, c in zip(st.accum_counts or [0] * len(bc), bc)]
        w.counts = [a + int(c) for a, c in zip(w.counts or [0] * len(bc), bc)]
        dt = time.perf_counter() - t0
        w.train_s += dt
        st.iteration += 1
        return k, dt

    def _evaluation(self, epoch: int, weights: Optional[torch.Tensor], save: bool) -> dict[str, Any]:
        """Validate at the current step, log, update the kept checkpoint, checkpoint (unless an epoch end follows)."""
        st, setup = self.state, self.setup
        assert st is not None
        step, w = st.iteration, st.window
        t0 = time.perf_counter()
        v = self._validate(step)
        val_s = time.perf_counter() - t0
        why = ineligible_because(v, st.floors)
        entry = {
            "epoch": setup.budget.epoch_of(step), "step": step, "loss": w.loss / max(1, w.n),
            "tail_penalty": w.penalty / max(1, w.n) if setup.penalty != "off" else None,
            "train_adv_acc": w.adv_correct / max(1, w.n), **v,
            "adv_pred_counts": list(w.counts or [0] * setup.num_classes),
            "rbl_weights": [float(x) for x in weights] if weights is not None else None,
            "lr": w.lr_start, "lr_end": self._lr(step - 1),
            "train_s": w.train_s, "val_s": val_s, "time_s": w.train_s + val_s,
            "images_per_s": w.n / max(w.train_s, 1e-9), "eligible": not why, "ineligible_because": why,
        }
        st.log.append(entry)
        if not why and better(entry, asdict(st.kept) if st.kept else None):
            st.kept = Kept(epoch, step, score(entry), state_dict_cpu(self.net))
        broke = collapsed(v, st.floors.chance if st.floors else None)
        if broke is not None:
            self._recover(broke)
        else:
            self._good = {**copy_state(self.net, self.opt), "step": step}
        st.elapsed_s += entry["time_s"]
        st.window = Window(self._lr(step))
        guard = f", tail guard {_pct(v.get(GUARD_METRIC))}" if GUARD_METRIC in v else ""
        log.info("step %d/%d (epoch %s): loss %.4f, selection clean %s worst-case robust %s%s, lr %.4g, %.1f s "
                 "(%.0f img/s)%s", step, self.T, entry["epoch"], entry["loss"], _pct(v["val_clean_acc"]),
                 _pct(v["val_robust_acc"]), guard, entry["lr"], entry["time_s"], entry["images_per_s"],
                 f"; not eligible: {'; '.join(why)}" if why else "")
        if save:
            self._checkpoint()
        self._write_log()
        return entry

    def _interrupted(self) -> None:
        """Ctrl-C: a checkpoint at the batch boundary when the state is consistent, then RepairInterrupted."""
        st = self.state
        assert st is not None
        if self._consistent:
            saved: Optional[Path] = self._checkpoint()
            where = f"epoch {st.next_epoch}, batch {st.pos}/{self.nb} (step {st.iteration} of {self.T})"
        else:
            saved = self.ckpt_path if self.ckpt_path.exists() else None
            where = "the last checkpoint"
        hint = (f"checkpoint {saved}; continue with the same command plus --resume {self.out_dir}" if saved
                else "no checkpoint yet; start again")
        raise RepairInterrupted(f"interrupted at {where}: {hint}", saved) from None

    def _result(self, session_s: float) -> TrainResult:
        st = self.state
        assert st is not None and st.kept is not None
        note = None
        if st.kept.step == 0:
            why = seen_reasons(st.log, st.floors)
            note = ("no fine-tuned checkpoint beat the input model on the selection images while keeping its clean "
                    "accuracy and spread of predictions; the input model is returned unchanged")
            if why:
                note += f" (seen: {'; '.join(why)})"
            self.warnings.append(note)
            log.warning("%s", note)
        return TrainResult(best_epoch=int(st.kept.epoch), best_step=int(st.kept.step), best_state=st.kept.model,
                           log=list(st.log), seconds=float(st.elapsed_s), session_seconds=session_s,
                           warnings=self.warnings, best_note=note, state=st)

    # -- helpers ---------------------------------------------------------------------------
    def _lr(self, it: int) -> float:
        st = self.state
        base = st.lr_base * st.lr_factor if st is not None else (self.config.lr or DEFAULT_LR)
        return lr_at(it, self.T, base, self.config.schedule, self.E)

    def _recover(self, why: str) -> None:
        """A divergence: back to the last good state at a lower rate (recorded, one line), or stop after too many."""
        st = self.state
        assert st is not None and self._good is not None
        lr_from = self._lr(st.iteration)
        self.net.load_state_dict(self._good["model"])
        self.opt.load_state_dict(self._good["optimizer"])
        self.watch.reset()
        st.lr_factor *= LOWER
        event = {"step": st.iteration, "why": why, "restored_step": self._good["step"], "lr_from": lr_from,
                 "lr_to": self._lr(st.iteration), "lr_factor": st.lr_factor}
        event["sentence"] = lower_sentence(st.iteration, why, self._good["step"], lr_from, event["lr_to"])
        if len(st.divergences) >= MAX_RECOVERIES:
            self._halt = True
            event["sentence"] += f"; {MAX_RECOVERIES} recoveries already: training stops here"
        st.divergences.append(event)
        self.warnings.append(event["sentence"])
        log.warning("%s", event["sentence"])

    def _search(self) -> dict[str, Any]:
        """The learning-rate search (adapt.run_search) on a subset of the selection images."""
        plan, setup = self.setup.search, self.setup
        assert plan is not None
        sub = _Positions(setup.val, selection_subset(setup.val.y.numpy()))
        entry0 = self._validate(0, source=sub)
        floors = Floors.of_input(entry0, setup.num_classes, self.config.min_clean_kept)
        order = _search_order(setup.train.y, setup.sampler, self.config.seed, self.B, 3 * plan.round1_steps)
        start = copy_state(self.net, self.opt)

        def restore(state: dict[str, Any]) -> None:
            self.net.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])

        def score() -> dict[str, Any]:
            v = self._validate(0, source=sub)
            return {k: v.get(k) for k in ("val_clean_acc", "val_robust_acc")} | {
                "eligible": not ineligible_because(v, floors)}

        def train(lr: float, steps: int, state: Optional[dict[str, Any]]) -> tuple[dict[str, Any], Optional[str]]:
            restore(state or start)
            done = int((state or {}).get("done", 0))
            gen = torch.Generator(device=self.dev).manual_seed(_mix(self.config.seed, done, 12))
            watch = Watch()
            for i in range(done, done + steps):
                why = watch.check(self._trial_step(order[i * self.B:(i + 1) * self.B], lr, i, gen))
                if why is not None:
                    return {**copy_state(self.net, self.opt), "done": i + 1}, why
            return {**copy_state(self.net, self.opt), "done": done + steps}, None

        record = run_search(plan, train, score, restore, lambda: start)
        record["input"] = {k: entry0.get(k) for k in ("val_clean_acc", "val_robust_acc")}
        record["n_images"] = len(sub)
        return record

    def _trial_step(self, positions: torch.Tensor, lr: float, it: int, gen: torch.Generator) -> float:
        """One search step at a constant rate ``lr``; returns its loss."""
        setup, cfg = self.setup, self.config
        x, y = setup.train.batch(self.dd.local(positions))
        x = fit_images(x.to(self.dev).float(), setup.input_size)
        y = y.to(self.dev)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        attack = setup.method.attack_at(cfg.train_attack_spec(), it, self.T)
        loss, _, _ = train_step(setup.fm, attack, setup.method, self.ctx, x, y, self.opt, gen, self.autocast,
                                self.forward, self.guide, cfg.grad_clip)
        return float(self.dd.batch_outcome(loss, loss, y, y)[0])

    def _validate(self, step: int, source: Optional[Any] = None) -> dict[str, Any]:
        setup, dd, C = self.setup, self.dd, self.setup.num_classes
        dd.sync_buffers(self.pm)  # [distributed] rank 0's BatchNorm statistics everywhere, rank 0's figures everywhere
        amp = "bf16" if self.autocast is not None else "off"
        if source is not None:  # the search's subset: no guard
            return dd.same(evaluate(self.pm, source, self.val_specs, device=self.dev, input_size=setup.input_size,
                                    num_classes=C, seed=_mix(self.config.seed, step, 13), amp=amp))
        v = evaluate(self.pm, setup.val, self.val_specs, device=self.dev, input_size=setup.input_size,
                     num_classes=C, seed=_mix(self.config.seed, step, 4), amp=amp)
        if setup.guard is not None and len(setup.guard):
            g = evaluate(self.pm, setup.guard, self.val_specs, device=self.dev, input_size=setup.input_size,
                         num_classes=C, seed=_mix(self.config.seed, step, 5), amp=amp)
            v[GUARD_METRIC], v["guard_clean_acc"] = g["val_robust_acc"], g["val_clean_acc"]
        return dd.same(v)

    def _checkpoint(self) -> Path:
        st, dd = self.state, self.dd
        assert st is not None
        ranks = dd.per_rank({"gens": st.gens, "rng": rng_state(self.dev)}) if dd.active else None
        if not dd.is_main:  # [distributed] rank 0 writes
            return self.ckpt_path
        extra = {"world_size": dd.world, **({"ranks": ranks} if dd.active else {})}
        return save_checkpoint(self.ckpt_path, {
            **extra, "fingerprint": self.setup.fingerprint, "model": state_dict_cpu(self.net),
            "optimizer": self.opt.state_dict(),
            **({"guide": state_dict_cpu(self.guide)} if self.guide_params else {}),  # type: ignore[arg-type]
            "schedule": {"kind": self.config.schedule, "iteration": st.iteration, "total": self.T},
            "rng": rng_state(self.dev), "state": st.to_checkpoint()})

    def _write_log(self) -> None:
        if self.dd.is_main:  # [distributed] rank 0 writes
            write_json(self.log_path, training_log(self.state, self.setup, self.config).to_json())


def fine_tune(setup: TrainSetup, config: RepairConfig, *, out_dir: Path, resume: Optional[dict[str, Any]] = None,
              hooks: Optional[TrainHooks] = None, progress: bool = True) -> TrainResult:
    """Adversarially fine-tune ``setup.fm`` with ``setup.method``; keeps the selected checkpoint (:class:`Trainer`)."""
    return Trainer(setup, config, out_dir, hooks, progress).run(resume)


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def selection_dict(state: Optional[TrainState], setup: TrainSetup, note: Optional[str] = None) -> dict[str, Any]:
    """The ``selection`` block: rule, metric, chosen checkpoint, floors and the validation composition."""
    kept = state.kept if state is not None else None
    d = setup.plan.to_dict(chosen_epoch=kept.epoch if kept else None, chosen_step=kept.step if kept else None,
                           note=note)
    floors = state.floors if state is not None else None
    d["floors"] = floors.to_dict() if floors else None
    d["guard_floor"] = floors.guard if floors else None
    return d


def training_log(state: Optional[TrainState], setup: TrainSetup, config: RepairConfig,
                 note: Optional[str] = None) -> TrainingLog:
    """The training log the report charts (``epochs``: one entry per evaluation) plus what produced it."""
    kept = state.kept if state is not None else None
    return from_json(TrainingLog, {
        "method": config.method,
        "tail_penalty": setup.penalty,
        "feature_source": setup.feature_source,
        "sampler": setup.sampler, "sampler_rule": setup.sampler_rule,
        "lr": state.lr_base if state is not None else config.lr, "lr_given": config.lr,
        "lr_search": state.lr_search if state is not None else None,
        "divergences": list(state.divergences) if state is not None else [],
        "schedule": config.schedule, "batch_size": config.batch_size,
        "budget": setup.budget.to_dict(),
        "selection": selection_dict(state, setup, note),
        "metrics_note": METRICS_NOTE,
        "train_counts_split": list(setup.train_counts),
        "n_train": len(setup.train), "n_val": len(setup.val),
        "best_epoch": kept.epoch if kept else None, "best_step": kept.step if kept else None,
        "best_val_robust_acc": kept.score if kept else None,
        "input_kept": bool(kept is not None and kept.step == 0),
        "epochs": list(state.log) if state is not None else [],
    }, "training_log")


METRICS_NOTE = ("one entry per evaluation (step 0 = the input model); val_*_acc are means over the classes "
                "with selection images (the selection split: unseen by the input model), robust = clean-correct and "
                "unbroken by every attack of the cascade; *_overall are plain means; guard_* are on the training "
                "images of the classes missing from validation; eligible/ineligible_because: whether the checkpoint "
                "may replace the input model")
