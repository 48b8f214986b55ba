"""The one verdict of an audit, computed once from figures already in ``results.json``.

Codes, in order: ``robust``, ``partly-robust``, ``weakly-robust``, ``not-robust`` (bands on
the share of correct answers that survive the attacks) and ``not-meaningful`` (the model does
not work on this data, so no robustness grade is given). The terminal summary, the reports and
``summary.md`` all read ``results.verdict`` (:class:`audit.contract.model.Verdict`); the rules are explained in
docs/method.md ("Verdict"). How stored figures are read (intervals, rankings) is audit/contract/figures.py, which the
reports share; :func:`grade_on_load` grades a file written before verdicts were stored.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from ..calibration import rare_confidently_wrong
from ..contract.figures import (MAX_RESIZE, class_interval, corruption_findings, counts_are_sampled, headline_interval,
                               indistinct_weakest, interval_text, is_upper_bound, ranked_classes, wilson_interval)
from ..contract.figures import listed as _listed, pct_text as _pct, quoted_names as _names
from ..contract.model import LABELS, AuditResults, ClassResult, InputFit, LabelCheck, Verdict
from ..contract.schema import load_results, needs_grading
from ..version import __version__

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
    verdict and the check before any attack (audit/checks/precheck.py) apply these same rules."""
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


def _weakest(results: AuditResults, k: int, group: Optional[str] = None) -> list[ClassResult]:
    rows = [r for r in results.per_class if r.worst_case is not None and (group is None or r.group == group)]
    return sorted(rows, key=lambda r: (r.worst_case, r.index))[:k]


# -- uncertainty where the claim is made (every page and line that ranks classes reads these) ------------------


def _weakest_words(results: AuditResults) -> tuple[str, str]:
    """(headline words, reason words) about the weakest class, or about the weakest classes the 95% intervals
    cannot rank (never one name picked from a tie)."""
    group = indistinct_weakest(results)
    first = group[0]
    if len(group) == 1:
        return (f"class “{first.name}” keeps only {_pct(first.worst_case)}",
                f"the weakest class “{first.name}” keeps {_pct(first.worst_case)} robust accuracy "
                f"({interval_text(class_interval(first))})")
    last = group[-1].worst_case
    rates = _pct(first.worst_case) if last == first.worst_case else f"{_pct(first.worst_case)}–{_pct(last)}"
    return (f"the weakest classes {_listed(group)} keep only {rates}",
            f"the weakest classes {_listed(group)} keep {rates} robust accuracy (their 95% intervals overlap: the "
            "test points cannot rank them)")


def weakest_with_intervals(results: AuditResults, k: int = 3) -> str:
    """'“8” 6.0% (95% interval 2.1–16.2%), …': the ``k`` least robust classes with their intervals."""
    return ", ".join(f"“{r.name}” {_pct(r.worst_case)} ({interval_text(class_interval(r))})"
                     for r in ranked_classes(results)[:k])


def compute_verdict(results: AuditResults) -> Verdict:
    """The :class:`Verdict` the rules give an audit's figures (see module doc)."""
    s = results.summary
    extra = input_reasons(results.input)
    problems = _meaningful_problems(results)
    if problems:
        return _not_meaningful(results, problems, extra)
    if results.attack_free:
        return _corruptions_only(results, extra)
    blind = blind_attack_reasons(results)
    if blind:
        return _not_graded(results, blind, extra)
    upper = is_upper_bound(results)
    wc = s.worst_case
    robust, clean = wc.headline, s.clean.headline
    survive = robust / clean if clean else 0.0
    base = band(robust, clean)
    at_most = "at most " if upper else ""
    reasons = [f"worst-case robust accuracy {at_most}{_pct(robust)} keeps {at_most}{survive:.0%} of the clean accuracy "
               f"{_pct(clean)}; the share kept sets the grade (80% or more: robust, 50-80%: partly, 20-50%: weakly, "
               "below 20%: not robust)"]
    if upper:
        reasons.insert(0, black_box_sentence(results))
    gap = s.robust_gap
    rare_weak = gap is not None and gap >= UNEVEN and bool(results.group_of("tail")) and bool(results.group_of("head"))
    uneven = wc.worst is not None and wc.mean and wc.worst < WORST_SHARE * wc.mean
    rare = "the tail classes of tailaudit's sampling profile" if counts_are_sampled(results) else "the rare classes"
    qualifier = None
    code = base
    why = []  # what singles out the weak classes, in the headline's words
    if rare_weak:
        qualifier = "rare classes"
        why.append(f"{rare} are much weaker (tail {_pct(wc.group('tail'))} vs head {_pct(wc.group('head'))})")
        reasons.append(f"robust accuracy on the tail (rarest) classes is {100 * gap:.1f} points below the head "
                       f"classes (15 points or more singles them out)")
    if uneven:
        qualifier = qualifier or "every class"
        head_words, reason_words = _weakest_words(results)
        if not rare_weak:
            why.append(head_words)
        reasons.append(f"{reason_words}, below half the balanced robust accuracy {_pct(wc.mean)}")
    if qualifier and base in ("robust", "partly-robust"):
        code = {"robust": "partly-robust", "partly-robust": "weakly-robust"}[base]
        reasons[1 if upper else 0] += f"; one step lower here because {why[0]}"
        tail = f"; graded one step down because {why[0]}"
    elif qualifier:
        tail = f"; {why[0]}"
    else:
        tail = ""
    threat = f"{'L∞' if results.threat_model.norm == 'linf' else 'L2'} ε = {results.eps_text}"
    ci = interval_text(headline_interval(results))
    label = f"At most {LABELS[code].lower()}" if upper else LABELS[code]
    attack = "a score-based attack (black-box, an upper bound)" if upper else "attack"
    headline = (f"{label}: {at_most}{_pct(robust)}{f' ({ci})' if ci else ''} of the test images stay correct under "
                f"{attack} ({threat}), against {_pct(clean)} without attack, so it keeps {at_most}{survive:.0%} of its "
                f"correct answers{tail}.")
    reasons += extra
    actions = _actions(results, code, rare_weak=rare_weak, uneven=bool(uneven), extra=bool(extra), upper=upper)
    # -- calibration under attack (rule and wording in audit/calibration.py); it adds a reason and an action,
    # never changes the code
    confident = rare_confidently_wrong(results)
    if confident is not None:
        reasons.append(confident[0])
        actions.append(confident[1])
    # -- end of calibration
    return Verdict(code=code, headline=headline, reasons=tuple(reasons), actions=tuple(actions), band=base,
                   survival=survive, qualifier=qualifier, upper_bound=upper)


def _not_meaningful(results: AuditResults, problems: list[str], extra: list[str]) -> Verdict:
    label_check = results.label_check
    relabel = ([f"Re-run with --labels FILE listing the model's outputs in order: "
                f"{', '.join(m.class_name for m in label_check.mapping)}"]
               if label_check is not None and label_check.suspected else [])
    return Verdict(code="not-meaningful",
                   headline=(f"No robustness grade: {problems[0]}. Check the label order, the dataset, the "
                             "preprocessing and the weights before reading any figure here."),
                   reasons=tuple(problems + extra), actions=tuple([f"Check {c}" for c in LOOKUP_CHECKS] + relabel))


def _actions(results: AuditResults, code: str, *, rare_weak: bool, uneven: bool, extra: bool,
             upper: bool) -> list[str]:
    """What to do next, in plain words (the exact repair command is on the report's method page and in the
    terminal: :func:`repair_command`). An upper bound alone never leads to repair advice."""
    actions = []
    sampled = counts_are_sampled(results)
    if upper:
        actions.append(_black_box_next(results))
    elif code != "robust":
        actions.append("Repair it with adversarial fine-tuning (REAT) using tailaudit's repair command; the exact "
                       "command is in the report's method section")
    if rare_weak:
        rows = _weakest(results, 2, "tail")
        if rows and sampled:
            actions.append(f"Check how many training images {_names(rows)} really had (give the counts with "
                           "--class-counts FILE): the groups here follow tailaudit's sampling profile, not the model's "
                           "training data")
        elif rows:
            actions.append(f"Collect more training images for {_names(rows)} (rare classes with the lowest robust "
                           "accuracy)")
    elif uneven:
        group = indistinct_weakest(results)
        rows = group if len(group) > 1 else _weakest(results, 2)
        actions.append(f"Look at the weakest classes {_listed(rows)}: more or cleaner training data there helps most")
    if extra:
        actions.append("Audit the model on data of the size and colour it was trained on")
    if not upper and (results.suite or "quick") in ("quick", "custom"):
        actions.append("Confirm the figures with the stronger attack suite (--suite standard) before relying on them")
    return actions


def black_box_sentence(results: AuditResults) -> str:
    """Why the audit ran black-box, in words: asked for with --black-box, or the model does not convert."""
    why = results.black_box_reason or "the model was audited black-box"
    return (f"only the score-based Square attack ran ({why}), so robust accuracy is an upper bound: gradient "
            "attacks may break more images")


def _black_box_next(results: AuditResults) -> str:
    if (results.config or {}).get("black_box"):
        return ("Audit it again without --black-box (gradient attacks on the converted model) before grading or "
                "repairing it: this figure is only an upper bound")
    return ("This ONNX file does not convert for gradient attacks: audit the original PyTorch model (timm:ARCH with "
            "--checkpoint, or from Python) to get a grade that is not an upper bound")


BLIND_SHARE = 0.5  # more than half the attacked points with exactly zero input gradients: the attacks were blind


def blind_attack_reasons(results: AuditResults) -> list[str]:
    """Why the gradient attacks could not work on this model (empty list: they could): most attacked points had
    exactly zero input gradients and no score-based attack ran, or the --sanity large-radius check failed."""
    san = results.sanity
    if san is None:
        return []
    out = []
    attacked = (results.timings.attacked_points or {}) if results.timings is not None else {}
    if not san.square_only.attacks:
        for name, zg in san.zero_gradient.per_attack.items():
            n = int(attacked.get(name) or 0)
            if n and zg.points > BLIND_SHARE * n:
                shown = next((a.display_name for a in results.attacks if a.name == name and a.display_name), name)
                out.append(f"{zg.points} of the {n} points {shown} attacked had an input gradient of exactly zero: "
                           "the gradient attacks could not see where to go (gradient masking, e.g. rounded inputs)")
                break
    le = san.large_eps
    if le is not None and not le.passed:
        out.append(f"at a huge radius (ε = {le.eps:.3g}) {_pct(le.robust_acc)} of the checked points stay robust; it "
                   "must be about zero: the attacks do not work on this model")
    return out


def _not_graded(results: AuditResults, blind: list[str], extra: list[str]) -> Verdict:
    s = results.summary
    robust, clean = s.worst_case.headline, s.clean.headline
    headline = (f"No robustness grade: the attacks could not work on this model ({blind[0]}). The {_pct(robust)} "
                f"that survived them is not evidence of robustness (clean accuracy {_pct(clean)}).")
    actions = ["Audit it with the score-based attack, which needs no gradients: --suite standard (Square reruns "
               "where the gradients were blind) or --black-box",
               "If the model rounds or quantises its input, audit the model before that step as well"]
    return Verdict(code="not-graded", headline=headline, reasons=tuple(blind + extra), actions=tuple(actions))


def corruption_sentences(results: AuditResults) -> list[str]:
    """The findings in words: worst corruption, weakest class there with its interval, head vs tail."""
    f = corruption_findings(results)
    if f is None:
        return []
    out = [f"the worst corruption is {f.worst.replace('_', ' ')}, {_pct(f.worst_accuracy)} accuracy "
           "averaged over its severities"]
    w = f.weakest
    if w is not None:
        ci = interval_text(w.ci95)
        out.append(f"the weakest class there is “{w.class_name}” at {_pct(w.accuracy)}{f' ({ci})' if ci else ''} "
                   f"at severity {w.severity} ({w.n} test images)")
    head, tail = f.lost("head"), f.lost("tail")
    if head is not None and tail is not None:
        out.append(f"head classes lose {100 * head:.1f} points under corruption, tail classes "
                   f"{100 * tail:.1f}")
    return out


def _corruptions_only(results: AuditResults, extra: list[str]) -> Verdict:
    """--attacks none: no grade of attack robustness, a statement of what the corruption audit measured."""
    f = corruption_findings(results)
    headline = (f"Not graded for attack robustness: this audit measured natural corruptions only (--attacks none); "
                f"attack robustness was not measured. Accuracy is {_pct(f.mean_accuracy if f else None)} under "
                f"corruption on average against {_pct(results.summary.clean.headline)} clean.")
    actions = ["Run the attack audit (drop --attacks none, e.g. --suite standard) for an attack-robustness grade"]
    return Verdict(code="not-graded", headline=headline, reasons=tuple(corruption_sentences(results) + extra),
                   actions=tuple(actions))


def grade_on_load(results: AuditResults) -> AuditResults:
    """``results`` with the verdict these rules give its stored figures when the file lacks one they stand by
    (:func:`audit.contract.schema.needs_grading`: written before verdicts were stored, or a black-box grade from
    before grades said "at most"); ``verdict.computed_on_load`` names this version, and reports say so. Results
    that need nothing are returned as they are; the caller's object is never changed."""
    if not needs_grading(results):
        return results
    return replace(results, verdict=replace(compute_verdict(results), computed_on_load=__version__))


def load_graded(path: str | Path) -> AuditResults:
    """A results.json read, checked and migrated by the contract (:func:`audit.contract.schema.load_results`), then
    graded if it predates stored verdicts: how the audit side, the repair and the API read a results file."""
    return grade_on_load(load_results(path))
