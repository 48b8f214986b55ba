"""Is a before/after change on the same evaluation points more than noise? McNemar's exact test.

Both audits score the *same* points (the after-audit reuses the before-audit's points), and each
point's outcome is binary (robust or not, clean-correct or not). Only the points whose outcome
changed carry information about the change: ``gained`` (robust after, not before) and ``lost``
(the reverse). Under "no change" each changed point is equally likely to be either, so
``gained ~ Binomial(gained + lost, 1/2)``; McNemar's exact test is the two-sided binomial test
of that. It is exact for the small counts a per-class or tail test meets, needs no seed (a
paired bootstrap would add resampling noise to a p-value that is printed on page 1) and is the
standard test for paired binary outcomes. Rules and thresholds: docs/repair.md ("Is the change
real?").
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy.stats import binomtest

log = logging.getLogger(__name__)

ALPHA = 0.05  # two-sided significance level of every before/after test
TEST_NAME = "McNemar's exact test (two-sided binomial test on the points whose outcome changed)"


@dataclass(frozen=True)
class PairedTest:
    """One paired before/after comparison of a binary outcome on the same points."""

    n: int  # points compared
    before: int  # points with the outcome before
    after: int  # ... and after
    gained: int  # outcome after but not before
    lost: int  # outcome before but not after
    p_value: float
    alpha: float = ALPHA

    @property
    def change(self) -> float:
        """After minus before, as a share of the points."""
        return (self.after - self.before) / self.n if self.n else 0.0

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha and self.gained != self.lost

    @property
    def direction(self) -> str:
        """"up" or "down" when significant, else "none"."""
        if not self.significant:
            return "none"
        return "up" if self.gained > self.lost else "down"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "change": self.change, "significant": self.significant, "direction": self.direction}


def mcnemar(before: np.ndarray, after: np.ndarray, alpha: float = ALPHA) -> PairedTest:
    """McNemar's exact test of ``after`` against ``before`` (bool arrays over the same points, same order)."""
    b, a = np.asarray(before, bool), np.asarray(after, bool)
    if b.shape != a.shape:
        raise ValueError(f"paired test needs the same points before and after ({b.shape} vs {a.shape})")
    gained, lost = int((a & ~b).sum()), int((b & ~a).sum())
    p = 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5).pvalue)
    return PairedTest(n=int(b.size), before=int(b.sum()), after=int(a.sum()), gained=gained, lost=lost,
                      p_value=min(1.0, p), alpha=alpha)


@dataclass(frozen=True)
class PointOutcomes:
    """Per-point outcomes of one audit (from its points.json), indexed by evaluation point."""

    index: np.ndarray
    label: np.ndarray
    clean: np.ndarray  # clean-correct
    robust: np.ndarray  # clean-correct and unbroken by every attack of the cascade (the worst case)


def read_points(folder: Path) -> Optional[PointOutcomes]:
    """The per-point outcomes an audit wrote to ``folder/points.json``; None when missing or unreadable."""
    path = Path(folder) / "points.json"
    try:
        d = json.loads(path.read_text())
        label = np.asarray(d["label"], np.int64)
        clean = np.asarray(d["clean_pred"], np.int64) == label
        broken = np.zeros(label.shape, bool)
        for att in (d.get("attacks") or {}).values():
            broken |= np.asarray(att["step"], np.int64) >= 0
        return PointOutcomes(np.asarray(d["index"], np.int64), label, clean, clean & ~broken)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("no paired test: %s could not be read (%s)", path, exc)
        return None


def paired_tests(before: PointOutcomes, after: PointOutcomes, tail_classes: Sequence[int],
                 alpha: float = ALPHA) -> Optional[dict[str, Any]]:
    """Robust (worst case), tail robust and clean tests on the points both audits scored; None without any."""
    common, ib, ia = np.intersect1d(before.index, after.index, assume_unique=True, return_indices=True)
    if not len(common) or not np.array_equal(before.label[ib], after.label[ia]):
        return None
    tail = np.isin(before.label[ib], np.asarray(list(tail_classes), np.int64))
    out: dict[str, Any] = {
        "test": TEST_NAME, "alpha": alpha, "n_points": int(len(common)),
        "worst_case": mcnemar(before.robust[ib], after.robust[ia], alpha).to_dict(),
        "clean": mcnemar(before.clean[ib], after.clean[ia], alpha).to_dict(),
        "tail": mcnemar(before.robust[ib][tail], after.robust[ia][tail], alpha).to_dict() if tail.any() else None,
    }
    return out


def p_words(p: float) -> str:
    """'p = 0.003', 'p < 0.001'."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def change_words(t: dict[str, Any], where: str, outcome: str = "robust under attack") -> str:
    """'on the same 500 test images 53 became robust under attack and 10 stopped being (p < 0.001, significant)'."""
    verdict = "significant" if t["significant"] else "not significant"
    return f"{where} {t['gained']} became {outcome} and {t['lost']} stopped being ({p_words(t['p_value'])}, {verdict})"
