"""Writing run artefacts atomically, and describing the environment they came from."""
from __future__ import annotations

import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

SCHEMA_VERSION = 1


def _atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
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
        from .errors import ResultsError

        raise ResultsError(f"{Path(path).name} would be {len(text.encode('utf-8')) + 1:,} bytes, above the "
                           f"{max_bytes:,} bytes tailaudit reads back; audit fewer classes or points (nothing of "
                           "this run was kept)")
    if check is not None:
        check(json.loads(text))
    return _atomic(path, lambda fh: fh.write(text.encode("utf-8") + b"\n"))


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    """Atomically write a compressed npz."""
    return _atomic(path, lambda fh: np.savez_compressed(fh, **arrays))


def environment(device: Any) -> dict[str, Any]:
    """Versions and device the numbers came from."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else platform.processor() or "cpu",
        "argv": sys.argv,
    }
    for mod in ("torchvision", "timm", "onnx", "onnxruntime", "onnx2torch"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # optional at run time
            env[mod] = None
    return env


def write_text(path: Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return _atomic(path, lambda fh: fh.write(text.encode("utf-8")))
