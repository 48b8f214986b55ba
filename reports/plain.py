"""Page 1 in plain words: the verdict, what it means, classes at risk, critical warnings, the gate, a glossary.

The verdict is the one in ``results.verdict``, computed once by the audit (audit/checks/verdict.py);
files written before verdicts were stored get theirs when they are loaded (``audit.checks.verdict.grade_on_load``,
handed to the renderer by the application layer). This module only lays it out.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from audit.contract.figures import MAX_RESIZE
from audit.contract.model import AuditResults, Confusion, Flow, InputFit, LabelCheck, OutputMap, Sanity
from audit.contract.figures import class_interval, counts_are_sampled, interval_text, is_upper_bound

from .fmt import attack_label, count, eps_text, pct, points, threat_text
from .verdict import headline_figures, quote, stored_verdict, weakest

# code -> (badge text, badge css class); not-meaningful has no grade, only a stop sign.
GRADES: dict[str, tuple[str, str]] = {
    "robust": ("Robust", "good"),
    "partly-robust": ("Partly robust", "fair"),
    "weakly-robust": ("Weakly robust", "poor"),
    "not-robust": ("Not robust", "bad"),
    "not-meaningful": ("Result not meaningful", "void"),
    "not-graded": ("Not graded", "void"),
}
MEANING: dict[str, str] = {
    "robust": "Most of the model's correct answers survive the attack: someone who alters images within this "
              "budget rarely changes its decisions.",
    "partly-robust": "Many of the model's correct answers survive the attack, but a clear share can be flipped by "
                     "{changes}.",
    "weakly-robust": "Most of the model's correct answers can be flipped by {changes}; only a minority survive.",
    "not-robust": "Almost every correct answer can be flipped by {changes}. Do not rely on this model where someone "
                  "may tamper with its input.",
    "not-meaningful": "The model does not work on this data as it was audited, so its robustness figures say "
                      "nothing and no robustness grade is given. Fix the setup first, then audit again.",
    "not-graded": "The attacks could not work on this model, so the share of answers that survived them says "
                  "nothing about robustness and no grade is given. Audit it with an attack that needs no gradients.",
}
UPPER_BOUND = ("Only a score-based attack ran (black-box), so this is the best grade the model could have: gradient "
               "attacks may flip more answers. ")

GLOSSARY: tuple[tuple[str, str], ...] = (
    ("Clean accuracy", "share of test images the model classifies correctly, untouched."),
    ("Robust accuracy", "share of test images still classified correctly after an attacker altered them "
                        "within the budget."),
    ("Worst case", "a test image counts as robust only if it survives every attack that was tried."),
    ("Balanced", "the average over classes, so rare and common classes weigh the same."),
    ("Head / medium / tail", "classes grouped by how many training images they had: head = most, tail = "
                             "fewest (the rare classes)."),
    ("Head/tail gap", "robust accuracy of the head group minus the tail group, in percentage points."),
    ("Interval", "the range the true value lies in with 95% confidence, given the number of test images "
                 "(Wilson interval); few test images give wide intervals."),
)


SMALL = {"linf": 8 / 255, "l2": 0.5}  # budgets up to these are the usual "imperceptible" ones


def changes_words(results: AuditResults) -> str:
    """The attacker's changes in words that hold for this run's budget: "too small for a person to notice" only
    up to the usual imperceptible budgets (L∞ 8/255, L2 0.5)."""
    t = results.threat_model
    norm, eps = str(t.norm).lower(), float(t.eps or 0.0)
    if eps <= SMALL.get(norm, 0.0) + 1e-9:
        return "changes to the image too small for a person to notice"
    if norm == "linf":
        return f"changes of up to {eps * 100:.0f}% of the brightness range per pixel"
    return f"changes to the image of L2 size up to {eps:g}"


def is_balanced(results: AuditResults) -> bool:
    """True when the training set is balanced: flagged so, or no groups were formed."""
    d = results.dataset
    if d.balanced is not None:
        return bool(d.balanced)
    return not any(d.groups.values())


def glossary(results: AuditResults, balanced: bool) -> list[tuple[str, str]]:
    """The words page 1 uses; the budget is explained with this run's own ε (never another example value)."""
    t = results.threat_model
    eps, text = float(t.eps or 0.0), eps_text(t)
    if str(t.norm).lower() == "linf":
        budget = (f"how much the attacker may change each pixel, on a 0–1 scale; this audit's {text} is "
                  f"{eps * 100:.1f}% of the brightness range.")
    else:
        budget = f"how much the attacker may change the image in total ({t.norm} norm); this audit's is {text}."
    words = [GLOSSARY[0], GLOSSARY[1], ("Attack budget (ε)", budget), *GLOSSARY[2:]]
    if counts_are_sampled(results):  # the groups follow tailaudit's sampling, not the model's training data
        words = [(w, "classes grouped by training count in tailaudit's sampled profile: head = most, tail = "
                     "fewest.") if w.startswith("Head / medium") else (w, x) for w, x in words]
    return [(w, x) for w, x in words if not (balanced and w.startswith("Head"))]  # no groups, no gap


def resolve_verdict(results: AuditResults) -> dict[str, Any]:
    """The stored :class:`~audit.contract.model.Verdict` laid out: code, headline, reasons, actions, meaning, ``grade``
    (badge text; None for not-meaningful), ``css`` and ``computed_on_load`` (the version that graded an older file)."""
    v = stored_verdict(results)
    grade, css = GRADES[v.code]
    if v.upper_bound and v.graded:  # black-box: the badge says "at most", never a white-box grade
        grade, css = f"{v.label} (upper bound)", f"{css} upper"
    meaning = MEANING[v.code].format(changes=changes_words(results))
    if v.upper_bound and v.graded:
        meaning = UPPER_BOUND + meaning
    return {"code": v.code, "headline": v.statement or meaning, "reasons": list(v.reasons),
            "actions": list(v.actions), "computed_on_load": v.computed_on_load, "meaning": meaning,
            "grade": grade if v.graded else None, "label": grade, "css": css, "meaningful": v.meaningful,
            "graded": v.graded, "upper_bound": v.upper_bound}


def budget_sentence(results: AuditResults) -> str:
    """The threat model in plain words."""
    t = results.threat_model
    eps = float(t.eps or 0.0)
    norm = str(t.norm).lower()
    if norm == "linf":
        return (f"Attack budget ({threat_text(t)}): every pixel may change by at most {eps * 100:.1f}% of the "
                "brightness range.")
    return f"Attack budget ({threat_text(t)}): the total change to the image is limited to {eps:g} ({norm} norm)."


def suite_sentence(results: AuditResults) -> str:
    """Which attacks ran, in plain words, with the quick suite's advice and the black-box caveat."""
    if is_upper_bound(results):
        ran = ", ".join(attack_label(a) for a in results.attacks)
        why = results.black_box_reason or "black-box mode"
        return (f"Attack suite: black-box ({why}): only {ran} ran, a score-based attack on the model's outputs, so "
                "robust accuracy is an upper bound.")
    text = f"Attack suite: {results.suite or 'quick'}."
    if results.suite_note:
        text += f" {results.suite_note.rstrip('.')}."
    return text


def _classes(names: Sequence[Any] | None) -> str:
    """Up to eight class names, then how many more."""
    listed = [str(n) for n in (names or [])]
    return ", ".join(listed[:8]) + (f" and {len(listed) - 8} more" if len(listed) > 8 else "")


def sanity_rows(results: AuditResults) -> list[dict[str, str]]:
    """The gradient-masking checks of ``results.sanity`` as (check, outcome, ok) rows for the report."""
    s = results.sanity
    if s is None:
        return []
    flagged = s.zero_gradient.flagged_classes or []
    rows = [{"check": "Input gradients exactly zero",
             "outcome": f"in classes {_classes(flagged)}: their robust accuracy may be overstated" if flagged
             else "no class affected", "ok": not flagged}]
    rows += _square_rows(s)
    n = int(s.randomised.points or 0)
    rows.append({"check": "Same logits on two identical passes",
                 "outcome": (f"{n} point(s) differ (classes {_classes(s.randomised.classes)}): a randomised model; "
                             "attacks must average over its randomness" if n else "yes: the model is deterministic"),
                 "ok": n == 0})
    le = s.large_eps
    if le is not None:
        acc = le.robust_acc
        rows.append({"check": f"Robust accuracy at a huge budget (ε = {le.eps})",
                     "outcome": (f"{100 * float(acc):.1f}%" if acc is not None else "n/a")
                     + ("; falls to about zero as it must" if le.passed else
                        f"; should be about zero: gradient masking suspected in {_classes(le.classes)}"),
                     "ok": bool(le.passed)})
    return rows


def _square_rows(s: Sanity) -> list[dict[str, Any]]:
    """The rows of the check against the score-based attack (Square), its probe and its reruns."""
    sq = s.square_only
    if not sq.checked:
        return []
    n = int(sq.points or 0)
    rows: list[dict[str, Any]] = [{
        "check": "Points only the score-based attack (Square) broke",
        "outcome": (f"{n} point(s), in {_classes(sq.classes)}: gradients mislead there" if n
                    else "none: the gradient attacks found every weakness Square found"), "ok": n == 0}]
    pr = sq.probe
    if pr is None:
        return rows
    k, m = int(pr.full_budget_points or 0), int(pr.attacked or 0)
    rows.append({"check": f"Square's full {count(pr.full_queries)} queries",
                 "outcome": (f"ran on {count(k)} of {count(m)} points: those where Square was closer to "
                             f"breaking them after {count(pr.probe_queries)} queries than the "
                             "gradient attacks ever got" + (f" (classes {_classes(pr.classes)})" if k else "")
                             + f"; the rest stopped at {count(pr.probe_queries)}"),
                 "ok": True})
    if pr.reruns:
        r = int(pr.rerun_points or 0)
        rows.append({"check": f"Square's {count(pr.reruns)} independent rerun(s) where the gradients were blind",
                     "outcome": (f"ran on {count(r)} point(s) that no gradient attack had a non-zero gradient "
                                 "on and that Square's first run left robust"
                                 + (f" (classes {_classes(pr.rerun_classes)})" if r else "")),
                     "ok": True})
    return rows


def at_risk(results: AuditResults, k: int = 3) -> list[dict[str, str]]:
    """The ``k`` least robust classes with their 95% intervals and the reasons the figures give: rarity (in
    tailaudit's sampling profile unless the counts were given), low clean accuracy, where attacks push them."""
    balanced = is_balanced(results)
    sampled = counts_are_sampled(results)
    most = max((r.train_count or 0 for r in results.per_class), default=0)
    clean_all = results.summary.clean.headline
    conf = results.summary.confusion
    names = results.class_names
    out = []
    for r in weakest(results, k):
        why = []
        tc = r.train_count
        if not balanced and tc and r.group in ("tail", "few"):
            if sampled:
                why.append("tail of tailaudit's sampled profile")  # the data sentence says what that means
            else:
                factor = f", {most / tc:.0f}× fewer than the most common class" if most and most / tc >= 2 else ""
                why.append(f"rare: {count(tc)} training image{'' if tc == 1 else 's'}{factor}")
        if r.clean_acc < clean_all - 0.10:  # its clean accuracy is on the same line: not repeated here
            why.append("often wrong even without attack")
        flow = _main_flow(r.index, conf)
        if flow is not None:
            why.append(_flow_text(flow, names))
        out.append({"name": str(r.name), "robust": pct(r.worst_case), "clean": pct(r.clean_acc),
                    "interval": interval_text(class_interval(r)),
                    "why": "; ".join(why) if why else "no single cause stands out in the figures"})
    return out


def _main_flow(index: int, conf: Confusion | None) -> tuple[list[int], int, int | None] | None:
    """Where attacks send class ``index``: (the most frequent wrong classes, tied, how many images went to each,
    how many of the class's images were broken; None when unknown), or None when none was broken."""
    matrix = conf.matrix if conf is not None else None
    if matrix and 0 <= index < len(matrix) and sum(matrix[index]):
        row = [int(v) for v in matrix[index]]
        top = max(row)
        return [c for c, v in enumerate(row) if v == top], top, sum(row)
    mine: list[Flow] = [f for f in (conf.top_flows if conf is not None else None) or [] if f.true == index]
    if mine:
        top = max(int(f.count) for f in mine)
        return [int(f.pred) for f in mine if int(f.count) == top], top, None
    return None


def _flow_text(flow: tuple[list[int], int, int | None], names: Sequence[Any]) -> str:
    """'of its 11 broken images, attacks turn 3 into “3” and 3 into “5”', naming every class tied for most
    (counts that are true)."""
    targets, k, total = flow
    shown = [quote(names[t]) for t in targets[:3] if 0 <= t < len(names)]
    more = f" (and {len(targets) - 3} more classes)" if len(targets) > 3 else ""
    lead = (f"of its {total} broken image{'' if total == 1 else 's'}, attacks turn" if total is not None
            else "attacks turn")
    return f"{lead} " + " and ".join(f"{k} into {t}" for t in shown) + more


def critical_warnings(results: AuditResults, who: str = "") -> list[dict[str, Any]]:
    """Input mismatch and suspected label order, from the structured keys the audit writes."""
    prefix = f"{who}: " if who else ""
    out = _input_warnings(results.input, prefix) if results.input is not None else []
    lc = results.label_check
    if lc is not None and lc.suspected:
        out.append(_label_warning(lc, results.class_names, prefix))
    return out


def _input_warnings(inp: InputFit, prefix: str) -> list[dict[str, Any]]:
    """The boxes for images converted to other channels or resized a lot to fit the model."""
    out: list[dict[str, Any]] = []
    data = "×".join(map(str, inp.data_shape or [])) or "?"
    model = "×".join(map(str, inp.model_shape or [])) or "?"
    conv, factor = inp.channel_conversion, inp.resize_factor
    if conv:
        out.append({"title": prefix + "Input mismatch: colour channels converted",
                    "text": f"The images ({data}) do not have the channels the model expects ({model}); they "
                            f"were converted ({conv}). The model may never have seen images like these: check "
                            "that this is the right dataset for this model."})
    if isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0 and \
            (factor > MAX_RESIZE or factor < 1 / MAX_RESIZE):
        how = f"enlarged {factor:.1f}×" if factor > 1 else f"shrunk {1 / factor:.1f}×"
        out.append({"title": prefix + "Input mismatch: images resized a lot",
                    "text": f"The images ({data}) were {how} to the model's input ({model}). Check that this is "
                            "the right dataset for this model."})
    return out


def _label_warning(lc: LabelCheck, classes: Sequence[str], prefix: str) -> dict[str, Any]:
    """The box for a suspected label order: the outputs that seem to mean another class than the run assumed."""
    def assumed(m: OutputMap) -> str:
        # what the run took this output to mean (older results: the dataset order)
        if m.assumed is not None:
            return str(m.assumed)
        o = int(m.output)
        return str(classes[o]) if 0 <= o < len(classes) else "?"

    mapping = [m for m in lc.mapping or [] if assumed(m) != m.class_name]
    return {"title": prefix + "The label order looks wrong",
            "text": f"Clean accuracy is {pct(lc.accuracy_now)} with the class order used, but would be "
                    f"{pct(lc.accuracy_mapped)} if the model's outputs meant the classes below. Pass "
                    "the model's class order with --labels FILE (one class name per line) and audit again.",
            "mapping": [{"output": str(m.output), "class": str(m.class_name), "assumed": assumed(m)}
                        for m in mapping[:12]],
            "more": max(0, len(mapping) - 12)}


def _gate_value(key: str, value: Any, threshold: Any) -> tuple[str, str]:
    """Format a gate condition's value and threshold: fractions as % (points for max-gap), else as given."""
    nums = [v for v in (value, threshold) if isinstance(v, (int, float))]
    fractions = bool(nums) and all(abs(v) <= 1.0 for v in nums)

    def f(v: Any) -> str:
        if not isinstance(v, (int, float)):
            return "n/a" if v is None else str(v)
        if key == "max-gap":
            return f"{v * 100 if fractions else v:.1f} points"
        return pct(v) if fractions else f"{v:g}%"

    return f(value), f(threshold)


def gate_rows(results: AuditResults) -> dict[str, Any] | None:
    """The CI gate's conditions for a table, or None when the run had no gate."""
    gate = results.gate
    if gate is None or not gate.conditions:
        return None
    rows = []
    for c in gate.conditions:
        key = str(c.key)
        value, threshold = _gate_value(key, c.value, c.threshold)
        rule = "at most" if key == "max-gap" else "at least"
        rows.append({"key": key, "rule": f"{rule} {threshold}", "value": value, "passed": bool(c.passed)})
    return {"passed": bool(gate.passed), "rows": rows, "n_failed": sum(1 for r in rows if not r["passed"])}


def change_sentences(before: AuditResults, after: AuditResults) -> list[str]:
    """What changed, in plain words, for the first page of a comparison."""
    (rb, cb), (ra, ca) = headline_figures(before), headline_figures(after)
    out = [f"Under attack the model now keeps {pct(ra)} of the test images correct, against {pct(rb)} before "
           f"({points(ra - rb)} points)."]
    if abs(ca - cb) < 0.005:
        out.append(f"Without attack it is as accurate as before ({pct(cb)} → {pct(ca)}).")
    else:
        out.append(f"Without attack its accuracy {'rose' if ca > cb else 'fell'} from {pct(cb)} to {pct(ca)}"
                   + (" — the usual price of robustness." if ca < cb else "."))
    groups_b = before.worst_case.groups or {}
    groups_a = after.worst_case.groups or {}
    tail = next((g for g in ("tail", "few") if g in groups_a and g in groups_b), None)
    if tail and not is_balanced(after):
        out.append(f"The rare ({tail}) classes went from {pct(groups_b[tail])} to {pct(groups_a[tail])} robust "
                   f"({points(groups_a[tail] - groups_b[tail])} points).")
    return out
