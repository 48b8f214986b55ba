"""The terminal summary: classes sorted by training count, clean and robust accuracy."""
from __future__ import annotations

from typing import Any

from .contract.model import AuditResults, Calibration, CalibrationBlock
from .textsafe import inline_safe
from .contract.figures import counts_are_sampled, headline_interval, interval_text, ranking_sentences, repair_command
from .checks.verdict import weakest_with_intervals


def _pct(v: Any) -> str:
    return "   -  " if v is None else f"{100 * v:5.1f}%"


def format_summary(results: AuditResults, max_rows: int = 40) -> str:
    """A plain-text table plus the headline figures."""
    return "\n".join(_class_table(results, max_rows) + [""] + _headline_lines(results) + verdict_lines(results))


def _class_table(results: AuditResults, max_rows: int) -> list[str]:
    attacks = [a.name for a in results.attacks]
    rows = sorted(results.per_class, key=lambda r: (-r.train_count, r.index))
    name_w = min(24, max([5] + [len(r.name) for r in rows]))  # names shown through inline_safe: one line each
    sampled = counts_are_sampled(results)
    head = f"{'class':<{name_w}} {'train*' if sampled else 'train':>6} {'group':<6} {'n':>5} {'clean':>6}"
    for a in attacks:
        head += f" {a[:12]:>12}"
    head += f" {'worst':>6}" if not results.attack_free else ""  # --attacks none: no robust column
    lines = [head, "-" * len(head)]
    shown = rows if len(rows) <= max_rows else rows[: max_rows // 2] + [None] + rows[-max_rows // 2:]
    for r in shown:
        if r is None:
            lines.append(f"{'...':<{name_w}} ({len(rows) - max_rows} more classes in results.json)")
            continue
        line = (f"{inline_safe(r.name)[:name_w]:<{name_w}} {r.train_count:>6} {r.group or '-':<6} {r.n_eval:>5} "
                f"{_pct(r.clean_acc):>6}")
        for a in attacks:
            line += f" {_pct(r.robust_acc[a]):>12}"
        line += f" {_pct(r.worst_case):>6}" if not results.attack_free else ""
        lines.append(line)
    if sampled:
        lines.append("* train: tailaudit's own long-tailed sampling profile, not the model's training counts "
                     "(give those with --class-counts FILE)")
    return lines


def _headline_lines(results: AuditResults) -> list[str]:
    if results.attack_free:
        return _corruption_only_lines(results)
    s = results.summary
    wc = s.worst_case
    ds = results.dataset
    attacks = [a.name for a in results.attacks]
    profile = (" (balanced training set)" if ds.balanced else
               f" (rho {ds.imbalance})" if ds.imbalance is not None else "")
    lines = [f"model {inline_safe(results.model.spec)} on {ds.name}{profile}, "
             f"{results.threat_model.norm} eps {results.eps_text}, {results.mode}, {ds.n_eval} points"]
    if results.suite == "black-box":
        lines.append(f"suite black-box ({results.black_box_reason or 'no gradients'}): "
                     + (results.suite_note or "score-based attacks only; robust accuracy is an upper bound"))
    elif results.suite:
        lines.append(f"suite {results.suite}, {results.mode_label or 'white-box'}"
                     + (f" ({results.suite_note})" if results.suite_note else ""))
    ci = interval_text(headline_interval(results))
    lines.append(f"clean accuracy {_pct(s.clean.overall).strip()}   "
                 + "   ".join(f"{a} {_pct(s.robust[a].overall).strip()}" for a in attacks)
                 + f"   worst case {_pct(wc.overall).strip()}" + (f" ({ci})" if ci else ""))
    if wc.mean is not None:
        g = wc.groups or {}
        by_group = "".join(f"; {k} {_pct(v).strip()}" for k, v in g.items()) if g else ""
        lines.append(f"balanced robust accuracy {_pct(wc.mean).strip()}; worst class "
                     f"{inline_safe(ds.classes[wc.worst_class])} {_pct(wc.worst).strip()}{by_group}")
        if wc.spearman:
            lines.append(f"Spearman(robust accuracy, training count) = {wc.spearman.rho:+.2f} (p={wc.spearman.p:.2g})")
    par = results.model.parity
    if par:
        lines.append(f"ONNX parity: max logit difference {par.max_abs_logit_diff or 0:.2e} on {par.n} "
                     "images; robust accuracy scored by onnxruntime")
    if s.calibration:
        lines.append(calibration_line(s.calibration))
    if s.corruptions:
        lines += corruption_lines(results)
    for c in results.curve or []:
        lines.append(f"  eps {c.eps_text:>8}: robust {_pct(c.overall).strip()}, balanced {_pct(c.balanced).strip()}")
    lines += [f"warning: {inline_safe(w)}" for w in results.warnings]
    return lines


def _profile(results: AuditResults) -> str:
    ds = results.dataset
    return (" (balanced training set)" if ds.balanced else f" (rho {ds.imbalance})" if ds.imbalance is not None else "")


def _corruption_only_lines(results: AuditResults) -> list[str]:
    """--attacks none: the run, clean accuracy, calibration and the corruption findings; no attack figure."""
    s, ds = results.summary, results.dataset
    lines = [f"model {inline_safe(results.model.spec)} on {ds.name}{_profile(results)}, {ds.n_eval} points",
             "no attack ran (--attacks none): natural corruptions only, attack robustness was not measured",
             f"clean accuracy {_pct(s.clean.overall).strip()}"]
    if s.calibration:
        lines.append(calibration_line(s.calibration))
    lines += corruption_lines(results)
    return lines + [f"warning: {inline_safe(w)}" for w in results.warnings]


def corruption_lines(results: AuditResults) -> list[str]:
    """The corruption audit in two lines: mean accuracy, the hardest corruption and its weakest class, the note."""
    c = results.summary.corruptions
    if c is None:
        return []
    per = c.per_corruption
    hardest = min(per, key=lambda n: per[n].mean_accuracy if per[n].mean_accuracy is not None else 2, default=None)
    severities = ",".join(str(v) for v in c.severities)
    line = (f"corruptions ({len(c.names)}, severities {severities}, "
            f"{c.parameters} parameters): mean accuracy {_pct(c.mean_accuracy).strip()} vs clean "
            f"{_pct(c.clean_accuracy).strip()}")
    if hardest is not None:
        w = per[hardest].worst_class
        line += (f"; hardest {hardest} {_pct(per[hardest].mean_accuracy).strip()}"
                 + (f" (weakest class {inline_safe(results.dataset.classes[w])})" if w is not None else ""))
    return [line] + ([f"  {inline_safe(c.note)}"] if c.note else [])


def calibration_line(cal: Calibration) -> str:
    """ECE and confidently wrong answers, clean and (when measured) under attack, in one line."""
    def side(d: CalibrationBlock) -> str:
        wrong = d.confident_error_90.rate if d.confident_error_90 is not None else None
        return f"ECE {_pct(d.ece).strip()}, wrong with confidence > 0.9: {_pct(wrong).strip()}"
    line = f"calibration: clean {side(cal.clean)}"
    if cal.attacked:
        line += f"; under attack {side(cal.attacked)} (a lower bound)"
    return line


def verdict_lines(results: AuditResults) -> list[str]:
    """The verdict, its reasons and what to do next; no grade when not meaningful."""
    v = results.verdict
    if v is None:
        return []
    grade = f"{v.code} (upper bound: {v.label.lower()})" if v.upper_bound and v.graded else v.code
    lines = ["", f"verdict: {grade}: {inline_safe(v.statement)}"]  # class names inside: one line each
    lines += [f"  because {inline_safe(r)}" for r in v.reasons]
    if v.meaningful and not results.attack_free:
        lines.append(f"  weakest classes: {inline_safe(weakest_with_intervals(results))}")
        lines += [f"  note: {inline_safe(t)}" for t in ranking_sentences(results)]
    lines += [f"  next: {inline_safe(a)}" for a in v.actions]
    if v.graded and not v.upper_bound and v.code != "robust":
        lines.append(f"  repair command: {inline_safe(repair_command(results))}")
    gate = results.gate
    if gate:
        lines.append(f"gate: {'passed' if gate.passed else 'FAILED'} ("
                     + ", ".join(f"{c.key} {_pct(c.value).strip()} {'ok' if c.passed else 'fail'}"
                                 for c in gate.conditions) + ")")
    return lines
