"""Tail-aware model selection on images the input model has not seen, and the rule that picks a checkpoint.

Selection split (:func:`carve_selection`): by default a seeded stratified share of the
*evaluation* points (``max(1, floor(fraction * n_c))`` per class, at least one point of each
class left for the audit), disjoint from the points the before/after audits report, which are
the remaining ones; or a user's own validation folder (``--val-root DIR`` / ``--val-split NAME``).
Never the training images the input model was fitted on: a model that memorised them scores
far higher there (a CIFAR-10-LT ResNet: 93.6% against 59.1% on unseen images), and a floor or a
comparison made on them means little. A class without selection images is *missing*.

Rule: the input model itself (step 0) is the first candidate, so a repair can never hand
back a model that the selection split says is worse. A fine-tuned checkpoint replaces it only when
it is **eligible** and its **balanced worst-case robust accuracy** on the selection split (mean
over the classes with selection images of the share of images that are clean-correct and
survive every attack of the audit's cascade, at the training radius and step count) is
at least the input's; the highest wins, ties going to the later checkpoint. Eligible means all of:

* balanced clean accuracy on the selection split at least ``min_clean_kept`` (default 0.8) times
  the input model's on the same images (:meth:`Floors.of_input`);
* no prediction collapse (the audit verdict's rule, :func:`audit.checks.verdict.prediction_collapse`,
  on the selection confusion matrix) and balanced clean accuracy clearly above chance (the
  verdict's ``not-meaningful`` margin) when the input model was;
* when classes are missing from the selection split, a guard stands in for them: their own
  *training* images are attacked the same way, and their balanced worst-case robust accuracy must
  be at least the input model's, so selection cannot trade the unchecked tail away.

When no checkpoint qualifies, the input model is returned unchanged. The points the audits
report are never looked at to compare checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

MIN_SELECTION_PER_CLASS = 10  # below this in a class, the floor and the comparison are too noisy: a warning
MIN_AUDIT_PER_CLASS = 1  # the selection split leaves at least this many points of each class to the audit
METRIC = "val_robust_acc"
GUARD_METRIC = "guard_robust_acc"


def carve_selection(labels: np.ndarray, eval_idx: np.ndarray, fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(audit points, selection points): a seeded stratified share of the evaluation points, disjoint, sorted.

    Each class gives ``max(1, floor(fraction * n_c))`` of its evaluation points, leaving at least
    ``MIN_AUDIT_PER_CLASS`` to the audit (a class of one point gives none and is missing from selection).
    """
    labels = np.asarray(labels, dtype=np.int64)
    eval_idx = np.asarray(eval_idx, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 27])  # its own stream: not the audit's subset or the training order
    audit, sel = [], []
    for c in np.unique(labels[eval_idx]):
        idx = rng.permutation(eval_idx[labels[eval_idx] == c])
        k = max(1, int(math.floor(fraction * len(idx) + 1e-9)))
        k = max(0, min(k, len(idx) - MIN_AUDIT_PER_CLASS))
        sel.append(idx[:k])
        audit.append(idx[k:])
    empty = np.zeros(0, np.int64)
    return (np.sort(np.concatenate(audit)) if audit else empty), (np.sort(np.concatenate(sel)) if sel else empty)


def selection_size_warning(counts: Sequence[int], class_names: Sequence[str], min_clean_kept: float,
                           source: str) -> Optional[str]:
    """A warning when a class has fewer than ``MIN_SELECTION_PER_CLASS`` selection images (docs/repair.md)."""
    present = [int(c) for c in counts if c]
    if not present or min(present) >= MIN_SELECTION_PER_CLASS:
        return None
    low = [class_names[i] for i, c in enumerate(counts) if 0 < c < MIN_SELECTION_PER_CLASS]
    where = ("raise --n-per-class or --val-fraction, or give a validation folder with --val-root DIR"
             if source == "evaluation" else "add images to the --val-root folder")
    return (f"the selection split has fewer than {MIN_SELECTION_PER_CLASS} images in {len(low)} class(es) "
            f"(e.g. “{low[0]}”: {min(present)}): the {min_clean_kept:.0%} clean floor and the checkpoint "
            f"comparison are noisy there; {where}")


@dataclass
class ValidationPlan:
    """What the selection looks at: validation counts per class and the classes the guard covers."""

    per_class_counts: list[int]
    missing: list[int]  # class indices with no validation image
    class_names: list[str]
    source: str = "evaluation"  # "evaluation" (carved from the evaluation data) or "val-root" (the user's folder)

    @property
    def fallback(self) -> Optional[str]:
        if not self.missing:
            return None
        return (f"{len(self.missing)} class(es) too small to give up a validation image are guarded instead: "
                "a checkpoint is eligible only if the balanced worst-case robust accuracy of these classes' "
                "own training images is at least the input model's")

    def rule(self) -> str:
        where = ("a selection split carved from the evaluation data, disjoint from the points the audits report"
                 if self.source == "evaluation" else "the --val-root validation folder")
        s = (f"the checkpoint with the highest balanced worst-case robust accuracy on {where} (images the input "
             "model was not trained on; PGD cascade at the training radius; later checkpoint on ties); the input "
             "model is the first candidate and is kept unless a checkpoint beats it while keeping a share of its "
             "clean accuracy on the same images, its spread of predictions and its tail guard")
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
            "validation": {"source": self.source, "per_class_counts": list(self.per_class_counts),
                           "missing_classes": [self.class_names[c] for c in self.missing],
                           "missing_class_indices": list(self.missing),
                           "fallback": self.fallback},
        }


def plan(labels: np.ndarray, val_idx: np.ndarray, class_names: Sequence[str],
         source: str = "evaluation") -> ValidationPlan:
    counts = [int(c) for c in np.bincount(np.asarray(labels)[val_idx], minlength=len(class_names))]
    return ValidationPlan(counts, [c for c, k in enumerate(counts) if k == 0], list(class_names), source)


@dataclass(frozen=True)
class Floors:
    """What a fine-tuned checkpoint must keep of the input model's validation figures (from step 0)."""

    clean: Optional[float]  # balanced clean accuracy floor (min_clean_kept x the reference below)
    chance: Optional[float]  # clearly-above-chance floor, only when the input model was above it
    guard: Optional[float]  # balanced worst-case robust accuracy of the guard classes (the input's)
    min_clean_kept: float
    reference: Optional[float] = None  # the input model's clean accuracy the floor is a share of
    reference_source: str = "selection"  # "selection"; older checkpoints: "validation" or "test" (memorised)

    @classmethod
    def of_input(cls, entry: dict[str, Any], num_classes: int, min_clean_kept: float) -> "Floors":
        """The floors from the input model's step-0 entry on the selection split.

        The selection images are unseen by the input model (:func:`carve_selection`, ``--val-root``),
        so its clean accuracy there is an honest reference and the floor is a share of it; the
        test-figure floor of earlier versions (a patch for selecting on memorised training images)
        is gone.
        """
        from audit.phases import chance_floor

        clean = _clean_of(entry)
        chance = chance_floor(num_classes)
        return cls(clean=None if clean is None else min_clean_kept * clean,
                   chance=chance if clean is not None and clean > chance else None,
                   guard=entry.get(GUARD_METRIC), min_clean_kept=float(min_clean_kept),
                   reference=clean, reference_source="selection")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # every field; Floors(**d) reads it back (resume)

    def clean_words(self) -> str:
        """'80% of the input model's 59.1% on the held-out test images' (or '... on validation')."""
        where = {"test": "on the held-out test images", "selection": "on the selection images"}.get(
            self.reference_source, "on validation")
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
        out.append(f"selection clean accuracy {clean:.1%} is below the floor {floors.clean:.1%} "
                   f"({floors.clean_words()})")
    if floors.chance is not None and clean is not None and clean <= floors.chance:
        out.append(f"selection clean accuracy {clean:.1%} is not clearly above chance")
    if entry.get("val_collapse"):
        out.append(f"the predictions collapse on the selection images: {entry['val_collapse']}")
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
        out.append(f"selection clean accuracy fell below the floor of {floors.clean:.1%} ({floors.clean_words()}) "
                   f"at {len(low)} of {len(tried)} evaluations (lowest {min(low):.1%})")
    chance = sum(1 for e in tried if floors is not None and floors.chance is not None
                 and (c := _clean_of(e)) is not None and c <= floors.chance)
    if chance:
        out.append(f"selection clean accuracy was not clearly above chance at {chance} of {len(tried)} evaluations")
    collapsed = [e["val_collapse"] for e in tried if e.get("val_collapse")]
    if collapsed:
        out.append(f"the predictions collapsed on the selection images at {len(collapsed)} of {len(tried)} evaluations "
                   f"(e.g. {collapsed[0]})")
    guard = sum(1 for e in tried if floors is not None and floors.guard is not None
                and e.get(GUARD_METRIC) is not None and e[GUARD_METRIC] < floors.guard - 1e-12)
    if guard:
        out.append(f"the classes without validation images lost robust accuracy on their training images at {guard} "
                   f"of {len(tried)} evaluations")
    eligible = [e for e in tried if e.get("eligible")]
    if eligible:
        out.append(f"{len(eligible)} eligible checkpoint(s) were less robust on the selection images than the "
                   "input model")
    return out
