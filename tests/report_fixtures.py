"""Schema-conforming ``results.json`` dicts for report tests, seeded and realistic.

Long-tailed training counts (exponential profile), robust accuracy that falls with rarity,
Wilson intervals, a cascade of PGD then Temperature-PGD, an adversarial confusion matrix,
weight norms, warnings and an ``examples.npz`` of broken points.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.metrics import cross_class_summary, spearman
from audit.contract.figures import wilson_interval
from audit.contract.model import AuditResults
from audit.checks.verdict import compute_verdict, grade_on_load
from reports.load import typed_results

ATTACKS = [
    {"name": "pgd", "kind": "pgd", "steps": 20, "step_size": 2 / 255, "random_start": True, "temperature": None},
    {"name": "temp-pgd", "kind": "temp-pgd", "steps": 20, "step_size": 2 / 255, "random_start": True,
     "temperature": 0.5},
]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def wilson(k: int, n: int) -> list[float]:
    """The audit's own Wilson 95% interval (audit/metrics.py), as results.json stores it."""
    return list(wilson_interval(k, n))


def _stats(values: list[float], counts: list[int], groups: dict[str, list[int]], correct: int,
           n_total: int) -> dict[str, Any]:
    """A summary node as the audit computes it (audit/metrics.py, cross_class_summary)."""
    return cross_class_summary(np.asarray(values, dtype=float), correct, n_total, counts, groups)


def make_results(
    n_classes: int = 10,
    *,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    model_spec: str = "examples/digits_cnn.onnx",
    n_per_class: int | None = None,
    robust_shift: float = 0.0,
    clean_shift: float = 0.0,
    sha256: str | None = None,
    eps_text: str = "8/255",
    weaker_classes: Sequence[int] = (),
) -> dict[str, Any]:
    """Build a results dict for ``n_classes`` classes.

    ``robust_shift`` / ``clean_shift`` move accuracies (a "repaired" run); ``weaker_classes``
    lose about 40 points of robust accuracy.
    """
    rng = np.random.default_rng(seed)
    eval_rng = np.random.default_rng(1234)  # the evaluation set does not depend on the seed
    if class_names is None:
        class_names = CIFAR10 if n_classes == 10 else [f"class_{i:03d}" for i in range(n_classes)]
    names = list(class_names)
    assert len(names) == n_classes
    n_max, rho = (500 if n_classes > 10 else 5000), 0.01
    counts = [max(1, int(n_max * rho ** (i / max(1, n_classes - 1)))) for i in range(n_classes)]
    order = sorted(range(n_classes), key=lambda i: -counts[i])
    third = max(1, n_classes // 3)
    groups = {"head": sorted(order[:third]), "medium": sorted(order[third:n_classes - third]),
              "tail": sorted(order[n_classes - third:])}
    group_of = {i: g for g, idx in groups.items() for i in idx}
    n_eval_class = n_per_class or (50 if n_classes <= 10 else 20 if n_classes <= 100 else 10)

    per_class: list[dict[str, Any]] = []
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    tot_clean = tot_pgd = tot_worst = 0
    for i in range(n_classes):
        rarity = i / max(1, n_classes - 1)
        n = n_eval_class
        p_clean = float(np.clip(0.95 - 0.25 * rarity + clean_shift + rng.normal(0, 0.03), 0.05, 0.995))
        p_rob = float(np.clip(0.55 - 0.35 * rarity + robust_shift + rng.normal(0, 0.05), 0.0, p_clean))
        if i in weaker_classes:  # a class the "repair" made much less robust
            p_rob = max(0.0, p_rob - 0.4)
        k_clean = int(rng.binomial(n, p_clean))
        k_pgd = int(min(k_clean, rng.binomial(n, min(1.0, p_rob + 0.04))))
        k_worst = int(max(0, k_pgd - rng.binomial(max(k_pgd, 0), 0.08)))
        tot_clean, tot_pgd, tot_worst = tot_clean + k_clean, tot_pgd + k_pgd, tot_worst + k_worst
        broken = k_clean - k_worst
        neighbours = [(i + d) % n_classes for d in (1, 2, 3) if (i + d) % n_classes != i] or [i]
        share = rng.dirichlet(np.ones(len(neighbours)) * 0.7)
        for j, s in zip(neighbours, rng.multinomial(broken, share)):
            matrix[i, j] += int(s)
        per_class.append({
            "index": i, "name": names[i], "train_count": counts[i], "group": group_of[i], "n_eval": n,
            "clean_acc": k_clean / n, "clean_ci95": wilson(k_clean, n),
            "robust_acc": {"pgd": k_pgd / n, "temp-pgd": k_worst / n, "worst_case": k_worst / n},
            "robust_ci95": {"pgd": wilson(k_pgd, n), "temp-pgd": wilson(k_worst, n),
                            "worst_case": wilson(k_worst, n)},
            "broken_by": {"pgd": k_clean - k_pgd, "temp-pgd": k_pgd - k_worst},
            "weight_norm": float(1.2 + 0.6 * (1 - rarity) + rng.normal(0, 0.05)),
        })
    n_total = n_eval_class * n_classes
    flows = []
    for i in range(n_classes):
        row = matrix[i].sum()
        for j in np.nonzero(matrix[i])[0]:
            flows.append({"true": i, "pred": int(j), "count": int(matrix[i, j]),
                          "fraction": float(matrix[i, j] / row)})
    flows.sort(key=lambda f: (-f["count"], -f["fraction"], f["true"], f["pred"]))

    clean = [r["clean_acc"] for r in per_class]
    summary = {
        "clean": _stats(clean, counts, groups, tot_clean, n_total),
        "robust": {
            "pgd": _stats([r["robust_acc"]["pgd"] for r in per_class], counts, groups, tot_pgd, n_total),
            "temp-pgd": _stats([r["robust_acc"]["temp-pgd"] for r in per_class], counts, groups, tot_worst, n_total),
            "worst_case": _stats([r["robust_acc"]["worst_case"] for r in per_class], counts, groups, tot_worst,
                                 n_total),
        },
    }
    summary["head_tail_gap"] = {
        "clean": summary["clean"]["groups"]["head"] - summary["clean"]["groups"]["tail"],
        "worst_case": summary["robust"]["worst_case"]["groups"]["head"]
        - summary["robust"]["worst_case"]["groups"]["tail"],
    }
    summary["weight_norm_spearman"] = spearman([r["weight_norm"] for r in per_class],
                                               [r["robust_acc"]["worst_case"] for r in per_class])
    summary["confusion"] = {"matrix": matrix.tolist(), "top_flows": flows[:20]}
    eval_idx = eval_rng.permutation(10000)[:n_total]
    return {
        "schema_version": 1,
        "tool": {"name": "tailaudit", "version": "0.1.0"},
        "created": "2026-11-21T16:03:11+00:00",
        "model": {
            "spec": model_spec, "path": f"/abs/{Path(model_spec).name}",
            "sha256": sha256 or ("ab12" * 16), "format": "onnx", "arch": None, "num_classes": n_classes,
            "preprocessing": {"input_size": [1, 8, 8], "mean": None, "std": None, "layout": "NCHW"},
            "parity": {"n": 64, "max_abs_logit_diff": 1.2e-6, "argmax_agreement": 1.0, "tolerance": 1e-3,
                       "providers": ["CPUExecutionProvider"]},
            "info": {"opset": 17},
        },
        "dataset": {
            "name": "digitslt" if n_classes == 10 else f"synthetic{n_classes}lt", "root": None,
            "imbalance": rho, "classes": names, "train_counts": counts, "groups": groups,
            "group_rule": "thirds", "n_eval": n_total, "n_per_class": n_per_class,
            "eval_indices_sha256": hashlib.sha256(eval_idx.astype(np.int64).tobytes()).hexdigest(),
        },
        "threat_model": {"norm": "linf", "eps": 8 / 255 if eps_text == "8/255" else 4 / 255, "eps_text": eps_text},
        "attacks": [dict(a) for a in ATTACKS],
        "mode": "cascade",
        "seed": seed,
        "environment": {"python": "3.11.7", "torch": "2.5.1", "timm": "1.0.31", "onnx": "1.23.2",
                        "onnxruntime": "1.31.1", "platform": "Linux-x86_64", "device": "cpu",
                        "device_name": "cpu"},
        "timings": {"load_s": 0.4, "clean_s": 0.1, "attacks_s": {"pgd": 3.1, "temp-pgd": 0.6},
                    "total_s": 4.5, "points_per_s": n_total / 4.5},
        "per_class": per_class,
        "summary": summary,
        "warnings": [f"{n_eval_class} evaluation points per class: intervals are wide (about ±"
                     f"{int(100 / math.sqrt(n_eval_class))} points)"],
        "files": {"points": "points.json", "examples": "examples.npz"},
    }


def make_examples(results: dict[str, Any], *, seed: int = 0, per_class: int = 2,
                  shape: tuple[int, int, int] = (1, 8, 8)) -> dict[str, np.ndarray]:
    """Arrays for examples.npz: a few broken points per class, images that look like blobs."""
    rng = np.random.default_rng(seed)
    n_classes = len(results["per_class"])
    matrix = np.asarray(results["summary"]["confusion"]["matrix"])
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    clean, adv, label, pred, attack = [], [], [], [], []
    for i in range(n_classes):
        for k in range(per_class):
            cy, cx = rng.uniform(0.3, 0.7, 2) * (h, w)
            blob = np.exp(-(((yy - cy) / (h / 4)) ** 2 + ((xx - cx) / (w / 4)) ** 2))
            img = np.stack([blob * (0.6 + 0.4 * ((i + ch) % 3) / 2) for ch in range(c)]) * 230
            x = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            delta = rng.choice([-8, 8], size=img.shape)
            clean.append(x)
            adv.append(np.clip(x.astype(int) + delta, 0, 255).astype(np.uint8))
            label.append(i)
            pred.append(int(matrix[i].argmax()) if matrix[i].sum() else (i + 1) % n_classes)
            attack.append(k % 2)
    return {"clean": np.stack(clean), "adv": np.stack(adv), "label": np.asarray(label),
            "adv_pred": np.asarray(pred), "attack": np.asarray(attack)}


def write_run(folder: Path, results: dict[str, Any], *, examples: bool = True,
              shape: tuple[int, int, int] = (1, 8, 8)) -> Path:
    """Write results.json (and examples.npz) into ``folder``; return the results path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps(results, indent=1), encoding="utf-8")
    if examples:
        np.savez_compressed(folder / results["files"]["examples"], **make_examples(results, shape=shape))
    return path


# ---------------------------------------------------------------- keys the audit adds for the page-1 report

def with_verdict(results: dict[str, Any], code: str, headline: str, reasons: Sequence[str] = (),
                 actions: Sequence[str] = ()) -> dict[str, Any]:
    """Add ``verdict`` as the audit writes it (one verdict, computed once)."""
    results["verdict"] = {"code": code, "headline": headline, "reasons": list(reasons), "actions": list(actions)}
    return results


def typed(results: dict[str, Any]) -> AuditResults:
    """A fixture's dict as the reports read it in the application: checked against the schema and migrated
    (audit/contract/schema.py), graded if it has no verdict (audit/checks/verdict.py, as tailaudit hands the
    reports)."""
    return grade_on_load(typed_results(results))


def with_computed_verdict(results: dict[str, Any]) -> dict[str, Any]:
    """Store the verdict the rules (audit/checks/verdict.py) give these figures, as the audit does."""
    results["verdict"] = compute_verdict(AuditResults.from_json(results)).to_json()
    return results


def make_balanced(results: dict[str, Any], per_class: int = 5000) -> dict[str, Any]:
    """The results of a balanced training set: equal counts, no groups, no imbalance factor, no gap."""
    d = results["dataset"]
    n = len(d["classes"])
    d.update(balanced=True, imbalance=None, groups={}, train_counts=[per_class] * n)
    for row in results["per_class"]:
        row.update(train_count=per_class, group=None)
    s = results["summary"]
    for node in (s["clean"], *s["robust"].values()):
        node["groups"] = {}
        node["spearman"] = None
    s["head_tail_gap"] = None
    return results


def make_curve(results: dict[str, Any],
               eps_texts: Sequence[str] = ("1/255", "2/255", "4/255", "8/255")) -> dict[str, Any]:
    """A robustness curve that ends at the results' own figures (largest eps) and rises towards small eps."""
    s = results["summary"]
    wc = s["robust"]["worst_case"]
    clean = [r["clean_acc"] for r in results["per_class"]]
    final = [r["robust_acc"]["worst_case"] for r in results["per_class"]]
    curve = []
    for k, text in enumerate(eps_texts):
        w = (len(eps_texts) - 1 - k) / max(1, len(eps_texts) - 1)  # 1 at the smallest eps, 0 at the largest
        per = [f + w * 0.8 * (c - f) for c, f in zip(clean, final)]
        groups = {g: float(np.mean([per[i] for i in idx])) for g, idx in results["dataset"]["groups"].items() if idx}
        overall = wc["overall"] + w * 0.8 * (s["clean"]["overall"] - wc["overall"])
        num, den = (int(x) for x in text.split("/"))
        curve.append({"eps": num / den, "eps_text": text, "overall": overall, "balanced": float(np.mean(per)),
                      "groups": groups, "per_class": per})
    results["curve"] = curve
    return results
