"""The corruption section of the audit and comparison reports (results' ``corruptions`` only).

Audit: the class × corruption heatmap (severity-averaged), the weakest class per corruption, head
vs tail under corruption next to the attacks, and the sentence the audit stored on whether
corruption hurts other classes than the attacks (page 1 shows it when it does). Comparison: mean
corruption accuracy per corruption before and after; a repair does not optimise for corruptions.
Results without ``summary.corruptions`` (older files, runs without --corruptions) show nothing.
"""
from __future__ import annotations

from typing import Any, Optional

from audit.contract.model import AuditResults, ClassResult, CorruptionSummary

from . import charts
from .fmt import pct, points


def _corr(results: Optional[AuditResults]) -> Optional[CorruptionSummary]:
    return None if results is None else results.summary.corruptions or None


def _provenance(c: CorruptionSummary) -> str:
    sev = ", ".join(str(s) for s in c.severities)
    if c.source == "official":
        return f"Read from the released corruption files (severities {sev})."
    side = c.generated_side or []
    inp = c.input_side or []
    resized = (f" The model's {inp[0]}×{inp[1]} images were upsampled to {side[0]}×{side[1]} to be corrupted and "
               "resized back." if side and inp and list(side) != list(inp) else "")
    return (f"Generated with {c.library} at severities {sev}, seed {c.seed}, with its "
            f"{c.parameters} parameters (harsher than CIFAR-10-C's on 32-pixel images; docs/corruptions.md)."
            + resized)


def page1_note(results: AuditResults) -> Optional[str]:
    """The page-1 sentence: only when corruption tells a different story from the attacks."""
    c = _corr(results)
    return c.note if c and c.differs and c.note else None


def _class_mean(row: ClassResult, name: str) -> Optional[float]:
    """The class's accuracy under one corruption, averaged over severities (None when not measured)."""
    cells = row.corruptions or {}
    return cells[name].mean if name in cells else None


def audit_section(results: AuditResults, prefix: str = "a") -> Optional[dict[str, Any]]:
    """Heatmap, weakest class per corruption and the group table; None without corruption figures."""
    c = _corr(results)
    if not c:
        return None
    names = list(c.names)
    classes = results.dataset.classes
    matrix = [[_class_mean(r, n) for n in names] for r in results.per_class]
    svg = charts.corruption_heatmap(f"{prefix}-corruptions", matrix, [r.name for r in results.per_class], names,
                                    label="Accuracy of each class under each corruption, averaged over severities")
    weakest = []
    for n, p in c.per_corruption.items():
        w = p.worst_class
        weakest.append({"name": n.replace("_", " "), "family": p.family or "", "mean": pct(p.mean_accuracy),
                        "lost": points(p.relative_error),
                        "weakest": classes[w] if w is not None else "n/a",
                        "weakest_acc": pct(p.worst_class_accuracy),
                        "head": pct(p.group("head")), "tail": pct(p.group("tail"))})
    groups = []
    attacked = "worst_case" in results.summary.robust  # False for --attacks none: no "under attack" column
    clean = results.summary.clean
    for g, v in (c.groups or {}).items():
        groups.append({"group": g, "clean": pct(clean.group(g)), "corrupted": pct(v), "lost": points(c.lost(g)),
                       "attacked": pct(results.summary.worst_case.group(g) if attacked else None)})
    return {"svg": svg, "weakest": weakest, "groups": groups, "note": c.note or "",
            "mean": pct(c.mean_accuracy), "clean": pct(c.clean_accuracy),
            "rmce": points(c.relative_mce), "provenance": _provenance(c), "n_classes": len(classes),
            "attacked": attacked}


def compare_section(before: AuditResults, after: AuditResults) -> Optional[dict[str, Any]]:
    """Mean accuracy per corruption before and after, when both runs have it (None otherwise)."""
    cb, ca = _corr(before), _corr(after)
    if not cb or not ca:
        return None
    rows = []

    def add(label: str, b: Optional[float], a: Optional[float]) -> None:
        d = None if a is None or b is None else a - b
        rows.append({"label": label, "before": pct(b), "after": pct(a), "delta": points(d),
                     "cls": "" if d is None or abs(d) < 0.0005 else ("pos" if d > 0 else "neg")})

    add("Mean accuracy under corruption", cb.mean_accuracy, ca.mean_accuracy)
    for g in ("head", "tail"):
        if g in (cb.groups or {}) and g in (ca.groups or {}):
            add(f"{g.capitalize()} classes under corruption", cb.group(g), ca.group(g))
    pb, pa = cb.per_corruption, ca.per_corruption
    for n in [n for n in pb if n in pa]:
        add(n.replace("_", " "), pb[n].mean_accuracy, pa[n].mean_accuracy)
    return {"rows": rows}
