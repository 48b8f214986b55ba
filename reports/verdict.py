"""Plain-language sentences generated from the figures in results.json (the reports' "findings").

They describe; they do not grade: the one verdict is ``results.verdict`` (audit/checks/verdict.py,
laid out by :mod:`reports.plain`).
"""
from __future__ import annotations

from typing import Any, Sequence

from audit.contract.model import AuditResults, ClassResult, Verdict

from .fmt import pct, points, short_name, threat_text

SAME = 0.02  # differences below 2 points are "about the same"


def quote(name: Any) -> str:
    """A class name in typographic quotes (the templates escape it)."""
    return f"“{name}”"


def stored_verdict(results: AuditResults) -> Verdict:
    """The run's one verdict (``audit.checks.verdict.grade_on_load`` grades a file written before verdicts were
    stored)."""
    if results.verdict is None:
        raise ValueError("results without a verdict: grade them with audit.checks.verdict.grade_on_load")
    return results.verdict


def head_tail(results: AuditResults) -> tuple[str | None, str | None]:
    """Names of the most common and the rarest group in ``dataset.groups``."""
    head = next((g for g in ("head", "many") if results.group_of(g)), None)
    tail = next((g for g in ("tail", "few") if results.group_of(g)), None)
    return head, tail


def _gap_sentence(results: AuditResults) -> str | None:
    head, tail = head_tail(results)
    gap = results.summary.robust_gap
    if head is None or tail is None or gap is None:
        return None
    nt, nh = len(results.group_of(tail)), len(results.group_of(head))
    rare = f"the {nt} rarest classes" if nt > 1 else "the rarest class"
    common = f"the {nh} most common" if nh > 1 else "the most common class"
    if abs(gap) < SAME:
        return f"Robust accuracy on {rare} is about the same as on {common} ({points(-gap)} points)."
    where = "below" if gap > 0 else "above"
    return f"Robust accuracy on {rare} is {points(abs(gap), signed=False)} points {where} {common}."


def _correlation_sentence(results: AuditResults) -> str | None:
    sp = results.worst_case.spearman
    d = results.dataset
    if d.balanced or not any(d.groups.values()):
        return None  # equal training counts: there is no rarity to correlate with
    if sp is None or sp.rho is None:
        return None
    rho, p = float(sp.rho), sp.p
    n = len(results.per_class)
    if p is not None and p < 0.05 and rho > 0:
        return (f"Rare classes are the weak ones: across all {n} classes, robust accuracy rises with "
                f"training count (Spearman ρ = {rho:.2f}).")
    if p is not None and p < 0.05 and rho < 0:
        return (f"Rare classes are not the weak ones: across all {n} classes, robust accuracy falls as "
                f"training count rises (Spearman ρ = {rho:.2f}).")
    ptxt = f", p = {p:.2f}" if p is not None else ""
    return (f"Across all {n} classes there is no clear link between training count and robust accuracy "
            f"(Spearman ρ = {rho:.2f}{ptxt}).")


def extra_broken(results: AuditResults) -> list[int]:
    """Per class: test points the first attack left robust that a later attack broke."""
    first = results.attacks[0].name
    return [max(0, round((row.robust_acc[first] - row.worst_case) * row.n_eval)) for row in results.per_class]


def _attack_sentence(results: AuditResults) -> str | None:
    """What the later attacks found beyond the first, naming only the attacks that broke something (their own
    counts from ``broken_by``) and the right plural."""
    attacks = results.attacks
    if len(attacks) < 2:
        return None
    first = short_name(attacks[0])
    extra = extra_broken(results)
    total = sum(extra)
    n_eval = sum(r.n_eval for r in results.per_class) or 1
    if total == 0:
        later = " and ".join(dict.fromkeys(short_name(a) for a in attacks[1:]))
        return f"{later} found no adversarial example that {first} missed."
    by = {}
    for a in attacks[1:]:
        k = sum(int((r.broken_by or {}).get(a.name, 0)) for r in results.per_class)
        if k:
            by[short_name(a)] = by.get(short_name(a), 0) + k
    split = ""
    if len(by) == 1 and sum(by.values()) == total and results.mode != "independent":
        who = next(iter(by))
    elif by and sum(by.values()) == total and results.mode != "independent":
        who, split = "The later attacks", " (" + ", ".join(f"{name} {k}" for name, k in by.items()) + ")"
    else:  # no per-attack counts (older files, independent mode): the later attacks together
        who = " and ".join(dict.fromkeys(short_name(a) for a in attacks[1:]))
    classes = sum(1 for e in extra if e)
    noun = "test image" if total == 1 else "test images"
    return (f"{who} broke {total} {noun}{split} that {first} missed ({points(total / n_eval, signed=False)} "
            f"points of accuracy), in {classes} of {len(extra)} classes.")


def weakest(results: AuditResults, k: int = 3) -> list[ClassResult]:
    """The ``k`` classes with the lowest worst-case robust accuracy (lower index first on ties, like argmin)."""
    return sorted(results.per_class, key=lambda r: (r.worst_case, r.index))[:k]


def by_count(rows: Sequence[ClassResult]) -> list[ClassResult]:
    """Most common class first (the order of every per-class chart and table)."""
    return sorted(rows, key=lambda r: (-(r.train_count or 0), r.index))


def headline_figures(results: AuditResults) -> tuple[float | None, float | None]:
    """(worst-case robust, clean) accuracy as a headline quotes them: over every point, else the class mean."""
    return results.worst_case.headline, results.summary.clean.headline


def audit_verdict(results: AuditResults) -> dict[str, Any]:
    """{'sentences'}: the findings of an audit in plain words (no grade: that is ``results.verdict``)."""
    robust, clean = headline_figures(results)
    sentences = []
    flip = f": an attacker flips {1 - robust / clean:.0%} of its correct predictions" if clean > 0 else ""
    sentences.append(f"Under attack ({threat_text(results.threat_model)}) the model keeps {pct(robust)} of "
                     f"the test images correct, down from {pct(clean)} clean{flip}.")
    weak = weakest(results)
    best = max(results.per_class, key=lambda r: r.worst_case)
    strongest = f"strongest: {quote(best.name)} {pct(best.worst_case)}"
    lowest = weak[0].worst_case
    tied = sum(1 for r in results.per_class if r.worst_case == lowest)
    if tied > len(weak):
        names = ", ".join(quote(r.name) for r in weak)
        sentences.append(f"{tied} classes share the lowest robust accuracy, {pct(lowest)} (e.g. {names}); "
                         f"{strongest}.")
    else:
        listed = ", ".join(f"{quote(r.name)} {pct(r.worst_case)}" for r in weak)
        sentences.append(f"Weakest classes under attack: {listed}; {strongest}.")
    sentences += [t for t in (_gap_sentence(results), _correlation_sentence(results), _attack_sentence(results)) if t]
    return {"sentences": sentences}


def compare_verdict(before: AuditResults, after: AuditResults,
                    worse: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """{'sentences'} for a before/after comparison; ``worse`` = (class name, robust delta) of flagged classes.

    A change of verdict is named with the two runs' own verdict labels.
    """
    (rb, cb), (ra, ca) = headline_figures(before), headline_figures(after)
    sentences = [f"Robust accuracy (worst case) went from {pct(rb)} to {pct(ra)} ({points(ra - rb)} points); "
                 f"balanced robust accuracy from {pct(before.worst_case.mean)} to {pct(after.worst_case.mean)}."]
    dc = ca - cb
    if dc <= -0.005:
        sentences.append(f"The trade-off: clean accuracy fell {points(-dc, signed=False)} points "
                         f"({pct(cb)} → {pct(ca)}).")
    elif dc >= 0.005:
        sentences.append(f"Clean accuracy rose too, by {points(dc, signed=False)} points ({pct(cb)} → {pct(ca)}).")
    else:
        sentences.append(f"Clean accuracy is unchanged within half a point ({pct(cb)} → {pct(ca)}).")
    gap = _gap_change(before, after)
    if gap:
        sentences.append(gap)
    if worse:
        listed = ", ".join(f"{quote(n)} ({points(d)} points)" for n, d in list(worse)[:5])
        more = f" and {len(worse) - 5} more" if len(worse) > 5 else ""
        noun = "class" if len(worse) == 1 else "classes"
        sentences.append(f"{len(worse)} {noun} got less robust beyond the 95% interval of the before run: "
                         f"{listed}{more}.")
    else:
        sentences.append("No class got less robust beyond the 95% interval of the before run.")
    wk_b, wk_a = weakest(before, 1)[0], weakest(after, 1)[0]
    sentences.append(f"Weakest class after: {quote(wk_a.name)} at {pct(wk_a.worst_case)} "
                     f"(before: {quote(wk_b.name)} at {pct(wk_b.worst_case)}).")
    lb, la = stored_verdict(before).label, stored_verdict(after).label
    if lb != la:
        sentences.insert(1, f"The verdict moved from “{lb}” to “{la}”.")
    return {"sentences": sentences}


def _gap_change(before: AuditResults, after: AuditResults) -> str | None:
    """How the head/tail robustness gap moved, or None when either run has no gap or groups."""
    gb, ga = before.summary.robust_gap, after.summary.robust_gap
    head, tail = head_tail(after)
    if gb is None or ga is None or not head or not tail:
        return None
    if abs(ga) < abs(gb) - SAME / 2:
        trend = "narrowed"
    elif abs(ga) > abs(gb) + SAME / 2:
        trend = "widened"
    else:
        trend = "barely changed"
    wb, wa = before.worst_case.groups or {}, after.worst_case.groups or {}
    gh = wa.get(head, 0) - wb.get(head, 0)
    gt = wa.get(tail, 0) - wb.get(tail, 0)
    return (f"The {head}/{tail} robustness gap {trend}, from {points(gb, signed=False)} to "
            f"{points(ga, signed=False)} points: {tail} classes {points(gt)} points, {head} classes {points(gh)}.")
