"""What a side-by-side comparison of models shows: two or more audits of different models on the same
points under the same threat model (``tailaudit report A.json --compare B.json [C.json …]`` when the
files are not a repair's before and after). Nothing here says "before" or "after": the models are
peers, each with its own verdict; the ranking says when the intervals cannot separate them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from audit.contract.figures import wilson_interval
from audit.contract.figures import class_interval, headline_interval, interval_text
from audit.contract.model import AuditResults, Calibration

from . import charts
from .audit_view import LARGE, TOP, method, run_headline, strip_counts
from .calibration_view import confident_wrong
from .fmt import count, interval, num, pct, points, threat_text
from .plain import budget_sentence, critical_warnings, glossary, is_balanced, resolve_verdict
from .verdict import by_count, head_tail, quote

# one colour per model (Okabe-Ito, then black): distinguishable for colour-blind readers
MODEL_COLOURS = ("#003F7F", "#E69F00", "#CC79A7", "#009E73", "#56B4E9", "#D55E00", "#000000", "#F0E442")
MAX_MODELS = len(MODEL_COLOURS)


def model_names(runs: Sequence[AuditResults], folders: Sequence[Path]) -> list[str]:
    """A short, unique name per model: its file or architecture name, with the results folder when two share it."""
    names = [Path(str(r.model.spec)).name or str(r.model.spec) for r in runs]
    return [f"{n} ({Path(f).name})" if names.count(n) > 1 else n for n, f in zip(names, folders)]


def _summary_row(name: str, results: AuditResults, colour: str) -> dict[str, Any]:
    wc = results.worst_case
    worst = results.per_class[wc.worst_class] if wc.worst_class is not None else None
    gap = results.summary.robust_gap
    return {"name": name, "colour": colour, "verdict": resolve_verdict(results), "spec": str(results.model.spec),
            "sha": str(results.model.sha256 or "")[:12], "clean": pct(results.summary.clean.headline),
            "robust": pct(wc.headline), "robust_ci": interval(headline_interval(results)), "balanced": pct(wc.mean),
            "worst": (f"{pct(worst.worst_case)} ({quote(worst.name)}, {interval_text(class_interval(worst))})"
                      if worst else "n/a"),
            "gap": f"{points(gap)} pts" if gap is not None else "–",
            "confident": _confidently_wrong(results.summary.calibration)}


def _confidently_wrong(cal: Calibration | None) -> str:
    """Share of test images wrong with confidence above 0.9 under attack (clean when not measured under attack)."""
    if cal is None:
        return "–"
    rate = confident_wrong(cal.attacked or cal.clean)
    return pct(rate) + ("" if cal.attacked else " (clean)") if rate is not None else "–"


def ranking_sentences(names: Sequence[str], runs: Sequence[AuditResults]) -> list[str]:
    """Which model keeps the most test images correct under attack, and whether the intervals separate it; models
    that cannot be graded are named, never ranked."""
    n = int(runs[0].dataset.n_eval or 0)
    graded = [(r.worst_case.headline, name) for name, r in zip(names, runs) if resolve_verdict(r)["graded"]]
    out = []
    ungraded = [name for name, r in zip(names, runs) if not resolve_verdict(r)["graded"]]
    if ungraded:
        out.append(f"Not graded (the model does not work on this data as audited, or the attacks could not work on "
                   f"it): {', '.join(ungraded)}; left out of the ranking.")
    upper = [name for name, r in zip(names, runs) if resolve_verdict(r)["upper_bound"]]
    if upper:
        out.append(f"Black-box figures (upper bounds: only a score-based attack ran): {', '.join(upper)}; a higher "
                   "upper bound is not evidence of a more robust model.")
    graded = sorted([g for g in graded if g[0] is not None], key=lambda g: -g[0])
    if len(graded) < 2:
        return out
    (best, best_name), (second, second_name) = graded[0], graded[1]
    lo_best, _ = wilson_interval(round(best * n), n)
    _, hi_second = wilson_interval(round(second * n), n)
    lead = (f"Under attack ({threat_text(runs[0].threat_model)}), {best_name} keeps the most test images correct: "
            f"{pct(best)}, against {pct(second)} for {second_name}")
    if lo_best > hi_second:
        out.insert(0, lead + f" ({points(best - second)} points; the 95% intervals do not overlap).")
    else:
        out.insert(0, lead + f" — a difference of {points(best - second, signed=False)} points that the "
                   f"{count(n)} test points cannot separate (the 95% intervals overlap).")
    if len(graded) > 2:
        worst, worst_name = graded[-1]
        out.insert(1, f"Fewest: {worst_name}, {pct(worst)}.")
    return out


def class_rows(names: Sequence[str], runs: Sequence[AuditResults]) -> list[dict[str, Any]]:
    """Per class (most common first): group, counts and each model's worst-case robust accuracy; the best marked."""
    rows = []
    for r0 in by_count(runs[0].per_class):
        c = r0.index
        vals = [run.per_class[c].worst_case for run in runs]
        top = max(v for v in vals if v is not None) if any(v is not None for v in vals) else None
        rows.append({"index": c, "name": r0.name, "group": r0.group or "–", "train": count(r0.train_count),
                     "n": r0.n_eval, "values": [{"text": num(v), "best": v is not None and v == top
                                                 and vals.count(top) == 1} for v in vals]})
    return rows


def models_context(runs: Sequence[AuditResults], folders: Sequence[Path]) -> dict[str, Any]:
    """Everything the model comparison template shows."""
    names = model_names(runs, folders)
    first = runs[0]
    balanced = is_balanced(first)
    rows = by_count(first.per_class)
    sel = rows if len(rows) <= LARGE else by_count(sorted(
        rows, key=lambda r: min(run.per_class[r.index].worst_case for run in runs))[:TOP])
    series = [(name, [run.per_class[r.index].worst_case for r in sel], colour)
              for name, run, colour in zip(names, runs, MODEL_COLOURS)]
    chart = charts.class_bars("m-classes", [r.name for r in sel], [r.group for r in sel],
                              strip_counts(first, sel), series, label="Per-class robust accuracy of each model",
                              value_labels="all" if len(sel) * len(runs) <= 30 else "none")
    head, tail = head_tail(first)
    groups = [{"group": g, "values": [pct(run.worst_case.group(g)) for run in runs]}
              for g in ([head, "medium", tail] if head and tail else [])]
    critical = [w for name, run in zip(names, runs) for w in critical_warnings(run, name)]
    return {
        "kind": "models",
        "title": f"Model comparison: {len(runs)} models",
        "running": "models: " + " · ".join(names),
        "headline": run_headline(first, ", the same for every model"),
        "models": [_summary_row(n, r, c) for n, r, c in zip(names, runs, MODEL_COLOURS)],
        "calibrated": any(r.summary.calibration is not None for r in runs),
        "ranking": ranking_sentences(names, runs),
        "budget": budget_sentence(first),
        "critical": critical,
        "groups": groups,
        "names": names,
        "chart": chart,
        "large": len(rows) > LARGE, "top": TOP, "n_classes": len(rows),
        "table": class_rows(names, runs),
        "glossary": glossary(first, balanced),
        "method": _shared_method(first, names, runs),
    }


def _shared_method(first: AuditResults, names: Sequence[str], runs: Sequence[AuditResults]) -> dict[str, Any]:
    """The method section of the first run (threat model, attacks, evaluation are shared), with one model row per
    model instead of the first model's details."""
    shared = dict(method(first))
    shared["model"] = [(name, f"{run.model.spec} · {run.model.format} · sha256 "
                              f"{str(run.model.sha256 or '?')[:16]}…") for name, run in zip(names, runs)]
    shared["parity"] = []
    return shared
