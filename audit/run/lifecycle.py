"""One run lifecycle for audits and repairs (docs/architecture.md).

Both commands start the same way (seed, threads, device, torchrun setup), gate the output folder
the same way (rank 0 creates and probes it before any loading; the other ranks write nothing),
stamp their records the same way (UTC), and treat the report renderer the same way: the renderer
is handed in by the application layer (``tailaudit``), so nothing below it imports ``reports``;
an unwritable folder is an error that keeps nothing, any other renderer failure is a warning that
keeps the results (render them later with ``tailaudit report``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch

from . import distributed
from ..errors import ConfigError
from .outputs import AUDIT_FILES, RunFiles, folder_lock, recover_commit, refuse_foreign_files, with_reports
from ..contract.files import OutputError, out_dir_guard, output_error

log = logging.getLogger(__name__)


class Renderer(Protocol):
    """``reports.render_report``'s shape: (results.json, folder, formats=..., **options) -> {format: path}."""

    def __call__(self, results: Path, out_dir: Path, *, formats: Sequence[str], **options: Any) -> dict[str, Path]:
        ...


def start(device: str, threads: Optional[int], seed: int) -> torch.device:
    """The first phase of every run: torchrun setup, thread pools, the global seed, the device."""
    distributed.setup(device)  # [distributed] under torchrun: process group, one device per rank
    apply_threads(threads)
    torch.manual_seed(seed)
    return resolve_device(device)


LOCAL_SETTINGS = ("quiet", "device", "threads", "workers")  # may differ between ranks (each its own machine)


def check_ranks_agree(settings: Mapping[str, Any], what: str = "settings") -> None:
    """[distributed] Every rank must run rank 0's ``settings`` (flags, or model and data digests).

    A rank that differs raises ConfigError naming the first differences; every other rank stops
    at the agreement point, so nothing is computed or written from ranks that ran different audits.
    """
    if distributed.current() is None:
        return
    mine = _shared(settings)
    main = distributed.broadcast_from_main(mine)
    diff = [k for k in sorted(set(main) | set(mine)) if main.get(k) != mine.get(k)]
    if diff:
        shown = "; ".join(f"{k} {mine.get(k)!r} here, {main.get(k)!r} on rank 0" for k in diff[:3])
        raise ConfigError(f"this rank's {what} differ from rank 0's ({shown}); launch every rank with the same "
                          "command line and files")
    distributed.wait_for_peers(f"agree-{what}")


def _shared(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` without the per-machine ones, at any depth (a repair's audit settings too)."""
    return {k: _shared(v) if isinstance(v, Mapping) else v for k, v in settings.items() if k not in LOCAL_SETTINGS}


@contextlib.contextmanager
def output_folder(path: Path | str, writes: Sequence[str] = with_reports(AUDIT_FILES, ("html", "pdf"))
                  ) -> Iterator[Optional[Path]]:
    """Rank 0 creates and probes ``path`` before any loading, holds its lock for the run (one run per folder),
    refuses when the run would replace ``writes`` that tailaudit did not write, and yields it; other ranks
    yield None."""
    if not distributed.is_main():  # [distributed] only rank 0 creates, probes and writes the folder
        yield None
        return
    with out_dir_guard(path) as out, folder_lock(out):
        recover_commit(out)  # a run killed while publishing its files: the earlier set is put back first
        refuse_foreign_files(out, writes)
        yield out


def created_now() -> str:
    """The time stamp every record of a run carries: UTC, seconds, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment(device: Any) -> dict[str, Any]:
    """Versions and device the numbers came from (results.json and repair.json ``environment``)."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if str(device).startswith("cuda")
                        else platform.processor() or "cpu"),
        "argv": sys.argv,
    }
    for mod in ("torchvision", "timm", "onnx", "onnxruntime", "onnx2torch"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # optional at run time
            env[mod] = None
    return env


def run_stamp() -> str:
    """The default folder suffix (local wall-clock time, as users read folder names)."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def render_into(files: RunFiles, render: Optional[Renderer], results: Path, formats: Sequence[str],
                **options: Any) -> dict[str, Path]:
    """Render ``formats`` into the run's staging folder and adopt them into its file set.

    The one renderer error policy: an OSError (full disk, permissions) fails the run and keeps
    nothing; any other renderer failure is logged and the results are kept without the report.
    """
    if not formats:
        return {}
    if render is None:
        log.warning("no report renderer was given (the engine-level API writes results only); render the "
                    "reports with `tailaudit report %s` or call tailaudit.run_audit / tailaudit.run_repair", results)
        return {}
    try:
        staged = render(results, files.staging, formats=list(formats), **options)
    except OSError as exc:
        raise output_error(exc, files.out_dir) from None
    except OutputError as exc:  # the renderer's own line for an OSError: the same policy, said once
        raise OutputError(str(exc).replace(str(files.staging), str(files.out_dir))) from None
    except Exception as exc:  # noqa: BLE001 - a renderer failure must not throw away a finished run
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        shown = files.out_dir / results.relative_to(files.staging) if results.is_relative_to(files.staging) else results
        log.warning("the report could not be rendered (%s); the results are kept, render them later with "
                    "`tailaudit report %s`", first, shown)
        return {}
    for p in staged.values():
        files.adopt(p.name)
    return {k: files.out_dir / p.name for k, p in staged.items()}


def default_out_dir(model: str, dataset: str, kind: str = "") -> Path:
    """runs/<model>-<dataset>[-<kind>]-<time> from the names a config gives (``AuditConfig.model_name``)."""
    stem = Path(model).stem if not model.startswith("timm:") else model[5:]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "model"
    ds = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset)[:60] or "data"
    return Path("runs") / "-".join([stem, ds] + ([kind] if kind else []) + [run_stamp()])


def resolve_device(name: str) -> torch.device:
    """``auto`` = the GPU when torch sees one; asking for CUDA without one is an error."""
    if distributed.current() is not None:  # [distributed] under torchrun: cuda:LOCAL_RANK or the CPU
        return distributed.rank_device()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for a GPU but torch sees none; use --device cpu or auto")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> Optional[int]:
    """The intra-op thread count when ``--threads`` is not given: half the usable cores, at least 1.

    torch's own default (one thread per core) oversubscribes a machine whose cores are also busy
    with other work: on this project's 2-core machine, the demo's fine-tuning ran 2-10x slower
    with 2 threads than with 1 under load (README, "Threads"). Half the cores is deterministic
    (results do not depend on the load at start) and leaves room for onnxruntime and data
    loading. None when ``OMP_NUM_THREADS`` is set (torchrun sets it; the user's choice wins).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, usable_cores() // 2)


def apply_threads(threads: Optional[int]) -> None:
    """``--threads N``: torch's intra-op and (when still possible) inter-op thread pools; else the default rule."""
    if threads is None:
        auto = default_threads()
        if auto is not None:
            torch.set_num_threads(auto)
        return
    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(int(threads))
    except RuntimeError:  # only settable before the first parallel work of the process
        if torch.get_num_interop_threads() != int(threads):
            log.debug("inter-op threads stay at %d (already in use)", torch.get_num_interop_threads())


