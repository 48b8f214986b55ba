"""What an audit report shows, computed from one results.json (the template only lays it out)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from audit.contract.figures import ranking_sentences, repair_command
from audit.contract.model import AttackEntry, AuditResults, ClassResult, Flow, Parity, ThreatModel, Timings, Tool

from . import calibration_view, charts, corruption_view
from .examples import build_examples
from .fmt import (attack_label, count, eps_text, interval, num, over_255, pct, points, seconds, short_name,
                  threat_text)
from .plain import (glossary, at_risk, budget_sentence, critical_warnings, gate_rows, is_balanced, resolve_verdict,
                    sanity_rows, suite_sentence)
from .verdict import audit_verdict, by_count, extra_broken, head_tail, weakest

NOT_MEANINGFUL_FINDINGS = ("No findings: the model does not work on this data as it was audited (page 1), so the "
                           "figures below are what the attacks measured, not evidence about its robustness or about "
                           "its rare classes.")
LARGE = 40  # above this many classes, bar charts show the worst classes and the groups
TOP = 20  # how many classes the bar charts show for large class counts
HEATMAP_MAX = 20  # above this many classes, confusion is shown as top flows
GROUP_ORDER = ("head", "many", "medium", "tail", "few")


def group_names(results: AuditResults) -> list[str]:
    """Groups in head -> tail order."""
    groups = [g for g, idx in results.dataset.groups.items() if idx]
    return sorted(groups, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g))


def is_cascade(results: AuditResults) -> bool:
    """True when each attack ran only on the points still robust (the default mode)."""
    return (results.mode or "cascade") == "cascade"


def attack_columns(results: AuditResults) -> list[dict[str, str]]:
    """Per-attack robust accuracy columns, without the one that equals the worst case in cascade mode."""
    attacks = results.attacks
    cascade = is_cascade(results)
    cols = []
    for i, a in enumerate(attacks):
        if cascade and i == len(attacks) - 1:
            break
        head = ("after " if i == 0 else "after + ") if cascade else ""
        cols.append({"name": a.name, "label": head + attack_label(a) + ("" if cascade else " alone"),
                     "short": short_name(a)})
    return cols


def kpis(results: AuditResults) -> list[dict[str, str]]:
    """The headline figures, in reading order."""
    s = results.summary
    wc = s.worst_case
    cascade = is_cascade(results)
    out = [{"label": "Clean accuracy", "value": pct(s.clean.headline), "note": f"balanced {pct(s.clean.mean)}"}]
    names = [short_name(a) for a in results.attacks]
    for i, col in enumerate(attack_columns(results)):
        node = s.robust.get(col["name"])
        note = (("first attack" if i == 0 else "after " + " → ".join(names[:i + 1])) if cascade
                else "this attack alone")
        out.append({"label": "Robust, " + col["label"], "value": pct(node.headline if node else None), "note": note})
    out.append({"label": "Robust, worst case", "value": pct(wc.headline), "note": "after " + " → ".join(names)})
    out.append({"label": "Balanced robust accuracy", "value": pct(wc.mean), "note": "mean over classes"})
    worst = results.per_class[wc.worst_class] if wc.worst_class is not None else weakest(results, 1)[0]
    out.append({"label": "Worst class (robust)", "value": pct(worst.worst_case), "note": str(worst.name),
                "quoted": "1"})
    head, tail = head_tail(results)
    gap = results.summary.robust_gap
    if gap is not None and head and tail:
        out.append({"label": f"{head.capitalize()}/{tail} robustness gap", "value": f"{points(gap)} pts",
                    "note": f"{head} {pct(wc.group(head))} vs {tail} {pct(wc.group(tail))}"})
    return out


def class_table(results: AuditResults) -> dict[str, Any]:
    """The full per-class table, most common class first."""
    cols = attack_columns(results)
    names = [a.name for a in results.attacks]
    weakest_idx = {r.index for r in weakest(results, 3)}
    rows = []
    for r in by_count(results.per_class):
        ci = r.robust_ci95 or {}
        broken = r.broken_by or {}
        rows.append({
            "index": r.index, "name": r.name, "group": r.group or "–", "train": count(r.train_count),
            "n": r.n_eval, "clean": num(r.clean_acc), "clean_ci": interval(r.clean_ci95),
            "attacks": [num(r.robust_acc.get(c["name"])) for c in cols],
            "worst": num(r.worst_case), "worst_ci": interval(ci.get("worst_case")),
            "broken": [broken.get(n, "–") for n in names],
            "norm": f"{r.weight_norm:.2f}" if r.weight_norm is not None else "–",
            "weak": r.index in weakest_idx,
        })
    return {"columns": cols, "broken_columns": [short_name(a) for a in results.attacks],
            "has_norm": any(r.weight_norm is not None for r in results.per_class), "rows": rows}


def _chart_rows(results: AuditResults, key: Callable[[ClassResult], Any] | None = None) -> list[ClassResult]:
    rows = results.per_class
    if len(rows) <= LARGE:
        return by_count(rows)
    picked = sorted(rows, key=key)[:TOP] if key else weakest(results, TOP)
    return by_count(picked)


def _group_labels(results: AuditResults) -> list[str]:
    return [f"{g} ({len(results.group_of(g))})" for g in group_names(results)]


def strip_counts(results: AuditResults, rows: Sequence[ClassResult]) -> list[int] | None:
    """Training counts for the strip over per-class bars; None when they say nothing (balanced, unknown)."""
    counts = [r.train_count for r in rows]
    if is_balanced(results) or any(c is None for c in counts) or len(set(counts)) <= 1:
        return None
    return [int(c) for c in counts]


def curve_view(results: AuditResults, prefix: str = "a", k: int = 4) -> dict[str, Any] | None:
    """Robust accuracy against eps (the ``curve`` key): chart and table; None without a curve of 2+ budgets."""
    curve = results.curve or []
    if len(curve) < 2:
        return None
    curve = sorted(curve, key=lambda c: float(c.eps or 0.0))
    labels = [str(c.eps_text or over_255(c.eps) or f"{float(c.eps or 0):g}") for c in curve]
    gnames = [g for g in group_names(results) if all(g in (c.groups or {}) for c in curve)]
    lines = [("overall", [c.overall for c in curve], "#000000", "-"),
             ("balanced", [c.balanced for c in curve], "#555555", "--")]
    lines += [(g, [(c.groups or {}).get(g) for c in curve], charts.group_colour(g), "-") for g in gnames]
    n = len(results.per_class)
    have = all(len(c.per_class or []) == n for c in curve)
    picked = weakest(results, k) if have else []
    class_lines = [(str(r.name), [c.per_class[r.index] for c in curve]) for r in picked]
    svg = charts.eps_curve(f"{prefix}-curve", labels, lines, class_lines,
                           label="Robust accuracy against the attack budget")
    rows = [{"eps": lab, "overall": pct(c.overall), "balanced": pct(c.balanced),
             "groups": [pct((c.groups or {}).get(g)) for g in gnames]} for lab, c in zip(labels, curve)]
    return {"svg": svg, "rows": rows, "groups": gnames, "classes": [str(r.name) for r in picked]}


def build_charts(results: AuditResults, prefix: str = "a") -> dict[str, Any]:
    """All charts of an audit report; a chart with nothing to show is None (and not drawn)."""
    rows = results.per_class
    s = results.summary
    out: dict[str, Any] = {}
    gnames = group_names(results)
    clean_groups, robust_groups = s.clean.groups or {}, s.worst_case.groups or {}
    out["groups"] = charts.group_bars(
        f"{prefix}-groups", _group_labels(results),
        [("clean", [clean_groups.get(g, 0) for g in gnames], charts.CLEAN),
         ("robust (worst case)", [robust_groups.get(g, 0) for g in gnames], charts.ROBUST)],
        label="Mean clean and robust accuracy per group", title="mean accuracy per group") if gnames else None
    sel = _chart_rows(results)
    out["per_class"] = charts.class_bars(
        f"{prefix}-per-class", [r.name for r in sel], [r.group for r in sel], strip_counts(results, sel),
        [("clean", [r.clean_acc for r in sel], charts.CLEAN),
         ("robust (worst case)", [r.worst_case for r in sel], charts.ROBUST)],
        label="Per-class clean and robust accuracy, ordered by training count",
        value_labels="last" if len(sel) <= 20 else "none")
    out["scatter"] = _scatter(results, prefix)
    out["attacks"] = _attack_chart(results, prefix)
    out["curve"] = curve_view(results, prefix)
    out["large"] = len(rows) > LARGE
    return out


def _scatter(results: AuditResults, prefix: str) -> Any:
    """Robust accuracy against training count, one point per class; None when counts or figures do not vary."""
    rows = results.per_class
    n = len(rows)
    sp = results.worst_case.spearman
    title = "one point per class"
    if sp is not None and sp.rho is not None:
        title = f"Spearman ρ = {sp.rho:.2f}" + (f" (p = {sp.p:.2g})" if sp.p is not None else "")
    label_idx = [r.index for r in rows] if n <= 12 else [r.index for r in weakest(results, 3)] if n <= LARGE else []
    varies = len({r.worst_case for r in rows}) > 1  # every class at 0%: nothing to relate
    if strip_counts(results, rows) is None or not varies:
        return None
    return charts.count_scatter(
        f"{prefix}-scatter", [r.train_count for r in rows], [r.group for r in rows],
        [r.name for r in rows], [r.worst_case for r in rows],
        label="Robust accuracy against training count", title=title,
        intervals=[(r.robust_ci95 or {}).get("worst_case") for r in rows], label_classes=label_idx)


def _attack_chart(results: AuditResults, prefix: str) -> Any:
    """The extra points the later attacks broke, per class; None with one attack or when they broke none."""
    rows = results.per_class
    extra = dict(zip((r.index for r in rows), extra_broken(results))) if len(results.attacks) > 1 else {}
    if not any(extra.values()):
        return None
    sel = _chart_rows(results, key=lambda r: (-extra[r.index], -(r.train_count or 0), r.index))
    return charts.class_bars(
        f"{prefix}-attacks", [r.name for r in sel], [r.group for r in sel], strip_counts(results, sel),
        [("accuracy points the later attacks took", [extra[r.index] / max(1, r.n_eval) * 100 for r in sel],
          charts.ROBUST)],
        label="Extra points the later attacks broke, per class", percent=False, ylabel="accuracy points",
        value_labels="all" if len(sel) <= 40 else "none", signed=False, height=2.5)


def _flows(results: AuditResults) -> list[Flow]:
    """The largest flows of the adversarial confusion: as stored, else counted from the matrix."""
    conf = results.summary.confusion
    if conf is None:
        return []
    flows = list(conf.top_flows or [])
    if not flows and conf.matrix:
        for i, row in enumerate(conf.matrix):
            total = sum(row) or 1
            flows += [Flow(true=i, pred=j, count=c, fraction=c / total) for j, c in enumerate(row) if c]
        flows.sort(key=lambda f: (-f.count, f.true, f.pred))
    return flows


def confusion(results: AuditResults, prefix: str = "a", heatmap: bool = True) -> dict[str, Any]:
    """Heatmap for up to HEATMAP_MAX classes, else the top flows."""
    conf = results.summary.confusion
    matrix = conf.matrix if conf is not None else None
    names = results.dataset.classes
    n = len(names)
    out: dict[str, Any] = {"svg": None, "flows": [
        {"true": names[f.true], "pred": names[f.pred], "fraction": pct(f.fraction, 0), "count": f.count}
        for f in _flows(results)[:TOP] if 0 <= f.true < n and 0 <= f.pred < n]}
    if heatmap and matrix and n <= HEATMAP_MAX:
        fractions = [[c / (sum(row) or 1) for c in row] for row in matrix]
        out["svg"] = charts.confusion_heatmap(f"{prefix}-confusion", fractions, names,
                                              label="Adversarial confusion heatmap")
    return out


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _kv(*pairs: tuple[str, Any]) -> list[tuple[str, str]]:
    return [(k, _text(v)) for k, v in pairs if v is not None and v != "" and v != []]


def attack_budget(attack: AttackEntry) -> str:
    """An attack's iteration budget in words: '100 steps × 9 targets', '5,000 queries' (never 'None')."""
    steps, queries, targets, restarts = (attack.param(k) for k in ("steps", "queries", "targets", "restarts"))
    parts = []
    if steps is not None:
        parts.append(f"{count(steps)} steps")
    if queries is not None:
        parts.append(f"{count(queries)} queries")
    if targets is not None:
        ranked = " (MALT-ranked)" if attack.param("ranking") == "malt" else ""
        parts.append(f"{count(targets)} targets{ranked}")
    if (restarts or 1) > 1:
        parts.append(f"{count(restarts)} restarts")
    return " × ".join(parts) or "–"


def _attack_row(i: int, a: AttackEntry, t: Timings) -> dict[str, Any]:
    """One row of the method section's attack table."""
    step, temperature = a.param("step_size"), a.param("temperature")
    return {
        "order": i + 1, "name": a.name, "label": attack_label(a), "kind": a.kind, "budget": attack_budget(a),
        "step_size": ((f"{step:.5g}" + (f" ({over_255(step)})" if over_255(step) else "")) if step is not None
                      else "–"),
        "random_start": "yes" if a.param("random_start") else "no",
        "temperature": f"{temperature:g}" if temperature is not None else "–",
        "time": seconds((t.attacks_s or {}).get(a.name)),
    }


def _parity_rows(parity: Parity | None) -> list[tuple[str, str]]:
    """The ONNX parity check against onnxruntime, as key/value rows (none without a check)."""
    if parity is None:
        return []
    diff, tolerance = parity.max_abs_logit_diff, parity.tolerance
    ok = diff is not None and tolerance is not None and diff <= tolerance
    rejected = parity.adversarial_rejected if parity.adversarial_rejected is not None else 0
    return _kv(
        ("points compared", parity.n),
        ("max |logit difference|", f"{diff:.2e}" if diff is not None else None),
        ("tolerance", tolerance),
        ("argmax agreement", pct(parity.argmax_agreement)),
        ("providers", ", ".join(parity.providers or [])),
        ("adversarial examples re-scored by onnxruntime",
         f"{parity.adversarial_rescored} ({rejected} rejected)" if parity.adversarial_rescored is not None else None),
        ("result", "within tolerance" if ok else "OUTSIDE tolerance"),
    )


VERDICT_RUNTIMES = {"onnxruntime": "onnxruntime (every final point)",
                    "fp32": "the fp32 model (every final point of the bf16 attack)"}


def _evaluation_rows(results: AuditResults) -> list[tuple[str, str]]:
    """Dataset, evaluated points, groups, seed, suite and gradient access, as key/value rows."""
    d = results.dataset
    groups = ("none: the training set is balanced" if is_balanced(results) else
              f"{d.group_rule if d.group_rule is not None else '?'}: "
              + ", ".join(f"{g} {len(results.group_of(g))}" for g in group_names(results)))
    return _kv(
        ("dataset", d.name), ("dataset root", d.root), ("classes", len(d.classes)),
        ("imbalance (smallest/largest)", d.imbalance),
        ("evaluated points", count(d.n_eval)),
        ("points per class", d.n_per_class if d.n_per_class else "whole test set"),
        ("evaluated points fingerprint (sha256)", d.eval_indices_sha256),
        ("groups", groups),
        ("seed", results.seed),
        ("attack suite", "none (--attacks none): no attack ran" if results.attack_free else results.suite or "quick"),
        ("gradient access", results.mode_label or "white-box"),
        ("verdicts checked on", VERDICT_RUNTIMES.get(results.verdict_runtime or "")),
    )


def _model_rows(results: AuditResults) -> list[tuple[str, str]]:
    """The model file, its format, fingerprint, input size and normalisation, as key/value rows."""
    m = results.model
    pre = m.preprocessing
    mean, std = (pre.mean, pre.std) if pre is not None else (None, None)
    return _kv(
        ("model", m.spec), ("path", m.path), ("format", m.format), ("architecture", m.arch),
        ("sha256", m.sha256 or "n/a"), ("classes", m.num_classes),
        ("input size", "×".join(map(str, (pre.input_size if pre is not None else None) or [])) or None),
        ("normalisation", f"mean {mean}, std {std}" if mean is not None else "none (pixels in [0, 1])"),
    )


def _timing_rows(t: Timings) -> list[tuple[str, str]]:
    return _kv(("loading", seconds(t.load_s)), ("clean pass", seconds(t.clean_s)),
               *((f"attack {k}", seconds(v)) for k, v in (t.attacks_s or {}).items()),
               ("total", seconds(t.total_s)),
               ("throughput", f"{t.points_per_s:.1f} points/s" if t.points_per_s else None))


def method(results: AuditResults) -> dict[str, Any]:
    """Settings, versions, timings and provenance."""
    t = results.timings or Timings()
    tool = results.tool or Tool()
    verdict = resolve_verdict(results)
    mode = results.mode or "cascade"
    return {
        "threat": threat_with_decimal(results.threat_model),
        "mode": mode,
        "mode_text": ("cascade: each attack runs only on points still robust; a point is robust only if it survives "
                      "every attack" if mode == "cascade" else
                      "independent: each attack runs on every point; worst case counts a point robust only if it "
                      "survived every attack"),
        "attacks": [_attack_row(i, a, t) for i, a in enumerate(results.attacks)],
        "evaluation": _evaluation_rows(results),
        "suite": results.suite or "quick",
        "suite_note": results.suite_note,
        "mode_label": results.mode_label or "white-box",
        "model": _model_rows(results),
        "parity": _parity_rows(results.model.parity),
        "environment": _kv(*((k, v) for k, v in (results.environment or {}).items())),
        "timings": _timing_rows(t),
        "provenance": _kv(("tool", f"{tool.name} {tool.version if tool.version is not None else ''}"),
                          ("audit run", results.created)),
        "meaningful": verdict["meaningful"],
        "verdict_on_load": verdict["computed_on_load"],
        "repair_command": repair_command(results) if verdict["graded"] and verdict["code"] != "robust"
        and not verdict["upper_bound"] else None,
        "balanced": is_balanced(results),
    }


def threat_with_decimal(threat: ThreatModel) -> str:
    """'L∞, ε = 8/255 (0.03137)'; the decimal only when the recorded text is not already that number."""
    text = threat_text(threat)
    if threat.eps is None:
        return text
    decimal = f"{float(threat.eps):.4g}"
    return text if eps_text(threat) == decimal else f"{text} ({decimal})"


def run_headline(results: AuditResults, note: str = "") -> str:
    """'DATASET (N classes, M test points) · threat model L∞, ε = 8/255 · attacks PGD-20 → …'; ``note`` follows
    the count of test points (a model comparison says they are the same for every model)."""
    d = results.dataset
    return (f"{d.name} ({len(d.classes)} classes, {count(d.n_eval)} test points{note}) · threat model "
            f"{threat_text(results.threat_model)} · attacks " + " → ".join(attack_label(a) for a in results.attacks))


def model_title(results: AuditResults) -> str:
    """The model as a title names it: its file name, not the path (the method page gives the path)."""
    spec = str(results.model.spec)
    return spec if spec.startswith(("timm:", "python:")) else (Path(spec).name or spec)


def headline(results: AuditResults) -> str:
    """'MODEL on DATASET (N classes), threat model L∞, ε = 8/255, attacks PGD-20 → …' (the model by its file
    name: the method page gives its path)."""
    return f"{model_title(results)} on {run_headline(results)}"


def _data_sentence(results: AuditResults, balanced: bool) -> str:
    """The dataset in a sentence: classes, test images, and where the training counts come from."""
    d = results.dataset
    data = f"{d.name}: {len(d.classes)} classes, {count(d.n_eval)} test images"
    if balanced:
        data += "; the training set is balanced (every class has as many training images), so there are no rare classes"
    elif d.imbalance is not None:
        data += (f"; training counts from tailaudit's own long-tailed sampling, imbalance factor {d.imbalance:g} "
                 "(rarest / most common class): “rare” and the head/medium/tail groups describe that sampling "
                 "profile, not necessarily the data this model was trained on (give the real counts with "
                 "--class-counts FILE)")
    elif d.counts_source:
        data += f"; training counts as given ({d.counts_source})"
    return data


def first_page(results: AuditResults) -> dict[str, Any]:
    """Page 1 in plain words: verdict, what it means, critical warnings, next steps, classes at risk, gate."""
    verdict = resolve_verdict(results)
    balanced = is_balanced(results)
    return {"verdict": verdict, "budget": budget_sentence(results), "suite": suite_sentence(results),
            "data": _data_sentence(results, balanced),
            "balanced": balanced,
            "critical": critical_warnings(results),
            "at_risk": at_risk(results) if verdict["meaningful"] else [],
            "ranking": ranking_sentences(results) if verdict["meaningful"] else [],
            "at_risk_title": "Weakest classes, and why" if verdict["code"] == "robust" else "Classes at risk, and why",
            "gate": gate_rows(results),
            "glossary": glossary(results, balanced)}


def audit_context(results: AuditResults, folder: Path) -> dict[str, Any]:
    """Everything the audit template shows. A run that cannot be graded (``not-meaningful``, audited with
    --force) keeps its measured tables but loses every figure that reads as a finding about robustness or about
    the rare classes (gap, group and rarity charts, findings sentences)."""
    chart_svgs = build_charts(results)
    meaningful = resolve_verdict(results)["meaningful"]
    figures = kpis(results)
    findings = audit_verdict(results)["sentences"]
    if not meaningful:
        chart_svgs["scatter"] = chart_svgs["groups"] = None
        figures = [k for k in figures if "gap" not in k["label"]]
        findings = [NOT_MEANINGFUL_FINDINGS]
    return {
        "kind": "audit",
        "title": f"Robustness audit: {model_title(results)}",
        "running": f"audit: {model_title(results)}",
        "headline": headline(results),
        "created": results.created,
        "page1": first_page(results),
        "findings": findings,
        "kpis": figures,
        "warnings": [str(w) for w in results.warnings or []],
        "charts": chart_svgs,
        "curve": chart_svgs["curve"],
        "large": chart_svgs["large"],
        "n_classes": len(results.per_class),
        "top": TOP,
        "attack_names": [short_name(a) for a in results.attacks],
        "confusion": confusion(results),
        "examples": build_examples(results, folder),
        "table": class_table(results),
        "sanity": sanity_rows(results),
        "method": method(results),
        "calibration": calibration_view.audit_section(results),  # None for results without calibration
        "corruptions": corruption_view.audit_section(results),  # None for results without --corruptions
        "corruption_note": corruption_view.page1_note(results),
    }
