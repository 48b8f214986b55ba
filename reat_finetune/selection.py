"""Tail-aware model selection: a validation split that keeps every class it can, and the rule that picks a checkpoint.

Split: every class gives ``max(1, floor(fraction * n_c))`` of its training images to
validation, provided at least ``MIN_TRAIN_PER_CLASS`` stay for training; smaller classes
give none and are *missing* from validation.

Rule: the kept checkpoint maximises the **balanced worst-case robust accuracy** on the
validation split (mean over the classes with validation images of the share of images
that are clean-correct and survive every attack of the audit's cascade, at the training
radius and step count). When classes are missing, a guard stands in for them (the
fallback): their own *training* images are attacked the same way at every checkpoint, and
only checkpoints whose balanced worst-case robust accuracy on those images is at least the
input model's are eligible, so selection cannot trade the unvalidated tail away. Ties go
to the later checkpoint. The test set is never looked at.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

MIN_TRAIN_PER_CLASS = 2
METRIC = "val_robust_acc"
GUARD_METRIC = "guard_robust_acc"


def split_train_val(labels: np.ndarray, fraction: float, seed: int,
                    min_train: int = MIN_TRAIN_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """Stratified seeded hold-out keeping every class that can spare an image; sorted (train, val) indices."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(math.floor(fraction * len(idx) + 1e-9)))
        k = max(0, min(k, len(idx) - min_train))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val) if val else np.zeros(0, np.int64))


@dataclass
class ValidationPlan:
    """What the selection looks at: validation counts per class and the classes the guard covers."""

    per_class_counts: list[int]
    missing: list[int]  # class indices with no validation image
    class_names: list[str]

    @property
    def fallback(self) -> Optional[str]:
        if not self.missing:
            return None
        return (f"{len(self.missing)} class(es) too small to give up a validation image are guarded instead: "
                "a checkpoint is eligible only if the balanced worst-case robust accuracy of these classes' "
                "own training images is at least the input model's")

    def rule(self) -> str:
        s = ("the checkpoint with the highest balanced worst-case robust accuracy on the held-out validation "
             "split (PGD cascade at the training radius; later checkpoint on ties), never the test set")
        if self.missing:
            s += ("; classes without validation images guard it: their training images' robust accuracy "
                  "must not fall below the input model's")
        return s[0].upper() + s[1:] + "."

    def to_dict(self, chosen_epoch: Optional[int] = None, chosen_step: Optional[int] = None,
                note: Optional[str] = None) -> dict[str, Any]:
        """The ``selection`` block of training_log.json and repair.json."""
        return {
            "rule": self.rule(), "metric": METRIC, "chosen_epoch": chosen_epoch, "chosen_step": chosen_step,
            "guard_metric": GUARD_METRIC if self.missing else None,
            "note": note,
            "validation": {"per_class_counts": list(self.per_class_counts),
                           "missing_classes": [self.class_names[c] for c in self.missing],
                           "missing_class_indices": list(self.missing),
                           "fallback": self.fallback},
        }


def plan(labels: np.ndarray, val_idx: np.ndarray, class_names: Sequence[str]) -> ValidationPlan:
    counts = [int(c) for c in np.bincount(np.asarray(labels)[val_idx], minlength=len(class_names))]
    return ValidationPlan(counts, [c for c, k in enumerate(counts) if k == 0], list(class_names))


def eligible(entry: dict[str, Any], guard_floor: Optional[float]) -> bool:
    """Does a checkpoint pass the tail guard (always, without one)?"""
    g = entry.get(GUARD_METRIC)
    return guard_floor is None or g is None or g >= guard_floor - 1e-12


def better(entry: dict[str, Any], best: Optional[dict[str, Any]], guard_floor: Optional[float]) -> bool:
    """Should ``entry`` replace the current ``best`` ({"score", "eligible", ...})? Later wins ties."""
    score, ok = entry.get(METRIC), eligible(entry, guard_floor)
    if best is None:
        return True
    if ok != best["eligible"]:
        return ok
    if score is None or best["score"] is None:
        return True  # nothing to compare on (empty validation): keep the latest
    return score >= best["score"]
