"""Joining the :class:`PointRecords` of several shards (ranks) into the records of one run.

Generic over the dataclass fields, so a field added to PointRecords later merges without
changes here as long as it follows one of the conventions:

* per-point arrays (one entry per point, along the axis whose length is the shard's point
  count, e.g. ``index`` (N,) or ``pred`` (A, N)): concatenated in shard order;
* per-attack lists of numbers (as long as ``attack_names``) and plain numbers: summed;
* ``examples``: concatenated, then the first ``examples_per_class`` of each class kept;
* ``warnings``: concatenated without repeats;
* anything else must be equal in every shard (e.g. ``attack_names``).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Sequence

import numpy as np

from .records import PointRecords


def _point_axis(arrays: Sequence[np.ndarray], counts: Sequence[int]) -> int:
    """The axis that has one entry per point in every shard (the last such axis)."""
    ndim = arrays[0].ndim
    if any(a.ndim != ndim for a in arrays):
        raise ValueError("per-point arrays of different rank across shards")
    for ax in reversed(range(ndim)):
        if all(a.shape[ax] == n for a, n in zip(arrays, counts)) and all(
                tuple(np.delete(a.shape, ax)) == tuple(np.delete(arrays[0].shape, ax)) for a in arrays):
            return ax
    raise ValueError("no per-point axis")


def _merge_examples(parts: Sequence[dict[str, np.ndarray]], per_class: int) -> dict[str, np.ndarray]:
    parts = [p for p in parts if p]
    if not parts:
        return {}
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    labels = joined["label"]
    keep = np.zeros(len(labels), dtype=bool)
    seen: dict[int, int] = {}
    for i, c in enumerate(labels.tolist()):
        if seen.get(c, 0) < per_class:
            seen[c] = seen.get(c, 0) + 1
            keep[i] = True
    return {k: v[keep] for k, v in joined.items()}


def concat_records(parts: Sequence[PointRecords], *, examples_per_class: int) -> PointRecords:
    """The records of the shards ``parts`` (in shard order) as one run's records."""
    if not parts:
        raise ValueError("nothing to concatenate")
    if len(parts) == 1:
        return parts[0]
    counts = [len(p.index) for p in parts]
    n_attacks = len(parts[0].attack_names)
    values: dict[str, Any] = {}
    cls = type(parts[0])
    for f in dataclasses.fields(cls):
        vals = [getattr(p, f.name) for p in parts]
        first = vals[0]
        if f.name == "examples":
            values[f.name] = _merge_examples(vals, examples_per_class)
        elif f.name == "warnings":
            values[f.name] = list(dict.fromkeys(w for v in vals for w in v))
        elif isinstance(first, np.ndarray):
            values[f.name] = np.concatenate(vals, axis=_point_axis(vals, counts))
        elif isinstance(first, numbers.Number) and not isinstance(first, bool):
            values[f.name] = sum(vals)
        elif (isinstance(first, list) and len(first) == n_attacks and first
              and all(isinstance(x, numbers.Number) and not isinstance(x, bool) for x in first)):
            values[f.name] = [sum(col) for col in zip(*vals)]
        elif all(_equal(v, first) for v in vals[1:]):
            values[f.name] = first
        else:
            raise ValueError(f"PointRecords.{f.name} differs between shards and has no merge rule")
    return cls(**values)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - arrays and odd types: not equal for our purpose
        return False
