"""What a before/after comparison report shows (two comparable results.json files)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from markupsafe import Markup

from audit.contract.model import AuditResults, ClassResult
from audit.contract.repair import RepairDocument, TrainingLog

from . import calibration_view, charts, corruption_view
from .audit_view import LARGE, TOP, attack_columns, confusion, group_names, method, run_headline, strip_counts
from .plain import glossary, at_risk, budget_sentence, change_sentences, critical_warnings, gate_rows, is_balanced, \
    resolve_verdict
from .repair_view import repair_view, typed_log, typed_repair
from .examples import build_examples
from .fmt import count, interval, num, pct, points, seconds, short_name
from .verdict import by_count, compare_verdict, extra_broken, head_tail, weakest


def class_deltas(before: AuditResults, after: AuditResults) -> list[dict[str, Any]]:
    """Per class (results order): before/after/delta of clean and worst-case robust accuracy, and flags.

    A class is flagged *worse* when its after value lies below the before run's 95% interval,
    *better* when above it.
    """
    out = []
    for b, a in zip(before.per_class, after.per_class):
        rb, ra = b.worst_case, a.worst_case
        cb, ca = b.clean_acc, a.clean_acc
        rci = (b.robust_ci95 or {}).get("worst_case")
        cci = b.clean_ci95
        out.append({
            "index": b.index, "name": b.name, "group": a.group or "–", "train_count": a.train_count,
            "robust_before": rb, "robust_after": ra, "d_robust": ra - rb, "robust_ci": rci,
            "clean_before": cb, "clean_after": ca, "d_clean": ca - cb, "clean_ci": cci,
            "worse": bool(rci) and ra < rci[0] - 1e-12, "better": bool(rci) and ra > rci[1] + 1e-12,
            "clean_worse": bool(cci) and ca < cci[0] - 1e-12,
        })
    return out


def deltas_by_count(deltas: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows of :func:`class_deltas`, most common class first (the order of :func:`reports.verdict.by_count`)."""
    return sorted(deltas, key=lambda d: (-(d["train_count"] or 0), d["index"]))


def kpi_rows(before: AuditResults, after: AuditResults) -> list[dict[str, str]]:
    """Headline figures side by side: before, after, change (points)."""
    sb, sa = before.summary, after.summary
    wb, wa = sb.worst_case, sa.worst_case
    rows = []

    def add(label: str, b: float | None, a: float | None, higher_is_better: bool = True) -> None:
        d = None if a is None or b is None else a - b
        good = None if d is None or abs(d) < 0.0005 else (d > 0) == higher_is_better
        rows.append({"label": label, "before": pct(b), "after": pct(a), "delta": points(d),
                     "cls": "" if good is None else ("pos" if good else "neg")})

    add("Clean accuracy", sb.clean.headline, sa.clean.headline)
    add("Balanced clean accuracy", sb.clean.mean, sa.clean.mean)
    for col in attack_columns(after):
        nb, na = sb.robust.get(col["name"]), sa.robust.get(col["name"])
        add("Robust, " + col["label"], nb.headline if nb else None, na.headline if na else None)
    add("Robust, worst case", wb.headline, wa.headline)
    add("Balanced robust accuracy", wb.mean, wa.mean)
    add("Worst class, robust", wb.worst, wa.worst)
    head, tail = head_tail(after)
    for g in group_names(after):
        add(f"Robust, {g} classes", wb.group(g), wa.group(g))
    gb, ga = before.summary.robust_gap, after.summary.robust_gap
    if head and tail and gb is not None and ga is not None:
        d = ga - gb
        rows.append({"label": f"{head.capitalize()}/{tail} robustness gap (points)", "before": points(gb),
                     "after": points(ga), "delta": points(d),
                     "cls": "" if abs(d) < 0.0005 else ("pos" if abs(ga) < abs(gb) else "neg")})
    return rows


def group_rows(before: AuditResults, after: AuditResults) -> list[dict[str, Any]]:
    """Per-group means before/after for robust (worst case) and clean accuracy."""
    rows = []
    for g in group_names(after):
        rb, ra = before.worst_case.group(g), after.worst_case.group(g)
        cb, ca = before.summary.clean.group(g), after.summary.clean.group(g)
        rows.append({"group": g, "n": len(after.group_of(g)),
                     "robust_before": pct(rb), "robust_after": pct(ra),
                     "d_robust": points(None if rb is None or ra is None else ra - rb),
                     "d_robust_raw": 0.0 if rb is None or ra is None else ra - rb,
                     "clean_before": pct(cb), "clean_after": pct(ca),
                     "d_clean": points(None if cb is None or ca is None else ca - cb),
                     "d_clean_raw": 0.0 if cb is None or ca is None else ca - cb})
    return rows


def _spearman_title(before: AuditResults, after: AuditResults) -> str:
    """'Spearman ρ 0.88 → 0.91' (n/a for a run without it)."""
    rhos = [r.worst_case.spearman.rho if r.worst_case.spearman is not None else None for r in (before, after)]
    return "Spearman ρ " + " → ".join(f"{rho:.2f}" if rho is not None else "n/a" for rho in rhos)


def _charts(before: AuditResults, after: AuditResults, deltas: list[dict[str, Any]],
            groups: list[dict[str, Any]], epochs: Sequence[Mapping[str, Any]]) -> dict[str, Markup | None]:
    """The comparison's charts; every bar carries its value (0 included), empty charts are None."""
    large = len(deltas) > LARGE
    out: dict[str, Markup | None] = {}
    sel = deltas_by_count(sorted(deltas, key=lambda d: (d["d_robust"], -(d["train_count"] or 0)))[:TOP] if large
                          else deltas)
    rows_sel = [after.per_class[d["index"]] for d in sel]
    unchanged = all(abs(d["d_robust"]) < 1e-12 and abs(d["d_clean"]) < 1e-12 for d in deltas)
    out["delta"] = None if unchanged else charts.class_bars(
        "c-delta", [d["name"] for d in sel], [d["group"] for d in sel], strip_counts(after, rows_sel),
        [("change in robust accuracy (worst case)", [d["d_robust"] * 100 for d in sel], charts.ROBUST),
         ("change in clean accuracy", [d["d_clean"] * 100 for d in sel], charts.CLEAN)],
        label="Per-class change in robust and clean accuracy, ordered by training count", percent=False,
        ylabel="change (points)", flagged=[d["worse"] for d in sel], value_labels="all", height=2.8)
    labels = [f"{g['group']} ({g['n']})" for g in groups]
    out["group_delta"] = charts.group_bars(
        "c-group-delta", labels,
        [("robust", [g["d_robust_raw"] * 100 for g in groups], charts.ROBUST),
         ("clean", [g["d_clean_raw"] * 100 for g in groups], charts.CLEAN)],
        label="Change per group", percent=False,
        title="change per group (points)") if groups and not unchanged else None
    shown = by_count(weakest(after, TOP)) if large else by_count(after.per_class)
    out["per_class"] = charts.class_bars(
        "c-per-class", [r.name for r in shown], [r.group for r in shown], strip_counts(after, shown),
        [("robust before", [before.per_class[r.index].worst_case for r in shown], charts.BEFORE),
         ("robust after", [r.worst_case for r in shown], charts.AFTER)],
        label="Per-class robust accuracy before and after", flagged=[deltas[r.index]["worse"] for r in shown],
        value_labels="all")
    out["scatter"] = _scatter(before, after)
    out["attacks"] = _attack_chart(before, after, large)
    out["training"] = charts.training_curves("c-training", epochs, label="Training curves") if epochs else None
    return out


def _scatter(before: AuditResults, after: AuditResults) -> Markup | None:
    """Robust accuracy against training count after, with the before values; None when nothing varies."""
    rows = after.per_class
    varies = len({r.worst_case for r in rows + before.per_class}) > 1
    if strip_counts(after, rows) is None or not varies:
        return None
    return charts.count_scatter(
        "c-scatter", [r.train_count for r in rows], [r.group for r in rows], [r.name for r in rows],
        [r.worst_case for r in rows],
        label="Robust accuracy against training count, before and after",
        title=_spearman_title(before, after), before=[r.worst_case for r in before.per_class],
        label_classes=[r.index for r in weakest(after, 3)])


def _attack_chart(before: AuditResults, after: AuditResults, large: bool) -> Markup | None:
    """Extra points the later attacks broke, before and after; None with one attack or when they broke none."""
    if len(after.attacks) <= 1:
        return None
    eb, ea = extra_broken(before), extra_broken(after)
    if not (any(eb) or any(ea)):
        return None
    rows: list[ClassResult] = after.per_class
    sel = by_count(sorted(rows, key=lambda r: -(eb[r.index] + ea[r.index]))[:TOP]) if large else by_count(rows)
    return charts.class_bars(
        "c-attacks", [r.name for r in sel], [r.group for r in sel], strip_counts(after, sel),
        [("before", [eb[r.index] / max(1, r.n_eval) * 100 for r in sel], charts.BEFORE),
         ("after", [ea[r.index] / max(1, r.n_eval) * 100 for r in sel], charts.AFTER)],
        label="Extra points the later attacks broke, before and after", percent=False,
        ylabel="accuracy points", value_labels="all", signed=False, height=2.8)


def class_table(deltas: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the per-class comparison table, most common class first."""
    return [{
        "index": d["index"], "name": d["name"], "group": d["group"], "train": count(d["train_count"]),
        "clean_before": num(d["clean_before"]), "clean_after": num(d["clean_after"]), "d_clean": points(d["d_clean"]),
        "d_clean_cls": "neg" if d["clean_worse"] else "",
        "robust_before": num(d["robust_before"]), "robust_ci": interval(d["robust_ci"]),
        "robust_after": num(d["robust_after"]), "d_robust": points(d["d_robust"]),
        "worse": d["worse"], "better": d["better"], "clean_worse": d["clean_worse"],
    } for d in deltas_by_count(deltas)]


def _run_rows(results: AuditResults, other: AuditResults) -> list[tuple[str, str]]:
    """Provenance of one run; environment entries only where they differ from the other run."""
    m, t = results.model, results.timings
    rows = [("model", m.spec), ("sha256", m.sha256 or "n/a"), ("audit run", results.created),
            ("seed", results.seed), ("total run time", seconds(t.total_s) if t is not None else None)]
    env, other_env = results.environment or {}, other.environment or {}
    rows += [(k, v) for k, v in env.items() if other_env.get(k) != v]
    return [(k, str(v)) for k, v in rows if v is not None]


def merged_warnings(before: AuditResults, after: AuditResults) -> list[str]:
    """Sanity warnings of both runs, each said once and labelled with the run it came from."""
    wb = [str(w) for w in before.warnings or []]
    wa = [str(w) for w in after.warnings or []]
    return ([f"both runs: {w}" for w in wb if w in wa] + [f"before: {w}" for w in wb if w not in wa]
            + [f"after: {w}" for w in wa if w not in wb])


OUTCOME_CSS = {"improved": "good", "partly-improved": "fair", "no-change": "bad", "not-improved": "bad",
               "input-kept": "bad"}
REPAIR_ADVICE = "Repair it with adversarial fine-tuning"  # an after-audit's advice that makes no sense after a repair


def repair_outcome(repair: RepairDocument | None) -> dict[str, Any] | None:
    """The repair's own verdict from ``repair.json`` (``outcome``, typed and checked on load); None when absent."""
    o = repair.outcome if repair is not None else None
    if o is None:
        return None
    # repairs before the paired tests have no significance sentence: the headline stands alone
    return {"code": o.code, "label": o.label, "css": OUTCOME_CSS[o.code], "headline": o.headline,
            "significance": o.significance, "reasons": list(o.reasons), "actions": list(o.actions)}


def overstated_warning(after: AuditResults) -> list[dict[str, Any]]:
    """Page 1's box when the after-audit's calibration pass broke points the cascade left robust."""
    cal = after.summary.calibration
    missed = cal.cascade_missed if cal is not None else None
    text = next((str(w) for w in after.warnings or [] if "robust accuracy is overstated" in str(w)), None)
    if not missed and text is None:
        return []
    n = f"{missed} test image{'s' if missed != 1 else ''}" if missed else "some test images"
    return [{"title": "The after figures may overstate robustness",
             "text": f"A separate check (the calibration pass) broke {n} that every attack of the audit left "
                     "correct, so the repaired model's robust accuracy is somewhat lower than reported; confirm it "
                     "with the stronger attack suite (--suite standard) before relying on it."}]


def _after_actions(verdict: Mapping[str, Any]) -> list[str]:
    """The after-audit's actions (plain.resolve_verdict's) without the advice to repair the model again."""
    return [a for a in verdict["actions"] if not str(a).startswith(REPAIR_ADVICE)]


def compare_context(before: AuditResults, before_dir: Path, after: AuditResults, after_dir: Path,
                    training_log: TrainingLog | Mapping[str, Any] | None = None,
                    repair: RepairDocument | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the comparison template shows (a parsed training_log.json or repair.json is checked and typed)."""
    training_log, repair = typed_log(training_log), typed_repair(repair)
    deltas = class_deltas(before, after)
    worse = [(d["name"], d["d_robust"]) for d in sorted(deltas, key=lambda d: d["d_robust"]) if d["worse"]]
    groups = group_rows(before, after)
    training = repair_view(training_log, repair, after.class_names)
    chart_svgs = _charts(before, after, deltas, groups, training["epochs"] if training else [])
    spec_b, spec_a = before.model.spec, after.model.spec
    models = spec_a if spec_a == spec_b else f"{spec_b} → {spec_a}"
    vb, va = resolve_verdict(before), resolve_verdict(after)
    balanced = is_balanced(after)
    critical = critical_warnings(before, "before") + critical_warnings(after, "after")
    if training and training["missing"]:
        critical.append({"title": "Some rare classes could not be checked separately",
                         "text": training["plain_missing"]})
    outcome = repair_outcome(repair)
    critical += overstated_warning(after)
    va = {**va, "actions": _after_actions(va)}
    return {
        "kind": "compare",
        "title": "Robustness before and after",
        "running": f"before/after: {models}",
        "headline": run_headline(after),
        "before_spec": spec_b, "after_spec": spec_a,
        "page1": {"before": vb, "after": va, "outcome": outcome,
                  "changes": change_sentences(before, after) if va["meaningful"] and vb["meaningful"] else [],
                  "budget": budget_sentence(after),
                  "critical": critical, "at_risk": at_risk(after) if va["meaningful"] else [],
                  "at_risk_title": "Weakest classes after, and why" if va["code"] == "robust"
                  else "Classes still at risk, and why",
                  "gate": gate_rows(after), "balanced": balanced,
                  "glossary": glossary(after, balanced)},
        "verdict": compare_verdict(before, after, worse),
        "kpi_rows": kpi_rows(before, after),
        "groups": groups,
        "n_worse": len(worse), "n_better": sum(1 for x in deltas if x["better"]),
        "n_clean_worse": sum(1 for x in deltas if x["clean_worse"]),
        "warnings": merged_warnings(before, after),
        "charts": chart_svgs,
        "large": len(deltas) > LARGE, "top": TOP, "n_classes": len(deltas),
        "attack_names": [short_name(a) for a in after.attacks],
        "confusion_before": confusion(before, "cb", heatmap=False),
        "confusion_after": confusion(after, "ca", heatmap=False),
        "examples_before": build_examples(before, before_dir, max_classes=4),
        "examples_after": build_examples(after, after_dir, max_classes=4),
        "table": class_table(deltas),
        "method": method(after),
        "run_before": _run_rows(before, after), "run_after": _run_rows(after, before),
        "training": training,
        "has_training": training is not None,
        "calibration": calibration_view.compare_section(before, after),  # None when neither run has calibration
        "corruptions": corruption_view.compare_section(before, after),  # None unless both runs have corruptions
    }
