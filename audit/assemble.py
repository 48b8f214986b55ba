"""From an audit's per-point records to its typed results (:class:`audit.contract.model.AuditResults`).

Phases: per-class figures, the cross-class summary (with confusion and calibration), the
warnings every check raised, and the run's description (model, data, threat model, settings,
environment, timings). Field meanings: docs/results_schema.md.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .calibration import calibration_results, procedure as calibration_procedure
from .config import AuditConfig
from .data import LTDataset, class_groups, groups_to_indices, is_balanced
from .run.records import PointRecords
from .inputs import input_info, input_warnings
from .checks.labels import check_label_order, clean_confusion, label_warning
from .run.lifecycle import created_now
from .metrics import adversarial_confusion, cross_class_summary, per_class_accuracy, spearman
from .contract.figures import wilson_interval
from .models import LoadedModel, final_linear_of
from .contract.schema import SCHEMA_VERSION
from .run.lifecycle import environment
from .contract.model import (AttackEntry, AuditResults, Calibration, ClassCalibration, ClassResult, ClassSummary,
                             Confusion, DatasetInfo, InputFit, LabelCheck, ModelInfo, Sanity, Spearman, Summary,
                             ThreatModel, Timings, Tool)
from .contract.codec import from_json
from .version import __version__

log = logging.getLogger(__name__)


def build_results(config: AuditConfig, specs: Sequence[Any], data: LTDataset, model: LoadedModel,
                  eval_idx: np.ndarray, records: PointRecords, device: torch.device, timings: dict[str, float],
                  large_eps: Optional[dict[str, Any]] = None) -> AuditResults:
    """The typed results of one audit (no verdict or gate yet: the pipeline adds them)."""
    from .checks.sanity import sanity_section

    C = len(data.class_names)
    counts = [int(c) for c in data.train_counts]
    group_of = class_groups(counts, rule=config.group_rule)  # all None when the training set is balanced
    groups = groups_to_indices(group_of)
    norms, norm_warning = _weight_norms(model, data.class_names)
    per_class, acc = _class_results(records, config, data.class_names, counts, group_of, norms)
    summary = _summary(records, acc, counts, groups, norms, C)
    calibration = _calibration(records, config, model, groups, data.class_names, per_class, summary)
    inp = input_info(data.info.get("native_shape") or data.image_shape, model.preprocessing.input_size)
    label_check = check_label_order(np.asarray(summary.clean_confusion), data.class_names,
                                    model.info.get("output_order"))
    sanity, sanity_warnings = sanity_section(records, specs, data.class_names, large_eps)
    warnings = _warnings(model, records, config, summary, inp, label_check,
                         [norm_warning] if norm_warning else [], sanity_warnings, calibration)
    n = len(records.label)
    return AuditResults(
        schema_version=SCHEMA_VERSION, tool=Tool(name="tailaudit", version=__version__), created=created_now(),
        model=_model_info(model, records), dataset=_dataset_info(data, config, counts, groups, eval_idx, n),
        input=inp, threat_model=ThreatModel(norm=config.norm, eps=config.eps, eps_text=config.eps_text),
        attacks=[from_json(AttackEntry, s.to_dict()) for s in specs], **_suite_fields(config, specs, model),
        verdict_runtime=records.verified_by, sanity=from_json(Sanity, sanity),
        mode="independent" if config.independent else "cascade", seed=config.seed, subset_seed=config.subset_seed,
        config=config.to_dict(), environment=environment(device), timings=_timings(records, timings, n),
        per_class=per_class, summary=summary, warnings=warnings,
        files={"points": "points.json", "examples": "examples.npz"}, label_check=label_check)


def _suite_fields(config: AuditConfig, specs: Sequence[Any], model: LoadedModel) -> dict[str, Any]:
    """What ran, as recorded: the suite ("black-box" when only score-based attacks could run, never the suite that
    was asked for), its note, the gradient access and, in black-box mode, why (asked for, or not convertible)."""
    from .attacks import ATTACKS, SUITES

    def _display(spec: Any) -> str:  # noqa: N802
        return ATTACKS.get(spec.kind).display_name

    if config.attack_free:
        return {"suite": config.suite_name, "mode_label": "no attack (natural corruptions only)",
                "suite_note": "--attacks none: no attack ran; attack robustness was not measured"}
    if model.gradient_access:
        return {"suite": config.suite_name, "mode_label": "white-box",
                "suite_note": SUITES.get(config.suite).note if config.attacks is None else None}
    ran = ", ".join(_display(s) for s in specs)
    return {"suite": "black-box", "mode_label": "black-box (upper bound)",
            "suite_note": f"black-box: only {ran} (score-based, on onnxruntime alone) ran; robust accuracy is an "
                          "upper bound",
            "black_box_reason": ("asked for with --black-box" if config.black_box else
                                 model.info.get("black_box_reason") or "the model could not be converted for "
                                                                       "gradients")}


def _weight_norms(model: LoadedModel, names: Sequence[str]) -> tuple[Optional[np.ndarray], Optional[str]]:
    """The final layer's row norms in dataset-class order (None without a final linear layer), and a warning."""
    C = len(names)
    lin = final_linear_of(model)
    norms = lin.weight.detach().float().norm(dim=1).cpu().numpy() if lin is not None and lin.out_features == C else None
    if norms is not None and model.info.get("output_order"):
        norms = norms[np.asarray(model.info["output_order"])]  # rows follow the model's outputs; --labels re-orders
    if norms is None or np.isfinite(norms).all():
        return norms, None
    bad = [names[c] for c in np.flatnonzero(~np.isfinite(norms))]  # e.g. rows of 3e38 weights: finite logits
    return np.where(np.isfinite(norms), norms, np.nan), (  # null in results, left out of the Spearman
        f"the classifier's weight norm overflows for {len(bad)} class(es) (e.g. {', '.join(bad[:3])}): stored as "
        "null; weights that large usually mean a broken export or training run")


def _class_results(records: PointRecords, config: AuditConfig, names: Sequence[str], counts: list[int],
                   group_of: Sequence[Optional[str]], norms: Optional[np.ndarray]) -> tuple[list[ClassResult], dict]:
    """One :class:`ClassResult` per class, and the per-class accuracies (clean and per attack) they came from."""
    C, labels = len(names), records.label
    clean_acc, clean_k, n_cls = per_class_accuracy(records.clean_correct, labels, C)
    masks = records.robust_masks(config.independent) if not config.attack_free else {}  # none: no robust figure
    rob = {name: per_class_accuracy(m, labels, C) for name, m in masks.items()}
    broken = records.broken()
    rows = [ClassResult(
        index=c, name=names[c], train_count=counts[c], group=group_of[c], n_eval=int(n_cls[c]),
        clean_acc=float(clean_acc[c]), clean_ci95=list(wilson_interval(int(clean_k[c]), int(n_cls[c]))),
        robust_acc={name: float(r[0][c]) for name, r in rob.items()},
        robust_ci95={name: list(wilson_interval(int(r[1][c]), int(n_cls[c]))) for name, r in rob.items()},
        broken_by={name: int((broken[a] & (labels == c)).sum()) for a, name in enumerate(records.attack_names)},
        weight_norm=float(norms[c]) if norms is not None and np.isfinite(norms[c]) else None)
        for c in range(C)]
    return rows, {"clean": (clean_acc, clean_k), **{name: r[:2] for name, r in rob.items()}}


def _summary(records: PointRecords, acc: dict, counts: list[int], groups: dict[str, list[int]],
             norms: Optional[np.ndarray], C: int) -> Summary:
    """Across classes: clean and per-attack summaries, head/tail gaps, Spearman, adversarial and clean confusion."""
    n = len(records.label)

    def across(name: str) -> ClassSummary:
        a, k = acc[name]
        return from_json(ClassSummary, cross_class_summary(a, int(k.sum()), n, counts, groups))

    clean = across("clean")
    robust = {name: across(name) for name in acc if name != "clean"}

    def gap(s: ClassSummary) -> Optional[float]:
        head, tail = s.group("head"), s.group("tail")
        return head - tail if head is not None and tail is not None else None

    attacked = "worst_case" in acc  # False for --attacks none: no robust figure, no adversarial confusion
    rho = spearman(norms, acc["worst_case"][0]) if norms is not None and attacked else None
    return Summary(clean=clean, robust=robust,
                   head_tail_gap={"clean": gap(clean),
                                  **({"worst_case": gap(robust["worst_case"])} if attacked else {})},
                   weight_norm_spearman=from_json(Spearman, rho) if rho is not None else None,
                   confusion=_adversarial_confusion(records, C) if attacked else None,
                   clean_confusion=clean_confusion(records.label, records.clean_pred, C).tolist())


def _adversarial_confusion(records: PointRecords, C: int) -> Confusion:
    """Where broken points went: each one's prediction at the first attack that broke it."""
    n = len(records.label)
    broken = records.broken()
    any_broken = broken.any(0)
    first_attack = np.where(any_broken, broken.argmax(0), 0)
    adv_pred = records.pred[first_attack, np.arange(n)] if n else np.zeros(0, np.int64)
    return from_json(Confusion, adversarial_confusion(records.label, adv_pred, any_broken, C))


def _calibration(records: PointRecords, config: AuditConfig, model: LoadedModel, groups: dict[str, list[int]],
                 names: Sequence[str], per_class: list[ClassResult], summary: Summary) -> list[str]:
    """Calibration figures into ``per_class[i].calibration`` and ``summary.calibration``; their warnings."""
    steps = config.calibration_steps
    why_not = ("--attacks none: no attack" if config.attack_free else
               "black-box mode: no gradients" if not model.gradient_access else "--calibration-steps 0")
    found = calibration_results(records, len(names), groups, calibration_procedure(
        steps, config.norm, config.eps, attacked=bool(steps) and model.gradient_access and not config.attack_free,
        why_not=why_not), names)
    if found is None:
        return []
    rows, cal, warnings = found
    for row, entry in zip(per_class, rows):
        row.calibration = from_json(ClassCalibration, entry)
    summary.calibration = from_json(Calibration, cal)
    return warnings


def _warnings(model: LoadedModel, records: PointRecords, config: AuditConfig, summary: Summary, inp: InputFit,
              label_check: Optional[LabelCheck], *more: list[str]) -> list[str]:
    """Every check's warning, in the order a reader should meet them, each also logged."""
    model_warnings = list(model.info.get("warnings", []))
    said_probabilities = any("outputs probabilities" in w for w in model_warnings)
    warnings = model_warnings + [w for w in records.warnings
                                 if not (said_probabilities and "outputs probabilities" in w)]
    warnings += records.sanity_warnings(config.independent)
    norm_warning, sanity_warnings, calibration_warnings = more
    warnings += norm_warning + sanity_warnings + calibration_warnings + input_warnings(inp)
    if label_check:
        warnings.append(label_warning(label_check))
    clean_overall = summary.clean.overall or 0
    wc = summary.worst_case.overall if "worst_case" in summary.robust else None
    if wc is not None and clean_overall > 0 and wc == clean_overall and config.eps > 0 and sum(records.attacked) > 20:
        warnings.append("no attack broke a single point: check that --eps matches the pixel scale [0, 1] "
                        "and that the model returns logits")
    for w in warnings:
        log.warning("%s", w)
    return warnings


def _model_info(model: LoadedModel, records: PointRecords) -> ModelInfo:
    """The loader's description, with the adversarial re-checks of a runtime-verified ONNX model."""
    desc = model.describe()
    if model.reference_scorer is not None and desc.get("parity") is not None:
        desc["parity"] = dict(desc["parity"], adversarial_rescored=records.rescored,
                              adversarial_rejected=records.rescore_disagreed,
                              survivors_broken=int(sum(records.survivors_broken)))
    return from_json(ModelInfo, desc)


def _dataset_info(data: LTDataset, config: AuditConfig, counts: list[int], groups: dict[str, list[int]],
                  eval_idx: np.ndarray, n: int) -> DatasetInfo:
    return DatasetInfo(
        name=data.name, root=data.info.get("root"),
        imbalance=config.imbalance if data.info.get("profile") == "exponential" else None,
        balanced=is_balanced(counts), classes=list(data.class_names), train_counts=counts, groups=groups,
        group_rule=config.group_rule, n_eval=n, n_per_class=config.n_per_class, test_size=len(data.test_labels),
        eval_indices_sha256=hashlib.sha256(np.asarray(eval_idx, dtype=np.int64).tobytes()).hexdigest(),
        info=data.info)


def _timings(records: PointRecords, timings: dict[str, float], n: int) -> Timings:
    work = records.clean_seconds + sum(records.attack_seconds)
    return Timings(load_s=timings["load_s"], clean_s=records.clean_seconds,
                   attacks_s={name: records.attack_seconds[a] for a, name in enumerate(records.attack_names)},
                   total_s=timings["total_s"], points_per_s=(n / work) if work > 0 else None,
                   attacked_points={name: records.attacked[a] for a, name in enumerate(records.attack_names)},
                   calibration_s=records.calibration_seconds)
