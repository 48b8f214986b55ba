"""Tail-aware model selection: a validation split that keeps every class it can, and the rule that picks a checkpoint.

Split: every class gives ``max(1, floor(fraction * n_c))`` of its training images to
validation, provided at least ``MIN_TRAIN_PER_CLASS`` stay for training; smaller classes
give none and are *missing* from validation.

Rule: the input model itself (step 0) is the first candidate, so a repair can never hand
back a model that validation says is worse. A fine-tuned checkpoint replaces it only when it
is **eligible** and its **balanced worst-case robust accuracy** on the validation split (mean
over the classes with validation images of the share of images that are clean-correct and
survive every attack of the audit's cascade, at the training radius and step count) is
at least the input's; the highest wins, ties going to the later checkpoint (the input model
often scores 100% on validation images it was trained on, so a strict gain cannot be asked
for). Eligible means all of:

* balanced clean accuracy on validation at least ``min_clean_kept`` (default 0.8) times the
  input model's (its clean accuracy on the held-out test images when that is lower: a model
  that memorised the validation images would otherwise set a floor no repair reaches,
  :meth:`Floors.of_input`);
* no prediction collapse (the audit verdict's rule, :func:`audit.verdict.prediction_collapse`,
  on the validation confusion matrix) and balanced clean accuracy clearly above chance (the
  verdict's ``not-meaningful`` margin) when the input model was;
* when classes are missing from validation, a guard stands in for them: their own *training*
  images are attacked the same way, and their balanced worst-case robust accuracy must be at
  least the input model's, so selection cannot trade the unvalidated tail away.

When no checkpoint qualifies, the input model is returned unchanged. The test set is never
looked at to compare checkpoints.
"""
from __future__ import annotations

import dataclasses
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
             "split (PGD cascade at the training radius; later checkpoint on ties), never the test set; the input "
             "model is the first candidate and is kept unless a checkpoint beats it while keeping its clean "
             "accuracy (the floor: a share of the input's clean accuracy on validation, or on the test images "
             "when that is lower), its spread of predictions and its tail guard")
        if self.missing:
            s += ("; classes without validation images guard it: their training images' robust accuracy "
                  "must not fall below the input model's")
        return s[0].upper() + s[1:] + "."

    def to_dict(self, chosen_epoch: Optional[int] = None, chosen_step: Optional[int] = None,
                note: Optional[str] = None) -> dict[str, Any]:
        """The ``selection`` block of training_log.json and repair.json."""
        return {
            "rule": self.rule(), "metric": METRIC, "chosen_epoch": chosen_epoch, "chosen_step": chosen_step,
            "input_kept": chosen_step == 0,
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


@dataclass(frozen=True)
class Floors:
    """What a fine-tuned checkpoint must keep of the input model's validation figures (from step 0)."""

    clean: Optional[float]  # balanced clean accuracy floor (min_clean_kept x the reference below)
    chance: Optional[float]  # clearly-above-chance floor, only when the input model was above it
    guard: Optional[float]  # balanced worst-case robust accuracy of the guard classes (the input's)
    min_clean_kept: float
    reference: Optional[float] = None  # the input model's clean accuracy the floor is a share of
    reference_source: str = "validation"  # "validation", or "test": validation was memorised (see of_input)

    @classmethod
    def of_input(cls, entry: dict[str, Any], num_classes: int, min_clean_kept: float,
                 test_clean: Optional[float] = None) -> "Floors":
        """The floors from the input model's step-0 validation entry.

        The validation images come from the training split, which the input model was usually
        trained on: it may score far higher on them than on images it never saw (a CIFAR-10-LT
        ResNet: 93.6% on validation, 59.1% on the test images), and a floor taken from that
        figure rejects every fine-tuned checkpoint. So when ``test_clean`` (the input's balanced
        clean accuracy on the audit's held-out test images, measured before any fine-tuning) is
        lower, the floor is a share of it instead. Checkpoints are still compared on validation
        only; the before-audit's one figure sets the level, and the after-audit reports the
        clean accuracy the repaired model really keeps.
        """
        from audit.verdict import CHANCE_MARGIN

        clean = _clean_of(entry)
        chance = 1.0 / num_classes + CHANCE_MARGIN * (1.0 - 1.0 / num_classes)
        ref, source = clean, "validation"
        if clean is not None and test_clean is not None and test_clean < clean:
            ref, source = float(test_clean), "test"
        return cls(clean=None if ref is None else min_clean_kept * ref,
                   chance=chance if clean is not None and clean > chance else None,
                   guard=entry.get(GUARD_METRIC), min_clean_kept=float(min_clean_kept),
                   reference=ref, reference_source=source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # every field; Floors(**d) reads it back (resume)

    def clean_words(self) -> str:
        """'80% of the input model's 59.1% on the held-out test images' (or '... on validation')."""
        where = "on the held-out test images" if self.reference_source == "test" else "on validation"
        ref = f" {self.reference:.1%}" if self.reference is not None else ""
        return f"{self.min_clean_kept:.0%} of the input model's{ref} {where}"


def _clean_of(entry: dict[str, Any]) -> Optional[float]:
    v = entry.get("val_clean_acc")
    return v if v is not None else entry.get("guard_clean_acc")


def score(entry: dict[str, Any]) -> Optional[float]:
    """The selection metric of an evaluation (the guard's when the validation split is empty)."""
    v = entry.get(METRIC)
    return v if v is not None else entry.get(GUARD_METRIC)


def ineligible_because(entry: dict[str, Any], floors: Optional[Floors]) -> list[str]:
    """Why a fine-tuned checkpoint may not be kept (empty: it may), in words for the log and the report."""
    if floors is None:
        return []
    out = []
    clean = _clean_of(entry)
    if floors.clean is not None and clean is not None and clean < floors.clean - 1e-12:
        out.append(f"validation clean accuracy {clean:.1%} is below the floor {floors.clean:.1%} "
                   f"({floors.clean_words()})")
    if floors.chance is not None and clean is not None and clean <= floors.chance:
        out.append(f"validation clean accuracy {clean:.1%} is not clearly above chance")
    if entry.get("val_collapse"):
        out.append(f"the predictions collapse on validation: {entry['val_collapse']}")
    g = entry.get(GUARD_METRIC)
    if floors.guard is not None and g is not None and g < floors.guard - 1e-12:
        out.append(f"the classes without validation images lose robust accuracy on their training images "
                   f"({g:.1%} < {floors.guard:.1%})")
    return out


def better(entry: dict[str, Any], best: Optional[dict[str, Any]]) -> bool:
    """Should ``entry`` (eligible) replace the kept ``best`` ({"step", "score", ...})? Later wins ties.

    Ties with the input model go to the fine-tuned checkpoint too: the validation images come
    from the training split, which the input model was usually trained on, so its validation
    figures are optimistic (often 100%); eligibility, not a strict gain, guards against a worse model.
    """
    if best is None:
        return True
    s, b = score(entry), best.get("score")
    if s is None or b is None:
        return True  # nothing to compare on (empty validation and no guard): keep the latest eligible one
    return s >= b - 1e-12


def seen_reasons(entries: Sequence[dict[str, Any]], floors: Optional[Floors]) -> list[str]:
    """Why the fine-tuned checkpoints were not kept, one sentence per kind of reason (never the same floor
    sentence once per checkpoint): how many evaluations failed it and the worst figure seen."""
    tried = [e for e in entries if e.get("step")]
    out: list[str] = []
    low = [c for e in tried if floors is not None and floors.clean is not None
           and (c := _clean_of(e)) is not None and c < floors.clean - 1e-12]
    if low:
        assert floors is not None and floors.clean is not None
        out.append(f"validation clean accuracy fell below the floor of {floors.clean:.1%} ({floors.clean_words()}) "
                   f"at {len(low)} of {len(tried)} evaluations (lowest {min(low):.1%})")
    chance = sum(1 for e in tried if floors is not None and floors.chance is not None
                 and (c := _clean_of(e)) is not None and c <= floors.chance)
    if chance:
        out.append(f"validation clean accuracy was not clearly above chance at {chance} of {len(tried)} evaluations")
    collapsed = [e["val_collapse"] for e in tried if e.get("val_collapse")]
    if collapsed:
        out.append(f"the predictions collapsed on validation at {len(collapsed)} of {len(tried)} evaluations "
                   f"(e.g. {collapsed[0]})")
    guard = sum(1 for e in tried if floors is not None and floors.guard is not None
                and e.get(GUARD_METRIC) is not None and e[GUARD_METRIC] < floors.guard - 1e-12)
    if guard:
        out.append(f"the classes without validation images lost robust accuracy on their training images at {guard} "
                   f"of {len(tried)} evaluations")
    eligible = [e for e in tried if e.get("eligible")]
    if eligible:
        out.append(f"{len(eligible)} eligible checkpoint(s) were less robust on validation than the input model")
    return out
