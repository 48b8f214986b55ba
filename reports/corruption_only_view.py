"""The report of a corruption-only audit (``--attacks none``): no attack ran, so nothing here is an attack figure.

Page 1 leads with the corruption findings (worst corruption, weakest class there with its interval, head vs
tail under corruption); then the corruption section, the per-class table (clean and under corruption) and
the method. The verdict is the stored ``not-graded`` one: attack robustness was not measured.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.contract.model import AuditResults
from audit.contract.figures import CorruptionFindings, corruption_findings

from . import corruption_view
from .audit_view import _data_sentence, _evaluation_rows, _kv, _model_rows, model_title
from .fmt import count, interval, num, pct, points, seconds
from .plain import critical_warnings, gate_rows, is_balanced, resolve_verdict
from .verdict import by_count

MEANING = ("This audit scored the model on naturally corrupted images only (blur, noise, weather, compression). No "
           "attack ran, so it says nothing about what someone who tampers with images can do, and it gives no "
           "attack-robustness grade.")
NOT_MEASURED = "No attack ran (--attacks none): attack robustness was not measured."


def _kpis(results: AuditResults, f: CorruptionFindings) -> list[dict[str, str]]:
    """Page 1's figures: clean, mean under corruption, the worst corruption and its weakest class, head vs tail."""
    out = [{"label": "Clean accuracy", "value": pct(results.summary.clean.overall), "note": "no corruption"},
           {"label": "Mean accuracy under corruption", "value": pct(f.mean_accuracy),
            "note": "over corruptions and severities"},
           {"label": "Worst corruption", "value": pct(f.worst_accuracy), "note": f.worst.replace("_", " ")}]
    w = f.weakest
    if w is not None:
        out.append({"label": "Weakest class there", "value": pct(w.accuracy),
                    "note": f"“{w.class_name}”, severity {w.severity}, 95% interval {interval(w.ci95)}%, "
                            f"{w.n} test images"})
    head, tail = f.lost("head"), f.lost("tail")
    if head is not None and tail is not None:
        out.append({"label": "Lost under corruption: head / tail",
                    "value": f"{points(head, signed=False)} / {points(tail, signed=False)}",
                    "note": "accuracy points lost from clean, common vs rare classes"})
    return out


def _class_rows(results: AuditResults) -> list[dict[str, Any]]:
    """Per class: clean accuracy and its interval, the mean under corruption and the class's hardest corruption."""
    rows = []
    for r in by_count(results.per_class):
        means = {n: v.mean for n, v in (r.corruptions or {}).items() if v.mean is not None}
        hardest = min(means, key=lambda n: means[n]) if means else None
        rows.append({"index": r.index, "name": r.name, "group": r.group or "–", "train": count(r.train_count),
                     "n": r.n_eval, "clean": num(r.clean_acc), "clean_ci": interval(r.clean_ci95),
                     "corrupted": num(sum(means.values()) / len(means)) if means else "–",
                     "hardest": hardest.replace("_", " ") if hardest else "–",
                     "hardest_acc": num(means[hardest]) if hardest else "–"})
    return rows


def _method(results: AuditResults) -> dict[str, Any]:
    t = results.timings
    timings = _kv(("loading", seconds(t.load_s if t else None)), ("clean pass", seconds(t.clean_s if t else None)),
                  ("total", seconds(t.total_s if t else None)))
    return {"evaluation": _evaluation_rows(results), "model": _model_rows(results), "timings": timings,
            "environment": _kv(*((k, v) for k, v in (results.environment or {}).items())),
            "provenance": _kv(("tool", f"{results.tool.name} {results.tool.version}" if results.tool else None),
                              ("audit run", results.created))}


def corruption_only_context(results: AuditResults, folder: Path) -> dict[str, Any]:
    """Everything the corruption-only template shows (``folder`` is unused: there are no adversarial examples)."""
    verdict = dict(resolve_verdict(results), meaning=MEANING)
    f = corruption_findings(results)
    d = results.dataset
    return {
        "kind": "audit",
        "title": f"Corruption audit: {model_title(results)}",
        "running": f"corruption audit: {model_title(results)}",
        "headline": (f"{model_title(results)} on {d.name} ({len(d.classes)} classes, {count(d.n_eval)} test points)"
                     " · natural corruptions only, no attack"),
        "created": results.created,
        "page1": {"verdict": verdict, "not_measured": NOT_MEASURED,
                  "data": _data_sentence(results, is_balanced(results)), "critical": critical_warnings(results),
                  "gate": gate_rows(results), "kpis": _kpis(results, f) if f is not None else []},
        "warnings": [str(w) for w in results.warnings or []],
        "corruptions": corruption_view.audit_section(results),
        "rows": _class_rows(results),
        "n_classes": len(results.per_class),
        "method": _method(results),
    }
