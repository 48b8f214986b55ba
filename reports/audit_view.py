"""What an audit report shows, computed from one results.json (the template only lays it out)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from audit.verdict import overall_of

from . import calibration_view, charts
from .examples import build_examples
from .fmt import (attack_label, count, eps_text, interval, num, over_255, pct, points, seconds, short_name,
                  threat_text)
from .plain import (glossary, at_risk, budget_sentence, critical_warnings, gate_rows, is_balanced, resolve_verdict,
                    sanity_rows, suite_sentence)
from .verdict import audit_verdict, extra_broken, head_tail, weakest

NOT_MEANINGFUL_FINDINGS = ("No findings: the model does not work on this data as it was audited (page 1), so the "
                           "figures below are what the attacks measured, not evidence about its robustness or about "
                           "its rare classes.")
LARGE = 40  # above this many classes, bar charts show the worst classes and the groups
TOP = 20  # how many classes the bar charts show for large class counts
HEATMAP_MAX = 20  # above this many classes, confusion is shown as top flows
GROUP_ORDER = ("head", "many", "medium", "tail", "few")


def by_count(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Most common class first (the order of every per-class chart and table)."""
    return sorted(rows, key=lambda r: (-(r["train_count"] or 0), r["index"]))


def group_names(results: Mapping[str, Any]) -> list[str]:
    """Groups in head -> tail order."""
    groups = [g for g, idx in (results["dataset"].get("groups") or {}).items() if idx]
    return sorted(groups, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g))


def attack_columns(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """Per-attack robust accuracy columns, without the one that equals the worst case in cascade mode."""
    attacks = results["attacks"]
    cascade = results.get("mode", "cascade") == "cascade"
    cols = []
    for i, a in enumerate(attacks):
        if cascade and i == len(attacks) - 1:
            break
        head = ("after " if i == 0 else "after + ") if cascade else ""
        cols.append({"name": a["name"], "label": head + attack_label(a) + ("" if cascade else " alone"),
                     "short": short_name(a)})
    return cols


def kpis(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """The headline figures, in reading order."""
    s = results["summary"]
    wc = s["robust"]["worst_case"]
    cascade = results.get("mode", "cascade") == "cascade"
    out = [{"label": "Clean accuracy", "value": pct(overall_of(s["clean"])),
            "note": f"balanced {pct(s['clean']['mean'])}"}]
    names = [short_name(a) for a in results["attacks"]]
    for i, col in enumerate(attack_columns(results)):
        node = s["robust"].get(col["name"], {})
        note = ("first attack" if i == 0 else "after " + " → ".join(names[:i + 1])) if cascade else "this attack alone"
        out.append({"label": "Robust, " + col["label"], "value": pct(overall_of(node)), "note": note})
    out.append({"label": "Robust, worst case", "value": pct(overall_of(wc)),
                "note": "after " + " → ".join(short_name(a) for a in results["attacks"])})
    out.append({"label": "Balanced robust accuracy", "value": pct(wc["mean"]), "note": "mean over classes"})
    worst = results["per_class"][wc["worst_class"]] if wc.get("worst_class") is not None else weakest(results, 1)[0]
    out.append({"label": "Worst class (robust)", "value": pct(worst["robust_acc"]["worst_case"]),
                "note": str(worst["name"]), "quoted": "1"})
    head, tail = head_tail(results)
    gap = (s.get("head_tail_gap") or {}).get("worst_case")
    if gap is not None and head and tail:
        groups = wc.get("groups", {})
        out.append({"label": f"{head.capitalize()}/{tail} robustness gap", "value": f"{points(gap)} pts",
                    "note": f"{head} {pct(groups.get(head))} vs {tail} {pct(groups.get(tail))}"})
    return out


def class_table(results: Mapping[str, Any]) -> dict[str, Any]:
    """The full per-class table, most common class first."""
    cols = attack_columns(results)
    names = [a["name"] for a in results["attacks"]]
    weakest_idx = {r["index"] for r in weakest(results, 3)}
    rows = []
    for r in by_count(results["per_class"]):
        ci = r.get("robust_ci95") or {}
        broken = r.get("broken_by") or {}
        rows.append({
            "index": r["index"], "name": r["name"], "group": r["group"] or "–", "train": count(r["train_count"]),
            "n": r["n_eval"], "clean": num(r["clean_acc"]), "clean_ci": interval(r.get("clean_ci95")),
            "attacks": [num(r["robust_acc"].get(c["name"])) for c in cols],
            "worst": num(r["robust_acc"]["worst_case"]), "worst_ci": interval(ci.get("worst_case")),
            "broken": [broken.get(n, "–") for n in names],
            "norm": f"{r['weight_norm']:.2f}" if r.get("weight_norm") is not None else "–",
            "weak": r["index"] in weakest_idx,
        })
    return {"columns": cols, "broken_columns": [short_name(a) for a in results["attacks"]],
            "has_norm": any(r.get("weight_norm") is not None for r in results["per_class"]), "rows": rows}


def _chart_rows(results: Mapping[str, Any], key: Any = None) -> list[Mapping[str, Any]]:
    rows = results["per_class"]
    if len(rows) <= LARGE:
        return by_count(rows)
    picked = sorted(rows, key=key)[:TOP] if key else weakest(results, TOP)
    return by_count(picked)


def _group_labels(results: Mapping[str, Any]) -> list[str]:
    groups = results["dataset"]["groups"]
    return [f"{g} ({len(groups[g])})" for g in group_names(results)]


def strip_counts(results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[int] | None:
    """Training counts for the strip over per-class bars; None when they say nothing (balanced, unknown)."""
    counts = [r.get("train_count") for r in rows]
    if is_balanced(results) or any(c is None for c in counts) or len(set(counts)) <= 1:
        return None
    return [int(c) for c in counts]  # type: ignore[arg-type]


def curve_view(results: Mapping[str, Any], prefix: str = "a", k: int = 4) -> dict[str, Any] | None:
    """Robust accuracy against eps (the ``curve`` key): chart and table; None without a curve of 2+ budgets."""
    curve = [c for c in results.get("curve") or [] if isinstance(c, Mapping)]
    if len(curve) < 2:
        return None
    curve = sorted(curve, key=lambda c: float(c.get("eps") or 0.0))
    labels = [str(c.get("eps_text") or over_255(c.get("eps")) or f"{float(c.get('eps') or 0):g}") for c in curve]
    gnames = [g for g in group_names(results) if all(g in (c.get("groups") or {}) for c in curve)]
    lines = [("overall", [c.get("overall") for c in curve], "#000000", "-"),
             ("balanced", [c.get("balanced") for c in curve], "#555555", "--")]
    lines += [(g, [(c.get("groups") or {}).get(g) for c in curve], charts.group_colour(g), "-") for g in gnames]
    n = len(results["per_class"])
    have = all(len(c.get("per_class") or []) == n for c in curve)
    picked = weakest(results, k) if have else []
    class_lines = [(str(r["name"]), [c["per_class"][r["index"]] for c in curve]) for r in picked]
    svg = charts.eps_curve(f"{prefix}-curve", labels, lines, class_lines,
                           label="Robust accuracy against the attack budget")
    rows = [{"eps": lab, "overall": pct(c.get("overall")), "balanced": pct(c.get("balanced")),
             "groups": [pct((c.get("groups") or {}).get(g)) for g in gnames]} for lab, c in zip(labels, curve)]
    return {"svg": svg, "rows": rows, "groups": gnames, "classes": [str(r["name"]) for r in picked]}


def build_charts(results: Mapping[str, Any], prefix: str = "a") -> dict[str, Any]:
    """All charts of an audit report; a chart with nothing to show is None (and not drawn)."""
    rows = results["per_class"]
    n = len(rows)
    large = n > LARGE
    s = results["summary"]
    out: dict[str, Any] = {}
    gnames = group_names(results)
    out["groups"] = charts.group_bars(
        f"{prefix}-groups", _group_labels(results),
        [("clean", [s["clean"]["groups"].get(g, 0) for g in gnames], charts.CLEAN),
         ("robust (worst case)", [s["robust"]["worst_case"]["groups"].get(g, 0) for g in gnames], charts.ROBUST)],
        label="Mean clean and robust accuracy per group", title="mean accuracy per group") if gnames else None
    sel = _chart_rows(results)
    out["per_class"] = charts.class_bars(
        f"{prefix}-per-class", [r["name"] for r in sel], [r["group"] for r in sel], strip_counts(results, sel),
        [("clean", [r["clean_acc"] for r in sel], charts.CLEAN),
         ("robust (worst case)", [r["robust_acc"]["worst_case"] for r in sel], charts.ROBUST)],
        label="Per-class clean and robust accuracy, ordered by training count",
        value_labels="last" if len(sel) <= 20 else "none")
    sp = s["robust"]["worst_case"].get("spearman") or {}
    title = "one point per class"
    if sp.get("rho") is not None:
        title = f"Spearman ρ = {sp['rho']:.2f}" + (f" (p = {sp['p']:.2g})" if sp.get("p") is not None else "")
    label_idx = [r["index"] for r in rows] if n <= 12 else [r["index"] for r in weakest(results, 3)] if n <= LARGE else []
    out["scatter"] = None
    varies = len({r["robust_acc"]["worst_case"] for r in rows}) > 1  # every class at 0%: nothing to relate
    if strip_counts(results, rows) is not None and varies:
        out["scatter"] = charts.count_scatter(
            f"{prefix}-scatter", [r["train_count"] for r in rows], [r["group"] for r in rows],
            [r["name"] for r in rows], [r["robust_acc"]["worst_case"] for r in rows],
            label="Robust accuracy against training count", title=title,
            intervals=[(r.get("robust_ci95") or {}).get("worst_case") for r in rows], label_classes=label_idx)
    out["attacks"] = None
    extra = dict(zip((r["index"] for r in rows), extra_broken(results))) if len(results["attacks"]) > 1 else {}
    if any(extra.values()):
        sel = _chart_rows(results, key=lambda r: (-extra[r["index"]], -(r["train_count"] or 0), r["index"]))
        out["attacks"] = charts.class_bars(
            f"{prefix}-attacks", [r["name"] for r in sel], [r["group"] for r in sel], strip_counts(results, sel),
            [("accuracy points the later attacks took", [extra[r["index"]] / max(1, r["n_eval"]) * 100 for r in sel],
              charts.ROBUST)],
            label="Extra points the later attacks broke, per class", percent=False, ylabel="accuracy points",
            value_labels="all" if len(sel) <= 40 else "none", signed=False, height=2.5)
    out["curve"] = curve_view(results, prefix)
    out["large"] = large
    return out


def confusion(results: Mapping[str, Any], prefix: str = "a", heatmap: bool = True) -> dict[str, Any]:
    """Heatmap for up to HEATMAP_MAX classes, else the top flows."""
    conf = results["summary"].get("confusion") or {}
    matrix = conf.get("matrix")
    names = results["dataset"]["classes"]
    n = len(names)
    flows = list(conf.get("top_flows") or [])
    if not flows and matrix:
        for i, row in enumerate(matrix):
            total = sum(row) or 1
            flows += [{"true": i, "pred": j, "count": c, "fraction": c / total} for j, c in enumerate(row) if c]
        flows.sort(key=lambda f: (-f["count"], f["true"], f["pred"]))
    out: dict[str, Any] = {"svg": None, "flows": [
        {"true": names[f["true"]], "pred": names[f["pred"]], "fraction": pct(f["fraction"], 0), "count": f["count"]}
        for f in flows[:TOP] if 0 <= f["true"] < n and 0 <= f["pred"] < n]}
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


def attack_budget(attack: Mapping[str, Any]) -> str:
    """An attack's iteration budget in words: '100 steps × 9 targets', '5,000 queries' (never 'None')."""
    parts = []
    if attack.get("steps") is not None:
        parts.append(f"{count(attack['steps'])} steps")
    if attack.get("queries") is not None:
        parts.append(f"{count(attack['queries'])} queries")
    if attack.get("targets") is not None:
        ranked = " (MALT-ranked)" if attack.get("ranking") == "malt" else ""
        parts.append(f"{count(attack['targets'])} targets{ranked}")
    if (attack.get("restarts") or 1) > 1:
        parts.append(f"{count(attack['restarts'])} restarts")
    return " × ".join(parts) or "–"


def method(results: Mapping[str, Any]) -> dict[str, Any]:
    """Settings, versions, timings and provenance."""
    m, d, t = results["model"], results["dataset"], results.get("timings") or {}
    verdict = resolve_verdict(results)
    attacks = [{
        "order": i + 1, "name": a.get("name"), "label": attack_label(a), "kind": a.get("kind"), "budget": attack_budget(a),
        "step_size": (f"{a['step_size']:.5g}" + (f" ({over_255(a['step_size'])})" if over_255(a["step_size"]) else ""))
        if a.get("step_size") is not None else "–",
        "random_start": "yes" if a.get("random_start") else "no",
        "temperature": f"{a['temperature']:g}" if a.get("temperature") is not None else "–",
        "time": seconds((t.get("attacks_s") or {}).get(a.get("name"))),
    } for i, a in enumerate(results["attacks"])]
    groups = d.get("groups") or {}
    parity = m.get("parity")
    parity_rows: list[tuple[str, str]] = []
    if parity:
        ok = parity.get("max_abs_logit_diff") is not None and parity.get("tolerance") is not None \
            and parity["max_abs_logit_diff"] <= parity["tolerance"]
        parity_rows = _kv(
            ("points compared", parity.get("n")),
            ("max |logit difference|", f"{parity['max_abs_logit_diff']:.2e}" if parity.get("max_abs_logit_diff")
             is not None else None),
            ("tolerance", parity.get("tolerance")),
            ("argmax agreement", pct(parity.get("argmax_agreement"))),
            ("providers", ", ".join(parity.get("providers") or [])),
            ("adversarial examples re-scored by onnxruntime",
             f"{parity['adversarial_rescored']} ({parity.get('adversarial_rejected', 0)} rejected)"
             if parity.get("adversarial_rescored") is not None else None),
            ("result", "within tolerance" if ok else "OUTSIDE tolerance"),
        )
    pre = m.get("preprocessing") or {}
    mode = results.get("mode", "cascade")
    return {
        "threat": threat_with_decimal(results["threat_model"]),
        "mode": mode,
        "mode_text": ("cascade: each attack runs only on points still robust; a point is robust only if it survives "
                      "every attack" if mode == "cascade" else
                      "independent: each attack runs on every point; worst case counts a point robust only if it "
                      "survived every attack"),
        "attacks": attacks,
        "evaluation": _kv(
            ("dataset", d.get("name")), ("dataset root", d.get("root")), ("classes", len(d.get("classes", []))),
            ("imbalance (smallest/largest)", d.get("imbalance")),
            ("evaluated points", count(d.get("n_eval"))),
            ("points per class", d.get("n_per_class") if d.get("n_per_class") else "whole test set"),
            ("evaluated points fingerprint (sha256)", d.get("eval_indices_sha256")),
            ("groups", "none: the training set is balanced" if is_balanced(results) else
             f"{d.get('group_rule', '?')}: " + ", ".join(f"{g} {len(groups[g])}" for g in group_names(results))),
            ("seed", results.get("seed")),
            ("attack suite", results.get("suite", "quick")),
            ("gradient access", results.get("mode_label", "white-box")),
            ("verdicts checked on", {"onnxruntime": "onnxruntime (every final point)", "fp32": "the fp32 model "
                                     "(every final point of the bf16 attack)"}.get(results.get("verdict_runtime") or "")),
        ),
        "suite": results.get("suite", "quick"),
        "suite_note": results.get("suite_note"),
        "mode_label": results.get("mode_label", "white-box"),
        "sanity": results.get("sanity"),
        "model": _kv(
            ("model", m.get("spec")), ("path", m.get("path")), ("format", m.get("format")), ("architecture", m.get("arch")),
            ("sha256", m.get("sha256") or "n/a"), ("classes", m.get("num_classes")),
            ("input size", "×".join(map(str, pre.get("input_size") or [])) or None),
            ("normalisation", f"mean {pre.get('mean')}, std {pre.get('std')}" if pre.get("mean") is not None else
             "none (pixels in [0, 1])"),
        ),
        "parity": parity_rows,
        "environment": _kv(*((k, v) for k, v in (results.get("environment") or {}).items())),
        "timings": _kv(("loading", seconds(t.get("load_s"))), ("clean pass", seconds(t.get("clean_s"))),
                       *((f"attack {k}", seconds(v)) for k, v in (t.get("attacks_s") or {}).items()),
                       ("total", seconds(t.get("total_s"))),
                       ("throughput", f"{t['points_per_s']:.1f} points/s" if t.get("points_per_s") else None)),
        "provenance": _kv(("tool", f"{(results.get('tool') or {}).get('name', 'tailaudit')} "
                                   f"{(results.get('tool') or {}).get('version', '')}"),
                          ("audit run", results.get("created"))),
        "meaningful": verdict["meaningful"],
        "verdict_on_load": verdict["computed_on_load"],
        "balanced": is_balanced(results),
    }


def threat_with_decimal(threat: Mapping[str, Any]) -> str:
    """'L∞, ε = 8/255 (0.03137)'; the decimal only when the recorded text is not already that number."""
    text = threat_text(dict(threat))
    eps = threat.get("eps")
    if eps is None:
        return text
    decimal = f"{float(eps):.4g}"
    return text if eps_text(dict(threat)) == decimal else f"{text} ({decimal})"


def headline(results: Mapping[str, Any]) -> str:
    """'MODEL on DATASET (N classes), threat model L∞, ε = 8/255, attacks PGD-20 → …'."""
    d = results["dataset"]
    return (f"{results['model']['spec']} on {d['name']} ({len(d['classes'])} classes, {count(d.get('n_eval'))} "
            f"test points) · threat model {threat_text(results['threat_model'])} · attacks "
            + " → ".join(attack_label(a) for a in results["attacks"]))


def first_page(results: Mapping[str, Any]) -> dict[str, Any]:
    """Page 1 in plain words: verdict, what it means, critical warnings, next steps, classes at risk, gate."""
    verdict = resolve_verdict(results)
    d = results["dataset"]
    balanced = is_balanced(results)
    data = f"{d['name']}: {len(d['classes'])} classes, {count(d.get('n_eval'))} test images"
    if balanced:
        data += "; the training set is balanced (every class has as many training images), so there are no rare classes"
    elif d.get("imbalance") is not None:
        data += (f"; training counts from tailaudit's own long-tailed sampling, imbalance factor {d['imbalance']:g} "
                 "(rarest / most common class): “rare” and the head/medium/tail groups describe that sampling "
                 "profile, not necessarily the data this model was trained on (give the real counts with "
                 "--class-counts FILE)")
    elif (d.get("info") or {}).get("counts_source"):
        data += f"; training counts as given ({(d.get('info') or {})['counts_source']})"
    return {"verdict": verdict, "budget": budget_sentence(results), "suite": suite_sentence(results), "data": data,
            "balanced": balanced,
            "critical": critical_warnings(results),
            "at_risk": at_risk(results) if verdict["meaningful"] else [],
            "at_risk_title": "Weakest classes, and why" if verdict["code"] == "robust" else "Classes at risk, and why",
            "gate": gate_rows(results),
            "glossary": glossary(results, balanced)}


def audit_context(results: Mapping[str, Any], folder: Path) -> dict[str, Any]:
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
        "title": f"Robustness audit: {results['model']['spec']}",
        "running": f"audit: {results['model']['spec']}",
        "headline": headline(results),
        "created": results.get("created"),
        "page1": first_page(results),
        "findings": findings,
        "kpis": figures,
        "warnings": [str(w) for w in results.get("warnings") or []],
        "charts": chart_svgs,
        "curve": chart_svgs["curve"],
        "large": chart_svgs["large"],
        "n_classes": len(results["per_class"]),
        "top": TOP,
        "attack_names": [short_name(a) for a in results["attacks"]],
        "confusion": confusion(results),
        "examples": build_examples(results, folder),
        "table": class_table(results),
        "sanity": sanity_rows(results),
        "method": method(results),
        "calibration": calibration_view.audit_section(results),  # None for results without calibration
    }
