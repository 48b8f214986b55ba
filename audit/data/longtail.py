"""Long-tailed profile, seeded selection and head/medium/tail groups (docs/method.md, "Datasets").

The published long-tail baselines (LDAM, RoBal, REAT, AT-BSL) all train on the same
subsets, so the count formula and the selection RNG here reproduce the reference code
bit for bit.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..errors import ConfigError, DatasetError

GROUPS = ("head", "medium", "tail")
GROUP_RULES = ("thirds", "shots")
MANY_SHOT = 100  # "many": more than this many training images
FEW_SHOT = 20  # "few": fewer than this many training images


def longtail_counts(n_max: int, num_classes: int, rho: float) -> list[int]:
    """Per-class training counts of the exponential profile ``int(n_max * rho ** (i / (C - 1)))``.

    Class 0 is the head; ``rho`` is the ratio smallest/largest (0.01 = imbalance ratio 100).
    """
    try:
        value = float(rho)
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ConfigError(f"imbalance must be in (0, 1] (ratio smallest/largest, e.g. 0.01), got {rho!r}")
    rho = value
    if int(num_classes) < 1:
        raise ConfigError(f"the number of classes must be at least 1, got {num_classes!r}")
    if int(n_max) < 1:
        raise ConfigError(f"the largest class needs at least 1 image, got n_max={n_max!r}")
    c = int(num_classes)
    if c == 1:
        return [int(n_max)]
    return [int(n_max * rho ** (i / (c - 1))) for i in range(c)]


def select_longtail(targets: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices of the long-tailed subset: seed numpy once, per class shuffle and keep the first ``n_i``.

    Uses the legacy global RNG exactly like the reference code (so the subsets match the
    published ones) but restores the caller's global numpy RNG state afterwards.
    Indices are returned grouped by class, in class order.
    """
    targets_np = np.asarray(targets, dtype=np.int64)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        chosen = []
        for i, n_i in enumerate(counts):
            idx = np.where(targets_np == i)[0]
            if len(idx) < n_i:
                raise DatasetError(
                    f"class {i} has {len(idx)} training images but the long-tail profile asks for {n_i}; "
                    "use a dataset with more images per class or a smaller imbalance ratio"
                )
            np.random.shuffle(idx)
            chosen.append(idx[: int(n_i)])
    finally:
        np.random.set_state(state)
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(chosen).astype(np.int64)


def assign_groups(train_counts: Sequence[int], rule: str = "thirds") -> list[str]:
    """Group ("head"/"medium"/"tail") of each class index, derived from training counts only.

    ``thirds``: sort classes by count descending (ties by index); the first ``C // 3`` are
    head, the last ``C // 3`` tail, the rest medium (10 classes: 3/4/3).
    ``shots``: more than 100 images = head, fewer than 20 = tail, otherwise medium.
    """
    counts = [int(n) for n in train_counts]
    if rule == "shots":
        return ["head" if n > MANY_SHOT else "tail" if n < FEW_SHOT else "medium" for n in counts]
    if rule != "thirds":
        raise ConfigError(f"unknown group rule {rule!r}; choose one of: {', '.join(GROUP_RULES)}")
    c = len(counts)
    order = sorted(range(c), key=lambda i: (-counts[i], i))
    k = c // 3
    groups = ["medium"] * c
    for i in order[:k]:
        groups[i] = "head"
    for i in order[c - k :]:
        groups[i] = "tail"
    return groups


def is_balanced(train_counts: Sequence[int]) -> bool:
    """True when every class has the same training count, or no counts are known (all zero / none)."""
    counts = [int(n) for n in train_counts]
    return len(set(counts)) <= 1


def class_groups(train_counts: Sequence[int], rule: str = "thirds") -> list[Optional[str]]:
    """Like :func:`assign_groups`, but ``None`` for every class of a balanced training set.

    With equal counts a "tail" would be an arbitrary third of the classes (ties break by
    index), so a balanced set has no head/medium/tail groups at all.
    """
    if is_balanced(train_counts):
        return [None] * len(train_counts)
    return list(assign_groups(train_counts, rule))


def groups_to_indices(groups: Sequence[Optional[str]]) -> dict[str, list[int]]:
    """Class indices of each group, e.g. ``{"head": [0, 1, 2], "medium": [...], "tail": [...]}``; ``{}`` when
    balanced."""
    if all(g is None for g in groups):
        return {}
    out: dict[str, list[int]] = {g: [] for g in GROUPS}
    for i, g in enumerate(groups):
        if g not in out:
            raise ConfigError(f"unknown group {g!r} for class {i}; expected one of: {', '.join(GROUPS)}")
        out[g].append(i)
    return out


def stratified_subset(labels: Sequence[int] | np.ndarray, k_per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset with ``k_per_class`` points per class (all if fewer).

    Keeps a class-wise audit balanced when only part of the test set is attacked.
    """
    if int(k_per_class) < 1:
        raise ConfigError(f"the number of images per class must be at least 1, got {k_per_class!r}")
    labels_np = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(labels_np):
        idx = np.where(labels_np == c)[0]
        if len(idx) > k_per_class:
            idx = rng.permutation(idx)[: int(k_per_class)]
        parts.append(idx)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(parts)).astype(np.int64)
