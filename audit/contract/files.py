"""Writing tailaudit's files: the output folder (created and probed, its errors in one line), atomic replacement,
the JSON text every file uses (NaN as null, numpy values converted) and the compact form of large confusion
matrices. Torch-free: the reports write through it too."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import ResultsError, TailAuditError


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _clean_nan(o: Any) -> Any:
    """JSON has no NaN: store it as null."""
    if isinstance(o, float) and o != o:
        return None
    if isinstance(o, dict):
        return {k: _clean_nan(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_nan(v) for v in o]
    return o


def null_infinities(node: Any, path: str = "$") -> list[str]:
    """Replace every infinite float inside dicts/lists of ``node`` by None, in place; the JSON paths replaced.

    NaN already means "no figure" (an empty class) and is written as null without comment; an
    infinity is a figure that overflowed, which the caller reports as a warning.
    """
    found: list[str] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            node[key] = None
            found.append(where)
        elif isinstance(value, (dict, list)):
            found += null_infinities(value, where)
    return found


# -- confusion matrices that scale with the classes ---------------------------------------------------------

DENSE_CLASSES_MAX = 100  # up to this many classes results.json keeps dense C x C matrices, pretty-printed;
# above it the matrices are sparse ({"classes": C, "entries": [[true, pred, count], ...]}, non-zero cells only)
# and the text compact, so the file grows with the points and classes, not with C squared


def sparse_counts(matrix: Any) -> dict[str, Any]:
    """A C x C count matrix as its non-zero cells: ``{"classes": C, "entries": [[true, pred, count], ...]}``."""
    m = np.asarray(matrix, dtype=np.int64)
    rows, cols = np.nonzero(m)
    return {"classes": int(m.shape[0]), "entries": np.stack([rows, cols, m[rows, cols]], 1).tolist()}


def dense_counts(sparse: Any) -> list[list[int]]:
    """The C x C matrix of a :func:`sparse_counts` object (already checked by the loader)."""
    c = int(sparse["classes"])
    m = np.zeros((c, c), dtype=np.int64)
    cells = np.asarray(sparse["entries"], dtype=np.int64).reshape(-1, 3)
    np.add.at(m, (cells[:, 0], cells[:, 1]), cells[:, 2])
    return m.tolist()


def compact_confusions(document: dict[str, Any]) -> bool:
    """In place: the confusion matrices of a results document with more than :data:`DENSE_CLASSES_MAX` classes
    as sparse objects (``summary.confusion.sparse`` for ``.matrix``, ``summary.clean_confusion`` an object).
    True when the document is a large one (written compact)."""
    summary = document.get("summary") or {}
    if len(document.get("per_class") or ()) <= DENSE_CLASSES_MAX:
        return False
    confusion = summary.get("confusion")
    if isinstance(confusion, dict) and isinstance(confusion.get("matrix"), list):
        confusion["sparse"] = sparse_counts(confusion.pop("matrix"))
    if isinstance(summary.get("clean_confusion"), list):
        summary["clean_confusion"] = sparse_counts(summary["clean_confusion"])
    return True


def expand_confusions(document: dict[str, Any]) -> None:
    """In place: :func:`compact_confusions` undone (the typed results hold dense matrices, whatever the file)."""
    summary = document.get("summary") or {}
    confusion = summary.get("confusion")
    if isinstance(confusion, dict) and isinstance(confusion.get("sparse"), dict):
        confusion["matrix"] = dense_counts(confusion.pop("sparse"))
    if isinstance(summary.get("clean_confusion"), dict):
        summary["clean_confusion"] = dense_counts(summary["clean_confusion"])


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """``data`` as the JSON text tailaudit writes (NaN becomes null; numpy values and paths converted)."""
    return json.dumps(_clean_nan(data), indent=indent, default=_default, allow_nan=False)


def write_json(path: Path, data: Any, *, indent: int | None = 2,
               check: Callable[[Any], None] | None = None, max_bytes: int | None = None) -> Path:
    """Atomically write ``data`` as JSON; ``check`` validates the parsed text before anything is written, and
    ``max_bytes`` (the limit the file's reader applies) refuses a text its reader would refuse."""
    text = json_text(data, indent=indent)
    if max_bytes is not None and len(text.encode("utf-8")) + 1 > max_bytes:
        raise ResultsError(f"{Path(path).name} would be {len(text.encode('utf-8')) + 1:,} bytes, above the "
                           f"{max_bytes:,} bytes tailaudit reads back; audit fewer classes or points (nothing of "
                           "this run was kept)")
    if check is not None:
        check(json.loads(text))
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8") + b"\n"))


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    """Atomically write a compressed npz."""
    return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


def write_text(path: Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


# -- the output folder --------------------------------------------------------------------------------

class OutputError(TailAuditError):
    """The output folder cannot be created or written."""


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "the filesystem is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    if exc.errno == errno.EEXIST:
        return "a file of that name exists"
    return exc.strerror or type(exc).__name__


def output_error(exc: OSError, path: Path | str, what: str = "write") -> OutputError:
    """One-line error for an OSError while writing outputs."""
    return OutputError(f"cannot {what} {path}: {_reason(exc)}; free space, fix the permissions or choose "
                       "another --out (nothing of this run was kept)")


def check_path_length(path: Path, flag: str = "--out") -> None:
    """OutputError (one line, the path shortened) when the file system cannot hold a path this long."""
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in path.parts), default=0)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            return
        shown = str(path) if len(str(path)) <= 80 else str(path)[:60] + "…" + str(path)[-15:]
        raise OutputError(f"{flag} {shown} is too long for the file system ({len(str(path))} characters, its "
                          f"longest name {longest} bytes; file systems usually allow 255 bytes a name and 4096 a "
                          "path): choose a shorter path") from None


def prepare_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create ``path`` (and parents) and prove it is writable by writing and removing a probe file."""
    out = Path(path).expanduser()
    check_path_length(out, flag)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} is an existing file, not a folder; choose a folder path")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{flag} {out} lies under {parent}, which is a file; choose a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {flag} folder {out}: {_reason(exc)}; choose another {flag}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".tailaudit-probe-", dir=out)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write into {flag} folder {out}: {_reason(exc)}; choose another {flag}") from None
    return out


@contextlib.contextmanager
def out_dir_guard(path: str | Path, flag: str = "--out") -> Iterator[Path]:
    """:func:`prepare_out_dir`, and on an exception remove the folders it created if they are still empty."""
    out = Path(path).expanduser()
    check_path_length(out, flag)
    missing = [d for d in [out, *out.parents] if not d.exists()]
    try:
        yield prepare_out_dir(out, flag)
    except BaseException:
        for d in missing:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
        raise
