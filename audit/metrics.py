"""Class-wise metrics (docs/method.md, "Metrics"), from per-point records."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np


def per_class_accuracy(correct: np.ndarray, labels: np.ndarray,
                       num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (accuracy, correct count, point count) per class; accuracy is NaN for empty classes."""
    n = np.bincount(labels, minlength=num_classes)
    k = np.bincount(labels, weights=correct.astype(np.float64), minlength=num_classes).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    return acc, k, n


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[dict[str, float]]:
    """Spearman rank correlation with its p-value, or None when undefined (constant input)."""
    from scipy.stats import spearmanr

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    ok = ~(np.isnan(a_) | np.isnan(b_))
    a_, b_ = a_[ok], b_[ok]
    if len(a_) < 3 or np.all(a_ == a_[0]) or np.all(b_ == b_[0]):
        return None
    res = spearmanr(a_, b_)
    return {"rho": float(res.statistic), "p": float(res.pvalue)}


def group_means(acc: np.ndarray, groups: dict[str, list[int]]) -> dict[str, Optional[float]]:
    """Mean accuracy of each group's classes, skipping classes without points (None for an empty group)."""
    out: dict[str, Optional[float]] = {}
    for g, idx in groups.items():
        vals = acc[idx] if idx else np.array([])
        vals = vals[~np.isnan(vals)]
        out[g] = float(vals.mean()) if len(vals) else None
    return out


def cross_class_summary(
    acc: np.ndarray,
    correct_total: int,
    n_total: int,
    train_counts: Sequence[int],
    groups: dict[str, list[int]],
) -> dict[str, Any]:
    """Mean (balanced accuracy), worst/best class, gap, std, group means and Spearman vs counts."""
    valid = ~np.isnan(acc)
    if not valid.any():
        return {"mean": None, "overall": None}
    a = np.where(valid, acc, np.nan)
    worst = int(np.nanargmin(a))
    best = int(np.nanargmax(a))
    return {
        "mean": float(np.nanmean(a)),
        "overall": float(correct_total / n_total) if n_total else None,
        "worst": float(a[worst]),
        "worst_class": worst,
        "best": float(a[best]),
        "best_class": best,
        "gap": float(a[best] - a[worst]),
        "std": float(np.nanstd(a)),
        "groups": group_means(a, groups),
        "spearman": spearman(a, train_counts),
    }


def adversarial_confusion(
    labels: np.ndarray, adv_pred: np.ndarray, broken: np.ndarray, num_classes: int, top: int = 30
) -> dict[str, Any]:
    """Where broken points land: matrix[true][pred] over broken points, and the largest flows."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (labels[broken], adv_pred[broken]), 1)
    per_class_broken = m.sum(1)
    flows = []
    ti, pj = np.nonzero(m)
    for i, j in zip(ti, pj):
        flows.append({"true": int(i), "pred": int(j), "count": int(m[i, j]),
                      "fraction": float(m[i, j] / per_class_broken[i])})
    flows.sort(key=lambda f: (-f["count"], f["true"], f["pred"]))
    return {"matrix": m.tolist(), "top_flows": flows[:top]}
