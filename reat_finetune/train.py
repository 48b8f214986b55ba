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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from audit.attacks import BatchNoise, create_attack
from audit.attacks.base import Attack
from audit.config import AttackSpec
from audit.distributed import launched, launcher_rank
from audit.engine import adapt_images
from audit.results import write_json

from .checkpoint import rng_state, restore_rng, save_checkpoint, state_dict_cpu
from .config import RepairConfig
from .ddp import TrainDist
from .errors import RepairError, RepairInterrupted
from .features import FeatureModel
from .losses import rbl_weights
from .methods import LossContext, RepairMethod
from .budget import Budget
from .selection import GUARD_METRIC, METRIC, ValidationPlan, better, eligible, split_train_val  # noqa: F401

log = logging.getLogger(__name__)

IN_MEMORY_LIMIT = 2 << 30  # bytes of float32 pixels kept in memory; larger training sets stream from disk
VAL_BATCH = 256

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
               autocast: Autocast = None, forward: Optional[Callable] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One adversarial training step; returns (loss, tail penalty, adversarial predictions), detached.

    ``forward`` is the training forward when it is not ``fm``/its pixel model (the DDP wrapper).
    """
    pm = fm.pixel_model
    pm.eval()
    method.prepare_attack(attack, pm, x, autocast)
    x_adv = perturb(attack, pm, x, y, gen, autocast)
    pm.train()
    ac = autocast or contextlib.nullcontext
    fwd = forward or (fm if ctx.penalty != "off" else pm)  # [distributed] DDP around the same module
    with ac():
        if ctx.penalty != "off":
            feats, logits = fwd(x_adv)
        else:
            feats, logits = None, fwd(x_adv)
        clean = pm(x).float() if method.uses_clean_logits else None
    loss, pen = method.loss(logits.float(), feats.float() if feats is not None else None, y, ctx, clean_logits=clean)
    opt.zero_grad(set_to_none=True)
    loss.backward()
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


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor, autocast: Autocast) -> torch.Tensor:
    with (autocast or contextlib.nullcontext)():
        return model(x).argmax(1)


def evaluate(model: torch.nn.Module, source: BatchSource, spec: AttackSpec | Sequence[AttackSpec], *,
             device: torch.device, input_size: tuple[int, int, int], num_classes: int, seed: int,
             autocast: Autocast = None) -> dict[str, Any]:
    """Clean and worst-case robust accuracy on a split, overall and class-balanced.

    ``spec`` is one attack or a cascade: a point is robust when it is clean-correct and no
    attack of the cascade fools it (the audit's worst case). Balanced = mean over the classes
    that have images in the split (the test set is balanced, so this is the figure the audit
    cares about); misclassified points count as non-robust.
    """
    specs = [spec] if isinstance(spec, AttackSpec) else list(spec)
    model.eval()
    n = len(source)
    if n == 0:
        return {"val_clean_acc": None, "val_robust_acc": None, "val_clean_acc_overall": None,
                "val_robust_acc_overall": None, "val_robust_per_class": [None] * num_classes}
    attacks = [create_attack(sp) for sp in specs]
    gen = torch.Generator(device=device).manual_seed(seed)
    clean = torch.zeros(n, dtype=torch.bool)
    robust = torch.zeros(n, dtype=torch.bool)
    for s in range(0, n, VAL_BATCH):
        pos = torch.arange(s, min(n, s + VAL_BATCH))
        x, y = source.batch(pos)
        x = adapt_images(x.to(device).float(), input_size)
        y = y.to(device)
        ok = _predict(model, x, autocast) == y
        clean[pos] = ok.cpu()
        alive = ok.clone()
        for attack in attacks:
            if not alive.any():
                break
            with torch.enable_grad():
                out = attack.run(model, x[alive], y[alive], noise=BatchNoise(gen, int(alive.sum())), early_stop=True,
                                 autocast=autocast)
            idx = torch.nonzero(alive, as_tuple=False).flatten()
            alive[idx[out.step >= 0]] = False
        robust[pos] = alive.cpu()
    y_all = source.y
    per_clean, per_rob = [], []
    for c in range(num_classes):
        m = y_all == c
        k = int(m.sum())
        per_clean.append(float(clean[m].float().mean()) if k else None)
        per_rob.append(float(robust[m].float().mean()) if k else None)
    present = [c for c in range(num_classes) if per_clean[c] is not None]
    return {
        "val_clean_acc": float(np.mean([per_clean[c] for c in present])),
        "val_robust_acc": float(np.mean([per_rob[c] for c in present])),
        "val_clean_acc_overall": float(clean.float().mean()),
        "val_robust_acc_overall": float(robust.float().mean()),
        "val_robust_per_class": per_rob,
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


def _mix(seed: int, epoch: int, stream: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + stream) % (2 ** 63 - 1)


def _window(lr: float) -> dict[str, Any]:
    """Accumulators of the steps since the last evaluation (one log entry)."""
    return {"loss": 0.0, "penalty": 0.0, "n": 0, "adv_correct": 0, "train_s": 0.0, "counts": None, "lr_start": lr}


def fine_tune(setup: TrainSetup, config: RepairConfig, *, out_dir: Path, resume: Optional[dict[str, Any]] = None,
              hooks: Optional[TrainHooks] = None, progress: bool = True) -> TrainResult:
    """Adversarially fine-tune ``setup.fm`` with ``setup.method`` for ``setup.budget``; keeps the selected checkpoint.

    Writes ``out_dir/checkpoint.pt`` at every evaluation and epoch end, and ``out_dir/training_log.json``.
    """
    hooks = hooks or TrainHooks()
    dev = setup.device
    pm = setup.fm.pixel_model
    net = pm.net
    ckpt_path = out_dir / "checkpoint.pt"
    log_path = out_dir / "training_log.json"
    bud = setup.budget
    B, nb, T = int(config.batch_size), bud.steps_per_epoch, bud.steps_total
    E = bud.epochs
    eval_at = set(bud.eval_steps)
    n_train = len(setup.train)
    if n_train < 2 or nb < 1:
        raise RepairError(f"the training split has {n_train} image(s); repair needs a training set "
                          "(lower --val-fraction or use more data)")
    dd = TrainDist(sync_bn=getattr(config, "sync_bn", True))  # [distributed] no-ops in a plain run
    dd.n_batches(n_train, B, lambda n, b: nb)  # [distributed] checks the global batch splits across the ranks
    attack = setup.method.training_attack(config.train_attack_spec())
    val_specs = config.validation_specs()
    autocast: Autocast = None
    if config.amp == "bf16":
        autocast = lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)  # noqa: E731
    prior = setup.prior_counts if setup.prior_counts is not None else setup.train_counts
    ctx = LossContext(
        log_n=torch.tensor(np.log(np.maximum(np.asarray(prior, dtype=np.float64), 1.0)),
                           dtype=torch.float32, device=dev),
        is_tail=setup.is_tail.to(dev), v=setup.v.to(dev), penalty=setup.penalty,
        tail_lambda=float(config.tail_lambda), margin=float(config.margin), trades_beta=float(config.trades_beta))
    params = [p for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    forward = dd.wrap(setup.fm if setup.penalty != "off" else pm, net, dev)  # [distributed] DDP (None: plain)
    progress = progress and dd.is_main
    C = setup.num_classes
    warnings: list[str] = []
    if len(setup.val) == 0:
        warnings.append("the validation split is empty (every class is too small to give up an image); "
                        "checkpoints are compared on the guard alone and the latest eligible one is kept")
        log.warning("%s", warnings[-1])

    def lr_of(it: int) -> float:
        return lr_at(it, T, config.lr, config.schedule, E)

    def val(step: int) -> dict[str, Any]:
        dd.sync_buffers(pm)  # [distributed] rank 0's BatchNorm statistics everywhere, rank 0's figures everywhere
        v = evaluate(pm, setup.val, val_specs, device=dev, input_size=setup.input_size, num_classes=C,
                     seed=_mix(config.seed, step, 4), autocast=autocast)
        if setup.guard is not None and len(setup.guard):
            g = evaluate(pm, setup.guard, val_specs, device=dev, input_size=setup.input_size, num_classes=C,
                         seed=_mix(config.seed, step, 5), autocast=autocast)
            v[GUARD_METRIC], v["guard_clean_acc"] = g["val_robust_acc"], g["val_clean_acc"]
        return dd.same(v)

    t_start = time.perf_counter()
    if resume is None:
        torch.manual_seed(config.seed)
        t0 = time.perf_counter()
        base = val(0)
        entry0 = {"epoch": 0, "step": 0, "loss": None, "lr": None, "time_s": time.perf_counter() - t0, **base,
                  "note": "the input model, before fine-tuning"}
        state: dict[str, Any] = {
            "next_epoch": 1, "pos": 0, "iteration": 0,
            "counts_prev": [int(c) for c in setup.train_counts],  # first epoch: n_i = N_i
            "accum": None, "window": _window(lr_of(0)), "gens": None, "log": [entry0], "best": None,
            "guard_floor": base.get(GUARD_METRIC), "elapsed_s": float(entry0["time_s"]),
        }
        log.info("step 0 (input model): validation clean %s, worst-case robust %s", _pct(base["val_clean_acc"]),
                 _pct(base["val_robust_acc"]))
    else:
        state = {k: resume[k] for k in STATE_KEYS}
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        restore_rng(resume["rng"], dev)
        if dd.active:  # [distributed] this rank's own streams
            mine = resume["ranks"][dd.rank]
            state["gens"] = mine["gens"]
            restore_rng(mine["rng"], dev)
        log.info("resuming at epoch %d, batch %d/%d (step %d of %d)", state["next_epoch"], state["pos"], nb,
                 state["iteration"], T)

    def checkpoint() -> Path:
        ranks = dd.per_rank({"gens": state["gens"], "rng": rng_state(dev)}) if dd.active else None
        if not dd.is_main:  # [distributed] rank 0 writes
            return ckpt_path
        extra = {"world_size": dd.world, "ranks": ranks} if dd.active else {}
        return save_checkpoint(ckpt_path, {**extra,
            "fingerprint": setup.fingerprint, "model": state_dict_cpu(net), "optimizer": opt.state_dict(),
            "schedule": {"kind": config.schedule, "iteration": state["iteration"], "total": T},
            "rng": rng_state(dev), **{k: state[k] for k in STATE_KEYS},
        })

    def evaluation(epoch: int, weights: Optional[torch.Tensor], save: bool) -> dict[str, Any]:
        """Validate at the current step, log, update the kept checkpoint, checkpoint (unless an epoch end follows)."""
        step, w = state["iteration"], state["window"]
        t0 = time.perf_counter()
        v = val(step)
        val_s = time.perf_counter() - t0
        entry = {
            "epoch": bud.epoch_of(step), "step": step, "loss": w["loss"] / max(1, w["n"]),
            "tail_penalty": w["penalty"] / max(1, w["n"]) if setup.penalty != "off" else None,
            "train_adv_acc": w["adv_correct"] / max(1, w["n"]), **v,
            "adv_pred_counts": list(w["counts"] or [0] * C),
            "rbl_weights": [float(x) for x in weights] if weights is not None else None,
            "lr": w["lr_start"], "lr_end": lr_of(step - 1),
            "train_s": w["train_s"], "val_s": val_s, "time_s": w["train_s"] + val_s,
            "images_per_s": w["n"] / max(w["train_s"], 1e-9),
            "eligible": eligible(v, state["guard_floor"]),
        }
        state["log"].append(entry)
        if better(entry, state["best"], state["guard_floor"]):
            state["best"] = {"epoch": epoch, "step": step, "score": v[METRIC], "eligible": entry["eligible"],
                             "model": state_dict_cpu(net)}
        state["elapsed_s"] = float(state["elapsed_s"]) + entry["time_s"]
        state["window"] = _window(lr_of(step))
        guard = f", tail guard {_pct(v.get(GUARD_METRIC))}" if GUARD_METRIC in v else ""
        log.info("step %d/%d (epoch %s): loss %.4f, validation clean %s worst-case robust %s%s, lr %.4g, %.1f s "
                 "(%.0f img/s)", step, T, entry["epoch"], entry["loss"], _pct(v["val_clean_acc"]),
                 _pct(v["val_robust_acc"]), guard, entry["lr"], entry["time_s"], entry["images_per_s"])
        if save:
            checkpoint()
        if dd.is_main:  # [distributed] rank 0 writes
            write_json(log_path, training_log(state, setup, config))
        return entry

    consistent = True
    with deferred_sigint() as stop:
        try:
            while state["next_epoch"] <= E:
                epoch = state["next_epoch"]
                n_this = min(nb, T - (epoch - 1) * nb)  # the last pass may stop early
                order = epoch_order(setup.train.y, setup.sampler,
                                    torch.Generator().manual_seed(_mix(config.seed, epoch, 1)))
                att_gen = torch.Generator(device=dev)
                aug_gen = torch.Generator()
                if state["pos"] == 0 and state["accum"] is None:
                    att_gen.manual_seed(_mix(config.seed, epoch, dd.stream(2)))
                    aug_gen.manual_seed(_mix(config.seed, epoch, dd.stream(3)))
                    state["accum"] = {"counts": [0] * C}
                    state["gens"] = {"attack": att_gen.get_state(), "augment": aug_gen.get_state()}
                else:
                    att_gen.set_state(state["gens"]["attack"])
                    aug_gen.set_state(state["gens"]["augment"])
                acc, win = state["accum"], state["window"]
                weights = rbl_weights(setup.train_counts, state["counts_prev"]) if setup.method.uses_rbl else None
                entry: Optional[dict[str, Any]] = None
                # one bar per epoch: only on a terminal (in a log file every update would be a line of its own)
                bar = tqdm(total=n_this, initial=state["pos"], desc=f"epoch {epoch}/{E}", unit="batch",
                           file=sys.stderr, disable=not progress or not sys.stderr.isatty(), dynamic_ncols=True,
                           leave=False)
                try:
                    for b in range(state["pos"], n_this):
                        if dd.stop(stop.requested):
                            raise KeyboardInterrupt
                        consistent = False
                        t0 = time.perf_counter()
                        pos = dd.local(order[b * B:(b + 1) * B])  # [distributed] this rank's part
                        x, y = setup.train.batch(pos)
                        x = augment(x, config.augment, aug_gen)
                        x = adapt_images(x.to(dev, non_blocking=True).float(), setup.input_size)
                        y = y.to(dev, non_blocking=True)
                        lr = lr_of(state["iteration"])
                        for g in opt.param_groups:
                            g["lr"] = lr
                        loss, pen, pred = train_step(setup.fm, attack, setup.method, ctx, x, y, opt, att_gen, autocast,
                                                     forward)
                        loss, pen, pred, y = dd.batch_outcome(loss, pen, pred, y)  # [distributed] the global batch
                        loss_v = float(loss)
                        if not math.isfinite(loss_v):
                            raise RepairError(f"the training loss became {loss_v} at epoch {epoch}, batch {b + 1}; "
                                              f"lower --lr (now {config.lr}); the last good checkpoint is {ckpt_path}")
                        k = int(y.shape[0])
                        win["loss"] += loss_v * k
                        win["penalty"] += float(pen) * k
                        win["n"] += k
                        win["adv_correct"] += int((pred == y).sum())
                        bc = torch.bincount(pred, minlength=C).cpu().tolist()
                        acc["counts"] = [a + int(c) for a, c in zip(acc["counts"], bc)]
                        win["counts"] = [a + int(c) for a, c in zip(win["counts"] or [0] * C, bc)]
                        dt = time.perf_counter() - t0
                        win["train_s"] += dt
                        state["iteration"] += 1
                        state["pos"] = b + 1
                        state["gens"] = {"attack": att_gen.get_state(), "augment": aug_gen.get_state()}
                        bar.update(1)
                        bar.set_postfix(loss=f"{win['loss'] / max(1, win['n']):.3f}", img_s=f"{k / max(dt, 1e-9):.0f}")
                        if state["iteration"] in eval_at:
                            entry = evaluation(epoch, weights, save=b + 1 < n_this)
                            win = state["window"]
                            consistent = True
                            if hooks.on_evaluation is not None:
                                hooks.on_evaluation(state["iteration"], entry)
                        consistent = True
                        if hooks.on_batch_end is not None:
                            hooks.on_batch_end(epoch, b + 1)
                finally:
                    bar.close()
                if dd.stop(stop.requested):
                    raise KeyboardInterrupt
                # end of the pass: the RBL counts of the next one, checkpoint
                state["counts_prev"] = list(acc["counts"])
                state["next_epoch"], state["pos"], state["accum"], state["gens"] = epoch + 1, 0, None, None
                checkpoint()
                if dd.is_main:
                    write_json(log_path, training_log(state, setup, config))
                if hooks.on_epoch_end is not None:
                    hooks.on_epoch_end(epoch, entry if entry is not None and entry["step"] == state["iteration"] else None)
        except KeyboardInterrupt as exc:
            if isinstance(exc, RepairInterrupted):
                raise
            saved: Optional[Path] = None
            if consistent:
                saved = checkpoint()
                where = f"epoch {state['next_epoch']}, batch {state['pos']}/{nb} (step {state['iteration']} of {T})"
            else:
                saved = ckpt_path if ckpt_path.exists() else None
                where = "the last checkpoint"
            hint = (f"checkpoint {saved}; continue with the same command plus --resume {out_dir}" if saved
                    else "no checkpoint yet; start again")
            raise RepairInterrupted(f"interrupted at {where}: {hint}", saved) from None
    dd.finish()
    best = state["best"]
    note = None
    if best is not None and not best["eligible"]:
        note = ("no checkpoint passed the tail guard; the best one on validation alone was kept")
        warnings.append(note)
        log.warning("%s", note)
    return TrainResult(best_epoch=int(best["epoch"]), best_step=int(best["step"]), best_state=best["model"],
                       log=list(state["log"]), seconds=float(state["elapsed_s"]),
                       session_seconds=time.perf_counter() - t_start, warnings=warnings, best_note=note)


STATE_KEYS = ("next_epoch", "pos", "iteration", "counts_prev", "accum", "window", "gens", "log", "best",
              "guard_floor", "elapsed_s")


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def selection_dict(state: dict[str, Any], setup: TrainSetup, note: Optional[str] = None) -> dict[str, Any]:
    """The ``selection`` block: rule, metric, chosen checkpoint and the validation composition."""
    best = state.get("best") or {}
    d = setup.plan.to_dict(chosen_epoch=best.get("epoch"), chosen_step=best.get("step"), note=note)
    d["guard_floor"] = state.get("guard_floor")
    return d


def training_log(state: dict[str, Any], setup: TrainSetup, config: RepairConfig,
                 note: Optional[str] = None) -> dict[str, Any]:
    """The JSON training log the report charts (``epochs``: one entry per evaluation) plus what produced it."""
    best = state.get("best") or {}
    return {
        "method": config.method,
        "tail_penalty": setup.penalty,
        "feature_source": setup.feature_source,
        "sampler": setup.sampler, "sampler_rule": setup.sampler_rule,
        "lr": config.lr, "schedule": config.schedule, "batch_size": config.batch_size,
        "budget": setup.budget.to_dict(),
        "selection": selection_dict(state, setup, note),
        "metrics_note": ("one entry per evaluation (step 0 = the input model); val_*_acc are means over the classes "
                         "with validation images, robust = clean-correct and unbroken by every attack of the "
                         "cascade; *_overall are plain means; guard_* are on the training images of the classes "
                         "missing from validation"),
        "train_counts_split": list(setup.train_counts),
        "n_train": len(setup.train), "n_val": len(setup.val),
        "best_epoch": best.get("epoch"), "best_step": best.get("step"), "best_val_robust_acc": best.get("score"),
        "epochs": list(state["log"]),
    }
