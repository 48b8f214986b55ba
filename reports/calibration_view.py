"""The "Calibration" section of the audit report and the before/after figures of the comparison report.

Read from ``summary.calibration`` and ``per_class[i].calibration`` (audit/calibration.py writes them;
docs/method.md, "Calibration"). Results written before calibration was measured have neither: every
function here then returns None and the templates leave the section out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from markupsafe import Markup

from audit.contract.model import (AuditResults, Calibration, CalibrationBlock, CalibrationSummaryBlock,
                                  ClassCalibrationBlock, Rate, Reliability)

from .charts import FULL_WIDTH, group_colour, short
from .fmt import interval, num, pct, points
from .svg import AFTER, BEFORE, CLEAN, ROBUST, new_figure, style, to_svg
from .verdict import by_count, head_tail

GROUP_ORDER = ("head", "many", "medium", "tail", "few")
Block = CalibrationBlock | None  # a block that was not measured (no attack, an older run) is None
SummaryBlock = CalibrationSummaryBlock | None  # all points of a run, with its groups and reliability bins


def _cal(results: AuditResults) -> Calibration | None:
    return results.summary.calibration


def _groups(side: SummaryBlock) -> list[str]:
    names = list(side.reliability.groups or {}) if side is not None and side.reliability is not None else []
    return sorted(names, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g))


def _group(block: SummaryBlock, name: str) -> Block:
    """The figures of one group of classes within ``block`` (None when not measured)."""
    return (block.groups or {}).get(name) if block is not None else None


def _rate(rate: Rate | None) -> float | None:
    return rate.rate if rate is not None else None


def confident_wrong(block: Block) -> float | None:
    """Share of the block's test images wrong with a confidence above 0.9."""
    return _rate(block.confident_error_90) if block is not None else None


def _bins(block: SummaryBlock, group: str | None = None) -> Reliability | None:
    """The reliability bins of ``block`` (all its points, or one group's); None when not measured."""
    rel = block.reliability if block is not None else None
    if rel is None:
        return None
    return rel.overall if group is None else (rel.groups or {}).get(group)


@dataclass(frozen=True)
class Figures:
    """What a table row shows of one block; all None (and no interval) for a block not measured."""

    n: int | None = None
    ece: float | None = None
    ece_by_pred: float | None = None
    over: float | None = None  # mean confidence of the wrong answers
    mid: float | None = None  # wrong with a confidence above 0.5
    high: float | None = None  # wrong with a confidence above 0.9
    high_ci: str = ""

    @classmethod
    def of(cls, block: Block) -> "Figures":
        if block is None:
            return cls()
        high = block.confident_error_90
        by_pred = block.ece_by_pred if isinstance(block, ClassCalibrationBlock) else None
        return cls(n=block.n, ece=block.ece, ece_by_pred=by_pred, over=block.over_confidence,
                   mid=_rate(block.confident_error_50), high=_rate(high),
                   high_ci=interval(high.ci95 if high is not None else None))


def reliability_chart(chart_id: str, panels: Sequence[tuple[str, Sequence[tuple[str, Reliability | None, str]]]],
                      *, label: str, height: float = 2.3) -> Markup | None:
    """One reliability diagram per panel: accuracy against mean confidence in each non-empty bin (marker area by
    the bin's share of points), the diagonal of perfect calibration dashed. ``panels`` are (title, [(legend, bins,
    colour), ...]) with bins as ``summary.calibration.*.reliability`` stores them (None: series left out)."""
    panels = [(t, [s for s in series if s[1] is not None and any(s[1].count or [])]) for t, series in panels]
    panels = [(t, series) for t, series in panels if series]
    if not panels:
        return None
    with style():
        fig = new_figure(FULL_WIDTH, height)
        axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        for ax, (title, series) in zip(axes, panels):
            ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=0.8)
            for legend, bins, colour in series:
                count = np.asarray(bins.count, dtype=float)
                conf = np.array([np.nan if v is None else v for v in bins.confidence], dtype=float)
                acc = np.array([np.nan if v is None else v for v in bins.accuracy], dtype=float)
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


def _finding(results: AuditResults, cal: Calibration) -> list[str]:
    clean, att = cal.clean, cal.attacked
    if att is None:
        return [f"Calibration error (ECE) is {pct(clean.ece)} without attack; {pct(confident_wrong(clean))} of the "
                "test images are wrong with a confidence above 0.9. No attacked calibration was measured ("
                f"{cal.procedure.not_attacked_because or 'not run'})."]
    out = []
    head, tail = head_tail(results)
    gt = att.groups or {}
    if head and tail and tail in gt and head in gt:
        out.append(f"Under attack, {pct(confident_wrong(gt[tail]))} of the tail-class test images are wrong with a "
                   f"confidence above 0.9, against {pct(confident_wrong(gt[head]))} for the head classes (without "
                   f"attack: {pct(confident_wrong(_group(clean, tail)))} and "
                   f"{pct(confident_wrong(_group(clean, head)))}).")
    else:
        out.append(f"Under attack, {pct(confident_wrong(att))} of the test images are wrong with a confidence above "
                   f"0.9 (without attack: {pct(confident_wrong(clean))}).")
    out.append(f"Calibration error (ECE) is {pct(clean.ece)} without attack and {pct(att.ece)} under "
               f"attack; wrong answers carry a mean confidence of {pct(clean.over_confidence)} without "
               f"attack and {pct(att.over_confidence)} under attack.")
    out.append(f"The attacked confidences are what a {cal.procedure.steps}-step attack from each clean "
               "image reached: a lower bound, so a stronger attacker can only make the wrong answers more "
               "confident.")
    if cal.cascade_missed:
        out.append(f"That attack also misclassified {cal.cascade_missed} test images every attack of the cascade had "
                   "left correct; robust accuracy is overstated by them (see the warnings).")
    return out


def _summary_rows(cal: Calibration) -> list[dict[str, str]]:
    rows: list[tuple[str, Block, Block]] = [("all test images", cal.clean, cal.attacked)]
    rows += [(f"{g} classes", _group(cal.clean, g), _group(cal.attacked, g)) for g in _groups(cal.clean)]
    out = []
    for what, block_c, block_a in rows:
        c, a = Figures.of(block_c), Figures.of(block_a)
        out.append({"what": what, "group": what.split(" ")[0] if what != "all test images" else "",
                    "n": c.n, "ece_clean": pct(c.ece), "ece_attacked": pct(a.ece),
                    "over_clean": pct(c.over), "over_attacked": pct(a.over),
                    "mid_clean": pct(c.mid), "mid_attacked": pct(a.mid),
                    "high_clean": pct(c.high), "high_attacked": pct(a.high), "high_attacked_ci": a.high_ci})
    return out


def _class_rows(results: AuditResults) -> list[dict[str, Any]]:
    out = []
    for r in by_count(results.per_class):
        cal = r.calibration
        c, a = Figures.of(cal.clean if cal else None), Figures.of(cal.attacked if cal else None)
        out.append({"index": r.index, "name": r.name, "group": r.group or "–", "n": c.n if c.n is not None else "–",
                    "ece_clean": num(c.ece), "ece_attacked": num(a.ece), "ece_pred_attacked": num(a.ece_by_pred),
                    "over_clean": num(c.over), "over_attacked": num(a.over),
                    "mid_attacked": num(a.mid), "high_attacked": num(a.high),
                    "high_attacked_ci": a.high_ci, "flag": (a.high or 0) >= 0.5})
    return out


def audit_section(results: AuditResults, prefix: str = "a") -> dict[str, Any] | None:
    """Everything the audit report's Calibration section shows; None for results without calibration."""
    cal = _cal(results)
    if cal is None:
        return None
    clean, att = cal.clean, cal.attacked
    panels = [("all classes", [("clean", _bins(clean), CLEAN), ("under attack", _bins(att), ROBUST)])]
    for g in _groups(clean):
        panels.append((g, [("clean", _bins(clean, g), CLEAN), ("under attack", _bins(att, g), ROBUST)]))
    return {
        "svg": reliability_chart(f"{prefix}-reliability", panels, label="Reliability diagrams, clean and under attack"),
        "findings": _finding(results, cal),
        "summary": _summary_rows(cal),
        "classes": _class_rows(results),
        "attacked": att is not None,
        "bins": cal.procedure.bins,
        "steps": cal.procedure.steps,
    }


def _side(cal: Calibration | None, attacked: bool) -> SummaryBlock:
    """The clean or the attacked figures of a run's calibration (None when not measured)."""
    if cal is None:
        return None
    return cal.attacked if attacked else cal.clean


def compare_section(before: AuditResults, after: AuditResults, prefix: str = "c") -> dict[str, Any] | None:
    """Before/after calibration figures of a comparison report; None when neither run has calibration."""
    cb, ca = _cal(before), _cal(after)
    if cb is None and ca is None:
        return None
    rows = []

    def add(label: str, b: float | None, a: float | None) -> None:
        d = None if a is None or b is None else a - b
        rows.append({"label": label, "before": pct(b), "after": pct(a), "delta": points(d),
                     "cls": "" if d is None or abs(d) < 0.0005 else ("pos" if d < 0 else "neg")})  # lower is better

    for attacked, words in ((False, "without attack"), (True, "under attack")):
        sb, sa = Figures.of(_side(cb, attacked)), Figures.of(_side(ca, attacked))
        add(f"ECE, {words}", sb.ece, sa.ece)
        add(f"Mean confidence of wrong answers, {words}", sb.over, sa.over)
        add(f"Wrong with confidence > 0.9, {words}", sb.high, sa.high)
    head, tail = head_tail(after)
    for g in [g for g in (tail, head) if g]:
        add(f"{g.capitalize()} classes wrong with confidence > 0.9, under attack",
            confident_wrong(_group(_side(cb, True), g)), confident_wrong(_group(_side(ca, True), g)))
    attacked = _side(cb, True) is not None or _side(ca, True) is not None
    side_b, side_a = _side(cb, attacked), _side(ca, attacked)
    panels = [("all classes", [("before", _bins(side_b), BEFORE), ("after", _bins(side_a), AFTER)])]
    if tail:
        panels.append((tail, [("before", _bins(side_b, tail), BEFORE), ("after", _bins(side_a, tail), AFTER)]))
    return {"rows": rows, "side": "under attack" if attacked else "without attack",
            "svg": reliability_chart(f"{prefix}-reliability", panels,
                                     label="Reliability diagrams before and after", height=2.2),
            "missing": "before" if cb is None else "after" if ca is None else None}
