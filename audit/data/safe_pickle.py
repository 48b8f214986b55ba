"""A restricted unpickler for the CIFAR python batches.

The CIFAR "python version" files are pickles, and a plain ``pickle.load`` runs whatever
callable the file names. Users pass their own ``--data-root``, so we only resolve the few
globals the batches need (numpy array reconstruction, dtypes, harmless builtins) and
refuse everything else before it is called.

Memory is bounded before anything is allocated: the file must be a regular file of at most
``MAX_PICKLE_BYTES``; its opcodes are walked first without running any (:func:`check_opcodes`), so
a declared length (a bytes object, a string, a protocol-4 frame) longer than what is left of the
file is refused before the unpickler allocates it; and every allowed call is priced before it runs
(``bytearray(10**10)``, ``numpy`` arrays of a declared shape, ``list`` of a large object): all calls
together may create at most as many bytes as the file holds plus ``_CALL_SLACK``.
"""
from __future__ import annotations

import importlib
import math
import os
import pickle
import pickletools
import stat
import struct
from pathlib import Path
from typing import Any, Callable, Optional

from ..bounds import MAX_PICKLE_BYTES
from ..errors import DatasetError

_CALL_SLACK = 16 * 2**20  # bytes the calls of a pickle may create beyond the file's own size
_ITEM_BYTES = 128  # what one element of a list/tuple/set/dict built by a call may cost (object + pointer)

# (module, name) pairs a CIFAR batch may reference, mapped to (module to import, attribute).
# numpy 2 moved numpy.core to numpy._core; old pickles (CIFAR is from 2009) name the old one.
_NUMPY_CORE = ("numpy._core", "numpy.core")
_ALLOWED: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {}
for _old in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_old}.multiarray", "_reconstruct")] = (tuple(f"{m}.multiarray" for m in _NUMPY_CORE), "_reconstruct")
    _ALLOWED[(f"{_old}.multiarray", "scalar")] = (tuple(f"{m}.multiarray" for m in _NUMPY_CORE), "scalar")
    _ALLOWED[(f"{_old}.numeric", "_frombuffer")] = (tuple(f"{m}.numeric" for m in _NUMPY_CORE), "_frombuffer")
_ALLOWED[("numpy", "ndarray")] = (("numpy",), "ndarray")
_ALLOWED[("numpy", "dtype")] = (("numpy",), "dtype")
_ALLOWED[("_codecs", "encode")] = (("_codecs",), "encode")
for _mod in ("builtins", "__builtin__"):
    for _name in ("list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float", "bool",
                  "complex"):
        _ALLOWED[(_mod, _name)] = (("builtins",), _name)


def _resolve(candidates: tuple[str, ...], attr: str) -> Any:
    for mod in candidates:
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {attr} in {candidates}")


# -- what an allowed call may allocate, computed from its arguments before it runs ----------------------------


def _itemsize(dtype: Any) -> int:
    import numpy as np

    try:
        return max(1, int(np.dtype(dtype).itemsize))
    except Exception:  # noqa: BLE001 - the call itself will refuse a bad dtype
        return 8


def _shape_bytes(shape: Any, dtype: Any) -> int:
    dims = [shape] if isinstance(shape, int) else list(shape) if isinstance(shape, (tuple, list)) else []
    if not all(isinstance(d, int) for d in dims):
        return 0  # not a shape: numpy refuses it without allocating
    return math.prod(max(0, d) for d in dims) * _itemsize(dtype)


def _sized(obj: Any) -> int:
    try:
        return len(obj)
    except TypeError:
        return 1


def _reconstruct_cost(subtype: Any = None, shape: Any = (), dtype: Any = "b", *a: Any, **k: Any) -> int:
    return _shape_bytes(shape, dtype)


def _ndarray_cost(shape: Any = (), dtype: Any = float, buffer: Any = None, *a: Any, **k: Any) -> int:
    return _sized(buffer) if buffer is not None else _shape_bytes(shape, dtype)


def _scalar_cost(dtype: Any = None, *a: Any, **k: Any) -> int:
    return _itemsize(dtype)


def _frombuffer_cost(buf: Any = b"", *a: Any, **k: Any) -> int:
    return _sized(buf)  # a view, copied at most once by the reshape


def _encode_cost(obj: Any = "", encoding: str = "utf-8", *a: Any, **k: Any) -> int:
    # protocol-2 pickles write bytes as _codecs.encode(str, "latin1"); any other use could multiply a string
    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(obj).__name__}, {str(encoding)[:20]!r}) is not allowed "
                                     "in a dataset file")
    return len(obj)


def _container_cost(obj: Any = (), *a: Any, **k: Any) -> int:
    if isinstance(obj, int) and not isinstance(obj, bool):
        return max(0, obj)  # bytes(n), bytearray(n): n zero bytes
    if isinstance(obj, (str, bytes, bytearray)):
        return len(obj)
    return _sized(obj) * _ITEM_BYTES


def _str_cost(obj: Any = "", *a: Any, **k: Any) -> int:
    if isinstance(obj, (bytes, bytearray)):
        return 4 * len(obj) + 3  # str(b"...") is the repr: up to \xNN per byte
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return len(obj) if isinstance(obj, str) else 64
    raise pickle.UnpicklingError(f"str() of a {type(obj).__name__} is not allowed in a dataset file")


def _number_cost(obj: Any = 0, *a: Any, **k: Any) -> int:
    return 64 + (len(obj) if isinstance(obj, (str, bytes)) else 0)


_COSTS: dict[str, Callable[..., int]] = {
    "_reconstruct": _reconstruct_cost, "ndarray": _ndarray_cost, "scalar": _scalar_cost,
    "_frombuffer": _frombuffer_cost, "encode": _encode_cost, "dtype": lambda *a, **k: 0, "str": _str_cost,
    **{name: _container_cost for name in ("list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray")},
    **{name: _number_cost for name in ("int", "float", "bool", "complex")},
}


class _Budget:
    """Bytes the calls of one pickle may still create."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self, need: int, what: str) -> None:
        if need > self.left:
            raise pickle.UnpicklingError(f"{what}() asks for {need:,} bytes, more than a file of this size can "
                                         "hold (a memory bomb)")
        self.left -= need


class _Priced:
    """An allowed global whose calls are priced against the pickle's budget before they run."""

    def __init__(self, fn: Any, name: str, budget: _Budget) -> None:
        self.fn, self.name, self.budget = fn, name, budget

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(a.fn if isinstance(a, _Priced) else a for a in args)  # e.g. _reconstruct(ndarray, ...)
        self.budget.spend(_COSTS[self.name](*args, **kwargs), self.name)
        return self.fn(*args, **kwargs)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch needs; with a ``budget`` (bytes), their calls
    may together create at most that much."""

    def __init__(self, file: Any, *args: Any, budget: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(file, *args, **kwargs)
        self._budget = _Budget(budget) if budget is not None else None

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file")
        candidates, attr = _ALLOWED[key]
        fn = _resolve(candidates, attr)
        return fn if self._budget is None else _Priced(fn, attr, self._budget)


_LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
                  pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}


def check_opcodes(fh: Any, size: int) -> None:
    """Walk the pickle's opcodes without running any (``pickletools``' opcode table, arguments skipped, not read);
    UnpicklingError when a declared length (a bytes or string argument, a protocol-4 frame) is longer than what
    is left of the file, since the unpickler allocates a declared length before reading it."""
    def read(n: int, what: str) -> bytes:
        raw = fh.read(n)
        if len(raw) < n:
            raise pickle.UnpicklingError(f"the file ends inside {what} (a truncated file)")
        return raw

    while True:
        pos = fh.tell()
        code = fh.read(1)
        op = pickletools.code2op.get(code.decode("latin-1")) if code else None
        if op is None:
            raise pickle.UnpicklingError(f"byte {pos} is {'the end of the file' if not code else f'{code!r}'}, "
                                         "not a pickle opcode (a truncated or damaged file)")
        if op.name == "STOP":
            return
        if op.arg is None:
            continue
        n = op.arg.n
        if n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if op.name in ("GLOBAL", "INST") else 1):  # module and name: two lines
                if not fh.readline(max(0, size - fh.tell())).endswith(b"\n"):
                    raise pickle.UnpicklingError(f"the file ends inside {op.name} at byte {pos} (a truncated file)")
        elif n in _LENGTH_PREFIX:
            fmt = _LENGTH_PREFIX[n]
            length = struct.unpack(fmt, read(struct.calcsize(fmt), op.name))[0]
            left = size - fh.tell()
            if not 0 <= length <= left:
                raise pickle.UnpicklingError(f"{op.name} at byte {pos} declares {length:,} bytes but the file has "
                                             f"{left:,} left (a truncated file or a memory bomb)")
            fh.seek(length, 1)
        else:
            raw = read(n, op.name)
            left = size - fh.tell()
            if op.name == "FRAME" and struct.unpack("<Q", raw)[0] > left:
                raise pickle.UnpicklingError(f"a frame at byte {pos} declares {struct.unpack('<Q', raw)[0]:,} bytes "
                                             f"but the file has {left:,} left (a truncated file or a memory bomb)")


def load_pickle(path: Path) -> Any:
    """Load a dataset pickle with :class:`RestrictedUnpickler`, memory bounded as the module docstring says;
    any failure becomes a DatasetError."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open(): opening a pipe waits for a writer
            raise DatasetError(f"{path} is not a regular file (a device or a pipe); replace it with the official "
                               "CIFAR file")
        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size > MAX_PICKLE_BYTES:
                raise DatasetError(f"{path} is {st.st_size:,} bytes, above the limit of {MAX_PICKLE_BYTES:,} bytes for "
                                   "a dataset pickle; it is not a CIFAR batch, replace it with the official file")
            check_opcodes(fh, st.st_size)
            fh.seek(0)
            return RestrictedUnpickler(fh, encoding="latin1", budget=st.st_size + _CALL_SLACK).load()
    except pickle.UnpicklingError as exc:
        raise DatasetError(
            f"refusing to load {path}: {exc}; it is not a plain CIFAR batch, replace it with the official file"
        ) from None
    except MemoryError:
        raise DatasetError(f"refusing to load {path}: it asks for more memory than there is; it is not a plain CIFAR "
                           "batch, replace it with the official file") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError) as exc:
        raise DatasetError(f"cannot read {path} ({type(exc).__name__}: {exc}); "
                           "re-download or replace the file") from None
