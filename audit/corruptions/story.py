"""The one sentence that compares corruption with attack: does natural damage hit the same classes?

Computed once when the audit is assembled and stored as ``summary.corruptions.note`` (with
``differs``), so summary.md and the reports show the same words. The comparison is between
accuracy *lost* from clean: head and tail group means when the training set is long-tailed,
otherwise the weakest class.
"""
from __future__ import annotations

from typing import Optional

from ..contract.model import AuditResults, CorruptionSummary

RATIO_SPLIT = 1.5  # "rare classes lose more" when the tail loses at least 1.5x what the head loses
MIN_LOSS = 0.01  # a group that loses under one point loses "nothing" (no ratio)


def _ratio(tail: Optional[float], head: Optional[float]) -> Optional[float]:
    if tail is None or head is None or head < MIN_LOSS:
        return None
    return tail / head


def _times(ratio: Optional[float]) -> str:
    return f", a tail/head ratio of {ratio:.1f}" if ratio is not None else ""


def _pts(v: float) -> str:
    return f"{100 * v:.1f} points"


def compare(results: AuditResults, corr: CorruptionSummary) -> tuple[str, bool]:
    """(sentence, whether corruption tells a different story from the attacks)."""
    s = results.summary
    if "worst_case" not in s.robust:  # --attacks none: nothing to compare with; the corruption finding alone
        return corruption_only(results, corr), False
    clean_tail, clean_head = s.clean.group("tail"), s.clean.group("head")
    robust_tail, robust_head = s.worst_case.group("tail"), s.worst_case.group("head")
    drop_tail, drop_head = corr.lost("tail"), corr.lost("head")
    if clean_head is not None and clean_tail is not None and drop_tail is not None and drop_head is not None \
            and robust_head is not None and robust_tail is not None:
        att_tail = clean_tail - robust_tail
        att_head = clean_head - robust_head
        c_ratio, a_ratio = _ratio(drop_tail, drop_head), _ratio(att_tail, att_head)
        c_tail_worse = c_ratio is not None and c_ratio >= RATIO_SPLIT or (c_ratio is None and drop_tail >= MIN_LOSS)
        a_tail_worse = a_ratio is not None and a_ratio >= RATIO_SPLIT or (a_ratio is None and att_tail >= MIN_LOSS)
        sentence = (f"Under corruption the rare (tail) classes lose {_pts(drop_tail)} of accuracy and the common "
                    f"(head) classes {_pts(drop_head)}{_times(c_ratio)}; under attack the tail loses "
                    f"{_pts(att_tail)} and the head {_pts(att_head)}{_times(a_ratio)}.")
        return sentence, c_tail_worse != a_tail_worse
    names = results.dataset.classes
    worst_c = _worst_class(results)
    worst_a = s.worst_case.worst_class
    if worst_c is None or worst_a is None:
        return "", False
    sentence = (f"The weakest class under corruption is {names[worst_c]} and under attack {names[worst_a]}.")
    return sentence, worst_c != worst_a


def corruption_only(results: AuditResults, corr: CorruptionSummary) -> str:
    """A corruption-only audit's sentence: head vs tail loss under corruption, else the weakest class."""
    tail, head = corr.lost("tail"), corr.lost("head")
    if tail is not None and head is not None:
        return (f"Under corruption the rare (tail) classes lose {_pts(tail)} of accuracy and the common "
                f"(head) classes {_pts(head)}{_times(_ratio(tail, head))}; attack "
                "robustness was not measured.")
    worst_c = _worst_class(results)
    if worst_c is None:
        return ""
    return (f"The weakest class under corruption is {results.dataset.classes[worst_c]}; attack robustness was not "
            "measured.")


def _worst_class(results: AuditResults) -> Optional[int]:
    """The class with the lowest accuracy averaged over every corruption and severity."""
    best: tuple[float, int] | None = None
    for r in results.per_class:
        means = [v.mean for v in (r.corruptions or {}).values() if v.mean is not None]
        if means:
            m = sum(means) / len(means)
            if best is None or m < best[0]:
                best = (m, r.index)
    return None if best is None else best[1]
