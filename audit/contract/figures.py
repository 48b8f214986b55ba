"""How the figures stored in results are read: Wilson intervals, the weakest classes and whether the test
points can rank them, upper bounds, the corruption findings and the repair command for an audit.

Pure functions of :class:`~audit.contract.model.AuditResults` (no torch, no attack): the verdict rules
(audit/checks/verdict.py), the terminal summary, the exports and the reports read a stored audit through them, so
every page states a figure with the same interval.
"""
from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from typing import Optional, Sequence

from .model import AuditResults, ClassResult, CorruptionSummary

Interval = tuple[float, float]
SEPARATE_MAX_N = 5000  # the largest --n-per-class the sample-size sentence suggests; beyond: "too close to rank"
NAMED_MAX = 5  # class names a grouping sentence lists before "and N more"
MAX_RESIZE = 4.0  # resizing by more than this factor (either way) means the model was made for other data


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for k successes out of n (``(0, 1)`` when n == 0)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pct_text(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def repair_command(results: AuditResults) -> str:
    """The repair command for this audit, paths relative to the folder the audit ran in when they lie inside it."""
    if str(results.model.format) == "torch":  # a module from Python: the API, not the command line
        return "tailaudit.run_repair(RepairConfig(audit=<this audit's AuditConfig>)) (docs/python_api.md)"
    cfg = results.config or {}
    parts = ["python", "cli.py", "repair", _relative(results.model.spec), "--dataset", str(results.dataset.name)]
    for key in ("checkpoint", "labels", "mean", "std", "input_size"):
        if cfg.get(key) is not None:
            val = cfg[key]
            val = ",".join(f"{v:g}" for v in val) if isinstance(val, (list, tuple)) else _relative(val)
            parts += [f"--{key.replace('_', '-')}", val]
    if cfg.get("data_root"):
        parts += ["--data-root", _relative(cfg["data_root"])]
    tm = results.threat_model
    if tm.norm and tm.norm != "linf":
        parts += ["--norm", str(tm.norm)]
    if tm.eps_text:
        parts += ["--eps", str(tm.eps_text)]
    return " ".join(shlex.quote(p) for p in parts)


def _relative(value: object) -> str:
    """A path as given, relative to the working folder when it lies inside it (commands stay short and portable)."""
    text = str(value)
    if not os.path.isabs(text):
        return text
    try:
        rel = os.path.relpath(text)
    except ValueError:  # another drive (Windows)
        return text
    return text if rel.startswith("..") else rel


def quoted_names(rows: Sequence[ClassResult]) -> str:
    quoted = [f"“{r.name}”" for r in rows]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def headline_interval(results: AuditResults) -> Optional[Interval]:
    """Wilson 95% interval of the headline worst-case robust accuracy over the evaluated points (None without)."""
    n = int(results.dataset.n_eval or 0)
    value = results.summary.worst_case.headline
    if not n or value is None:
        return None
    return wilson_interval(round(value * n), n)


def interval_text(ci: Optional[Sequence[float]]) -> str:
    """'95% interval 65.2–73.3%' ('' without an interval)."""
    if not ci or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return ""
    return f"95% interval {100 * ci[0]:.1f}–{100 * ci[1]:.1f}%"


def class_interval(row: ClassResult) -> Interval:
    """A class's worst-case robust accuracy interval: as stored, else from its count of test points."""
    ci = (row.robust_ci95 or {}).get("worst_case")
    if ci and len(ci) == 2:
        return float(ci[0]), float(ci[1])
    return wilson_interval(round((row.worst_case or 0.0) * row.n_eval), row.n_eval)


def _overlap(a: Interval, b: Interval) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def counts_are_sampled(results: AuditResults) -> bool:
    """True when the training counts are tailaudit's own long-tailed sampling profile, not counts measured for this
    model (no --class-counts): no page may then state a count as the model's."""
    d = results.dataset
    return d.imbalance is not None and not d.balanced


def ranked_classes(results: AuditResults) -> list[ClassResult]:
    """Every class with a worst-case figure, least robust first (lower index first on ties)."""
    rows = [r for r in results.per_class if r.worst_case is not None]
    return sorted(rows, key=lambda r: (r.worst_case, r.index))


def indistinct_weakest(results: AuditResults) -> list[ClassResult]:
    """The weakest class and every class whose 95% interval overlaps its interval: the classes the test points
    cannot rank against the weakest one (a single row when the weakest stands apart)."""
    rows = ranked_classes(results)
    if not rows:
        return []
    ci = class_interval(rows[0])
    return [rows[0]] + [r for r in rows[1:] if _overlap(ci, class_interval(r))]


def points_to_separate(p1: float, p2: float, *, start: int = 1, limit: int = SEPARATE_MAX_N) -> Optional[int]:
    """The smallest test points per class (from ``start``) at which rates ``p1`` < ``p2`` get 95% Wilson intervals
    that do not overlap, if the rates held; None when no count up to ``limit`` does (or the rates are equal)."""
    if p2 <= p1:
        return None
    for n in range(max(1, start), limit + 1):
        if wilson_interval(round(p1 * n), n)[1] < wilson_interval(round(p2 * n), n)[0]:
            return n
    return None


def listed(rows: Sequence[ClassResult]) -> str:
    shown = list(rows[:NAMED_MAX])
    more = len(rows) - len(shown)
    if more:
        return ", ".join(f"“{r.name}”" for r in shown) + f" and {more} more"
    return quoted_names(shown)


def _per_class_n(rows: Sequence[ClassResult]) -> str:
    ns = sorted({int(r.n_eval) for r in rows})
    return f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def ranking_sentences(results: AuditResults) -> list[str]:
    """When the weakest classes cannot be told apart: which ones, at how many test images per class, and the
    --n-per-class that would separate the two weakest if their rates held. Empty when the weakest stands apart."""
    group = indistinct_weakest(results)
    if len(group) < 2:
        return []
    lo = min(class_interval(r)[0] for r in group)
    hi = max(class_interval(r)[1] for r in group)
    out = [f"{listed(group)} cannot be told apart at {_per_class_n(group)} test images per class: their 95% "
           f"intervals overlap ({100 * lo:.1f}–{100 * hi:.1f}%)."]
    first = group[0]
    tied = [r for r in group if r.worst_case == first.worst_case]
    second = next((r for r in group[1:] if r.worst_case > first.worst_case), None)
    if len(tied) > 1:
        out.append(f"{listed(tied)} all measured {pct_text(first.worst_case)}: no sample size would rank them on this "
                   "evidence.")
    if second is None:
        return out
    n_now = max(int(first.n_eval), int(second.n_eval))
    need = points_to_separate(first.worst_case, second.worst_case, start=n_now + 1)
    lead = f"“{first.name}”" if len(tied) == 1 else "them"
    pair = f"{lead} ({pct_text(first.worst_case)}) from “{second.name}” ({pct_text(second.worst_case)})"
    if need is None:
        out.append(f"Telling {pair} apart would need more than {SEPARATE_MAX_N:,} test images per class: treat "
                   "them as equally weak.")
    else:
        out.append(f"Telling {pair} apart would take about --n-per-class {need:,}, if these rates hold.")
    return out


def is_upper_bound(results: AuditResults) -> bool:
    """True when only score-based attacks could run (black-box): robust accuracy is an upper bound."""
    return (results.suite == "black-box") or (results.mode_label or "white-box") != "white-box"


@dataclass(frozen=True)
class WeakestCell:
    """The lowest class-cell of a corruption: the class, the severity, its accuracy, 95% interval and image count."""

    class_name: str
    severity: int
    accuracy: float
    ci95: Optional[list[float]]
    n: int


@dataclass(frozen=True)
class CorruptionFindings:
    """What page 1 and the verdict say about a corruption audit (:func:`corruption_findings`): the worst corruption
    and its weakest class-cell, read from ``summary`` (whose means and group losses they pass on)."""

    summary: CorruptionSummary
    worst: str  # the corruption with the lowest severity-averaged accuracy
    worst_accuracy: float
    weakest: Optional[WeakestCell]

    @property
    def mean_accuracy(self) -> Optional[float]:
        return self.summary.mean_accuracy

    def lost(self, name: str) -> Optional[float]:
        """Accuracy a group (head / tail) lost from clean under corruption; None without it."""
        return self.summary.lost(name)


def corruption_findings(results: AuditResults) -> Optional[CorruptionFindings]:
    """The corruption audit's page-1 findings (None without corruption figures): the worst corruption (lowest
    severity-averaged accuracy), the weakest class-cell there (lowest accuracy over its severities, with the
    cell's 95% interval and image count) and the head/tail means and losses under corruption."""
    c = results.summary.corruptions
    per = {n: p.mean_accuracy for n, p in (c.per_corruption if c else {}).items() if p.mean_accuracy is not None}
    if c is None or not per:
        return None
    worst = min(per, key=lambda n: per[n])
    cells = [(cell.accuracy, r, sev, cell) for r in results.per_class
             for sev, cell in ((r.corruptions or {})[worst].severities.items() if worst in (r.corruptions or {})
                               else ()) if cell.accuracy is not None]
    weakest = None
    if cells:
        acc, row, sev, cell = min(cells, key=lambda t: (t[0], t[1].index))
        weakest = WeakestCell(class_name=row.name, severity=int(sev), accuracy=acc, ci95=cell.ci95, n=row.n_eval)
    return CorruptionFindings(summary=c, worst=worst, worst_accuracy=per[worst], weakest=weakest)
