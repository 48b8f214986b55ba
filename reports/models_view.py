"""What a side-by-side comparison of models shows: two or more audits of different models on the same
points under the same threat model (``tailaudit report A.json --compare B.json [C.json …]`` when the
files are not a repair's before and after). Nothing here says "before" or "after": the models are
peers, each with its own verdict; the ranking says when the intervals cannot separate them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from audit.metrics import wilson_interval
from audit.verdict import overall_of

from . import charts
from .audit_view import LARGE, TOP, by_count, method, strip_counts
from .fmt import attack_label, count, num, pct, points, threat_text
from .plain import budget_sentence, critical_warnings, glossary, is_balanced, resolve_verdict
from .verdict import head_tail, quote

# one colour per model (Okabe-Ito, then black): distinguishable for colour-blind readers
MODEL_COLOURS = ("#003F7F", "#E69F00", "#CC79A7", "#009E73", "#56B4E9", "#D55E00", "#000000", "#F0E442")
MAX_MODELS = len(MODEL_COLOURS)


def model_names(runs: Sequence[Mapping[str, Any]], folders: Sequence[Path]) -> list[str]:
    """A short, unique name per model: its file or architecture name, with the results folder when two share it."""
    names = [Path(str(r["model"]["spec"])).name or str(r["model"]["spec"]) for r in runs]
    return [f"{n} ({Path(f).name})" if names.count(n) > 1 else n for n, f in zip(names, folders)]


def _summary_row(name: str, results: Mapping[str, Any], colour: str) -> dict[str, Any]:
    s = results["summary"]
    wc = s["robust"]["worst_case"]
    v = resolve_verdict(results)
    worst = results["per_class"][wc["worst_class"]] if wc.get("worst_class") is not None else None
    gap = (s.get("head_tail_gap") or {}).get("worst_case")
    return {"name": name, "colour": colour, "verdict": v, "spec": str(results["model"]["spec"]),
            "sha": str(results["model"].get("sha256") or "")[:12], "clean": pct(overall_of(s["clean"])),
            "robust": pct(overall_of(wc)), "balanced": pct(wc.get("mean")),
            "worst": f"{pct(worst['robust_acc']['worst_case'])} ({quote(worst['name'])})" if worst else "n/a",
            "gap": f"{points(gap)} pts" if gap is not None else "–",
            "confident": _confidently_wrong(s.get("calibration"))}


def _confidently_wrong(cal: Mapping[str, Any] | None) -> str:
    """Share of test images wrong with confidence above 0.9 under attack (clean when not measured under attack)."""
    if not isinstance(cal, Mapping):
        return "–"
    side = cal.get("attacked") or cal.get("clean") or {}
    rate = (side.get("confident_error_90") or {}).get("rate")
    return pct(rate) + ("" if cal.get("attacked") else " (clean)") if rate is not None else "–"


def ranking_sentences(names: Sequence[str], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which model keeps the most test images correct under attack, and whether the intervals separate it; models
    that cannot be graded are named, never ranked."""
    n = int(runs[0]["dataset"].get("n_eval") or 0)
    graded = [(overall_of(r["summary"]["robust"]["worst_case"]), name) for name, r in zip(names, runs)
              if resolve_verdict(r)["meaningful"]]
    out = []
    ungraded = [name for name, r in zip(names, runs) if not resolve_verdict(r)["meaningful"]]
    if ungraded:
        out.append(f"Not graded (the model does not work on this data as audited): {', '.join(ungraded)}; "
                   "it is left out of the ranking.")
    graded = sorted([g for g in graded if g[0] is not None], key=lambda g: -g[0])
    if len(graded) < 2:
        return out
    (best, best_name), (second, second_name) = graded[0], graded[1]
    lo_best, _ = wilson_interval(round(best * n), n)
    _, hi_second = wilson_interval(round(second * n), n)
    lead = (f"Under attack ({threat_text(runs[0]['threat_model'])}), {best_name} keeps the most test images correct: "
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


def class_rows(names: Sequence[str], runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per class (most common first): group, counts and each model's worst-case robust accuracy; the best marked."""
    rows = []
    for r0 in by_count(runs[0]["per_class"]):
        c = r0["index"]
        vals = [runs[m]["per_class"][c]["robust_acc"]["worst_case"] for m in range(len(runs))]
        top = max(v for v in vals if v is not None) if any(v is not None for v in vals) else None
        rows.append({"index": c, "name": r0["name"], "group": r0.get("group") or "–", "train": count(r0["train_count"]),
                     "n": r0["n_eval"], "values": [{"text": num(v), "best": v is not None and v == top
                                                    and vals.count(top) == 1} for v in vals]})
    return rows


def models_context(runs: Sequence[Mapping[str, Any]], folders: Sequence[Path]) -> dict[str, Any]:
    """Everything the model comparison template shows."""
    names = model_names(runs, folders)
    first = runs[0]
    d = first["dataset"]
    balanced = is_balanced(first)
    rows = by_count(first["per_class"])
    sel = rows if len(rows) <= LARGE else by_count(sorted(
        rows, key=lambda r: min(run["per_class"][r["index"]]["robust_acc"]["worst_case"] for run in runs))[:TOP])
    series = [(name, [run["per_class"][r["index"]]["robust_acc"]["worst_case"] for r in sel], colour)
              for name, run, colour in zip(names, runs, MODEL_COLOURS)]
    chart = charts.class_bars("m-classes", [r["name"] for r in sel], [r["group"] for r in sel],
                              strip_counts(first, sel), series, label="Per-class robust accuracy of each model",
                              value_labels="all" if len(sel) * len(runs) <= 30 else "none")
    head, tail = head_tail(first)
    groups = []
    for g in ([head, "medium", tail] if head and tail else []):
        groups.append({"group": g, "values": [pct((run["summary"]["robust"]["worst_case"].get("groups") or {}).get(g))
                                              for run in runs]})
    critical = [w for name, run in zip(names, runs) for w in critical_warnings(run, name)]
    return {
        "kind": "models",
        "title": f"Model comparison: {len(runs)} models",
        "running": "models: " + " · ".join(names),
        "headline": (f"{d['name']} ({len(d['classes'])} classes, {count(d.get('n_eval'))} test points, the same for "
                     f"every model) · threat model {threat_text(first['threat_model'])} · attacks "
                     + " → ".join(attack_label(a) for a in first["attacks"])),
        "models": [_summary_row(n, r, c) for n, r, c in zip(names, runs, MODEL_COLOURS)],
        "calibrated": any((r["summary"].get("calibration") or None) for r in runs),
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


def _shared_method(first: Mapping[str, Any], names: Sequence[str], runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The method section of the first run (threat model, attacks, evaluation are shared), with one model row per
    model instead of the first model's details."""
    shared = dict(method(first))
    shared["model"] = [(name, f"{run['model'].get('spec')} · {run['model'].get('format')} · sha256 "
                               f"{str(run['model'].get('sha256') or '?')[:16]}…") for name, run in zip(names, runs)]
    shared["parity"] = []
    return shared
