"""Robustness curve: one audit over several budgets (``--eps 1/255,2/255,4/255,8/255``).

The budgets run in ascending order; each runs the cascade only on the points every smaller
budget left robust. A point broken at a smaller eps counts as broken at every larger one without
a new attack: its adversarial example lies inside the smaller ball, and the L-inf and L2 balls
around a point are nested (radius r inside radius R >= r), so the same example is a valid attack
at the larger budget. The curve is monotone by construction and costs far less than separate runs.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .config import AuditConfig
from .run.records import PointRecords
from .values import eps_text
from .metrics import group_means, per_class_accuracy


def _merge_examples(runs: Sequence[PointRecords], per_class: int) -> dict[str, np.ndarray]:
    """Examples from the largest budget first, topped up per class from smaller budgets."""
    keep: dict[str, list] = {}
    count: dict[int, int] = {}
    for rec in reversed(runs):
        ex = rec.examples
        if not ex:
            continue
        for i in range(len(ex["label"])):
            c = int(ex["label"][i])
            if count.get(c, 0) >= per_class:
                continue
            count[c] = count.get(c, 0) + 1
            for k, arr in ex.items():
                keep.setdefault(k, []).append(arr[i])
    return {k: np.stack(v) for k, v in keep.items()}


def merge(base: PointRecords, later: PointRecords, positions: np.ndarray) -> PointRecords:
    """Records at a larger budget: ``base`` (smaller budget, all points) with ``later`` at ``positions``."""
    pred, step = base.pred.copy(), base.step.copy()
    pred[:, positions] = later.pred
    step[:, positions] = later.step
    carried = None
    if base.carried_points is not None and later.carried_points is not None:
        carried = base.carried_points.copy()
        carried[:, positions] |= later.carried_points
    reran = None
    if base.rerun_points is not None and later.rerun_points is not None:
        reran = base.rerun_points.copy()
        reran[:, positions] |= later.rerun_points
    return PointRecords(
        base.index, base.label, base.clean_pred, pred, step, list(later.attack_names), list(later.attack_seconds),
        later.clean_seconds, list(later.zero_grad), list(later.attacked), later.rescored, later.rescore_disagreed,
        later.examples, list(later.warnings), carried_points=carried, rerun_points=reran)


def run_curve(config: AuditConfig, eval_idx: np.ndarray,
              run: Callable[[AuditConfig, np.ndarray], PointRecords],
              groups: dict[str, list[int]], num_classes: int) -> tuple[PointRecords, list[dict[str, Any]]]:
    """Run every budget of ``config.eps_curve``; returns the records at the largest and the curve.

    ``run(cfg, indices)`` audits the test-set ``indices`` with ``cfg`` (one budget). The returned
    records cover all of ``eval_idx``; their timings and attack counts add up over the budgets.
    """
    budgets = [(float(v), eps_text(float(v))) for v in sorted(config.eps_curve)]  # validated floats
    curve: list[dict[str, Any]] = []
    runs: list[PointRecords] = []
    current: Optional[PointRecords] = None
    totals = {"secs": None, "clean": 0.0, "zero": None, "attacked": None, "rescored": 0, "rejected": 0}
    warnings: list[str] = []
    for eps, text in budgets:
        cfg = replace(config, eps=eps, eps_curve=())
        if current is None:
            positions = np.arange(len(eval_idx))
        else:
            alive = current.robust_masks(config.independent)["worst_case"]
            positions = np.nonzero(alive)[0]
        rec = run(cfg, eval_idx[positions])
        runs.append(rec)
        current = rec if current is None else merge(current, rec, positions)
        totals["secs"] = (list(rec.attack_seconds) if totals["secs"] is None
                          else [a + b for a, b in zip(totals["secs"], rec.attack_seconds)])
        totals["zero"] = (list(rec.zero_grad) if totals["zero"] is None
                          else [a + b for a, b in zip(totals["zero"], rec.zero_grad)])
        totals["attacked"] = (list(rec.attacked) if totals["attacked"] is None
                              else [a + b for a, b in zip(totals["attacked"], rec.attacked)])
        totals["clean"] += rec.clean_seconds
        totals["rescored"] += rec.rescored
        totals["rejected"] += rec.rescore_disagreed
        warnings += [w for w in rec.warnings if w not in warnings]
        curve.append(curve_point(current, eps, text, config.independent, groups, num_classes, len(positions)))
    assert current is not None
    current.attack_seconds, current.zero_grad, current.attacked = totals["secs"], totals["zero"], totals["attacked"]
    current.clean_seconds, current.rescored = totals["clean"], totals["rescored"]
    current.rescore_disagreed = totals["rejected"]
    current.warnings = warnings
    current.examples = _merge_examples(runs, config.examples_per_class)
    return current, curve


def curve_point(records: PointRecords, eps: float, text: str, independent: bool, groups: dict[str, list[int]],
                num_classes: int, attacked: int) -> dict[str, Any]:
    """One entry of ``results["curve"]``: worst-case robust accuracy at this budget."""
    mask = records.robust_masks(independent)["worst_case"]
    acc, k, n = per_class_accuracy(mask, records.label, num_classes)
    valid = ~np.isnan(acc)
    return {
        "eps": float(eps), "eps_text": text,
        "overall": float(k.sum() / n.sum()) if n.sum() else None,
        "balanced": float(np.nanmean(acc)) if valid.any() else None,
        "groups": group_means(acc, groups),
        "per_class": [None if np.isnan(a) else float(a) for a in acc],
        "points_run": int(attacked),  # points the cascade ran on at this budget (the rest were broken already)
    }
