"""``run_audit``: load data and model, run the cascade, compute metrics, write results."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .run import distributed
from .attacks import create_attack
from .calibration import confidence_pass
from .config import AuditConfig
from .curve import run_curve
from .data import LTDataset, class_groups, groups_to_indices, load_dataset, stratified_subset
from .run.engine import Evaluator, adapt_images
from .run.records import PointRecords
from .data.loading import Indexed as _Indexed, loader_options
from .errors import ConfigError, ModelLoadError
from .exports import CSV_NAME, MD_NAME, per_class_csv, summary_markdown
from .checks.gate import check_available, evaluate_gate
from .checks.labels import read_label_order
from .models import LoadedModel, check_finite_logits, load_model
from .run.lifecycle import Renderer, check_ranks_agree, default_out_dir, output_folder, render_into, start
from .run.outputs import AUDIT_FILES, RunFiles, with_reports
from .checks.precheck import stop_if_ungradable
from .bounds import MAX_JSON_BYTES
from .contract.files import DENSE_CLASSES_MAX, compact_confusions, null_infinities, write_text
from .contract.model import AuditResults, CurvePoint
from .contract.schema import check_written, read_results
from .contract.codec import from_json
from .checks.verdict import compute_verdict
from .assemble import build_results
from .corruptions.run import attach_corruptions, prepare_points, run_phase

log = logging.getLogger(__name__)

Prepared = tuple[LTDataset, LoadedModel, np.ndarray]  # data, model and evaluation points, checked to fit


@dataclass
class AuditRun:
    """What :func:`run_audit` returns: the typed results and where they were written."""

    results: AuditResults
    out_dir: Path
    records: PointRecords

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.json"


def _bn_fingerprint(module: torch.nn.Module) -> float:
    tot = 0.0
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            tot += float(m.running_mean.double().sum() + m.running_var.double().sum())
    return tot


def _points_digest(data: LTDataset, eval_idx: np.ndarray) -> str:
    """Which points of which data: the evaluation indices, their labels and the class names."""
    h = hashlib.sha256(np.asarray(eval_idx, np.int64).tobytes())
    h.update(np.asarray(data.test_labels, np.int64)[eval_idx].tobytes())
    h.update("\n".join(data.class_names).encode())
    return h.hexdigest()


def _eval_indices(data: LTDataset, config: AuditConfig) -> np.ndarray:
    labels = np.asarray(data.test_labels)
    if config.n_per_class:
        return np.asarray(stratified_subset(labels, config.n_per_class, config.subset_seed), dtype=np.int64)
    return np.arange(len(labels), dtype=np.int64)


def prepare(config: AuditConfig, device: torch.device) -> Prepared:
    """Load the dataset and the model and check they fit each other."""
    data = load_dataset(config.dataset, imbalance=config.imbalance, data_root=config.data_root,
                        class_counts=config.class_counts, download=config.download)
    num_classes = len(data.class_names)
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ConfigError(f"--num-classes {config.num_classes} but dataset {config.dataset_name} has {num_classes} "
                          "classes")
    model = load_model(config.model, num_classes=num_classes, checkpoint=config.checkpoint, mean=config.mean,
                       pretrained=config.weights == "pretrained",
                       std=config.std, input_size=config.input_size, data_size=tuple(data.image_shape),
                       device=device, allow_large_input=config.allow_large_input, black_box=config.black_box)
    if model.num_classes != num_classes:
        raise ModelLoadError(f"the model has {model.num_classes} outputs but dataset {config.dataset_name} has "
                             f"{num_classes} classes; audit it on the dataset it was trained for")
    if config.labels:
        model.apply_output_order(read_label_order(config.labels, data.class_names))
    data.info.setdefault("native_shape", [int(v) for v in data.image_shape])  # before fit_to_model (input check)
    data.fit_to_model(model.preprocessing.input_size)
    eval_idx = _eval_indices(data, config)
    if len(eval_idx):
        first = torch.stack([data.test[int(i)][0] for i in eval_idx[:8]]).float()
        check_finite_logits(model, adapt_images(first, model.preprocessing.input_size).to(device))
    return data, model, eval_idx


@distributed.reports_failure
def run_audit(config: AuditConfig, *, progress: Optional[bool] = None, formats: Sequence[str] = (),
              render: Optional[Renderer] = None, prepared: Optional[Prepared] = None) -> AuditRun:
    """Audit ``config.model`` on ``config.dataset``; writes results.json, points.json, examples.npz
    and the ``formats`` reports (html, pdf, drawn by ``render``) as one set into the output folder.

    ``prepared`` is a (data, model, points) triple from :func:`prepare` for a caller that has
    already loaded them (repair's before-audit); the application layer (``tailaudit.run_audit``)
    hands in the renderer.

    Under torchrun every rank audits a contiguous block of the points and rank 0 joins the
    records, computes the metrics and writes every output (docs/scaling.md); every rank returns
    rank 0's results (``records`` is the whole run on rank 0, the rank's own shard elsewhere).
    """
    config.validate()
    t_start = time.perf_counter()
    device = start(config.device, config.threads, config.seed)
    specs = config.attack_specs()
    attacks = [create_attack(s) for s in specs]
    check_ranks_agree(config.to_dict(), "flags")  # [distributed] before anything is created
    out = config.out if config.out else default_out_dir(config.model_name, config.dataset_name)
    with output_folder(out, with_reports(AUDIT_FILES, formats)) as out_dir:
        data, model, eval_idx = prepared if prepared is not None else prepare(config, device)
        check_ranks_agree({"model sha256": model.sha256, "evaluation points": _points_digest(data, eval_idx)},
                          "model and data")
        return _audit_into(out_dir, config, specs, attacks, device, t_start, progress,
                           lambda files, results: render_into(files, render, results, formats),
                           (data, model, eval_idx))


def _audit_into(out_dir: Optional[Path], config: AuditConfig, specs: list, attacks: list, device: torch.device,
                t_start: float, progress: Optional[bool], reports: Callable[[RunFiles, Path], Any],
                prepared: Prepared) -> AuditRun:
    data, model, eval_idx = prepared
    gate = config.gate_conditions()
    if gate:
        check_available(gate, class_groups(list(data.train_counts), config.group_rule))
    if config.eps_curve and distributed.current() is not None:
        raise ConfigError("--eps with several budgets (a robustness curve) runs in one process; launch it without "
                          "torchrun, or audit one budget per run")
    module = model.module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    bn_before = _bn_fingerprint(module)
    # conversion failed: black-box mode, noted by the loader
    if not model.gradient_access and not config.black_box and not config.attack_free:
        try:
            specs = config.attack_specs(black_box=True)
        except ConfigError:
            raise ModelLoadError(f"{config.model_name} cannot be converted to PyTorch for gradients, so only "
                                 "score-based attacks can run on it: use --attacks square or a --suite") from None
        attacks = [create_attack(s) for s in specs]
    load_s = time.perf_counter() - t_start

    size = model.preprocessing.input_size
    evaluator = Evaluator(module, len(data.class_names), size, device, amp=config.amp,
                          reference_scorer=model.reference_scorer)
    shard_idx = evaluator.shard(eval_idx)  # [distributed] this rank's points (all in a plain run)
    loader = DataLoader(_Indexed(data.test, shard_idx), batch_size=config.batch_size, shuffle=False,
                        **loader_options(config.workers, device))
    if model.reference_scorer is not None and model.gradient_access:
        from .models.onnx_model import check_parity

        later_rank = evaluator.dist is not None and not evaluator.dist.is_main
        check_idx = shard_idx[:64] if later_rank else eval_idx[:64]  # rank 0 checks what a plain run checks
        for first in DataLoader(_Indexed(data.test, check_idx), batch_size=64):  # none for an empty shard
            check_parity(model, adapt_images(first[0].float(), size).to(device), tol=config.parity_tol)

    corrupted = prepare_points(config, data, shard_idx, size)  # --corruptions: checked before any attack
    show = (not config.quiet) if progress is None else progress
    if not config.force:  # a model that cannot be graded stops here, before the first attack (audit/checks/precheck.py)
        stop_if_ungradable(evaluator, model, data, eval_idx, dataset_name=config.dataset_name,
                           batch_size=config.batch_size, workers=config.workers)
    bar = distributed.GlobalProgress(len(eval_idx), enabled=show) if evaluator.dist else None  # [distributed]
    curve = None
    if config.eps_curve:
        def cascade(cfg: AuditConfig, indices: np.ndarray) -> PointRecords:
            batches = DataLoader(_Indexed(data.test, indices), batch_size=cfg.batch_size, shuffle=False,
                                 **loader_options(cfg.workers, device))
            return evaluator.cascade(batches, [create_attack(s) for s in cfg.attack_specs()], n_total=len(indices),
                                     seed=cfg.seed, independent=cfg.independent,
                                     examples_per_class=cfg.examples_per_class, progress=show)

        group_idx = groups_to_indices(class_groups([int(c) for c in data.train_counts], config.group_rule))
        records, curve = run_curve(config, eval_idx, cascade, group_idx, len(data.class_names))
    else:
        records = evaluator.cascade(
            loader if bar is None else distributed.counted(loader, bar.add), attacks, n_total=len(shard_idx),
            seed=config.seed, independent=config.independent, examples_per_class=config.examples_per_class,
            progress=show and bar is None)
    large_eps = None
    if config.sanity and distributed.is_main():  # [distributed] rank 0 checks the points a plain run checks
        from .checks.sanity import LARGE_EPS_POINTS, run_large_eps

        first = DataLoader(_Indexed(data.test, eval_idx[:LARGE_EPS_POINTS]), batch_size=config.batch_size,
                           shuffle=False, **loader_options(config.workers, device))
        large_eps = run_large_eps(evaluator, first, specs, data.class_names, norm=config.norm, seed=config.seed)
    # calibration (audit/calibration.py): every rank on its own shard's points, joined with the records below
    records = confidence_pass(evaluator, DataLoader(_Indexed(data.test, records.index), batch_size=config.batch_size,
                                                    shuffle=False, **loader_options(config.workers, device)),
                              records,
                              steps=config.calibration_steps if model.gradient_access and not config.attack_free else 0,
                              norm=config.norm, eps=config.eps)
    corruption_records = (run_phase(config, evaluator, corrupted, n_points=len(eval_idx), progress=show)
                          if corrupted is not None else None)
    bn_after = _bn_fingerprint(module)
    if bn_after != bn_before and not (np.isnan(bn_after) and np.isnan(bn_before)):
        raise RuntimeError("BatchNorm statistics changed during the audit; this is a bug, please report it")
    shard_records = records
    records = evaluator.join(records, examples_per_class=config.examples_per_class,  # [distributed] rank 0: all
                             on_wait=bar.refresh if bar is not None else None)
    if bar is not None:
        bar.close()
    if records is None:  # [distributed] not rank 0: rank 0 writes; wait for it and take its results
        distributed.wait_for_peers("written")
        return AuditRun(distributed.broadcast_from_main(None), Path(distributed.broadcast_from_main(None)),
                        shard_records)
    total_s = time.perf_counter() - t_start
    results = build_results(config, specs, data, model, eval_idx, records, device,
                            {"load_s": load_s, "total_s": total_s}, large_eps=large_eps)
    if curve is not None:
        results.curve = [from_json(CurvePoint, c) for c in curve]
    if corruption_records is not None:
        attach_corruptions(results, config, corruption_records, records, data, size)
    results.verdict = compute_verdict(results)
    if gate:
        results.gate = evaluate_gate(gate, results)
    assert results.environment is not None and out_dir is not None
    results.environment.update(distributed.describe())  # world_size (1 in a plain run)
    _name_files(results, records)
    results, document = _document(results)
    write_outputs(out_dir, results, document, records, reports)
    if distributed.current() is not None:  # [distributed] the other ranks get rank 0's results
        distributed.wait_for_peers("written")
        distributed.broadcast_from_main(results)
        distributed.broadcast_from_main(str(out_dir))
    return AuditRun(results, out_dir, records)


def _name_files(results: AuditResults, records: PointRecords) -> None:
    """``results.files``: the side files this run writes (no examples.npz when no point was broken)."""
    names = dict(results.files or {})
    if not records.examples:
        names.pop("examples", None)
    names.update({"per_class_csv": CSV_NAME, "summary_md": MD_NAME})
    results.files = names


def _document(results: AuditResults) -> tuple[AuditResults, dict[str, Any]]:
    """The results.json document, made once. A figure that overflowed is stored as null with a warning, never a
    crash (JSON has no infinity), and the typed results returned say the same as the file."""
    document = results.to_json()
    compact_confusions(document)  # more than DENSE_CLASSES_MAX classes: sparse matrices (audit/contract/files.py)
    overflowed = null_infinities(document)
    if not overflowed:
        return results, document
    document["warnings"].append(f"{len(overflowed)} figure(s) overflowed to infinity and are stored as null "
                                f"({', '.join(overflowed[:3])}{', …' if len(overflowed) > 3 else ''})")
    return read_results(document), document


def write_outputs(out_dir: Path, results: AuditResults, document: dict[str, Any], records: PointRecords,
                  reports: Optional[Callable[[RunFiles, Path], Any]] = None) -> None:
    """points.json, examples.npz, per_class.csv, summary.md, results.json (``document``, the serialised
    ``results``) and the reports, committed together (audit/run/outputs.py)."""
    with RunFiles(out_dir) as files:
        files.add_json("points.json", records.to_json(), indent=None)
        if records.examples:
            files.add_npz("examples.npz", **records.examples)
        large = len(document["per_class"]) > DENSE_CLASSES_MAX  # compact text, as its matrices are sparse
        files.add_json("results.json", document, check=check_written, indent=None if large else 2,
                       max_bytes=MAX_JSON_BYTES)  # first: the exports read what is checked
        files.add(CSV_NAME, lambda path: write_text(path, per_class_csv(results)))
        files.add(MD_NAME, lambda path: write_text(path, summary_markdown(results)))
        if reports is not None:
            reports(files, files.path("results.json"))
        files.commit()
