"""A restricted unpickler for the CIFAR python batches.

The CIFAR "python version" files are pickles, and a plain ``pickle.load`` runs whatever
callable the file names. Users pass their own ``--data-root``, so we only resolve the few
globals the batches need (numpy array reconstruction, dtypes, harmless builtins) and
refuse everything else before it is called.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from ..errors import DatasetError

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
    for _name in ("list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float", "bool", "complex"):
        _ALLOWED[(_mod, _name)] = (("builtins",), _name)


def _resolve(candidates: tuple[str, ...], attr: str) -> Any:
    for mod in candidates:
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {attr} in {candidates}")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch needs."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file")
        candidates, attr = _ALLOWED[key]
        return _resolve(candidates, attr)


def load_pickle(path: Path) -> Any:
    """Load a dataset pickle with :class:`RestrictedUnpickler`; any failure becomes a DatasetError."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DatasetError(
            f"refusing to load {path}: {exc}; it is not a plain CIFAR batch, replace it with the official file"
        ) from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DatasetError(f"cannot read {path} ({type(exc).__name__}: {exc}); re-download or replace the file") from None
