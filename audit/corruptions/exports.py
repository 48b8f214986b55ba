"""The corruption audit in per_class.csv (one column per corruption, severity-averaged) and summary.md."""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..contract.model import AuditResults, ClassResult


def names(results: AuditResults) -> list[str]:
    """The corruptions this run audited, in registry order ([] for a run without --corruptions)."""
    corr = results.summary.corruptions or {}
    return list(corr.get("names") or [])


def csv_header(results: AuditResults) -> list[str]:
    return [f"corruption_{n}" for n in names(results)]


def csv_cells(results: AuditResults, row: ClassResult, fmt: Callable[[Optional[float]], str]) -> list[str]:
    """The class's accuracy under each corruption, averaged over the audited severities."""
    return [fmt(((row.corruptions or {}).get(n) or {}).get("mean")) for n in names(results)]


def markdown(results: AuditResults, md: Callable[[Any], str], pct: Callable[[Optional[float]], str]) -> list[str]:
    """A table per corruption (mean accuracy, worst class, head and tail) and the comparison with the attacks."""
    corr = results.summary.corruptions
    if not corr:
        return []
    classes = results.dataset.classes
    sev = ",".join(str(s) for s in corr.get("severities") or [])
    lines = ["", f"Corruptions ({corr.get('source')}, {md(corr.get('parameters'))} parameters, severities {sev}): "
                 f"mean accuracy {pct(corr.get('mean_accuracy'))} against {pct(corr.get('clean_accuracy'))} clean; "
                 f"relative mCE {pct(corr.get('relative_mce'))}.", "",
             "| corruption | accuracy | weakest class | head | tail | lost vs clean |", "|---|---:|---|---:|---:|---:|"]
    for name, p in (corr.get("per_corruption") or {}).items():
        w = p.get("worst_class")
        weakest = f"{md(classes[w])} {pct(p.get('worst_class_accuracy'))}" if w is not None else "n/a"
        g = p.get("groups") or {}
        lines.append(f"| {md(name)} | {pct(p.get('mean_accuracy'))} | {weakest} | {pct(g.get('head'))} | "
                     f"{pct(g.get('tail'))} | {pct(p.get('relative_error'))} |")
    if corr.get("note"):
        lines += ["", md(corr["note"])]
    return lines
