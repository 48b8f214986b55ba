"""The corruption pass (score every job × point) and its class-wise figures (docs/corruptions.md).

Per class and per (corruption, severity): accuracy with its Wilson 95% interval, the drop from
the class's clean accuracy on the same points, ECE over 15 bins and the confident-error rate
(wrong with confidence > 0.9) — the calibration module's definitions. Per corruption: the mean
over severities, the worst class, the head/medium/tail means and the relative corruption error.
Overall: the mean corruption accuracy and the relative mCE.

Relative corruption error (Hendrycks & Dietterich 2019) of corruption c is
sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean). Without a reference model
tailaudit keeps the numerator relative to the model's own clean error and divides it by the number
of severities instead: ``relative_error`` = mean_s (E_{s,c} - E_clean), the accuracy lost to c on
average; ``relative_mce`` is its mean over corruptions. Errors are pooled over the audited points.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from .. import calibration as cal
from ..metrics import group_means, per_class_accuracy
from ..contract.figures import wilson_interval
from .registry import FAMILY

if TYPE_CHECKING:  # pragma: no cover
    from ..run.engine import Evaluator

log = logging.getLogger(__name__)

CONFIDENT = 0.9  # confident error: wrong with confidence above this (calibration.THRESHOLDS' upper one)


@dataclass
class CorruptionRecords:
    """Per job (corruption, severity) and point: the prediction whose verdict counts and its confidence."""

    jobs: list[tuple[str, int]]
    index: np.ndarray  # (N,) test-set indices
    pred: np.ndarray  # (J, N) int64
    conf: np.ndarray  # (J, N) float32: largest softmax probability
    seconds: float = 0.0


def _scores(evaluator: "Evaluator", x: torch.Tensor) -> torch.Tensor:
    """Logits of the runtime whose verdict counts (onnxruntime for ONNX files), in fp32."""
    if evaluator.reference_scorer is not None:
        return torch.from_numpy(np.asarray(evaluator.reference_scorer(x.float().cpu().numpy()), np.float32))
    with torch.no_grad():
        return evaluator.model(x.to(evaluator.device).float()).float().cpu()


def corruption_pass(evaluator: "Evaluator",
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                    jobs: Sequence[tuple[str, int]], index: np.ndarray) -> CorruptionRecords:
    """Score the corrupted points ``batches`` yields (pixels, labels, test-set indices, job numbers), in any order."""
    t0 = time.perf_counter()
    index = np.asarray(index, np.int64)
    where = {int(j): p for p, j in enumerate(index)}
    pred = np.full((len(jobs), len(index)), -1, np.int64)
    conf = np.zeros((len(jobs), len(index)), np.float32)
    for x, _, ids, job in batches:
        logits = _scores(evaluator, x)
        p = torch.softmax(logits, 1)
        cols = np.array([where[int(i)] for i in ids])
        rows = np.asarray(job, np.int64)
        finite = torch.isfinite(logits).all(1).numpy()
        pred[rows, cols] = np.where(finite, logits.argmax(1).numpy(), -1)  # non-finite logits: a wrong answer
        conf[rows, cols] = np.where(finite, p.amax(1).numpy(), 0.0)
    seconds = time.perf_counter() - t0
    log.info("corruptions: %d jobs × %d points scored in %.1f s", len(jobs), len(index), seconds)
    return CorruptionRecords(list(jobs), index, pred, conf, seconds)


def join_records(parts: Sequence[CorruptionRecords]) -> CorruptionRecords:
    """Shards (torchrun ranks, in rank order) joined into the whole run's records."""
    return CorruptionRecords(list(parts[0].jobs), np.concatenate([p.index for p in parts]),
                             np.concatenate([p.pred for p in parts], axis=1),
                             np.concatenate([p.conf for p in parts], axis=1), max(p.seconds for p in parts))


def _cell(correct: np.ndarray, conf: np.ndarray, clean_acc: Optional[float]) -> dict[str, Any]:
    """One class × corruption × severity: accuracy, interval, drop, ECE, confident errors."""
    n, k = len(correct), int(correct.sum())
    acc = k / n if n else None
    wrong_conf = int((~correct & (conf > CONFIDENT)).sum())
    return {"accuracy": acc, "ci95": list(wilson_interval(k, n)),
            "drop": (clean_acc - acc) if acc is not None and clean_acc is not None else None,
            "ece": cal.ece(conf, correct), "confident_error": wrong_conf / n if n else None}


def class_figures(rec: CorruptionRecords, label: np.ndarray, clean_correct: np.ndarray,
                  num_classes: int) -> list[dict[str, dict[str, Any]]]:
    """``per_class[i].corruptions``: {name: {"1".."5": cell, "mean": accuracy over severities}}."""
    label = np.asarray(label, np.int64)
    clean_acc, _, _ = per_class_accuracy(np.asarray(clean_correct, bool), label, num_classes)
    out: list[dict[str, dict[str, Any]]] = [{} for _ in range(num_classes)]
    for j, (name, sev) in enumerate(rec.jobs):
        correct = rec.pred[j] == label
        for c in range(num_classes):
            mine = label == c
            base = None if np.isnan(clean_acc[c]) else float(clean_acc[c])
            out[c].setdefault(name, {})[str(sev)] = _cell(correct[mine], rec.conf[j][mine], base)
    for row in out:
        for name, cells in row.items():
            accs = [v["accuracy"] for v in cells.values() if v["accuracy"] is not None]
            cells["mean"] = float(np.mean(accs)) if accs else None  # type: ignore[assignment]
    return out


def _severity_block(correct: np.ndarray, conf: np.ndarray, label: np.ndarray, num_classes: int,
                    groups: Mapping[str, list[int]]) -> dict[str, Any]:
    n, k = len(correct), int(correct.sum())
    acc, _, _ = per_class_accuracy(correct, label, num_classes)
    wrong_conf = int((~correct & (conf > CONFIDENT)).sum())
    return {"accuracy": k / n if n else None, "ci95": list(wilson_interval(k, n)),
            "balanced": float(np.nanmean(acc)) if n else None, "ece": cal.ece(conf, correct),
            "confident_error": wrong_conf / n if n else None, "groups": group_means(acc, dict(groups)),
            "_class_acc": acc}


def summary_figures(rec: CorruptionRecords, label: np.ndarray, clean_correct: np.ndarray, num_classes: int,
                    groups: Mapping[str, list[int]]) -> dict[str, Any]:
    """``summary.corruptions``'s figures: per corruption and overall (the caller adds provenance)."""
    label = np.asarray(label, np.int64)
    clean_correct = np.asarray(clean_correct, bool)
    clean = float(clean_correct.mean()) if len(label) else None
    clean_cls, _, _ = per_class_accuracy(clean_correct, label, num_classes)
    clean_groups = group_means(clean_cls, dict(groups))
    per: dict[str, Any] = {}
    for name in dict.fromkeys(n for n, _ in rec.jobs):
        blocks = {str(s): _severity_block(rec.pred[j] == label, rec.conf[j], label, num_classes, groups)
                  for j, (n, s) in enumerate(rec.jobs) if n == name}
        class_mean = np.nanmean(np.stack([b.pop("_class_acc") for b in blocks.values()]), axis=0) \
            if len(label) else np.full(num_classes, np.nan)
        accs = [b["accuracy"] for b in blocks.values() if b["accuracy"] is not None]
        mean = float(np.mean(accs)) if accs else None
        worst = int(np.nanargmin(class_mean)) if not np.all(np.isnan(class_mean)) else None
        per[name] = {"family": FAMILY[name], "severities": blocks, "mean_accuracy": mean,
                     "worst_class": worst,
                     "worst_class_accuracy": float(class_mean[worst]) if worst is not None else None,
                     "groups": group_means(class_mean, dict(groups)),
                     "relative_error": (clean - mean) if clean is not None and mean is not None else None}
    means = [p["mean_accuracy"] for p in per.values() if p["mean_accuracy"] is not None]
    rel = [p["relative_error"] for p in per.values() if p["relative_error"] is not None]
    group_acc = {g: _mean([p["groups"].get(g) for p in per.values()]) for g in groups}
    return {"clean_accuracy": clean, "mean_accuracy": float(np.mean(means)) if means else None,
            "relative_mce": float(np.mean(rel)) if rel else None, "groups": group_acc,
            "group_drop": {g: (clean_groups[g] - v) if v is not None and clean_groups.get(g) is not None else None
                           for g, v in group_acc.items()},
            "per_corruption": per}


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
