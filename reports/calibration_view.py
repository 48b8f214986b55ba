"""The "Calibration" section of the audit report and the before/after figures of the comparison report.

Read from ``summary.calibration`` and ``per_class[i].calibration`` (audit/calibration.py writes them;
docs/method.md, "Calibration"). Results written before calibration was measured have neither: every
function here then returns None and the templates leave the section out.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from markupsafe import Markup

from .charts import FULL_WIDTH, group_colour, short
from .fmt import interval, num, pct, points
from .svg import AFTER, BEFORE, CLEAN, ROBUST, new_figure, style, to_svg
from .verdict import head_tail

HIGH = "confident_error_90"  # wrong with a confidence above 0.9
MID = "confident_error_50"
GROUP_ORDER = ("head", "many", "medium", "tail", "few")


def _cal(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cal = (results.get("summary") or {}).get("calibration")
    return cal if isinstance(cal, Mapping) and cal.get("clean") else None


def _groups(side: Mapping[str, Any] | None) -> list[str]:
    names = list(((side or {}).get("reliability") or {}).get("groups") or {})
    return sorted(names, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g))


def _rate(block: Mapping[str, Any] | None, key: str = HIGH) -> float | None:
    return ((block or {}).get(key) or {}).get("rate")


def reliability_chart(chart_id: str, panels: Sequence[tuple[str, Sequence[tuple[str, Mapping[str, Any] | None, str]]]],
                      *, label: str, height: float = 2.3) -> Markup | None:
    """One reliability diagram per panel: accuracy against mean confidence in each non-empty bin (marker area by
    the bin's share of points), the diagonal of perfect calibration dashed. ``panels`` are (title, [(legend, bins,
    colour), ...]) with bins as ``summary.calibration.*.reliability`` stores them (None: series left out)."""
    panels = [(t, [s for s in series if s[1] and any(s[1].get("count") or [])]) for t, series in panels]
    panels = [(t, series) for t, series in panels if series]
    if not panels:
        return None
    with style():
        fig = new_figure(FULL_WIDTH, height)
        axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        for ax, (title, series) in zip(axes, panels):
            ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=0.8)
            for legend, bins, colour in series:
                count = np.asarray(bins["count"], dtype=float)
                conf = np.array([np.nan if v is None else v for v in bins["confidence"]], dtype=float)
                acc = np.array([np.nan if v is None else v for v in bins["accuracy"]], dtype=float)
                keep = count > 0
                share = count[keep] / max(1.0, count.sum())
                ax.plot(conf[keep], acc[keep], color=colour, linewidth=1.0, alpha=0.8)
                ax.scatter(conf[keep], acc[keep], s=6 + 120 * share, color=colour, zorder=3, linewidths=0,
                           label=legend)
            ax.set_xlim(0, 1.02)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.set_title(short(title, 22), color=group_colour(title) if title in GROUP_ORDER else "#222222")
            ax.set_xlabel("confidence")
            ax.grid(True, axis="both")
        axes[0].set_ylabel("accuracy")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=max(1, len(labels)), frameon=False,
                   handlelength=1.2)
        return to_svg(fig, chart_id, label)


def _finding(results: Mapping[str, Any], cal: Mapping[str, Any]) -> list[str]:
    clean, att = cal["clean"], cal.get("attacked")
    out = []
    head, tail = head_tail(results)
    if att:
        gt = (att.get("groups") or {})
        if head and tail and tail in gt and head in gt:
            out.append(f"Under attack, {pct(_rate(gt[tail]))} of the tail-class test images are wrong with a "
                       f"confidence above 0.9, against {pct(_rate(gt[head]))} for the head classes (without attack: "
                       f"{pct(_rate((clean.get('groups') or {}).get(tail)))} and "
                       f"{pct(_rate((clean.get('groups') or {}).get(head)))}).")
        else:
            out.append(f"Under attack, {pct(_rate(att))} of the test images are wrong with a confidence above 0.9 "
                       f"(without attack: {pct(_rate(clean))}).")
        out.append(f"Calibration error (ECE) is {pct(clean.get('ece'))} without attack and {pct(att.get('ece'))} under "
                   f"attack; wrong answers carry a mean confidence of {pct(clean.get('over_confidence'))} without "
                   f"attack and {pct(att.get('over_confidence'))} under attack.")
        out.append(f"The attacked confidences are what a {cal['procedure'].get('steps')}-step attack from each clean "
                   "image reached: a lower bound, so a stronger attacker can only make the wrong answers more "
                   "confident.")
        missed = cal.get("cascade_missed")
        if missed:
            out.append(f"That attack also misclassified {missed} test images every attack of the cascade had left "
                       "correct; robust accuracy is overstated by them (see the warnings).")
    else:
        out.append(f"Calibration error (ECE) is {pct(clean.get('ece'))} without attack; {pct(_rate(clean))} of the "
                   "test images are wrong with a confidence above 0.9. No attacked calibration was measured ("
                   f"{(cal.get('procedure') or {}).get('not_attacked_because') or 'not run'}).")
    return out


def _summary_rows(cal: Mapping[str, Any]) -> list[dict[str, str]]:
    clean, att = cal["clean"], cal.get("attacked") or {}
    rows = [("all test images", clean, att)]
    for g in _groups(clean):
        rows.append((f"{g} classes", (clean.get("groups") or {}).get(g) or {}, (att.get("groups") or {}).get(g) or {}))
    return [{"what": what, "group": what.split(" ")[0] if what != "all test images" else "",
             "n": c.get("n"), "ece_clean": pct(c.get("ece")), "ece_attacked": pct(a.get("ece")),
             "over_clean": pct(c.get("over_confidence")), "over_attacked": pct(a.get("over_confidence")),
             "mid_clean": pct(_rate(c, MID)), "mid_attacked": pct(_rate(a, MID)),
             "high_clean": pct(_rate(c)), "high_attacked": pct(_rate(a)),
             "high_attacked_ci": interval((a.get(HIGH) or {}).get("ci95")) if a else ""} for what, c, a in rows]


def _class_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = sorted(results["per_class"], key=lambda r: (-(r.get("train_count") or 0), r["index"]))
    out = []
    for r in rows:
        cal = r.get("calibration") or {}
        c, a = cal.get("clean") or {}, cal.get("attacked") or {}
        out.append({"index": r["index"], "name": r["name"], "group": r.get("group") or "–", "n": c.get("n", "–"),
                    "ece_clean": num(c.get("ece")), "ece_attacked": num(a.get("ece")),
                    "ece_pred_attacked": num(a.get("ece_by_pred")),
                    "over_clean": num(c.get("over_confidence")), "over_attacked": num(a.get("over_confidence")),
                    "mid_attacked": num(_rate(a, MID)), "high_attacked": num(_rate(a)),
                    "high_attacked_ci": interval((a.get(HIGH) or {}).get("ci95")) if a else "",
                    "flag": (_rate(a) or 0) >= 0.5})
    return out


def audit_section(results: Mapping[str, Any], prefix: str = "a") -> dict[str, Any] | None:
    """Everything the audit report's Calibration section shows; None for results without calibration."""
    cal = _cal(results)
    if cal is None:
        return None
    clean, att = cal["clean"], cal.get("attacked")
    panels = [("all classes", [("clean", clean.get("reliability", {}).get("overall"), CLEAN),
                               ("under attack", (att or {}).get("reliability", {}).get("overall"), ROBUST)])]
    for g in _groups(clean):
        panels.append((g, [("clean", clean["reliability"]["groups"].get(g), CLEAN),
                           ("under attack", ((att or {}).get("reliability") or {}).get("groups", {}).get(g), ROBUST)]))
    proc = cal.get("procedure") or {}
    return {
        "svg": reliability_chart(f"{prefix}-reliability", panels, label="Reliability diagrams, clean and under attack"),
        "findings": _finding(results, cal),
        "summary": _summary_rows(cal),
        "classes": _class_rows(results),
        "attacked": bool(att),
        "bins": proc.get("bins"),
        "steps": proc.get("steps"),
    }


def compare_section(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "c") -> dict[str, Any] | None:
    """Before/after calibration figures of a comparison report; None when neither run has calibration."""
    cb, ca = _cal(before), _cal(after)
    if cb is None and ca is None:
        return None
    cb, ca = cb or {}, ca or {}
    rows = []

    def add(label: str, b: float | None, a: float | None) -> None:
        d = None if a is None or b is None else a - b
        rows.append({"label": label, "before": pct(b), "after": pct(a), "delta": points(d),
                     "cls": "" if d is None or abs(d) < 0.0005 else ("pos" if d < 0 else "neg")})  # lower is better

    for side, words in (("clean", "without attack"), ("attacked", "under attack")):
        sb, sa = cb.get(side) or {}, ca.get(side) or {}
        add(f"ECE, {words}", sb.get("ece"), sa.get("ece"))
        add(f"Mean confidence of wrong answers, {words}", sb.get("over_confidence"), sa.get("over_confidence"))
        add(f"Wrong with confidence > 0.9, {words}", _rate(sb), _rate(sa))
    head, tail = head_tail(after)
    for g in [g for g in (tail, head) if g]:
        add(f"{g.capitalize()} classes wrong with confidence > 0.9, under attack",
            _rate(((cb.get("attacked") or {}).get("groups") or {}).get(g)),
            _rate(((ca.get("attacked") or {}).get("groups") or {}).get(g)))
    side = "attacked" if (cb.get("attacked") or ca.get("attacked")) else "clean"
    panels = [("all classes", [("before", ((cb.get(side) or {}).get("reliability") or {}).get("overall"), BEFORE),
                               ("after", ((ca.get(side) or {}).get("reliability") or {}).get("overall"), AFTER)])]
    if tail:
        panels.append((tail, [
            ("before", (((cb.get(side) or {}).get("reliability") or {}).get("groups") or {}).get(tail), BEFORE),
            ("after", (((ca.get(side) or {}).get("reliability") or {}).get("groups") or {}).get(tail), AFTER)]))
    return {"rows": rows, "side": "under attack" if side == "attacked" else "without attack",
            "svg": reliability_chart(f"{prefix}-reliability", panels,
                                     label="Reliability diagrams before and after", height=2.2),
            "missing": "before" if not _cal(before) else "after" if not _cal(after) else None}
