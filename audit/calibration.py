"""Class-wise calibration, clean and under attack (docs/method.md, "Calibration").

Three parts, read top to bottom:

* **figures** (numpy only): top-label ECE over 15 equal-width confidence bins as MiSLAS computes
  it, class-conditional ECE by true and by predicted class, over-confidence (mean confidence of the
  wrong answers), confident-error rates above 0.5 and 0.9 with Wilson 95% intervals, and the
  reliability-diagram bins, overall and per head/medium/tail group;
* **the attacked-confidence procedure** (:func:`confidence_pass`): the cascade stops at the first
  fooling iterate, just across the boundary, so its confidence says little. After the cascade, a
  short deterministic PGD from every clean image (no random start, step 2.5·eps/steps, same norm and
  eps) pushes each point's answer to the confidence an attacker could reach: towards the class the
  cascade's example was assigned to (broken points), towards the clean prediction (clean mistakes),
  or away from the true class while the answer stays correct (points the cascade left robust). The
  attacked prediction stays the cascade's; its confidence is what the procedure reached, a lower
  bound on what an attacker can reach;
* **the verdict rule** :func:`rare_confidently_wrong` (called by ``audit.checks.verdict.compute_verdict``).

"Confidence" is the largest softmax probability of the model's logits; every forward pass goes
through the :class:`~audit.run.engine.Evaluator`'s model (the pixels -> logits wrapper), in fp32.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .contract.figures import wilson_interval
from .contract.model import AuditResults, CalibrationBlock, ClassResult

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .run.engine import Evaluator
    from .run.records import PointRecords

log = logging.getLogger(__name__)

BINS = 15  # equal-width confidence bins over (0, 1], as MiSLAS (the first bin also takes a confidence of 0)
THRESHOLDS = (0.5, 0.9)  # confident errors: wrong with a confidence strictly above these
DEFAULT_STEPS = 20  # --calibration-steps
STEP_FACTOR = 2.5  # step size = 2.5 * eps / steps (Madry et al.'s rule: the path is 2.5x the radius)
RARE_CONFIDENT = 0.2  # tail share of test images wrong with confidence > 0.9 under attack that the verdict names


def _key(threshold: float) -> str:
    return f"confident_error_{round(threshold * 100)}"


# ------------------------------------------------------------------------------------------ figures

def bin_index(conf: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Bin of each confidence: bin ``b`` is (b/bins, (b+1)/bins] (edges from ``np.linspace``, as MiSLAS);
    a confidence of exactly 0 falls in the first bin."""
    inner = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.searchsorted(inner, np.asarray(conf, dtype=np.float64), side="left")


def reliability(conf: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict[str, list]:
    """Per bin: how many points, their mean confidence and their accuracy (None for an empty bin)."""
    conf = np.asarray(conf, dtype=np.float64)
    b = bin_index(conf, bins)
    count = np.bincount(b, minlength=bins)
    s_conf = np.bincount(b, weights=conf, minlength=bins)
    s_acc = np.bincount(b, weights=np.asarray(correct, dtype=np.float64), minlength=bins)
    return {"count": [int(k) for k in count],
            "confidence": [float(s_conf[i] / count[i]) if count[i] else None for i in range(bins)],
            "accuracy": [float(s_acc[i] / count[i]) if count[i] else None for i in range(bins)]}


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = BINS) -> Optional[float]:
    """Expected calibration error: sum over bins of |B|/n * |acc(B) - conf(B)|; None without points."""
    conf = np.asarray(conf, dtype=np.float64)
    n = len(conf)
    if n == 0:
        return None
    b = bin_index(conf, bins)
    s_conf = np.bincount(b, weights=conf, minlength=bins)
    s_acc = np.bincount(b, weights=np.asarray(correct, dtype=np.float64), minlength=bins)
    return float(np.abs(s_acc - s_conf).sum() / n)


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"k": int(k), "rate": (k / n) if n else None, "ci95": list(wilson_interval(int(k), int(n)))}


def block(conf: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """The figures of one set of points (a class by its true label, a group, or all points)."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(conf)
    wrong = ~correct
    out: dict[str, Any] = {
        "n": int(n),
        "accuracy": float(correct.mean()) if n else None,
        "mean_confidence": float(conf.mean()) if n else None,
        "ece": ece(conf, correct, bins),
        "over_confidence": float(conf[wrong].mean()) if wrong.any() else None,
        "n_wrong": int(wrong.sum()),
    }
    for t in THRESHOLDS:
        out[_key(t)] = _rate(int((wrong & (conf > t)).sum()), n)
    return out


def side_figures(label: np.ndarray, pred: np.ndarray, conf: np.ndarray, num_classes: int,
                 groups: Mapping[str, Sequence[int]], bins: int = BINS) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-class blocks and the summary of one side (clean or attacked) from per-point arrays."""
    label, pred = np.asarray(label, np.int64), np.asarray(pred, np.int64)
    conf = np.asarray(conf, np.float64)
    correct = pred == label
    per_class = []
    for c in range(num_classes):
        mine, said = label == c, pred == c
        row = block(conf[mine], correct[mine], bins)
        row["ece_by_pred"] = ece(conf[said], correct[said], bins)
        row["n_pred"] = int(said.sum())
        per_class.append(row)
    summary = block(conf, correct, bins)
    eces = [r["ece"] for r in per_class if r["ece"] is not None]
    summary["ece_class_mean"] = float(np.mean(eces)) if eces else None
    summary["groups"] = {}
    summary["reliability"] = {"overall": reliability(conf, correct, bins), "groups": {}}
    for g, members in groups.items():
        if not members:
            continue
        inside = np.isin(label, np.asarray(list(members), np.int64))
        summary["groups"][g] = block(conf[inside], correct[inside], bins)
        summary["reliability"]["groups"][g] = reliability(conf[inside], correct[inside], bins)
    return per_class, summary


def attacked_predictions(records: "PointRecords") -> np.ndarray:
    """Each point's answer under attack as the cascade decided it: the prediction at the first attack that
    broke it, else its clean prediction (the true class for a robust point, the mistake for a clean one)."""
    broken = records.broken()
    n = len(records.label)
    if n == 0 or not len(broken):  # no point, or no attack (--attacks none): the clean answers
        return records.clean_pred.astype(np.int64)
    hit = broken.any(0)
    first = np.where(hit, broken.argmax(0), 0)
    return np.where(hit, records.pred[first, np.arange(n)], records.clean_pred).astype(np.int64)


def procedure(steps: int, norm: str, eps: float, attacked: bool, why_not: Optional[str] = None) -> dict[str, Any]:
    """How the figures were made (``summary.calibration.procedure``)."""
    return {"bins": BINS, "thresholds": list(THRESHOLDS), "steps": int(steps) if attacked else 0,
            "norm": norm, "eps": float(eps), "step_size": (STEP_FACTOR * eps / steps) if attacked and steps else None,
            "random_start": False, "attacked": bool(attacked), "not_attacked_because": None if attacked else why_not}


def calibration_results(records: "PointRecords", num_classes: int, groups: Mapping[str, Sequence[int]],
                        proc: dict[str, Any], class_names: Sequence[str] = ()) -> Optional[
                            tuple[list[dict[str, Any]], dict[str, Any], list[str]]]:
    """(per-class ``calibration`` entries, ``summary.calibration``, warnings), or None when the records
    carry no confidences (the pass did not run)."""
    if records.cal_clean_conf is None:
        return None
    label = records.label
    per_clean, sum_clean = side_figures(label, records.clean_pred, records.cal_clean_conf, num_classes, groups)
    per_att: list[Optional[dict[str, Any]]] = [None] * num_classes
    sum_att = None
    warnings: list[str] = []
    missed = unreached = None
    if records.cal_attacked_conf is not None:
        pred = records.cal_attacked_pred if records.cal_attacked_pred is not None else attacked_predictions(records)
        per_att, sum_att = side_figures(label, pred, records.cal_attacked_conf, num_classes, groups)  # type: ignore
        missed = int(np.asarray(records.cal_flipped).sum()) if records.cal_flipped is not None else 0
        unreached = int(np.asarray(records.cal_unreached).sum()) if records.cal_unreached is not None else 0
        if missed:
            classes = np.bincount(label[np.asarray(records.cal_flipped, bool)], minlength=num_classes)
            named = ", ".join(f"“{class_names[c] if c < len(class_names) else c}” ({int(k)})"
                              for c, k in enumerate(classes) if k)
            warnings.append(f"the calibration pass (a {proc['steps']}-step PGD from the clean image) misclassified "
                            f"{missed} points that every attack of the cascade left robust ({named}): the cascade "
                            "missed them, so robust accuracy is overstated there; the reported accuracy still follows "
                            "the cascade: confirm with a stronger --suite")
    per_class = [{"clean": c, "attacked": a} for c, a in zip(per_clean, per_att)]
    summary = {"procedure": proc, "clean": sum_clean, "attacked": sum_att, "cascade_missed": missed,
               "unreached": unreached}
    return per_class, summary, warnings


# ------------------------------------------------------------------------------------------ procedure

def confidence_pass(evaluator: "Evaluator", batches: Iterable[tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]],
                    records: "PointRecords", *, steps: int, norm: str, eps: float) -> "PointRecords":
    """``records`` with the clean confidence of every point and, with ``steps`` > 0, its attacked prediction
    and the confidence the procedure reached (module doc; docs/method.md, "Calibration").

    ``batches`` yields (pixels, labels, test-set indices) of the records' points in the records' order.
    Every point is treated on its own (no random start, nothing shared across a batch), so batch size,
    order and sharding change no figure beyond floating-point rounding.
    """
    import torch

    from .attacks.base import ascent_direction, project
    from .run.engine import adapt_images

    t0 = time.perf_counter()
    n = len(records.label)
    target_all = attacked_predictions(records)
    holds_all = records.clean_correct & ~records.broken().any(0) if n else np.zeros(0, bool)
    clean_conf = np.zeros(n, np.float32)
    att_conf = np.zeros(n, np.float32)
    flipped = np.zeros(n, bool)
    unreached = np.zeros(n, bool)
    alpha = STEP_FACTOR * eps / steps if steps else 0.0
    model, device = evaluator.model, evaluator.device
    pos = 0
    for x, y, ids in batches:
        k = int(x.shape[0])
        sl = slice(pos, pos + k)
        if not np.array_equal(np.asarray(ids), records.index[sl]):
            raise RuntimeError("the calibration pass got other points than the cascade; "
                               "this is a bug, please report it")
        x0 = adapt_images(x.to(device).float(), evaluator.input_size)
        yy = torch.as_tensor(records.label[sl], device=device)
        tt = torch.as_tensor(target_all[sl], device=device)
        hold = torch.as_tensor(holds_all[sl], device=device)
        rows = torch.arange(k, device=device)
        best = torch.where(hold, torch.full((k,), float("inf"), device=device),
                           torch.full((k,), -1.0, device=device))  # hold: lowest p_y; target: highest p_t
        reached = torch.zeros(k, dtype=torch.bool, device=device)
        moved = torch.zeros(k, dtype=torch.bool, device=device)
        xa = x0.clone()
        for it in range(steps + 1):
            last = it == steps
            xa.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                logits = model(xa).float()
                logp = torch.log_softmax(logits, 1)
            with torch.no_grad():
                p = logp.detach().exp()
                finite = torch.isfinite(logits.detach()).all(1)
                pred = logits.detach().argmax(1)
                if it == 0:
                    clean_conf[sl] = p.amax(1).cpu().numpy()
                if steps:
                    p_t = p[rows, tt]
                    # target points: an iterate predicted as the target beats one that is not, then higher p_t
                    on_t = (pred == tt) & finite & ~hold
                    better = on_t & (~reached | (p_t > best))
                    better |= ~hold & finite & ~reached & ~on_t & (p_t > best)
                    # points the cascade left robust: the lowest p_y while the answer is still correct
                    correct = (pred == yy) & finite & hold
                    better |= correct & (p_t < best)
                    best = torch.where(better, p_t, best)
                    reached |= on_t
                    if it > 0:
                        moved |= hold & finite & (pred != yy)
            if last:
                break
            z = logits
            wrong = z.masked_fill(torch.nn.functional.one_hot(yy, z.shape[1]).bool(), float("-inf")).amax(1)
            margin = wrong - z[rows, yy]  # untargeted, towards the most likely wrong class
            loss = torch.where(hold, margin, logp[rows, tt])  # targeted: log-probability of the target
            (grad,) = torch.autograd.grad(loss.sum(), xa)
            with torch.no_grad():
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                xa = project(xa.detach() + alpha * ascent_direction(grad, norm), x0, eps, norm)
        if steps:
            fallback = torch.isinf(best) | (best < 0)  # no finite candidate at all: the clean image's value
            if bool(fallback.any()):
                with torch.no_grad():
                    p0 = torch.softmax(model(x0).float(), 1)[rows, tt]
                best = torch.where(fallback, p0, best)
            att_conf[sl] = best.detach().cpu().numpy()
            flipped[sl] = moved.cpu().numpy()
            unreached[sl] = (~reached & ~hold).cpu().numpy()
        pos += k
    if pos != n:
        raise RuntimeError(f"the calibration pass saw {pos} of {n} points; this is a bug, please report it")
    seconds = time.perf_counter() - t0
    log.debug("calibration pass (%d steps) on %d points: %.1f s", steps, n, seconds)
    return dataclasses.replace(
        records, cal_clean_conf=clean_conf, cal_attacked_pred=target_all if steps else None,
        cal_attacked_conf=att_conf if steps else None, cal_flipped=flipped if steps else None,
        cal_unreached=unreached if steps else None, calibration_seconds=seconds)


# ------------------------------------------------------------------------------------------ exports

SIDES = ("clean", "attacked")


def csv_header() -> list[str]:
    """The calibration columns of per_class.csv (after the accuracy columns)."""
    head = []
    for side in SIDES:
        head += [f"{side}_ece", f"{side}_ece_by_pred", f"{side}_mean_confidence", f"{side}_over_confidence"]
        for t in THRESHOLDS:
            key = _key(t)
            head += [f"{side}_{key}", f"{side}_{key}_ci95_low", f"{side}_{key}_ci95_high"]
    return head


def csv_cells(row: ClassResult, fmt: Any) -> list[str]:
    """One class's calibration cells (empty where a figure is missing), numbers written by ``fmt``."""
    cells: list[str] = []
    for side in SIDES:
        b = getattr(row.calibration, side, None) if row.calibration is not None else None
        cells += [fmt(getattr(b, k, None)) for k in ("ece", "ece_by_pred", "mean_confidence", "over_confidence")]
        for t in THRESHOLDS:
            r = getattr(b, _key(t), None)
            ci = (r.ci95 if r is not None else None) or [None, None]
            cells += [fmt(r.rate if r is not None else None), fmt(ci[0]), fmt(ci[1])]
    return cells


def _rate_of(b: Optional[CalibrationBlock], key: str) -> Optional[float]:
    r = getattr(b, key, None) if b is not None else None
    return r.rate if r is not None else None


def summary_rows(results: AuditResults) -> list[tuple[str, str, str]]:
    """(figure, clean, under attack) rows for summary.md; [] without calibration figures."""
    cal = results.summary.calibration
    if cal is None:
        return []
    clean, att = cal.clean, cal.attacked

    def p(v: Any) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    high = _key(THRESHOLDS[-1])
    rows = [(f"ECE ({cal.procedure.bins} bins)", p(clean.ece), p(att.ece if att else None)),
            ("mean confidence of the wrong answers", p(clean.over_confidence), p(att.over_confidence if att else None))]
    for t in THRESHOLDS:
        rows.append((f"test images wrong with confidence > {t:g}", p(_rate_of(clean, _key(t))),
                     p(_rate_of(att, _key(t)))))
    for g in (clean.groups or {}):
        rows.append((f"{g} classes wrong with confidence > {THRESHOLDS[-1]:g}",
                     p(_rate_of((clean.groups or {}).get(g), high)),
                     p(_rate_of(((att.groups if att else None) or {}).get(g), high))))
    return rows


def summary_note(results: AuditResults) -> str:
    """How the attacked column was made, in one sentence."""
    cal = results.summary.calibration
    proc = cal.procedure if cal is not None else None
    if proc is None or not proc.attacked:
        return f"No attacked calibration ({(proc.not_attacked_because if proc else None) or 'not run'})."
    return (f"Under attack: the cascade's answer, with the confidence a {proc.steps}-step PGD from the clean "
            "image reached: a lower bound on what an attacker can reach.")


def rare_confidently_wrong(results: AuditResults) -> Optional[tuple[str, str]]:
    """(reason, action) when, under attack, at least :data:`RARE_CONFIDENT` of the tail classes' test images
    are wrong with a confidence above 0.9 and more than of the head classes'; None otherwise (also for
    results without calibration figures or without groups)."""
    cal = results.summary.calibration
    groups = (cal.attacked.groups if cal is not None and cal.attacked is not None else None) or {}
    key = _key(THRESHOLDS[-1])
    rt, rh = (_rate_of(groups.get(g), key) for g in ("tail", "head"))
    if rt is None or rh is None or rt < RARE_CONFIDENT or rt <= rh:
        return None
    reason = (f"under attack, {100 * rt:.1f}% of the tail-class test images are wrong with a confidence above "
              f"{THRESHOLDS[-1]:g}, against {100 * rh:.1f}% for the head classes (the attacked confidence is a lower "
              "bound, so the true shares can only be higher)")
    action = ("Do not trust the model's confidence on rare classes under attack (a confidence threshold will not "
              "catch these errors); calibrate them, e.g. repair with label-aware smoothing (--smoothing "
              "label-aware), and re-audit the calibration figures")
    return reason, action
