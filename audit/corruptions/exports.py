"""The corruption audit in per_class.csv (one column per corruption, severity-averaged) and summary.md."""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..contract.model import AuditResults, ClassResult


def names(results: AuditResults) -> list[str]:
    """The corruptions this run audited, in registry order ([] for a run without --corruptions)."""
    corr = results.summary.corruptions
    return list(corr.names) if corr else []


def csv_header(results: AuditResults) -> list[str]:
    return [f"corruption_{n}" for n in names(results)]


def csv_cells(results: AuditResults, row: ClassResult, fmt: Callable[[Optional[float]], str]) -> list[str]:
    """The class's accuracy under each corruption, averaged over the audited severities."""
    cells = row.corruptions or {}
    return [fmt(cells[n].mean if n in cells else None) for n in names(results)]


def markdown(results: AuditResults, md: Callable[[Any], str], pct: Callable[[Optional[float]], str]) -> list[str]:
    """A table per corruption (mean accuracy, worst class, head and tail) and the comparison with the attacks."""
    corr = results.summary.corruptions
    if not corr:
        return []
    classes = results.dataset.classes
    sev = ",".join(str(s) for s in corr.severities)
    lines = ["", f"Corruptions ({corr.source}, {md(corr.parameters)} parameters, severities {sev}): "
                 f"mean accuracy {pct(corr.mean_accuracy)} against {pct(corr.clean_accuracy)} clean; "
                 f"relative mCE {pct(corr.relative_mce)}.", "",
             "| corruption | accuracy | weakest class | head | tail | lost vs clean |", "|---|---:|---|---:|---:|---:|"]
    for name, p in corr.per_corruption.items():
        w = p.worst_class
        weakest = f"{md(classes[w])} {pct(p.worst_class_accuracy)}" if w is not None else "n/a"
        lines.append(f"| {md(name)} | {pct(p.mean_accuracy)} | {weakest} | {pct(p.group('head'))} | "
                     f"{pct(p.group('tail'))} | {pct(p.relative_error)} |")
    if corr.note:
        lines += ["", md(corr.note)]
    return lines
