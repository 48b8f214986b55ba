"""What a repair achieved, in one verdict a manager reads right: improved, partly improved, no measurable
change, not improved, or input kept.

Computed once, from the before/after audits of the same evaluation points (never used for
selection): their headline figures and the paired tests of :mod:`.significance` (McNemar's exact
test on the points whose outcome changed). A change counts only when it is significant; stored in
``repair.json`` as ``outcome`` (:class:`audit.contract.repair.RepairOutcome`, the tests under
``outcome.tests``) and shown on page 1 of the before/after report and in the terminal. Rules: docs/repair.md
("What the repair says it did").
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from audit.contract.repair import (OUTCOME_CODES as CODES, OUTCOME_LABELS as LABELS, Headline, PairedTests,
                               RepairOutcome)
from audit.contract.codec import from_json

from .significance import change_words, p_words

__all__ = ["CODES", "LABELS", "RepairOutcome", "decide"]
CLEAN_LOSS_NAMED = 0.05  # a clean loss above 5 points is named in the headline, with the classes that lost most


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _pts(v: float) -> str:
    return f"{100 * v:+.1f} points"


def _tail(h: Headline) -> Optional[float]:
    return h.group("tail")


def _dir(tests: Optional[Mapping[str, Any]], key: str) -> str:
    """"up", "down" or "none" (not significant, or not tested)."""
    t = (tests or {}).get(key)
    return t["direction"] if isinstance(t, Mapping) else "none"


def _clean_loss_words(d_clean: Optional[float], clean_b: Optional[float], clean_a: Optional[float],
                      class_changes: Sequence[tuple[str, float]]) -> str:
    """'; clean accuracy fell 10.5 points (82.0% → 71.5%), most in “cat” (−35 points) ...' when above 5
    points."""
    if d_clean is None or d_clean > -CLEAN_LOSS_NAMED:
        return ""
    worst = [(n, d) for n, d in sorted(class_changes, key=lambda x: x[1]) if d < 0][:3]
    most = (", most in " + ", ".join(f"“{n}” ({100 * d:+.0f} points)" for n, d in worst)) if worst else ""
    return f"; clean accuracy fell {-100 * d_clean:.1f} points ({_pct(clean_b)} → {_pct(clean_a)}){most}"


def _significance(tests: Optional[Mapping[str, Any]]) -> str:
    """Page 1's answer to "is the change real?", in one or two sentences."""
    if not tests:
        return ("The change was not tested for significance (the per-point results of the audits are missing), "
                "so no gain is claimed.")
    parts = [change_words(tests["worst_case"], f"on the same {tests['worst_case']['n']} test images")]
    if tests.get("tail"):
        parts.append(change_words(tests["tail"], f"in the rare classes ({tests['tail']['n']} images)"))
    parts.append(change_words(tests["clean"], "without attack", outcome="correct"))
    text = "; ".join(parts)
    return (text[0].upper() + text[1:] + ". McNemar's exact test on the same images before and after: p below 0.05 "
            "means a change this large is unlikely to be chance; otherwise it is not counted as a change.")


def decide(before: Headline | Mapping[str, Any], after: Headline | Mapping[str, Any], *, input_kept: bool,
           after_meaningful: bool, min_clean_kept: float, tests: Optional[Mapping[str, Any]],
           kept_note: Optional[str] = None,
           model_file: str = "the repaired model", method: str = "", budget: str = "",
           class_clean_changes: Sequence[tuple[str, float]] = (),
           actions_if_not: Optional[list[str]] = None) -> RepairOutcome:
    """The outcome from the before/after headline figures (``repair._headline``), the paired tests
    (:func:`.significance.paired_tests`, None when they could not be run) and the selection.

    ``class_clean_changes`` (class name, clean change) names the classes that lost most when the clean
    accuracy fell by more than 5 points; ``actions_if_not`` is the advice when nothing measurably
    improved (:func:`.advice.next_steps`).
    """
    before, after = (h if isinstance(h, Headline) else from_json(Headline, dict(h)) for h in (before, after))
    clean_b, clean_a = before.clean, after.clean
    wc_b, wc_a = before.robust_worst_case, after.robust_worst_case
    kept = clean_a / clean_b if clean_b else None
    d_wc = wc_a - wc_b if wc_a is not None and wc_b is not None else None
    d_tail = _tail(after) - _tail(before) if _tail(after) is not None and _tail(before) is not None else None
    d_clean = clean_a - clean_b if clean_a is not None and clean_b is not None else None
    figures = dict(clean_kept=kept, worst_case_change=d_wc, tail_change=d_tail, clean_change=d_clean,
                   tests=from_json(PairedTests, dict(tests)) if tests else None, significance=_significance(tests))
    how = f" ({method}, {budget})" if method and budget else ""
    retry = ["Keep the input model"] + list(actions_if_not or ["Try another --method"])
    if input_kept:
        return RepairOutcome(
            "input-kept",
            f"Repair did not help, so the input model is returned unchanged: no fine-tuned version{how} was more "
            f"robust on the held-out check while keeping at least {min_clean_kept:.0%} of its clean accuracy and "
            "answering across the classes as before.",
            reasons=[kept_note] if kept_note else [],
            actions=retry[1:] + [f"Lower --min-clean-kept (now {min_clean_kept:g}) only if losing more clean accuracy "
                             "is acceptable for the robustness you need"], **figures)
    reasons = [f"worst-case robust accuracy {_pct(wc_b)} → {_pct(wc_a)}"
               + (f" ({_pts(d_wc)}, {_sig(tests, 'worst_case')})" if d_wc is not None else ""),
               f"clean accuracy {_pct(clean_b)} → {_pct(clean_a)}"
               + ("" if kept is None else f": {kept:.0%} of the input's kept" if kept < 1
                  else ": not lower" if clean_a == clean_b else ": higher")
               + (f" ({_sig(tests, 'clean')})" if tests else "")]
    if d_tail is not None:
        reasons.insert(1, f"rare (tail) classes' robust accuracy {_pct(_tail(before))} → {_pct(_tail(after))} "
                          f"({_pts(d_tail)}, {_sig(tests, 'tail')})")
    if not after_meaningful:
        return RepairOutcome("not-improved", "Not improved: the repaired model does not work on this data (its "
                             "audit gives no robustness grade); do not use it, keep the input model.",
                             reasons=reasons, actions=["Keep the input model"], **figures)
    code, head = _verdict(tests, kept, min_clean_kept, wc_b, wc_a, d_tail, before, after)
    if code in ("improved", "partly-improved") and kept is not None:
        head += (f"; clean accuracy {_pct(clean_b)} → {_pct(clean_a)}" + (f", {kept:.0%} of the input's kept"
                 if kept < 1 else ", not lower than before" if clean_a == clean_b else ", higher than before"))
    head += _clean_loss_words(d_clean, clean_b, clean_a, class_clean_changes) + "."
    actions = {"improved": [f"Use {model_file}; confirm its figures with the stronger attack suite (--suite standard)"],
               "partly-improved": [f"Weigh the changes below before using {model_file}"] + retry[1:],
               "no-change": retry, "not-improved": retry}[code]
    return RepairOutcome(code, head, reasons=reasons, actions=actions, **figures)


def _sig(tests: Optional[Mapping[str, Any]], key: str) -> str:
    t = (tests or {}).get(key)
    if not isinstance(t, Mapping):
        return "not tested"
    return f"{'significant' if t['significant'] else 'not significant'}, {p_words(t['p_value'])}"


def _verdict(tests: Optional[Mapping[str, Any]], kept: Optional[float], min_clean_kept: float,
             wc_b: Optional[float], wc_a: Optional[float], d_tail: Optional[float],
             before: Headline, after: Headline) -> tuple[str, str]:
    """(code, headline without the clean part): only significant changes count."""
    wc, tail, clean = _dir(tests, "worst_case"), _dir(tests, "tail"), _dir(tests, "clean")
    clean_ok = (kept is None or kept >= min_clean_kept) and not (clean == "down" and kept is not None
                                                                 and kept < min_clean_kept)
    has_tail = d_tail is not None and (tests or {}).get("tail") is not None
    if wc == "up" and clean_ok and tail != "down":
        head = (f"Improved: the repaired model stays correct under attack on {_pct(wc_a)} of the test images "
                f"instead of {_pct(wc_b)}, a significant gain")
        if has_tail:
            head += (f" (rare classes {_pct(_tail(before))} → {_pct(_tail(after))}"
                     + (", also significant)" if tail == "up" else ", a change too small to tell from chance)"))
        return "improved", head
    if wc == "up" or tail == "up":
        moved = ("overall robustness rose significantly" if wc == "up" else
                 f"the rare classes' robustness rose significantly ({_pct(_tail(before))} → {_pct(_tail(after))})")
        what = [] if clean_ok else [f"it keeps only {kept:.0%} of the input's clean accuracy"]
        what += ["the rare classes got significantly less robust"] if tail == "down" else []
        what += [] if wc == "up" else [f"overall robustness did not change measurably ({_pct(wc_b)} → {_pct(wc_a)})"]
        return "partly-improved", f"Partly improved: {moved}, but " + " and ".join(what)
    if "down" in (wc, tail, clean):
        lost = [w for w, d in (("robust accuracy under attack", wc), ("the rare classes' robustness", tail),
                               ("clean accuracy", clean)) if d == "down"]
        return "not-improved", (f"Not improved: no significant gain, and {' and '.join(lost)} fell significantly "
                                f"({_pct(wc_b)} → {_pct(wc_a)} under attack)")
    return "no-change", (f"No measurable change: on the test images the repaired model is not measurably more robust "
                         f"than the input ({_pct(wc_b)} → {_pct(wc_a)} under attack, a change too small to tell from "
                         "chance)")
