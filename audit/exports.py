"""Exports beside results.json for people and pipelines: ``per_class.csv`` and ``summary.md``."""
from __future__ import annotations

import csv
import io
from typing import Any, Optional

from . import calibration
from .corruptions import exports as corruption_exports
from .contract.model import AuditResults
from .contract.figures import class_interval, counts_are_sampled, headline_interval, interval_text, ranking_sentences

CSV_NAME = "per_class.csv"
MD_NAME = "summary.md"


def _f(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.6g}"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def _text_cell(text: Any) -> str:
    """A user string as a CSV cell a spreadsheet shows as text: a leading ' before a formula start (OWASP's
    advice for CSV injection), so a class named ``=HYPERLINK(...)`` is never executed when the file is opened."""
    s = str(text)
    return "'" + s if s.startswith(FORMULA_START) else s


def per_class_csv(results: AuditResults) -> str:
    """One row per class: counts, group, clean and robust accuracy (per attack and worst case) with 95% intervals.

    Text cells that a spreadsheet would run as a formula are neutralised (:func:`_text_cell`)."""
    names = [a.name for a in results.attacks] + ([] if results.attack_free else ["worst_case"])  # none: no column
    head = ["class", "index", "train_count", "group", "n_eval", "clean_acc", "clean_ci95_low", "clean_ci95_high"]
    for n in names:
        head += [f"robust_{n}", f"robust_{n}_ci95_low", f"robust_{n}_ci95_high"]
    calibrated = any(r.calibration for r in results.per_class)  # older results: no calibration columns
    head += calibration.csv_header() if calibrated else []
    head += corruption_exports.csv_header(results)  # --corruptions: one column per corruption
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in results.per_class:
        clean_ci = r.clean_ci95 or [None, None]
        row = [_text_cell(r.name), r.index, r.train_count, _text_cell(r.group or ""), r.n_eval, _f(r.clean_acc),
               _f(clean_ci[0]), _f(clean_ci[1])]
        for n in names:
            ci = r.robust_ci95.get(n) or [None, None]
            row += [_f(r.robust_acc.get(n)), _f(ci[0]), _f(ci[1])]
        row += calibration.csv_cells(r, _f) if calibrated else []
        row += corruption_exports.csv_cells(results, r, _f)
        w.writerow(row)
    return buf.getvalue()


def _md(text: Any) -> str:
    """Escape a user string for a Markdown table cell or line."""
    s = str(text).replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    for ch in "|`*_[]<>#":
        s = s.replace(ch, "\\" + ch)
    return s


def _p(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def summary_markdown(results: AuditResults, k_weakest: int = 5) -> str:
    """A short Markdown summary for pull-request comments and CI logs."""
    v = results.verdict
    lines = [f"## tailaudit: {_md(results.model.spec)} on {_md(results.dataset.name)}", ""]
    if v is not None:
        lines += [f"**Verdict: {_md(v.label)}** (`{v.code}`). {_md(v.statement)}", ""]
        lines += [f"- {_md(r)}" for r in v.reasons]
        lines.append("")
    if results.attack_free:  # --attacks none: no attack figure at all, the corruption tables lead
        lines += _clean_table(results) + _calibration_table(results)
    else:
        lines += _figures_table(results) + _weakest_table(results, k_weakest) + _calibration_table(results)
    lines += corruption_exports.markdown(results, _md, _p)
    if results.curve:
        lines += ["", "Robustness curve (worst case):", "", "| ε | robust | balanced |", "|---|---:|---:|"]
        lines += [f"| {_md(c.eps_text)} | {_p(c.overall)} | {_p(c.balanced)} |" for c in results.curve]
    if results.gate:
        lines += ["", f"Gate: **{'passed' if results.gate.passed else 'FAILED'}**", ""]
        for c in results.gate.conditions:
            lines.append(f"- {c.key}: {_p(c.value)} ({c.direction} {_p(c.threshold)}) — "
                         f"{'pass' if c.passed else 'FAIL'}")
    if v is not None and v.actions:
        lines += ["", "What to do next:", ""] + [f"1. {_md(a)}" for a in v.actions]
    if results.warnings:
        lines += ["", "Warnings:", ""] + [f"- {_md(w)}" for w in results.warnings]
    return "\n".join(lines) + "\n"


def _clean_table(results: AuditResults) -> list[str]:
    """--attacks none: what was measured besides the corruptions (attack robustness was not)."""
    s, ds = results.summary, results.dataset
    return [f"No attack ran (--attacks none): attack robustness was not measured. {ds.n_eval} test images, "
            f"{len(ds.classes)} classes" + (" (balanced training set)" if ds.balanced else "") + ".", "",
            "| figure | value |", "|---|---|", f"| clean accuracy | {_p(s.clean.overall)} |",
            f"| mean accuracy under corruption | {_p(s.corruptions.mean_accuracy if s.corruptions else None)} |"]


def _figures_table(results: AuditResults) -> list[str]:
    s, ds = results.summary, results.dataset
    wc = s.worst_case
    norm = "L∞" if results.threat_model.norm == "linf" else "L2"
    lines = [f"Threat model {norm} ε = {_md(results.eps_text)}, {results.mode}, {ds.n_eval} test images, "
             f"{len(ds.classes)} classes" + (" (balanced training set)" if ds.balanced else "") + ".", "",
             "| figure | value |", "|---|---|",
             f"| clean accuracy | {_p(s.clean.overall)} |",
             f"| worst-case robust accuracy | {_p(wc.overall)} ({interval_text(headline_interval(results))}) |",
             f"| balanced robust accuracy (class mean) | {_p(wc.mean)} |"]
    if wc.worst_class is not None:
        lines.append(f"| weakest class | {_md(ds.classes[wc.worst_class])} {_p(wc.worst)} |")
    for g, val in (wc.groups or {}).items():
        lines.append(f"| {g} classes robust | {_p(val)} |")
    gap = s.robust_gap
    if gap is not None:
        lines.append(f"| head − tail gap | {100 * gap:.1f} points |")
    return lines


def _weakest_table(results: AuditResults, k: int) -> list[str]:
    rows = sorted(results.per_class, key=lambda r: (r.worst_case if r.worst_case is not None else 2, r.index))[:k]
    sampled = counts_are_sampled(results)
    counts = "training images (tailaudit's sampling profile)" if sampled else "training images"
    lines = ["", "Weakest classes under attack:", "", f"| class | {counts} | group | clean | robust (worst case) | "
             "95% interval |", "|---|---:|---|---:|---:|---|"]
    for r in rows:
        lo, hi = class_interval(r)
        lines.append(f"| {_md(r.name)} | {r.train_count} | {r.group or '-'} | {_p(r.clean_acc)} | "
                     f"{_p(r.worst_case)} | {100 * lo:.1f}–{100 * hi:.1f}% |")
    notes = ranking_sentences(results)
    if sampled:
        notes.append("The training counts are tailaudit's own long-tailed sampling profile, not the model's: give "
                     "the model's real counts with --class-counts FILE.")
    return lines + (["", *(_md(t) for t in notes)] if notes else [])


def _calibration_table(results: AuditResults) -> list[str]:
    cal_rows = calibration.summary_rows(results)
    if not cal_rows:
        return []
    if results.attack_free:  # --attacks none: clean calibration only, no empty attacked column
        return (["", "Calibration on clean images (confidence = top softmax probability):", "", "| figure | clean |",
                 "|---|---:|"] + [f"| {_md(a)} | {b} |" for a, b, _ in cal_rows])
    lines = ["", "Calibration (confidence = top softmax probability):", "", "| figure | clean | under attack |",
             "|---|---:|---:|"]
    lines += [f"| {_md(a)} | {b} | {c} |" for a, b, c in cal_rows]
    return lines + ["", _md(calibration.summary_note(results))]
