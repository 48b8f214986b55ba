"""What a repair achieved, in one verdict a manager reads right: improved, partly improved, not improved, or
input kept.

Computed once, from the before/after audits' headline figures (the test points, never used for
selection) and whether selection kept the input model; stored in ``repair.json`` as ``outcome``
and shown on page 1 of the before/after report and in the terminal. Rules: docs/repair.md
("What the repair says it did").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

CODES = ("improved", "partly-improved", "not-improved", "input-kept")
LABELS = {"improved": "Improved", "partly-improved": "Partly improved", "not-improved": "Not improved",
          "input-kept": "Not improved (input kept)"}
MIN_GAIN = 0.01  # a change below one point of accuracy is not called a gain


@dataclass(frozen=True)
class RepairOutcome:
    """The repair's verdict and the figures behind it (fractions; changes are after − before)."""

    code: str
    headline: str
    reasons: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    clean_kept: Optional[float] = None  # after clean / before clean on the test points
    worst_case_change: Optional[float] = None
    tail_change: Optional[float] = None
    clean_change: Optional[float] = None

    @property
    def label(self) -> str:
        return LABELS[self.code]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _pts(v: float) -> str:
    return f"{100 * v:+.1f} points"


def _tail(h: Mapping[str, Any]) -> Optional[float]:
    return (h.get("robust_groups") or {}).get("tail")


def decide(before: Mapping[str, Any], after: Mapping[str, Any], *, input_kept: bool, after_meaningful: bool,
           min_clean_kept: float, kept_note: Optional[str] = None, model_file: str = "the repaired model",
           method: str = "", budget: str = "") -> RepairOutcome:
    """The outcome from the before/after headline figures (``repair._headline``) and the selection."""
    clean_b, clean_a = before.get("clean"), after.get("clean")
    wc_b, wc_a = before.get("robust_worst_case"), after.get("robust_worst_case")
    kept = clean_a / clean_b if clean_b else None
    d_wc = wc_a - wc_b if wc_a is not None and wc_b is not None else None
    d_tail = _tail(after) - _tail(before) if _tail(after) is not None and _tail(before) is not None else None
    d_clean = clean_a - clean_b if clean_a is not None and clean_b is not None else None
    figures = dict(clean_kept=kept, worst_case_change=d_wc, tail_change=d_tail, clean_change=d_clean)
    how = f" ({method}, {budget})" if method and budget else ""
    if input_kept:
        return RepairOutcome(
            "input-kept",
            f"Repair did not help, so the input model is returned unchanged: no fine-tuned version{how} was more "
            f"robust on the held-out check while keeping at least {min_clean_kept:.0%} of its clean accuracy and "
            "answering across the classes as before.",
            reasons=[kept_note] if kept_note else [],
            actions=["Try a longer budget (--train-steps-total), a smaller --lr or another --method",
                     f"Lower --min-clean-kept (now {min_clean_kept:g}) only if losing more clean accuracy is "
                     "acceptable for the robustness you need"], **figures)
    reasons = [f"worst-case robust accuracy {_pct(wc_b)} → {_pct(wc_a)}"
               + (f" ({_pts(d_wc)})" if d_wc is not None else ""),
               f"clean accuracy {_pct(clean_b)} → {_pct(clean_a)}"
               + ("" if kept is None else f": {kept:.0%} of the input's kept" if kept < 1 else ": not lower")]
    if d_tail is not None:
        reasons.insert(1, f"rare (tail) classes' robust accuracy {_pct(_tail(before))} → {_pct(_tail(after))} "
                          f"({_pts(d_tail)})")
    if not after_meaningful:
        return RepairOutcome("not-improved", "Not improved: the repaired model does not work on this data (its "
                             "audit gives no robustness grade); do not use it, keep the input model.",
                             reasons=reasons, actions=["Keep the input model"], **figures)
    gain = d_wc is not None and d_wc >= MIN_GAIN
    tail_gain = d_tail is not None and d_tail >= MIN_GAIN
    tail_ok = d_tail is None or tail_gain  # a long-tail repair is "improved" only when the rare classes gain too
    clean_ok = kept is None or kept >= min_clean_kept
    if gain and tail_ok and clean_ok:
        code = "improved"
        head = (f"Improved: the repaired model stays correct under attack on {_pct(wc_a)} of the test images "
                f"instead of {_pct(wc_b)}")
    elif gain or tail_gain:
        code = "partly-improved"
        what = [] if tail_ok else ["the rare classes got less robust" if d_tail is not None and d_tail <= -MIN_GAIN
                                   else "the rare classes did not gain"]
        what += [] if clean_ok else [f"it keeps only {kept:.0%} of the input's clean accuracy"]
        what += [] if gain else ["overall robustness did not rise by a point"]
        head = (f"Partly improved: robust accuracy under attack went from {_pct(wc_b)} to {_pct(wc_a)}, but "
                + " and ".join(what))
    else:
        code = "not-improved"
        head = (f"Not improved: on the test images the repaired model is no more robust than the input "
                f"({_pct(wc_b)} → {_pct(wc_a)} under attack)")
    if code == "improved" and d_tail is not None:
        head += f" (rare classes {_pct(_tail(before))} → {_pct(_tail(after))})"
    if code != "not-improved" and kept is not None:
        head += (f"; clean accuracy {_pct(clean_b)} → {_pct(clean_a)}" + (f", {kept:.0%} of the input's kept"
                 if kept < 1 else ", not lower than before"))
    head += "."
    actions = {"improved": [f"Use {model_file}; confirm its figures with the stronger attack suite (--suite standard)"],
               "partly-improved": [f"Weigh the changes below before using {model_file}; try another --method or "
                                   "budget for a better trade-off"],
               "not-improved": ["Keep the input model; try a longer budget, a smaller --lr or another --method"]}[code]
    return RepairOutcome(code, head, reasons=reasons, actions=actions, **figures)
