"""Dataclasses to and from the JSON tailaudit writes, driven by their type hints.

The typed results (audit/contract/model.py) declare their fields once; this module turns them into
JSON-ready dicts and back, so a section's keys are not written out a second time by hand.

Field metadata understood here:

* ``key``: the JSON key when it is not a Python name (``class``, ``true``);
* ``omit_none``: leave the key out when the value is None (keys older files or some runs lack);
* ``extra``: the dict field that keeps keys this version does not know, written back unchanged
  after the declared ones, so reading and writing a file never loses what a newer tailaudit added.

A class with ``json_by_hand = True`` (a ClassVar) converts itself with its own ``to_json`` and
``from_json``. Values are not coerced: an int in a float field stays an int, so a file read and written again is
the same file.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Mapping, TypeVar, Union

T = TypeVar("T")


class DocumentError(ValueError):
    """A document that does not fit the dataclasses: names the JSON path (``$.sanity.large_eps``) and what is wrong."""


def json_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_json(value: Any) -> Any:
    """A dataclass tree as plain dicts and lists (declared fields in order, then kept unknown keys)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if getattr(type(value), "json_by_hand", False):  # a class that writes its own form (Verdict)
            return value.to_json()
        out: dict[str, Any] = {}
        extra: Mapping[str, Any] = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.metadata.get("extra"):
                extra = v or {}
            elif not (v is None and f.metadata.get("omit_none")):
                out[json_key(f)] = to_json(v)
        out.update({k: to_json(v) for k, v in extra.items() if k not in out})
        return out
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if all(type(v) in _LEAVES for v in value):  # a row of numbers (a confusion matrix's): copied, not walked
            return list(value)
        return [to_json(v) for v in value]
    return value


_LEAVES = (int, float, str, bool, type(None))


def from_json(tp: Any, data: Any, where: str = "$") -> Any:
    """``data`` (parsed JSON, already checked against the schema) as type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return data
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return from_json(args[0], data, where) if len(args) == 1 else data
    if dataclasses.is_dataclass(tp):
        return data if isinstance(data, tp) else _dataclass(tp, data, where)  # typed already: kept as it is
    if origin in (list, tuple) and data is not None:
        args = typing.get_args(tp)
        item = args[0] if args else Any
        if item in _LEAVES or item is Any:  # list[int] and the like: nothing to convert per item
            return tuple(data) if origin is tuple else list(data)
        items = [from_json(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
        return tuple(items) if origin is tuple else items
    if origin is dict and data is not None:
        args = typing.get_args(tp)
        item = args[1] if len(args) == 2 else Any
        return {k: from_json(item, v, f"{where}.{k}") for k, v in data.items()}
    return data


def _dataclass(cls: type[T], data: Any, where: str) -> T:
    if getattr(cls, "json_by_hand", False):
        try:
            return cls.from_json(data)  # type: ignore[attr-defined]
        except (KeyError, TypeError, ValueError) as exc:
            raise DocumentError(f"{where}: {exc}") from None
    if not isinstance(data, Mapping):
        raise DocumentError(f"{where} should be an object, found {type(data).__name__}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    known: set[str] = set()
    extra_field = None
    for f in dataclasses.fields(cls):
        if f.metadata.get("extra"):
            extra_field = f.name
            continue
        key = json_key(f)
        known.add(key)
        if key in data:
            kwargs[f.name] = from_json(hints[f.name], data[key], f"{where}.{key}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise DocumentError(f"{where} lacks {key!r}")
    unknown = {k: v for k, v in data.items() if k not in known}
    if unknown:
        if extra_field is None:
            raise DocumentError(f"{where} has unknown key(s) {', '.join(sorted(unknown))}")
        kwargs[extra_field] = unknown
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # e.g. a verdict code this version does not know
        raise DocumentError(f"{where}: {exc}") from None
