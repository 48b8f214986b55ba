"""Atomic training checkpoints of tensors and plain data, and the fingerprint that guards --resume.

A checkpoint holds the model (current and best epoch), the optimiser, the schedule position,
RNG states (as tensors), the per-class adversarial prediction counts, the epoch accumulators
and the training log. It is written through a temporary file and renamed, so a crash or a
full disk leaves the previous checkpoint intact; it is read with ``weights_only=True``
(never unpickling code).
"""
from __future__ import annotations

import errno
import hashlib
import logging
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np
import torch

from audit.errors import ModelLoadError
from audit.models import check_archive_size
from audit.phases import PARTIAL, write_atomic

from .errors import RepairError
from .resume_state import check_structure

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "tailaudit-repair-checkpoint"
VERSION = 3  # 2: typed training state under "state", the input model as the first kept candidate; 3: world_size always
READS = (2, 3)  # a version-2 file wrote world_size only under torchrun: absent there means one process
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _serialise(obj: Mapping[str, Any], fh: BinaryIO) -> None:
    """Write ``obj`` to an open file (a seam for the disk-full test)."""
    torch.save(dict(obj), fh)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` to ``path``; a full disk raises RepairError and keeps the old file."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    try:
        write_atomic(path, lambda fh: _serialise(payload, fh))
    except OSError as exc:
        resume = f"--resume {path.parent}"
        kept = "the previous checkpoint is intact" if path.exists() else "no earlier checkpoint exists"
        if is_disk_full(exc):
            raise RepairError(f"disk full while writing the checkpoint {path} ({exc.strerror}); {kept}: free "
                              f"some space and continue with {resume}") from exc
        raise RepairError(f"cannot write the checkpoint {path} ({exc.strerror or exc}); {kept}; "
                          f"fix the folder and continue with {resume}") from exc
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    path = Path(path)
    if path.is_dir():  # a run that failed or was interrupted left its checkpoint in PARTIAL (audit/run/outputs.py)
        partial = path / PARTIAL / CHECKPOINT_NAME
        path = partial if partial.is_file() else path / CHECKPOINT_NAME
    if not path.is_file():
        raise RepairError(f"--resume: no checkpoint at {path}; pass the --out folder of the run to continue")
    try:
        check_archive_size(path)  # declared sizes, before torch.load unpacks anything
    except ModelLoadError as exc:
        raise RepairError(f"--resume: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise RepairError(f"--resume: {path} holds pickled Python objects, which tailaudit never unpickles; "
                              "it is not a checkpoint tailaudit wrote: start afresh with another --out") from None
        first = (text.strip().splitlines() or [type(exc).__name__])[0]
        raise RepairError(f"--resume: {path} is not a readable repair checkpoint ({first[:160]}); "
                          "start afresh with another --out") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RepairError(f"--resume: {path} is not a tailaudit repair checkpoint; start afresh with another --out")
    if state.get("version") not in READS:
        raise RepairError(f"--resume: {path} has checkpoint version {str(state.get('version'))[:20]}, this tailaudit "
                          f"reads versions {', '.join(map(str, READS))}; start afresh with another --out")
    if state["version"] == 2 and "world_size" not in state and "ranks" not in state:
        state["world_size"] = 1  # the one migration: version 2 left it out of single-process runs
    check_structure(state, path)  # every key, type and size (resume_state.py) before anything uses it
    return state


# --------------------------------------------------------------------------- fingerprint


def labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()


def fingerprint(model: Mapping[str, Any], dataset: Mapping[str, Any], training: Mapping[str, Any]) -> dict[str, Any]:
    """The identity of a run: model (file sha256), dataset (classes, counts, split) and training settings."""
    return {"model": dict(model), "dataset": dict(dataset), "training": dict(training)}


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] + "…" if len(s) > 16 and all(c in "0123456789abcdef" for c in s) else s


def check_fingerprint(saved: Mapping[str, Any], current: Mapping[str, Any], folder: Path) -> None:
    """Raise RepairError naming what differs between the checkpoint's run and this one."""
    sm, cm = saved.get("model", {}), current.get("model", {})
    if sm.get("sha256") != cm.get("sha256") or sm.get("format") != cm.get("format") or sm.get("arch") != cm.get("arch"):
        raise RepairError(
            f"--resume {folder} was made from a different model ({sm.get('spec')}, sha256 {_short(sm.get('sha256'))}) "
            f"than {cm.get('spec')} (sha256 {_short(cm.get('sha256'))}); resume with the same model, or start "
            "afresh with another --out")
    sd, cd = saved.get("dataset", {}), current.get("dataset", {})
    diffs = [k for k in sorted(set(sd) | set(cd)) if sd.get(k) != cd.get(k)]
    if diffs:
        raise RepairError(
            f"--resume {folder} was made on a different dataset ({sd.get('name')}, differs in "
            f"{', '.join(diffs)}) than {cd.get('name')}; resume with the same --dataset/--imbalance/--data-root, "
            "or start afresh with another --out")
    st, ct = saved.get("training", {}), current.get("training", {})
    tdiffs = [f"{k} {st.get(k)!r} vs {ct.get(k)!r}" for k in sorted(set(st) | set(ct)) if st.get(k) != ct.get(k)]
    if tdiffs:
        raise RepairError(f"--resume {folder} was trained with other settings ({'; '.join(tdiffs)}); resume with "
                          "the same training flags, or start afresh with another --out")


# --------------------------------------------------------------------------- RNG


def rng_state(device: torch.device) -> dict[str, Any]:
    """Global torch RNG states as tensors (CPU, and every CUDA device when training on one)."""
    d: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda" and torch.cuda.is_available():
        d["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return d


def restore_rng(d: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(d["torch"])
    if device.type == "cuda" and torch.cuda.is_available() and d.get("cuda"):
        torch.cuda.set_rng_state_all(list(d["cuda"]))


def state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

