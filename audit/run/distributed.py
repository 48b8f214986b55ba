"""Running under ``torchrun``: the launcher's environment, one process group, shards, and agreement.

A plain ``python cli.py ...`` never touches ``torch.distributed``: :func:`current` is None
and every helper here degrades to "world size 1, rank 0". Under ``torchrun`` (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` in the environment, world size > 1) :func:`setup` joins the
process group: NCCL when the run uses GPUs, each rank on ``cuda:LOCAL_RANK``; gloo on CPU.

Status messages and the global progress counter go through the rendezvous key-value store
(no collective), so a rank that finishes its shard long before another never sits in a
collective that could time out; a rank that fails posts its failure there first, and the
others stop with :class:`PeerFailed` instead of waiting. Small Python objects (records,
figures) travel over a gloo group. A rank that dies outright (killed, segfault) is handled
by ``torchrun`` itself, which stops the other ranks.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

import torch

from ..errors import ConfigError, TailAuditError

log = logging.getLogger(__name__)

T = TypeVar("T")
TIMEOUT_ENV = "TAILAUDIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
_POLL_S = 0.05


class PeerFailed(TailAuditError):
    """Another rank failed; this one stops too (exit code 1) and writes nothing."""

    exit_code = 1

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank} failed ({message}); all ranks stopped and nothing was written")
        self.rank = rank


@dataclass
class Dist:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    store: Any
    objects: Any  # the gloo group for Python objects and small reductions (None = the default group)
    phase: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def next_key(self, what: str) -> str:
        """A store key unique to the next synchronisation point (every rank passes the same ones in order)."""
        self.phase += 1
        return f"tailaudit/{self.phase}/{what}"


_CTX: Optional[Dist] = None


def launched() -> bool:
    """True when a launcher (torchrun) started this process as one rank of several."""
    try:
        return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def launcher_rank() -> int:
    """The rank the launcher gave this process (0 when not launched), usable before :func:`setup`."""
    try:
        return int(os.environ.get("RANK", "0")) if launched() else 0
    except ValueError:
        return 0


def current() -> Optional[Dist]:
    """The joined process group, or None in a plain one-process run."""
    return _CTX


def rank() -> int:
    return _CTX.rank if _CTX else 0


def world_size() -> int:
    return _CTX.world_size if _CTX else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the process that prints and writes outputs."""
    return _CTX is None or _CTX.rank == 0


def _timeout() -> timedelta:
    try:
        return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {os.environ[TIMEOUT_ENV]!r}") from None


def setup(device: str = "auto") -> Optional[Dist]:
    """Join the process group when launched by torchrun (idempotent); None in a plain run.

    ``device`` is the ``--device`` flag: ``auto``/``cuda`` use NCCL with this rank on
    ``cuda:LOCAL_RANK`` when torch sees GPUs, ``cpu`` (or no GPU) uses gloo.
    """
    global _CTX
    if _CTX is not None or not launched():
        return _CTX
    import torch.distributed as dist

    rk, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    name = str(device)
    if name.startswith("cuda:"):
        raise ConfigError(f"--device {name}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda or auto")
    use_cuda = name in ("auto", "cuda") and torch.cuda.is_available()
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for a GPU but torch sees none; use --device cpu or auto")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) visible on this node; "
                              "use --nproc-per-node at most the number of GPUs")
        torch.cuda.set_device(local)
    backend = "nccl" if use_cuda else "gloo"
    timeout = _timeout()
    store, _, _ = next(iter(dist.rendezvous("env://", timeout=timeout)))
    store.set_timeout(timeout)
    dist.init_process_group(backend, store=store, rank=rk, world_size=world, timeout=timeout)
    objects = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    # our keys, apart from a previous attempt's when torchrun restarts the ranks (--max-restarts)
    ours = dist.PrefixStore(f"restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    _CTX = Dist(rk, world, local, backend, ours, objects)
    log.debug("rank %d/%d joined (%s, local rank %d)", rk, world, backend, local)
    return _CTX


def shutdown() -> None:
    """Leave the process group (end of the command); a no-op in a plain run."""
    global _CTX
    if _CTX is None:
        return
    import torch.distributed as dist

    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    _CTX = None


def rank_device() -> torch.device:
    """This rank's device under torchrun: ``cuda:LOCAL_RANK`` with NCCL, else the CPU."""
    if _CTX is not None and _CTX.backend == "nccl":
        return torch.device("cuda", _CTX.local_rank)
    return torch.device("cpu")


def describe() -> dict[str, Any]:
    """``environment`` fields of results.json: the world size (1 in a plain run) and the backend."""
    if _CTX is None:
        return {"world_size": 1, "backend": None}
    return {"world_size": _CTX.world_size, "backend": _CTX.backend}


# --------------------------------------------------------------------------- shards


def shard_bounds(n: int, rank_: Optional[int] = None, world: Optional[int] = None) -> tuple[int, int]:
    """Contiguous block ``[lo, hi)`` of ``n`` items for a rank; the first ``n % world`` ranks get one more."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(int(n), w)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


# --------------------------------------------------------------------------- agreement


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


_FAILED = "tailaudit/failed"


def post_failure(exc: BaseException) -> None:
    """Tell the other ranks this one failed (the first failure is kept; best effort: the store may be gone)."""
    if _CTX is None or isinstance(exc, PeerFailed):
        return
    with contextlib.suppress(Exception):
        if int(_CTX.store.add(_FAILED + "/count", 1)) == 1:
            _CTX.store.set(_FAILED, f"{_CTX.rank} {_first_line(exc)}")


def peer_failure() -> Optional[PeerFailed]:
    """The failure another rank posted, if any."""
    if _CTX is None or not _CTX.store.check([_FAILED]):
        return None
    r, _, msg = _CTX.store.get(_FAILED).decode("utf-8", "replace").partition(" ")
    return PeerFailed(int(r), msg)


def reports_failure(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: an exception escaping ``fn`` on one rank is posted, so waiting ranks stop too."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            post_failure(exc)
            raise

    return wrapper


def wait_for_peers(what: str, on_wait: Optional[Callable[[], None]] = None) -> None:
    """Wait until every rank reached this point; raise PeerFailed as soon as one posted a failure.

    Every rank must pass the same sequence of ``wait_for_peers`` calls. Waiting polls the store
    (no collective), so it has no timeout: a rank that dies is stopped by torchrun, and one that
    fails posts it (:func:`reports_failure`).
    """
    if _CTX is None:
        return
    key = _CTX.next_key(what)
    store = _CTX.store
    store.add(key, 1)
    while True:
        failed = peer_failure()
        if failed is not None:
            raise failed
        if int(store.add(key, 0)) >= _CTX.world_size:
            return
        if on_wait is not None:
            on_wait()
        time.sleep(_POLL_S)


def gather_to_main(obj: T) -> Optional[list[T]]:
    """Every rank's ``obj`` in rank order on rank 0 (None elsewhere); ``[obj]`` in a plain run."""
    if _CTX is None:
        return [obj]
    import torch.distributed as dist

    out: Optional[list] = [None] * _CTX.world_size if _CTX.is_main else None
    dist.gather_object(obj, out, dst=0, group=_CTX.objects)
    return out


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` in rank order, on every rank."""
    if _CTX is None:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * _CTX.world_size
    dist.all_gather_object(out, obj, group=_CTX.objects)
    return out


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    if _CTX is None:
        return obj
    import torch.distributed as dist

    box = [obj if _CTX.is_main else None]
    dist.broadcast_object_list(box, src=0, group=_CTX.objects)
    return box[0]


def sum_across(values: Iterable[float]) -> list[float]:
    """Element-wise sum over ranks (float64, through gloo)."""
    vals = [float(v) for v in values]
    if _CTX is None:
        return vals
    import torch.distributed as dist

    t = torch.tensor(vals, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=_CTX.objects)
    return t.tolist()


def any_across(flag: bool) -> bool:
    """True on every rank when it is true on any rank (e.g. a Ctrl-C seen by one of them)."""
    if _CTX is None:
        return bool(flag)
    return sum_across([1.0 if flag else 0.0])[0] > 0


# --------------------------------------------------------------------------- progress


class GlobalProgress:
    """One progress bar on rank 0 for work done by all ranks: each adds to a counter in the store.

    ``add`` costs one store round trip per call (per batch); rank 0 redraws at most a few
    times a second, also while it waits for slower ranks.
    """

    def __init__(self, total: int, *, enabled: bool, desc: str = "audit", unit: str = "pt") -> None:
        from tqdm import tqdm

        self.total = int(total)
        self.key = _CTX.next_key("progress") if _CTX else None
        self._last = 0.0
        self.bar = tqdm(total=self.total, unit=unit, file=sys.stderr, desc=desc, dynamic_ncols=True, leave=False,
                        disable=not (enabled and is_main()))

    def add(self, n: int) -> None:
        if self.key is None:
            self.bar.update(n)
            return
        value = int(_CTX.store.add(self.key, int(n)))  # type: ignore[union-attr]
        self._show(value)

    def refresh(self) -> None:
        """Redraw with the latest global count (rank 0, while waiting)."""
        if self.key is not None and not self.bar.disable:
            self._show(int(_CTX.store.add(self.key, 0)))  # type: ignore[union-attr]

    def _show(self, value: int) -> None:
        now = time.monotonic()
        if self.bar.disable or (now - self._last < 0.25 and value < self.total):
            return
        self._last = now
        self.bar.n = min(value, self.total)
        self.bar.refresh()

    def close(self) -> None:
        """Show the final global count (every rank has added its points by now), then close."""
        if self.key is not None and not self.bar.disable:
            self.bar.n = min(int(_CTX.store.add(self.key, 0)), self.total)  # type: ignore[union-attr]
            self.bar.refresh()
        self.bar.close()


def counted(batches: Iterable[tuple], add: Callable[[int], None]) -> Iterator[tuple]:
    """Yield ``batches`` unchanged, calling ``add(len)`` for each batch once the consumer asks for the next."""
    pending = 0
    for item in batches:
        if pending:
            add(pending)
        pending = len(item[1])
        yield item
    if pending:
        add(pending)
