"""``run_audit``: load data and model, run the cascade, compute metrics, write results."""
from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import __version__
from .attacks import create_attack
from .config import AuditConfig
from .data import LTDataset, assign_groups, groups_to_indices, load_dataset, stratified_subset
from .engine import PointRecords, adapt_images, run_cascade
from .errors import ConfigError, ModelLoadError
from .metrics import adversarial_confusion, cross_class_summary, per_class_accuracy, spearman, wilson_interval
from .models import LoadedModel, final_linear_of, load_model
from .results import SCHEMA_VERSION, environment, write_json, write_npz

log = logging.getLogger(__name__)


@dataclass
class AuditRun:
    """What :func:`run_audit` returns: the results dict and where it was written."""

    results: dict[str, Any]
    out_dir: Path
    records: PointRecords

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.json"


class _Indexed(Dataset):
    """Items (image, label, test-set index) of a subset of the test set."""

    def __init__(self, base: Dataset, indices: np.ndarray) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        x, y = self.base[j]
        return x, int(y), j


def resolve_device(name: str) -> torch.device:
    """``auto`` = the GPU when torch sees one; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for a GPU but torch sees none; use --device cpu or auto")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N")


def default_out_dir(config: AuditConfig) -> Path:
    stem = Path(config.model).stem if not config.model.startswith("timm:") else config.model[5:]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "model"
    return Path("runs") / f"{stem}-{config.dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _bn_fingerprint(module: torch.nn.Module) -> float:
    tot = 0.0
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            tot += float(m.running_mean.double().sum() + m.running_var.double().sum())
    return tot


def _eval_indices(data: LTDataset, config: AuditConfig) -> np.ndarray:
    labels = np.asarray(data.test_labels)
    if config.n_per_class:
        return np.asarray(stratified_subset(labels, config.n_per_class, config.subset_seed), dtype=np.int64)
    return np.arange(len(labels), dtype=np.int64)


def prepare(config: AuditConfig, device: torch.device) -> tuple[LTDataset, LoadedModel, np.ndarray]:
    """Load the dataset and the model and check they fit each other."""
    data = load_dataset(config.dataset, imbalance=config.imbalance, data_root=config.data_root,
                        class_counts=config.class_counts, download=config.download)
    num_classes = len(data.class_names)
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ConfigError(f"--num-classes {config.num_classes} but dataset {config.dataset} has {num_classes} classes")
    model = load_model(config.model, num_classes=num_classes, checkpoint=config.checkpoint, mean=config.mean,
                       std=config.std, input_size=config.input_size, data_size=tuple(data.image_shape),
                       device=device, black_box=config.black_box)
    if model.num_classes != num_classes:
        raise ModelLoadError(f"the model has {model.num_classes} outputs but dataset {config.dataset} has "
                             f"{num_classes} classes; audit it on the dataset it was trained for")
    return data, model, _eval_indices(data, config)


def run_audit(config: AuditConfig, *, progress: Optional[bool] = None) -> AuditRun:
    """Audit ``config.model`` on ``config.dataset``; writes results.json, points.json and examples.npz."""
    config.validate()
    specs = config.attack_specs()
    attacks = [create_attack(s) for s in specs]
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    data, model, eval_idx = prepare(config, device)
    module = model.module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    bn_before = _bn_fingerprint(module)
    if not model.gradient_access and not config.black_box:  # conversion failed: black-box mode, noted by the loader
        try:
            specs = config.attack_specs(black_box=True)
        except ConfigError:
            raise ModelLoadError(f"{config.model} cannot be converted to PyTorch for gradients, so only score-based "
                                 "attacks can run on it: use --attacks square or a --suite") from None
        attacks = [create_attack(s) for s in specs]
    load_s = time.perf_counter() - t_start

    loader = DataLoader(_Indexed(data.test, eval_idx), batch_size=config.batch_size, shuffle=False,
                        num_workers=0, pin_memory=device.type == "cuda")
    size = model.preprocessing.input_size
    if model.reference_scorer is not None and model.gradient_access:
        from .models.onnx_model import check_parity

        first = next(iter(DataLoader(_Indexed(data.test, eval_idx[:64]), batch_size=64)))
        check_parity(model, adapt_images(first[0].float(), size).to(device), tol=config.parity_tol)

    records = run_cascade(
        module, loader, attacks, n_total=len(eval_idx), num_classes=len(data.class_names), input_size=size,
        device=device, seed=config.seed, independent=config.independent, reference_scorer=model.reference_scorer,
        examples_per_class=config.examples_per_class, amp=config.amp,
        progress=(not config.quiet) if progress is None else progress,
    )
    large_eps = None
    if config.sanity:
        from .sanity import run_large_eps

        large_eps = run_large_eps(module, loader, specs, data.class_names, norm=config.norm, input_size=size,
                                  device=device, seed=config.seed, reference_scorer=model.reference_scorer)
    if _bn_fingerprint(module) != bn_before:
        raise RuntimeError("BatchNorm statistics changed during the audit; this is a bug, please report it")
    total_s = time.perf_counter() - t_start
    results = build_results(config, specs, data, model, eval_idx, records, device,
                            {"load_s": load_s, "total_s": total_s}, large_eps=large_eps)
    out_dir = Path(config.out) if config.out else default_out_dir(config)
    write_outputs(out_dir, results, records)
    return AuditRun(results, out_dir, records)


def write_outputs(out_dir: Path, results: dict[str, Any], records: PointRecords) -> None:
    """points.json and examples.npz first, results.json last (each atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "points.json", records.to_json(), indent=None)
    if records.examples:
        write_npz(out_dir / "examples.npz", **records.examples)
    else:
        results["files"].pop("examples", None)
    write_json(out_dir / "results.json", results)


def build_results(config: AuditConfig, specs, data: LTDataset, model: LoadedModel, eval_idx: np.ndarray,
                  records: PointRecords, device: torch.device, timings: dict[str, float],
                  large_eps: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Assemble the results.json dict (schema in docs/results_schema.md)."""
    from .attacks import SUITES
    from .sanity import sanity_section

    C = len(data.class_names)
    counts = [int(c) for c in data.train_counts]
    group_of = assign_groups(counts, rule=config.group_rule)
    groups = groups_to_indices(group_of)
    labels = records.label
    clean_acc, clean_k, n_cls = per_class_accuracy(records.clean_correct, labels, C)
    masks = records.robust_masks(config.independent)
    rob = {name: per_class_accuracy(m, labels, C) for name, m in masks.items()}
    broken = records.broken()
    lin = final_linear_of(model)
    norms = lin.weight.detach().float().norm(dim=1).cpu().numpy() if lin is not None and lin.out_features == C else None

    per_class = []
    for c in range(C):
        per_class.append({
            "index": c, "name": data.class_names[c], "train_count": counts[c], "group": group_of[c],
            "n_eval": int(n_cls[c]), "clean_acc": float(clean_acc[c]),
            "clean_ci95": list(wilson_interval(int(clean_k[c]), int(n_cls[c]))),
            "robust_acc": {name: float(r[0][c]) for name, r in rob.items()},
            "robust_ci95": {name: list(wilson_interval(int(r[1][c]), int(n_cls[c]))) for name, r in rob.items()},
            "broken_by": {name: int((broken[a] & (labels == c)).sum()) for a, name in enumerate(records.attack_names)},
            "weight_norm": float(norms[c]) if norms is not None else None,
        })
    n = len(labels)
    summary: dict[str, Any] = {
        "clean": cross_class_summary(clean_acc, int(clean_k.sum()), n, counts, groups),
        "robust": {name: cross_class_summary(r[0], int(r[1].sum()), n, counts, groups) for name, r in rob.items()},
    }
    def gap(s: dict) -> Optional[float]:
        g = s.get("groups") or {}
        return (g["head"] - g["tail"]) if g.get("head") is not None and g.get("tail") is not None else None
    summary["head_tail_gap"] = {"clean": gap(summary["clean"]), "worst_case": gap(summary["robust"]["worst_case"])}
    summary["weight_norm_spearman"] = spearman(norms, rob["worst_case"][0]) if norms is not None else None
    any_broken = broken.any(0)
    first_attack = np.where(any_broken, broken.argmax(0), 0)
    adv_pred = records.pred[first_attack, np.arange(n)] if n else np.zeros(0, np.int64)
    summary["confusion"] = adversarial_confusion(labels, adv_pred, any_broken, C)

    sanity, sanity_warnings = sanity_section(records, specs, data.class_names, large_eps)
    warnings = (list(model.info.get("warnings", [])) + records.warnings + records.sanity_warnings(config.independent)
                + sanity_warnings)
    clean_overall = summary["clean"]["overall"] or 0
    wc = summary["robust"]["worst_case"]["overall"]
    if wc is not None and clean_overall > 0 and wc == clean_overall and config.eps > 0 and sum(records.attacked) > 20:
        warnings.append("no attack broke a single point: check that --eps matches the pixel scale [0, 1] "
                        "and that the model returns logits")
    for w in warnings:
        log.warning("%s", w)
    attack_s = {name: records.attack_seconds[a] for a, name in enumerate(records.attack_names)}
    work = records.clean_seconds + sum(records.attack_seconds)
    model_desc = model.describe()
    if model.reference_scorer is not None and model_desc.get("parity") is not None:
        model_desc["parity"] = dict(model_desc["parity"], adversarial_rescored=records.rescored,
                                    adversarial_rejected=records.rescore_disagreed,
                                    survivors_broken=int(sum(records.survivors_broken)))
    eps_text = config.eps_text
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "tailaudit", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_desc,
        "dataset": {
            "name": data.name, "root": data.info.get("root"), "imbalance": config.imbalance,
            "classes": list(data.class_names), "train_counts": counts, "groups": groups,
            "group_rule": config.group_rule, "n_eval": n, "n_per_class": config.n_per_class,
            "test_size": len(data.test_labels),
            "eval_indices_sha256": hashlib.sha256(np.asarray(eval_idx, dtype=np.int64).tobytes()).hexdigest(),
            "info": data.info,
        },
        "threat_model": {"norm": config.norm, "eps": config.eps, "eps_text": eps_text},
        "attacks": [s.to_dict() for s in specs],
        "suite": config.suite_name,
        "suite_note": SUITES.get(config.suite).note if config.attacks is None else None,
        "mode_label": "white-box" if model.gradient_access else "black-box (upper bound)",
        "verdict_runtime": records.verified_by,
        "sanity": sanity,
        "mode": "independent" if config.independent else "cascade",
        "seed": config.seed,
        "subset_seed": config.subset_seed,
        "config": config.to_dict(),
        "environment": environment(device),
        "timings": {
            "load_s": timings["load_s"], "clean_s": records.clean_seconds, "attacks_s": attack_s,
            "total_s": timings["total_s"], "points_per_s": (n / work) if work > 0 else None,
            "attacked_points": {name: records.attacked[a] for a, name in enumerate(records.attack_names)},
        },
        "per_class": per_class,
        "summary": summary,
        "warnings": warnings,
        "files": {"points": "points.json", "examples": "examples.npz"},
    }
