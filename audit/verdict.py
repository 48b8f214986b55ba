"""The one verdict of an audit, computed once from figures already in ``results.json``.

Codes, in order: ``robust``, ``partly-robust``, ``weakly-robust``, ``not-robust`` (bands on
the share of correct answers that survive the attacks) and ``not-meaningful`` (the model does
not work on this data, so no robustness grade is given). The terminal summary, the reports and
``summary.md`` all read ``results.verdict`` (:class:`audit.resultsmodel.Verdict`); the rules are explained in docs/method.md
("Verdict").
"""
from __future__ import annotations

import shlex
from typing import Optional, Sequence

from .calibration import rare_confidently_wrong
from .inputs import MAX_RESIZE
from .metrics import wilson_interval
from .resultsmodel import LABELS, AuditResults, ClassResult, InputFit, LabelCheck, Verdict

# (lowest share of clean-correct answers that survive, code): worst-case robust / clean accuracy
BANDS: tuple[tuple[float, str], ...] = ((0.8, "robust"), (0.5, "partly-robust"), (0.2, "weakly-robust"),
                                        (0.0, "not-robust"))
UNEVEN = 0.15  # head/tail robust gap (fraction) from which the rare classes are singled out
WORST_SHARE = 0.5  # a worst class below half the balanced robust accuracy makes the grade uneven
CHANCE_MARGIN = 0.1  # "clearly above chance": the 95% interval starts 10% of the way from chance to 100%
COLLAPSE_TOP = 0.5  # one class takes more than half of all clean predictions ...
COLLAPSE_COVER = 0.9  # ... or 90% of the predictions fall into at most a quarter of the classes
LOOKUP_CHECKS = ("the label order (does output i mean the dataset's class i? pass --labels FILE)",
                 "that --dataset is the data the model was trained on",
                 "the preprocessing (--mean/--std, --input-size, channels)",
                 "that the weights are the trained ones (--checkpoint / the ONNX file)")


def band(robust: float, clean: float) -> str:
    """Band code for overall worst-case robust accuracy ``robust`` and clean accuracy ``clean``."""
    survive = robust / clean if clean > 0 else 0.0
    for threshold, code in BANDS:
        if survive >= threshold:
            return code
    return BANDS[-1][1]


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def prediction_collapse(matrix: Sequence[Sequence[int]], names: Optional[Sequence[str]] = None) -> Optional[str]:
    """A sentence when the clean predictions collapse onto few classes, else None.

    ``matrix[true][pred]`` is the clean confusion matrix. Collapse: the most predicted class takes
    more than half of all predictions (and more than twice the largest class's share of the labels),
    or, with 8 classes or more, 90% of the predictions fall into at most a quarter of the classes
    while the labels need more than half of the classes to reach 90%.
    """
    rows = [list(map(int, r)) for r in matrix]
    C = len(rows)
    n = sum(sum(r) for r in rows)
    if C < 2 or n == 0:
        return None
    pred = [sum(rows[t][p] for t in range(C)) for p in range(C)]
    true = [sum(r) for r in rows]
    top = max(range(C), key=lambda p: (pred[p], -p))
    top_share, label_share = pred[top] / n, max(true) / n
    if top_share > COLLAPSE_TOP and top_share > 2 * label_share:
        what = f"“{names[top]}”" if names is not None else f"index {top}"
        return f"{top_share:.0%} of all clean predictions are class {what}"

    def cover(counts: list[int]) -> int:
        acc, k = 0, 0
        for v in sorted(counts, reverse=True):
            acc, k = acc + v, k + 1
            if acc >= COLLAPSE_COVER * n:
                break
        return k

    if C >= 8:
        kp, kt = cover(pred), cover(true)
        if kp <= C / 4 and kt > C / 2:
            return f"90% of the clean predictions fall into only {kp} of the {C} classes"
    return None


def _meaningful_problems(results: AuditResults) -> list[str]:
    """Reasons why the figures cannot be read as robustness at all (empty list: they can)."""
    n = int(results.dataset.n_eval or 0)
    clean = results.summary.clean.headline  # the class mean when no overall figure was stored
    if not n or clean is None:
        return ["no test image was evaluated"]
    return clean_problems(round(clean * n), n, results.summary.clean_confusion, results.class_names,
                          results.label_check)


def clean_problems(k: int, n: int, confusion: Optional[Sequence[Sequence[int]]], names: Sequence[str],
                   label_check: Optional[LabelCheck] = None) -> list[str]:
    """Why ``k`` correct clean answers of ``n`` (with this clean confusion matrix and label check) cannot be graded:
    chance-level accuracy, collapsed predictions, a permuted label order (first: the most likely cause). The
    verdict and the check before any attack (audit/precheck.py) apply these same rules."""
    C = len(names)
    out = []
    lo, _ = wilson_interval(k, n)
    chance = 1.0 / C
    floor = chance + CHANCE_MARGIN * (1 - chance)
    if lo <= floor:
        out.append(f"clean accuracy {_pct(k / n)} is not clearly above chance ({_pct(chance)} for {C} classes; "
                   f"its 95% interval starts at {_pct(lo)}, at or below {_pct(floor)})")
    if confusion:
        collapsed = prediction_collapse(confusion, names)
        if collapsed:
            out.append(f"the predictions collapse: {collapsed}")
    if label_check is not None and label_check.suspected:  # the most likely cause goes first
        out.insert(0, f"the label order looks permuted: clean accuracy is {_pct(label_check.accuracy_now)}, but "
                   f"{_pct(label_check.accuracy_mapped)} once the model's outputs are re-mapped to other classes")
    return out


def input_reasons(inp: Optional[InputFit]) -> list[str]:
    """Sentences about the images being converted to fit the model (``results.input``)."""
    out: list[str] = []
    if inp is None:
        return out
    if inp.channel_conversion:
        out.append(f"the images were converted ({inp.channel_conversion}) to fit the model: the model was "
                   "probably trained on other data")
    f = inp.resize_factor
    if f is not None and (f > MAX_RESIZE or f < 1 / MAX_RESIZE):
        out.append(f"the images were resized by a factor {f:.3g} (data {inp.data_shape}, model "
                   f"{inp.model_shape}): the model was probably trained on other data")
    return out


def _repair_command(results: AuditResults) -> str:
    if str(results.model.format) == "torch":  # a module from Python: the API, not the command line
        return "tailaudit.run_repair(RepairConfig(audit=<this audit's AuditConfig>)) (docs/python_api.md)"
    cfg = results.config or {}
    parts = ["python", "cli.py", "repair", str(results.model.spec), "--dataset", str(results.dataset.name)]
    for key in ("checkpoint", "labels", "mean", "std", "input_size"):
        if cfg.get(key) is not None:
            val = cfg[key]
            val = ",".join(f"{v:g}" for v in val) if isinstance(val, (list, tuple)) else str(val)
            parts += [f"--{key.replace('_', '-')}", val]
    if cfg.get("data_root"):
        parts += ["--data-root", str(cfg["data_root"])]
    tm = results.threat_model
    if tm.norm and tm.norm != "linf":
        parts += ["--norm", str(tm.norm)]
    if tm.eps_text:
        parts += ["--eps", str(tm.eps_text)]
    return " ".join(shlex.quote(p) for p in parts)


def _weakest(results: AuditResults, k: int, group: Optional[str] = None) -> list[ClassResult]:
    rows = [r for r in results.per_class if r.worst_case is not None and (group is None or r.group == group)]
    return sorted(rows, key=lambda r: (r.worst_case, r.index))[:k]


def _names(rows: Sequence[ClassResult]) -> str:
    quoted = [f"“{r.name}”" for r in rows]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def compute_verdict(results: AuditResults) -> Verdict:
    """The :class:`Verdict` the rules give an audit's figures (see module doc)."""
    s = results.summary
    extra = input_reasons(results.input)
    problems = _meaningful_problems(results)
    if problems:
        return Verdict(
            code="not-meaningful",
            headline=(f"No robustness grade: {problems[0]}. Check the label order, the dataset, the "
                      "preprocessing and the weights before reading any figure here."),
            reasons=tuple(problems + extra),
            actions=tuple([f"Check {c}" for c in LOOKUP_CHECKS]
                          + ([f"Re-run with --labels FILE listing the model's outputs in order: "
                              f"{', '.join(m.class_name for m in results.label_check.mapping)}"]
                             if results.label_check is not None and results.label_check.suspected else [])))
    wc = s.worst_case
    robust, clean = wc.headline, s.clean.headline
    survive = robust / clean if clean else 0.0
    base = band(robust, clean)
    reasons = [f"worst-case robust accuracy {_pct(robust)} keeps {survive:.0%} of the clean accuracy {_pct(clean)}; "
               "the share kept sets the grade (80% or more: robust, 50-80%: partly, 20-50%: weakly, below 20%: "
               "not robust)"]
    gap = s.robust_gap
    rare_weak = gap is not None and gap >= UNEVEN and bool(results.group_of("tail")) and bool(results.group_of("head"))
    uneven = wc.worst is not None and wc.mean and wc.worst < WORST_SHARE * wc.mean
    qualifier = None
    code = base
    why = []  # what singles out the weak classes, in the headline's words
    if rare_weak:
        qualifier = "rare classes"
        why.append(f"the rare classes are much weaker (tail {_pct(wc.group('tail'))} vs head {_pct(wc.group('head'))})")
        reasons.append(f"robust accuracy on the tail (rarest) classes is {100 * gap:.1f} points below the head "
                       f"classes (15 points or more singles them out)")
    if uneven:
        worst = results.per_class[wc.worst_class]
        qualifier = qualifier or "every class"
        if not rare_weak:
            why.append(f"class “{worst.name}” keeps only {_pct(wc.worst)}")
        reasons.append(f"the weakest class “{worst.name}” keeps {_pct(wc.worst)} robust accuracy, below half "
                       f"the balanced robust accuracy {_pct(wc.mean)}")
    if qualifier and base in ("robust", "partly-robust"):
        code = {"robust": "partly-robust", "partly-robust": "weakly-robust"}[base]
        reasons[0] += f"; one step lower here because {why[0]}"
        tail = f"; graded one step down because {why[0]}"
    elif qualifier:
        tail = f"; {why[0]}"
    else:
        tail = ""
    threat = f"{'L∞' if results.threat_model.norm == 'linf' else 'L2'} ε = {results.eps_text}"
    headline = (f"{LABELS[code]}: {_pct(robust)} of the test images stay correct under attack ({threat}), against "
                f"{_pct(clean)} without attack, so it keeps {survive:.0%} of its correct answers{tail}.")
    reasons += extra
    actions = []
    if code != "robust":
        actions.append(f"Repair it with adversarial fine-tuning (REAT): {_repair_command(results)}")
    if rare_weak:
        rows = _weakest(results, 2, "tail")
        if rows:
            actions.append(f"Collect more training images for {_names(rows)} (rare classes with the lowest robust "
                           "accuracy)")
    elif uneven:
        actions.append(f"Look at the weakest classes {_names(_weakest(results, 2))}: more or cleaner training data "
                       "there helps most")
    if extra:
        actions.append("Audit the model on data of the size and colour it was trained on")
    if (results.suite or "quick") in ("quick", "custom"):
        actions.append("Confirm the figures with the stronger attack suite (--suite standard) before relying on them")
    elif (results.mode_label or "white-box") != "white-box":
        actions.append("Black-box figures are an upper bound: audit an ONNX export that converts for gradients")
    # -- calibration under attack (rule and wording in audit/calibration.py); it adds a reason and an action,
    # never changes the code
    confident = rare_confidently_wrong(results)
    if confident is not None:
        reasons.append(confident[0])
        actions.append(confident[1])
    # -- end of calibration
    return Verdict(code=code, headline=headline, reasons=tuple(reasons), actions=tuple(actions), band=base,
                   survival=survive, qualifier=qualifier)
