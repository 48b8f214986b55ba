"""Class-wise metrics: intervals, cross-class summary, confusion, robust masks."""
from __future__ import annotations

import numpy as np
import pytest

from audit.run.records import PointRecords
from audit.metrics import adversarial_confusion, cross_class_summary, per_class_accuracy, spearman
from audit.contract.figures import wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_per_class_and_summary():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    correct = np.array([1, 0, 1, 1, 1, 0, 0, 0, 1], bool)
    acc, k, n = per_class_accuracy(correct, labels, 4)
    assert acc[:3].tolist() == [0.5, 1.0, 0.25] and np.isnan(acc[3])
    assert k.tolist() == [1, 3, 1, 0] and n.tolist() == [2, 3, 4, 0]
    s = cross_class_summary(acc[:3], int(k.sum()), 9, [100, 50, 5], {"head": [0], "medium": [1], "tail": [2]})
    assert s["mean"] == pytest.approx((0.5 + 1 + 0.25) / 3)
    assert s["overall"] == pytest.approx(5 / 9)
    assert s["worst_class"] == 2 and s["best_class"] == 1 and s["gap"] == pytest.approx(0.75)
    assert s["groups"] == {"head": 0.5, "medium": 1.0, "tail": 0.25}
    assert spearman([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4])["rho"] == pytest.approx(1.0)
    assert spearman([0.1, 0.1, 0.1], [1, 2, 3]) is None


def test_confusion_counts_only_broken_points():
    labels = np.array([0, 0, 0, 1, 1])
    adv = np.array([1, 1, 2, 0, 1])
    broken = np.array([True, True, True, True, False])
    c = adversarial_confusion(labels, adv, broken, 3)
    assert c["matrix"] == [[0, 2, 1], [1, 0, 0], [0, 0, 0]]
    top = c["top_flows"][0]
    assert (top["true"], top["pred"], top["count"]) == (0, 1, 2) and top["fraction"] == pytest.approx(2 / 3)


def _records(step):
    step = np.asarray(step)
    n = step.shape[1]
    return PointRecords(np.arange(n), np.zeros(n, np.int64), np.array([0, 0, 0, 1]), np.zeros_like(step), step,
                        ["pgd", "temp-pgd"], [0, 0], 0, [0, 0], [0, 0])


def test_robust_masks_cascade_is_cumulative_and_independent_is_not():
    rec = _records([[0, -1, -1, -1], [-1, 3, -1, -1]])  # point 3 is clean-misclassified
    m = rec.robust_masks(independent=False)
    assert m["pgd"].tolist() == [False, True, True, False]
    assert m["temp-pgd"].tolist() == [False, False, True, False]
    assert m["worst_case"].tolist() == m["temp-pgd"].tolist()
    rec = _records([[0, -1, -1, -1], [-1, 3, -1, -1]])
    m = rec.robust_masks(independent=True)
    assert m["temp-pgd"].tolist() == [True, False, True, False]
    assert m["worst_case"].tolist() == [False, False, True, False]


def test_sanity_warning_when_weak_attack_beats_strong_one():
    step = np.full((2, 200), -1)
    step[0, :40] = 1  # pgd breaks 40
    step[1, :10] = 2  # temp-pgd only 10 of the same points
    rec = PointRecords(np.arange(200), np.zeros(200, np.int64), np.zeros(200, np.int64), np.zeros_like(step), step,
                       ["pgd", "temp-pgd"], [0, 0], 0, [0, 0], [0, 0])
    (w,) = rec.sanity_warnings(independent=True)
    assert "temp-pgd broke fewer points than plain PGD (10 vs 40)" in w
    assert rec.sanity_warnings(independent=False) == []  # in the cascade the later attack sees fewer points
    step[1, :40] = 3
    assert rec.sanity_warnings(independent=True) == []
