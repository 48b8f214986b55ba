"""Plain-language sentences generated from the figures in results.json (the reports' "findings").

They describe; they do not grade: the one verdict is ``results["verdict"]`` (audit/verdict.py,
laid out by :mod:`reports.plain`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from audit.verdict import Verdict, overall_of

from .fmt import pct, points, short_name, threat_text

SAME = 0.02  # differences below 2 points are "about the same"


def quote(name: Any) -> str:
    """A class name in typographic quotes (the templates escape it)."""
    return f"“{name}”"


def head_tail(results: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Names of the most common and the rarest group in ``dataset.groups``."""
    groups = results["dataset"].get("groups") or {}
    head = next((g for g in ("head", "many") if groups.get(g)), None)
    tail = next((g for g in ("tail", "few") if groups.get(g)), None)
    return head, tail


def _gap_sentence(results: Mapping[str, Any]) -> str | None:
    head, tail = head_tail(results)
    gap = (results["summary"].get("head_tail_gap") or {}).get("worst_case")
    if head is None or tail is None or gap is None:
        return None
    groups = results["dataset"]["groups"]
    nt, nh = len(groups[tail]), len(groups[head])
    rare = f"the {nt} rarest classes" if nt > 1 else "the rarest class"
    common = f"the {nh} most common" if nh > 1 else "the most common class"
    if abs(gap) < SAME:
        return f"Robust accuracy on {rare} is about the same as on {common} ({points(-gap)} points)."
    where = "below" if gap > 0 else "above"
    return f"Robust accuracy on {rare} is {points(abs(gap), signed=False)} points {where} {common}."


def _correlation_sentence(results: Mapping[str, Any]) -> str | None:
    sp = results["summary"]["robust"]["worst_case"].get("spearman")
    d = results["dataset"]
    if d.get("balanced") or not any((d.get("groups") or {}).values()):
        return None  # equal training counts: there is no rarity to correlate with
    if not sp or sp.get("rho") is None:
        return None
    rho, p = float(sp["rho"]), sp.get("p")
    n = len(results["per_class"])
    if p is not None and p < 0.05 and rho > 0:
        return (f"Rare classes are the weak ones: across all {n} classes, robust accuracy rises with "
                f"training count (Spearman ρ = {rho:.2f}).")
    if p is not None and p < 0.05 and rho < 0:
        return (f"Rare classes are not the weak ones: across all {n} classes, robust accuracy falls as "
                f"training count rises (Spearman ρ = {rho:.2f}).")
    ptxt = f", p = {p:.2f}" if p is not None else ""
    return (f"Across all {n} classes there is no clear link between training count and robust accuracy "
            f"(Spearman ρ = {rho:.2f}{ptxt}).")


def extra_broken(results: Mapping[str, Any]) -> list[int]:
    """Per class: test points the first attack left robust that a later attack broke."""
    first = results["attacks"][0]["name"]
    out = []
    for row in results["per_class"]:
        ra = row["robust_acc"]
        out.append(max(0, round((ra[first] - ra["worst_case"]) * row["n_eval"])))
    return out


def _attack_sentence(results: Mapping[str, Any]) -> str | None:
    attacks = results["attacks"]
    if len(attacks) < 2:
        return None
    first = short_name(attacks[0])
    later = " and ".join(dict.fromkeys(short_name(a) for a in attacks[1:]))
    extra = extra_broken(results)
    total = sum(extra)
    n_eval = sum(r["n_eval"] for r in results["per_class"]) or 1
    if total == 0:
        return f"{later} found no adversarial example that {first} missed."
    classes = sum(1 for e in extra if e)
    return (f"{later} broke {total} test images that {first} missed ({points(total / n_eval, signed=False)} "
            f"points of accuracy), in {classes} of {len(extra)} classes.")


def weakest(results: Mapping[str, Any], k: int = 3) -> list[Mapping[str, Any]]:
    """The ``k`` classes with the lowest worst-case robust accuracy (lower index first on ties, like argmin)."""
    rows = results["per_class"]
    return sorted(rows, key=lambda r: (r["robust_acc"]["worst_case"], r["index"]))[:k]


def audit_verdict(results: Mapping[str, Any]) -> dict[str, Any]:
    """{'sentences'}: the findings of an audit in plain words (no grade: that is ``results["verdict"]``)."""
    s = results["summary"]
    robust, clean = overall_of(s["robust"]["worst_case"]), overall_of(s["clean"])
    sentences = []
    flip = f": an attacker flips {1 - robust / clean:.0%} of its correct predictions" if clean > 0 else ""
    sentences.append(f"Under attack ({threat_text(results['threat_model'])}) the model keeps {pct(robust)} of "
                     f"the test images correct, down from {pct(clean)} clean{flip}.")
    weak = weakest(results)
    best = max(results["per_class"], key=lambda r: r["robust_acc"]["worst_case"])
    strongest = f"strongest: {quote(best['name'])} {pct(best['robust_acc']['worst_case'])}"
    lowest = weak[0]["robust_acc"]["worst_case"]
    tied = sum(1 for r in results["per_class"] if r["robust_acc"]["worst_case"] == lowest)
    if tied > len(weak):
        names = ", ".join(quote(r["name"]) for r in weak)
        sentences.append(f"{tied} classes share the lowest robust accuracy, {pct(lowest)} (e.g. {names}); "
                         f"{strongest}.")
    else:
        listed = ", ".join(f"{quote(r['name'])} {pct(r['robust_acc']['worst_case'])}" for r in weak)
        sentences.append(f"Weakest classes under attack: {listed}; {strongest}.")
    sentences += [t for t in (_gap_sentence(results), _correlation_sentence(results), _attack_sentence(results)) if t]
    return {"sentences": sentences}


def compare_verdict(before: Mapping[str, Any], after: Mapping[str, Any],
                    worse: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """{'sentences'} for a before/after comparison; ``worse`` = (class name, robust delta) of flagged classes.

    A change of verdict is named with the two runs' own verdict labels.
    """
    sb, sa = before["summary"], after["summary"]
    rb, ra = overall_of(sb["robust"]["worst_case"]), overall_of(sa["robust"]["worst_case"])
    cb, ca = overall_of(sb["clean"]), overall_of(sa["clean"])
    sentences = [f"Robust accuracy (worst case) went from {pct(rb)} to {pct(ra)} ({points(ra - rb)} points); "
                 f"balanced robust accuracy from {pct(sb['robust']['worst_case']['mean'])} to "
                 f"{pct(sa['robust']['worst_case']['mean'])}."]
    dc = ca - cb
    if dc <= -0.005:
        sentences.append(f"The trade-off: clean accuracy fell {points(-dc, signed=False)} points "
                         f"({pct(cb)} → {pct(ca)}).")
    elif dc >= 0.005:
        sentences.append(f"Clean accuracy rose too, by {points(dc, signed=False)} points ({pct(cb)} → {pct(ca)}).")
    else:
        sentences.append(f"Clean accuracy is unchanged within half a point ({pct(cb)} → {pct(ca)}).")
    gb = (sb.get("head_tail_gap") or {}).get("worst_case")
    ga = (sa.get("head_tail_gap") or {}).get("worst_case")
    head, tail = head_tail(after)
    if gb is not None and ga is not None and head and tail:
        if abs(ga) < abs(gb) - SAME / 2:
            trend = "narrowed"
        elif abs(ga) > abs(gb) + SAME / 2:
            trend = "widened"
        else:
            trend = "barely changed"
        gh = sa["robust"]["worst_case"]["groups"].get(head, 0) - sb["robust"]["worst_case"]["groups"].get(head, 0)
        gt = sa["robust"]["worst_case"]["groups"].get(tail, 0) - sb["robust"]["worst_case"]["groups"].get(tail, 0)
        sentences.append(f"The {head}/{tail} robustness gap {trend}, from {points(gb, signed=False)} to "
                         f"{points(ga, signed=False)} points: {tail} classes {points(gt)} points, "
                         f"{head} classes {points(gh)}.")
    if worse:
        listed = ", ".join(f"{quote(n)} ({points(d)} points)" for n, d in list(worse)[:5])
        more = f" and {len(worse) - 5} more" if len(worse) > 5 else ""
        noun = "class" if len(worse) == 1 else "classes"
        sentences.append(f"{len(worse)} {noun} got less robust beyond the 95% interval of the before run: "
                         f"{listed}{more}.")
    else:
        sentences.append("No class got less robust beyond the 95% interval of the before run.")
    wk_b, wk_a = weakest(before, 1)[0], weakest(after, 1)[0]
    sentences.append(f"Weakest class after: {quote(wk_a['name'])} at {pct(wk_a['robust_acc']['worst_case'])} "
                     f"(before: {quote(wk_b['name'])} at {pct(wk_b['robust_acc']['worst_case'])}).")
    lb, la = Verdict.from_json(before["verdict"]).label, Verdict.from_json(after["verdict"]).label
    if lb != la:
        sentences.insert(1, f"The verdict moved from “{lb}” to “{la}”.")
    return {"sentences": sentences}
