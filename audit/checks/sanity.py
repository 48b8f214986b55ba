"""Gradient-masking checks, per class: AutoAttack's sanity checks, but named by class.

``results["sanity"]`` (see docs/attacks.md) holds four checks; each lists the classes it
flags, and :func:`sanity_section` also returns one warning line per failed check:

* ``zero_gradient``: points whose input gradient was exactly zero at a gradient attack's
  first step (the model saturates or masks gradients); Temperature-PGD with T < 1 is left out,
  its loss saturates by design;
* ``square_only``: points a score-based attack (Square) broke after every gradient attack
  missed them: the gradients point the wrong way for those classes; with Square's probe
  (``--suite standard``) also where it ran its full budget (``probe``);
* ``randomised``: clean logits that differ between two identical forward passes (a
  randomised model defeats attacks that assume a fixed function);
* ``large_eps`` (``--sanity``): robust accuracy at a huge radius must be about zero.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..run.engine import Evaluator
from ..values import AttackSpec

ZERO_GRAD_SHARE = 0.05  # flag a class when more than 5% of its attacked points had a zero gradient
JITTER_TOL = 1e-4  # relative logit difference that counts as a randomised forward pass
LARGE_EPS = {"linf": 0.5}  # L-inf: every image can reach mid-grey; L2: 0.5 * sqrt(pixels), the same cube's corner
LARGE_EPS_MAX_ROBUST = 0.05
LARGE_EPS_POINTS = 100


def _per_class(mask: np.ndarray, labels: np.ndarray, C: int) -> list[int]:
    return np.bincount(labels[mask], minlength=C).astype(int).tolist() if mask.size else [0] * C


def _names(counts: Sequence[int], class_names: Sequence[str]) -> list[str]:
    return [class_names[c] for c, k in enumerate(counts) if k]


def sanity_section(records: Any, specs: Sequence[AttackSpec], class_names: Sequence[str],
                   large_eps: Optional[dict[str, Any]] = None) -> tuple[dict[str, Any], list[str]]:
    """Build ``results["sanity"]`` and its warning lines from the cascade's per-point records."""
    from ..attacks import ATTACKS

    C = len(class_names)
    labels = records.label
    warnings: list[str] = []
    broken = records.broken()

    # 1. zero gradients, per attack and class
    zg: dict[str, Any] = {}
    flagged: set[str] = set()
    attacked_mask = records.clean_correct
    for a, spec in enumerate(specs):
        if ATTACKS.get(spec.kind).gradient_free or records.zero_grad_points is None:
            continue
        if getattr(spec.params, "temperature", 1.0) < 1.0:
            continue  # T < 1 saturates the loss itself on confident points: not evidence about the model
        m = records.zero_grad_points[a]
        per = _per_class(m, labels, C)
        n_cls = np.bincount(labels[attacked_mask], minlength=C)
        bad = [class_names[c] for c in range(C) if n_cls[c] and per[c] / n_cls[c] > ZERO_GRAD_SHARE]
        flagged.update(bad)
        zg[spec.name] = {"points": int(m.sum()), "per_class": per, "flagged_classes": bad}
    zero_section = {"per_attack": zg, "flagged_classes": sorted(flagged, key=list(class_names).index)}
    if flagged:
        flagged_names = ", ".join(zero_section["flagged_classes"])
        warnings.append(f"zero input gradients (gradient masking?) in classes {flagged_names}: "
                        "their robust accuracy is an upper bound")

    # 2. points only a score-based attack broke
    white = [a for a, s in enumerate(specs) if not ATTACKS.get(s.kind).gradient_free]
    black = [a for a, s in enumerate(specs) if ATTACKS.get(s.kind).gradient_free]
    square_section: dict[str, Any] = {"attacks": [specs[a].name for a in black], "points": 0, "per_class": [0] * C,
                                      "classes": [], "checked": bool(white and black)}
    if white and black:
        only = broken[black].any(0) & ~broken[white].any(0)
        per = _per_class(only, labels, C)
        square_section.update(points=int(only.sum()), per_class=per, classes=_names(per, class_names))
        if only.any():
            warnings.append(f"Square broke {int(only.sum())} points every gradient attack missed (classes "
                            f"{', '.join(square_section['classes'])}): gradients mislead there (masking?); "
                            "trust the worst case, and audit with --suite thorough")

    # 2b. Square's probe: where it went on to its full budget (it was doing better than the gradient attacks)
    probed = [a for a in black if getattr(specs[a].params, "probe", 0) and records.carried_points is not None]
    if probed and white:
        a = probed[0]
        carried = records.carried_points[a]
        per = _per_class(carried, labels, C)
        square_section["probe"] = {
            "attack": specs[a].name, "probe_queries": int(specs[a].params.probe),
            "full_queries": int(specs[a].params.queries), "attacked": int(records.attacked[a]),
            "full_budget_points": int(carried.sum()), "per_class": per, "classes": _names(per, class_names)}
        reruns = int(getattr(specs[a].params, "reruns", 0) or 0)
        reran = getattr(records, "rerun_points", None)
        if reruns and reran is not None:
            reran = reran[a]
            per_r = _per_class(reran, labels, C)
            square_section["probe"].update(reruns=reruns, rerun_points=int(reran.sum()), rerun_per_class=per_r,
                                           rerun_classes=_names(per_r, class_names))

    # 3. randomised forward passes
    jit = records.logit_jitter if records.logit_jitter is not None else np.zeros(len(labels), np.float32)
    noisy = jit > JITTER_TOL
    per = _per_class(noisy, labels, C)
    rand_section = {"points": int(noisy.sum()), "per_class": per, "classes": _names(per, class_names),
                    "max_abs_logit_diff": float(jit.max()) if jit.size else 0.0}
    if noisy.any():
        warnings.append(f"the model's logits change between two identical forward passes for {int(noisy.sum())} "
                        "points (a randomised model): attacks assuming a fixed function understate its weakness; "
                        "evaluate it with expectation over transformations")

    out: dict[str, Any] = {"zero_gradient": zero_section, "square_only": square_section, "randomised": rand_section,
                           "large_eps": large_eps}
    if large_eps is not None and not large_eps["passed"]:
        warnings.append(f"at a huge radius ({large_eps['norm']} eps {large_eps['eps']:.3g}) "
                        f"{large_eps['robust_acc']:.0%} of the checked points stay robust "
                        f"(classes {', '.join(large_eps['classes'])}); it should be "
                        "about 0: the attacks do not work on this model (gradient masking)")
    out["passed"] = not warnings
    return out, warnings


def large_eps_spec(specs: Sequence[AttackSpec], norm: str, input_numel: int) -> AttackSpec:
    """The check's attack: APGD-CE-50 (Square-1000 when only score-based attacks run) at a huge radius."""
    from ..attacks import ATTACKS, make_spec

    eps = LARGE_EPS.get(norm, 0.5 * float(np.sqrt(input_numel)))
    if all(ATTACKS.get(s.kind).gradient_free for s in specs):
        return make_spec("square", norm, eps, name="sanity-large-eps", queries=1000)
    return make_spec("apgd-ce", norm, eps, name="sanity-large-eps", steps=50)


def run_large_eps(evaluator: Evaluator, batches: Any, specs: Sequence[AttackSpec], class_names: Sequence[str], *,
                  norm: str, seed: int, max_points: int = LARGE_EPS_POINTS) -> dict[str, Any]:
    """``--sanity``: attack up to ``max_points`` evaluation points at a huge radius; robust accuracy must be ~0."""
    from ..attacks import create_attack

    spec = large_eps_spec(specs, norm, int(np.prod(evaluator.input_size)))
    taken, n = [], 0
    for x, y, ids in batches:
        k = min(len(y), max_points - n)
        taken.append((x[:k], y[:k], ids[:k]))
        n += k
        if n >= max_points:
            break
    rec = evaluator.cascade(taken, [create_attack(spec)], n_total=n, seed=seed, examples_per_class=0)
    correct = rec.clean_correct
    robust = correct & ~rec.broken()[0]
    C = len(class_names)
    per = _per_class(robust, rec.label, C)
    acc = float(robust.sum() / max(1, correct.sum()))
    return {"attack": spec.to_dict(), "norm": norm, "eps": spec.eps, "n": int(correct.sum()),
            "robust_acc": acc, "robust_per_class": per, "classes": _names(per, class_names),
            "passed": acc <= LARGE_EPS_MAX_ROBUST}


__all__ = ["sanity_section", "run_large_eps", "large_eps_spec"]
