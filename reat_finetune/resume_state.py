"""The typed resume state: what a checkpoint must hold, checked as a whole before a resumed run writes anything.

A checkpoint is read with ``weights_only=True`` (tensors and plain data, never code), but that says
nothing about whether its fields are what :mod:`.train` will use: a fingerprint replaced by a
list, ``world_size`` the string ``"two"``, an RNG state of the wrong size or a missing key would
otherwise surface half-way through the run as a traceback (after a before-audit was written).
:func:`check_structure` checks every field's type against :data:`SPEC` when the file is read;
:func:`check_fits` then checks the shapes against this model and run (weights, optimizer state,
class counts, positions in the budget) by restoring the state into throwaway copies, before any
audit. Every mismatch is one :class:`RepairError` line naming the field.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from .errors import RepairError

NUM = (int, float)


@dataclass(frozen=True)
class T:
    """A tensor field: ``dtype`` and element count when they are fixed (an RNG state is 5056 bytes)."""

    dtype: Optional[torch.dtype] = None
    numel: Optional[int] = None


@dataclass(frozen=True)
class Opt:
    """``spec`` or None."""

    spec: Any


@dataclass(frozen=True)
class ListOf:
    spec: Any


@dataclass(frozen=True)
class MapOf:
    """A dict whose keys are ``key`` (str or int) and values ``spec``."""

    key: type
    spec: Any


@dataclass(frozen=True)
class Obj:
    """A dict with ``required`` keys (each with its spec) and ``optional`` ones; other keys are allowed."""

    required: Mapping[str, Any]
    optional: Mapping[str, Any] = None  # type: ignore[assignment]


ANY = object()
CPU_RNG_BYTES = int(torch.get_rng_state().numel())
RNG = Obj({"torch": T(torch.uint8, CPU_RNG_BYTES)}, {"cuda": ListOf(T(torch.uint8))})
GENS = Opt(Obj({"attack": T(torch.uint8), "augment": T(torch.uint8, CPU_RNG_BYTES)}))
WEIGHTS = MapOf(str, T())
STATE = Obj({
    "counts_prev": ListOf(int),
    "window": Obj({"lr_start": NUM, "loss": NUM, "penalty": NUM, "n": int, "adv_correct": int, "train_s": NUM,
                   "counts": Opt(ListOf(int))}),
    "next_epoch": int, "pos": int, "iteration": int, "accum_counts": Opt(ListOf(int)), "gens": GENS,
    "log": ListOf(MapOf(str, ANY)),
    "kept": Opt(Obj({"epoch": int, "step": int, "score": Opt(NUM), "model": WEIGHTS})),
    "floors": Opt(Obj({"clean": Opt(NUM), "chance": Opt(NUM), "guard": Opt(NUM), "min_clean_kept": NUM})),
    "elapsed_s": NUM,
    "lr_base": NUM, "lr_factor": NUM, "divergences": ListOf(MapOf(str, ANY)), "lr_search": Opt(MapOf(str, ANY)),
})
SPEC = Obj({
    "format": str, "version": int, "world_size": int,
    "fingerprint": Obj({"model": MapOf(str, ANY), "dataset": MapOf(str, ANY), "training": MapOf(str, ANY)}),
    "model": WEIGHTS,
    "optimizer": Obj({"state": MapOf(int, MapOf(str, (T(), *NUM))),
                      "param_groups": ListOf(Obj({"params": ListOf(int)}))}),
    "schedule": Obj({"kind": str, "iteration": int, "total": int}),
    "rng": RNG,
    "state": STATE,
}, {"guide": WEIGHTS, "ranks": ListOf(Obj({"gens": GENS, "rng": RNG}))})


def _kind(v: Any) -> str:
    return "a tensor" if isinstance(v, torch.Tensor) else type(v).__name__


def _check(v: Any, spec: Any, where: str) -> Optional[str]:
    """What is wrong with ``v`` at ``where`` (None when it fits ``spec``); stops at the first problem."""
    if spec is ANY:
        return None
    if isinstance(spec, Opt):
        return None if v is None else _check(v, spec.spec, where)
    if isinstance(spec, T):
        if not isinstance(v, torch.Tensor):
            return f"{where} should be a tensor, found {_kind(v)}"
        if spec.dtype is not None and v.dtype != spec.dtype:
            return f"{where} should be a {spec.dtype} tensor, found {v.dtype}"
        if spec.numel is not None and v.numel() != spec.numel:
            return f"{where} should hold {spec.numel} values, found {v.numel()}"
        return None
    if isinstance(spec, tuple):  # alternatives
        problems = [_check(v, s, where) for s in spec]
        return None if None in problems else f"{where} should be a tensor or a number, found {_kind(v)}"
    if isinstance(spec, type):
        ok = isinstance(v, spec) and not (isinstance(v, bool) and spec is not bool)
        return None if ok else f"{where} should be {'an' if spec is int else 'a'} {spec.__name__}, found {_kind(v)}"
    if isinstance(spec, ListOf):
        if not isinstance(v, (list, tuple)):
            return f"{where} should be a list, found {_kind(v)}"
        return next((p for i, x in enumerate(v) if (p := _check(x, spec.spec, f"{where}[{i}]"))), None)
    if not isinstance(v, dict):
        return f"{where} should be a mapping, found {_kind(v)}"
    if isinstance(spec, MapOf):
        for k, x in v.items():
            if not isinstance(k, spec.key) or isinstance(k, bool):
                return f"{where} has a key of type {_kind(k)}, expected {spec.key.__name__}"
            if (p := _check(x, spec.spec, f"{where}[{k!r}]" if isinstance(k, int) else f"{where}.{k}")):
                return p
        return None
    missing = [k for k in spec.required if k not in v]
    if missing:
        return f"{where} lacks {', '.join(missing)}"
    fields = {**spec.required, **{k: s for k, s in (spec.optional or {}).items() if k in v}}
    return next((p for k, s in fields.items() if (p := _check(v[k], s, f"{where}.{k}"))), None)


def damaged(path: Path | str, what: str) -> RepairError:
    """The one line every resume-state mismatch becomes."""
    return RepairError(f"--resume: the checkpoint {path} does not fit this run ({what[:200]}); it was changed or "
                       "is from another run or tailaudit version: start afresh with another --out")


def check_structure(state: Mapping[str, Any], path: Path | str) -> None:
    """RepairError unless ``state`` has every key of :data:`SPEC` with the right types and sizes."""
    problem = _check(state, SPEC, "checkpoint")
    if problem:
        raise damaged(path, problem)
    st = state["state"]
    for name in ("next_epoch", "pos", "iteration"):
        if st[name] < (1 if name == "next_epoch" else 0):
            raise damaged(path, f"checkpoint.state.{name} is {st[name]}")
    if state["world_size"] < 1:
        raise damaged(path, f"checkpoint.world_size is {state['world_size']}")
    if "ranks" in state and len(state["ranks"]) != state["world_size"]:
        raise damaged(path, f"checkpoint.ranks has {len(state['ranks'])} entries for world size {state['world_size']}")


@dataclass
class RunShape:
    """What this run expects of a checkpoint: classes, budget, and the training model built as the trainer builds it."""

    num_classes: int
    steps_total: int
    steps_per_epoch: int
    epochs: int
    build: Callable[[], tuple[torch.nn.Module, Optional[torch.nn.Module], torch.optim.Optimizer]]


def check_fits(state: Mapping[str, Any], run: RunShape, path: Path | str) -> None:
    """RepairError unless ``state`` (structure already checked) fits this model and run, by restoring it into
    throwaway copies of the training model, guide and optimizer (nothing of the real run changes)."""
    st, C = state["state"], run.num_classes
    for name in ("counts_prev", "accum_counts"):
        if st[name] is not None and len(st[name]) != C:
            raise damaged(path, f"checkpoint.state.{name} has {len(st[name])} classes, this run {C}")
    if state["schedule"]["total"] != run.steps_total or st["iteration"] > run.steps_total:
        raise damaged(path, f"checkpoint.schedule is at step {st['iteration']} of {state['schedule']['total']}, "
                            f"this run has {run.steps_total} steps")
    if st["next_epoch"] > run.epochs + 1 or st["pos"] > run.steps_per_epoch:
        raise damaged(path, f"checkpoint.state is at epoch {st['next_epoch']}, batch {st['pos']}, beyond this run's "
                            f"{run.epochs} epoch(s) of {run.steps_per_epoch} batches")
    net, guide, opt = run.build()
    _load(net, state["model"], "checkpoint.model", path)
    if st["kept"] is not None:
        _load(net, st["kept"]["model"], "checkpoint.state.kept.model", path)
    if guide is not None:
        if "guide" not in state:
            raise damaged(path, "checkpoint lacks guide, which this method trains")
        _load(guide, state["guide"], "checkpoint.guide", path)
    _check_optimizer(opt, state["optimizer"], path)


def _load(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], where: str, path: Path | str) -> None:
    expected = module.state_dict()
    if set(weights) != set(expected):
        extra, missing = sorted(set(weights) - set(expected)), sorted(set(expected) - set(weights))
        shown = (f"lacks {', '.join(missing[:3])}" if missing else f"has unknown {', '.join(extra[:3])}")
        raise damaged(path, f"{where} {shown}")
    for k, v in expected.items():
        if tuple(weights[k].shape) != tuple(v.shape) or weights[k].is_floating_point() != v.is_floating_point():
            raise damaged(path, f"{where}.{k} has shape {tuple(weights[k].shape)} ({weights[k].dtype}), this model "
                                f"{tuple(v.shape)} ({v.dtype})")


def _check_optimizer(opt: torch.optim.Optimizer, saved: Mapping[str, Any], path: Path | str) -> None:
    groups = opt.param_groups
    sg = saved["param_groups"]
    if len(sg) != len(groups) or any(len(a["params"]) != len(b["params"]) for a, b in zip(sg, groups)):
        raise damaged(path, f"checkpoint.optimizer has {[len(g['params']) for g in sg]} parameters per group, this "
                            f"run trains {[len(g['params']) for g in groups]}")
    params = [p for g in groups for p in g["params"]]
    ids = [i for g in sg for i in g["params"]]
    for g in sg:
        for key in ("lr", "momentum", "weight_decay"):
            if key in g and (not isinstance(g[key], NUM) or isinstance(g[key], bool)):
                raise damaged(path, f"checkpoint.optimizer.param_groups.{key} should be a number, "
                                    f"found {_kind(g[key])}")
    for pid, entry in saved["state"].items():
        if pid not in ids:
            raise damaged(path, f"checkpoint.optimizer.state has parameter {pid}, which no group lists")
        p = params[ids.index(pid)]
        for name, v in entry.items():
            if isinstance(v, torch.Tensor) and v.numel() > 1 and tuple(v.shape) != tuple(p.shape):
                raise damaged(path, f"checkpoint.optimizer.state[{pid}].{name} has shape {tuple(v.shape)}, its "
                                    f"parameter {tuple(p.shape)}")
            if isinstance(v, torch.Tensor) and v.numel() > 1 and not v.is_floating_point():
                raise damaged(path, f"checkpoint.optimizer.state[{pid}].{name} should be a float tensor, "
                                    f"found {v.dtype}")
    try:
        copy.deepcopy(opt).load_state_dict(saved)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise damaged(path, f"checkpoint.optimizer: {first}") from None
