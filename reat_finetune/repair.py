"""``run_repair``: audit, fine-tune on the long-tailed training split, export, audit again, report.

The after-audit reuses the before-audit's settings and evaluation points unchanged (only the
model changes), so the before/after report compares like with like. For an ONNX input the
after-audit scores the exported ONNX file, so onnxruntime has the last word on it as well.
"""
from __future__ import annotations

import copy
import errno
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from audit.run import distributed
from audit.version import __version__
from audit.models import final_linear_of
from audit.phases import (LTDataset, Renderer, RunFiles, check_gate, class_groups, created_now, default_out_dir,
                          environment, fit_images, output_error, prepare, render_into, reusable_results, run_audit,
                          run_folder, start)
from audit.contract.model import AuditResults
from audit.contract.codec import from_json
from audit.contract.repair import (Budget, Environment, Headline, RepairDocument, RepairOutcome, RepairSettings,
                                   Selection, Split, Timings, TrainingLog, Validation)

from .checkpoint import CHECKPOINT_NAME, check_fingerprint, fingerprint, is_disk_full, labels_digest, load_checkpoint
from .config import RepairConfig
from .ddp import check_global_batch, check_world_size
from .errors import RepairError
from .export import ExportPlan, export_repaired, keep_input, preflight_export, untrained_note
from .outcome import decide
from .significance import paired_tests, read_points
from .features import build_feature_model
from .losses import tail_class_weights
from .methods import get_method
from .adapt import plan_search
from .advice import next_steps
from .budget import resolve_budget
from .resume_state import RunShape, check_fits
from .selection import plan, selection_size_warning
from .selection_data import selection_data
from .train import BatchSource, TrainHooks, TrainSetup, fine_tune, make_optimizer, resolve_sampler, training_log

log = logging.getLogger(__name__)

# What a repair writes into its folder; a finished set is replaced only when a new run has finished
REPAIR_FILES = ("before", "after", "training_log.json", CHECKPOINT_NAME, "repair.json", "repaired.onnx",
                "repaired.safetensors")

PROBE = 64


@dataclass
class RepairRun:
    """What :func:`run_repair` returns: both audits, the typed ``repair.json`` and ``training_log.json``, and where
    everything went."""

    out_dir: Path
    before: AuditResults
    after: AuditResults
    log: TrainingLog  # training_log.json (audit/contract/repair.py)
    model_path: Path
    best_epoch: int
    repair: RepairDocument  # repair.json (audit/contract/repair.py)
    reports: dict[str, Path] = field(default_factory=dict)
    module: Optional[torch.nn.Module] = None  # an nn.Module's repair: the repaired copy (the file's weights loaded)

    @property
    def outcome(self) -> RepairOutcome:
        """The repair's verdict (``repair.json`` → ``outcome``): ``code``, ``label``, ``headline``, ``reasons``,
        ``actions``, ``clean_kept`` and the changes, and ``tests`` (McNemar's exact tests: ``worst_case``, ``tail``,
        ``clean``, each with ``gained``, ``lost``, ``p_value``, ``significant``) with ``significance``, the tests
        in words."""
        assert self.repair.outcome is not None  # every run_repair records one
        return self.repair.outcome

    @property
    def improved(self) -> bool:
        """True only when the worst-case gain is significant and the clean accuracy kept (``outcome.code``)."""
        return self.outcome.improved

    @property
    def summary(self) -> dict[str, Any]:
        """``repair.json`` as the JSON it was written as (a new dict each time; :attr:`repair` is the typed form)."""
        return self.repair.to_json()

    @property
    def training_log(self) -> dict[str, Any]:
        """``training_log.json`` as the JSON it was written as (:attr:`log` is the typed form)."""
        return self.log.to_json()

    @property
    def before_path(self) -> Path:
        return self.out_dir / "before" / "results.json"

    @property
    def after_path(self) -> Path:
        return self.out_dir / "after" / "results.json"


def _probe_images(data: LTDataset, indices: np.ndarray, n: int, size: tuple[int, int, int]) -> torch.Tensor:
    xs = [data.train[int(i)][0] for i in indices[:n]] if data.train is not None else []
    if not xs:
        xs = [data.test[i][0] for i in range(min(n, len(data.test)))]  # type: ignore[arg-type]
    return fit_images(torch.stack(xs).float(), size)


def _eval_images(data: LTDataset, n: int, size: tuple[int, int, int]) -> torch.Tensor:
    xs = [data.test[i][0] for i in range(min(n, len(data.test)))]  # type: ignore[arg-type]
    return fit_images(torch.stack(xs).float(), size)


def _training_copy(loaded: Any, method: Any, config: RepairConfig, counts: list[int], batches: list[torch.Tensor],
                   groups: list[Optional[str]],
                   ) -> tuple[torch.nn.Module, Optional[torch.nn.Module], torch.optim.Optimizer]:
    """Copies of the model, method and optimizer built as the trainer builds them, for the resume check:
    (net, learnable guide or None, optimizer)."""
    memo: dict[int, Any] = {}
    pm = copy.deepcopy(loaded.module, memo)
    m = copy.deepcopy(method)
    linear = final_linear_of(loaded)
    m.prepare_model(pm, memo.get(id(linear)) if linear is not None else None, batches, groups)
    m.configure(config, counts)
    guide = m.make_guide(pm)
    opt = make_optimizer(m, pm.net, guide, config)
    return pm.net, guide if len(opt.param_groups) > 1 else None, opt


def _headline(res: AuditResults) -> Headline:
    """The before/after figures repair.json records (its own file format, docs/results_schema.md)."""
    clean, wc = res.summary.clean, res.worst_case
    return Headline(clean=clean.overall, clean_balanced=clean.mean, robust_worst_case=wc.overall,
                    robust_balanced=wc.mean, robust_groups=wc.groups, clean_groups=clean.groups,
                    worst_class=wc.worst_class, worst_class_robust=wc.worst)


@distributed.reports_failure
def run_repair(config: RepairConfig, *, hooks: Optional[TrainHooks] = None,
               progress: Optional[bool] = None, render: Optional[Renderer] = None) -> RepairRun:
    """Audit ``config.audit.model``, fine-tune it with ``config.method``, export it, audit it again, report.

    Outputs in ``config.out`` (default: the --resume folder, else runs/<model>-<dataset>-repair-<time>):
    before/results.json, after/results.json, repaired.onnx or repaired.safetensors,
    training_log.json, checkpoint.pt, repair.json and report.html/.pdf (drawn by ``render``, which the
    application layer, ``tailaudit.run_repair``, hands in).
    """
    try:
        return _run_repair(config, hooks=hooks, progress=progress, render=render)
    except OSError as exc:
        if is_disk_full(exc):
            raise RepairError(f"disk full ({exc.filename or 'writing outputs'}); the last checkpoint in the output "
                              "folder is intact: free some space and continue with --resume") from exc
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise output_error(exc, exc.filename or config.out or "the output folder") from exc
        raise


def _run_repair(config: RepairConfig, *, hooks: Optional[TrainHooks], progress: Optional[bool],
                render: Optional[Renderer]) -> RepairRun:
    config.validate()
    if (config.audit.mean is None) != (config.audit.std is None):
        raise RepairError("--mean and --std go together; pass both (comma-separated, one value per channel)")
    show = not (config.quiet or config.audit.quiet) if progress is None else progress  # either quiet silences it
    t_start = time.perf_counter()
    device = start(config.audit.device, config.audit.threads, config.seed,
                   settings=config.to_dict())  # [distributed] every rank runs rank 0's flags
    resume_state = load_checkpoint(Path(config.resume)) if config.resume else None
    check_world_size(resume_state, str(config.resume))
    check_global_batch(config.batch_size)
    if config.out:
        out = Path(config.out)
    elif config.resume:
        out = Path(config.resume)
    else:
        out = default_out_dir(config.audit.model_name, config.audit.dataset_name, "repair")
    out = Path(distributed.broadcast_from_main(str(out)))  # [distributed] rank 0's time stamp
    # rank 0: created, probed, locked; a finished run in the folder stays intact until this one has finished
    with run_folder(out, REPAIR_FILES, config.formats, keep_previous=True, resume=resume_state is not None) as made:
        return _repair_into(made or out, config, hooks, show, t_start, resume_state, device, render)


def _repair_into(out: Path, config: RepairConfig, hooks: Optional[TrainHooks], show: bool, t_start: float,
                 resume_state: Optional[dict[str, Any]], device: torch.device,
                 render: Optional[Renderer]) -> RepairRun:
    # -- load and check everything before any long work ----------------------------------
    data, loaded, eval_idx = prepare(config.audit, device)  # loaded once: the before-audit reuses it
    if data.train is None or data.train_labels is None or len(data.train_labels) == 0:
        raise RepairError(f"dataset {data.name} has no training images; repair fine-tunes on the long-tailed "
                          "training split: give --data-root with train/<class>/ folders (an evaluation folder "
                          "plus --class-counts is enough for an audit, not for a repair)")
    method = get_method(config.method, config)  # its Params from the config, before any hook
    penalty = config.resolved_penalty(method.default_penalty) if method.needs_features else "off"
    C = len(data.class_names)
    labels = np.asarray(data.train_labels, dtype=np.int64)
    train_idx = np.arange(len(labels), dtype=np.int64)  # every training image trains; selection is on unseen ones
    size = tuple(loaded.preprocessing.input_size)
    sel = selection_data(data, eval_idx, config, size)
    eval_idx, val_idx = sel.audit_idx, sel.idx  # the audits report the points selection never sees
    split_counts = [int(c) for c in np.bincount(labels[train_idx], minlength=C)]
    budget = resolve_budget(len(train_idx), int(config.batch_size), epochs=config.epochs,
                            steps_total=config.steps_total, evaluations=int(config.evaluations))
    search = plan_search(config.lr, budget.steps_total)
    budget = budget.after_search(search.steps, int(config.evaluations))
    vplan = plan(sel.labels, val_idx, data.class_names, sel.source)
    small = selection_size_warning(vplan.per_class_counts, data.class_names, config.min_clean_kept, sel.source)
    sampler, sampler_rule = resolve_sampler(config.sampler, split_counts)
    if config.sampler == "auto" and method.preferred_sampler:
        sampler = method.preferred_sampler
        sampler_rule = f"auto: {method.name} trains on {method.preferred_sampler} batches"
    guard_idx = train_idx[np.isin(labels[train_idx], vplan.missing)]
    fm, feature_warnings = build_feature_model(loaded, _probe_images(data, train_idx, 8, size).to(device),
                                               explicit_penalty=config.tail_penalty, need_features=penalty != "off")
    untrained = untrained_note(loaded)  # ONNX: every weight in the file trains (audit.models.onnx_weights)
    # said once every up-front check has passed, so a refusal stays one stderr line
    late_warnings = [w for w in (untrained, small) if w]
    feature_warnings.extend(late_warnings)
    groups = class_groups(list(data.train_counts), rule=config.audit.group_rule)  # no tail when balanced
    if config.audit.fail_under:  # the gate judges the after-audit; refuse impossible conditions now
        check_gate(config.audit, groups)
    fp = fingerprint(
        model={"sha256": loaded.sha256 or f"random-init:{loaded.spec}", "spec": loaded.spec, "format": loaded.format,
               "arch": loaded.arch},
        dataset={"name": data.name, "classes": list(data.class_names),
                 "train_counts": [int(c) for c in data.train_counts],
                 "imbalance": config.audit.imbalance, "n_train_total": int(len(labels)),
                 "train_labels_sha256": labels_digest(labels), "image_shape": list(data.image_shape)},
        training={**config.training_dict(), "budget_steps": budget.steps_total,
                  "steps_per_epoch": budget.steps_per_epoch},
    )
    if resume_state is not None:  # the whole checkpoint against this model and run, before anything is written
        check_fingerprint(resume_state["fingerprint"], fp, Path(config.resume))  # type: ignore[arg-type]
        probe = [_probe_images(data, train_idx, 256, size)]
        check_fits(resume_state, RunShape(C, budget.steps_total, budget.steps_per_epoch, budget.epochs,
                                          lambda: _training_copy(loaded, method, config, split_counts, probe, groups)),
                   str(config.resume))
    method.check_model(final_linear_of(loaded), groups)  # a method's refusal, before any audit
    export_plan = _preflight(loaded, data, config, device)  # proves the export before any attack or training step
    for warning in late_warnings:
        log.warning("%s", warning)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)

    # -- before (the model as loaded, before any method changes it) ----------------------------
    before_cfg = replace(config.audit, out=str(out / "before"), quiet=config.quiet or config.audit.quiet,
                         fail_under=None)
    before = reusable_results(out / "before" / "results.json", before_cfg) if resume_state is not None else None
    before = distributed.broadcast_from_main(before)  # [distributed] rank 0 decides
    if before is None:
        log.info("auditing the input model (before)")
        before = run_audit(before_cfg, progress=show, prepared=(data, loaded, eval_idx)).results
    else:
        log.info("reusing the before-audit in %s", out / "before")
    method.prepare_model(loaded.module, final_linear_of(loaded),  # hook: a trainable head (MiSLAS, ResLT)
                         [_probe_images(data, train_idx, 256, size).to(device)], groups)

    # -- fine-tune ---------------------------------------------------------------------------
    setup = TrainSetup(
        fm=fm, method=method,
        train=BatchSource(data.train, train_idx, labels, data.image_shape, workers=config.audit.workers),
        val=BatchSource(sel.dataset, val_idx, sel.labels, sel.image_shape, workers=config.audit.workers),
        train_counts=split_counts,
        is_tail=torch.tensor([g == "tail" for g in groups], dtype=torch.bool),
        v=tail_class_weights(split_counts), device=device, input_size=size, num_classes=C,
        fingerprint=fp, penalty=penalty, feature_source=fm.source if penalty != "off" else "unused",
        budget=budget, plan=vplan,
        guard=BatchSource(data.train, guard_idx, labels, data.image_shape) if vplan.missing else None,
        prior_counts=[1.0] * C if sampler == "class-balanced" else None, sampler=sampler, sampler_rule=sampler_rule,
        search=search,
    )
    log.info("fine-tuning with %s (tail penalty %s, features: %s, %s sampling) on %d images for %d steps (%s), "
             "selecting on %d unseen images (%s)%s", method.name, penalty, setup.feature_source, sampler,
             len(train_idx), budget.steps_total, budget.rule, len(val_idx), sel.words,
             f" + a guard on {len(guard_idx)} training images of {len(vplan.missing)} class(es) without validation "
             "images" if vplan.missing else "")
    result = fine_tune(setup, config, out_dir=out, resume=resume_state, hooks=hooks, progress=show)
    fm.remove()
    loaded.module.net.load_state_dict(result.best_state)
    method.finalize(loaded.module.net)  # hook: fold a trained head back into the input's architecture
    loaded.module.eval()
    if config.shift_bn and result.best_step:
        result.warnings.append(_shift_bn(loaded, setup, config, result))

    # -- export + after ------------------------------------------------------------------------
    input_kept = result.best_step == 0
    exported = None
    if distributed.is_main():  # [distributed] rank 0 exports; the others audit its file
        exported = keep_input(loaded, out) if input_kept else None
        exported = exported or export_repaired(loaded, out, _eval_images(data, PROBE, size), export_plan,
                                               tol=config.audit.parity_tol, device=device)
    distributed.wait_for_peers("exported")
    exported = distributed.broadcast_from_main(exported)
    after_cfg = replace(before_cfg, model=exported.audit_model, checkpoint=exported.audit_checkpoint,
                        out=str(out / "after"), fail_under=config.audit.fail_under)
    log.info("auditing the repaired model (after)")
    after_data, after_model, _ = prepare(after_cfg, device)
    after_run = run_audit(after_cfg, progress=show, prepared=(after_data, after_model, eval_idx))  # the same points
    after = after_run.results

    # -- log, summary, report ------------------------------------------------------------------
    tlog = training_log(result.state, setup, config, note=result.best_note)
    tlog.warnings = feature_warnings + result.warnings
    outcome = _outcome(before, after, out, config, result, input_kept, exported.path.name, method.name,
                       budget.steps_total + budget.search_steps, tlog)
    split = {"n_train": len(train_idx), "n_val": len(val_idx), "n_guard": int(len(guard_idx)),
             "n_audit": int(len(eval_idx)), "selection_source": sel.source, "selection_root": sel.root,
             "train_counts": split_counts, "val_counts": vplan.per_class_counts,
             "audit_counts": [int(c) for c in np.bincount(np.asarray(data.test_labels)[eval_idx], minlength=C)],
             "selection_indices": [int(i) for i in val_idx] if sel.source == "evaluation" else None,
             "seed": config.seed}
    summary = RepairDocument(
        tool={"name": "tailaudit", "version": __version__}, created=created_now(),
        config=RepairSettings(config.to_dict()),
        method=method.name, description=method.description, tail_penalty=penalty, feature_source=setup.feature_source,
        best_epoch=result.best_epoch, best_step=result.best_step, epochs=budget.epochs,
        lr=tlog.lr, lr_search=tlog.lr_search, divergences=tlog.divergences,
        sampler=sampler, sampler_rule=sampler_rule, budget=tlog.budget, selection=tlog.selection,
        model={"input": loaded.spec, "input_sha256": loaded.sha256, "repaired": str(exported.path),
               "format": exported.format, "parity": exported.parity, "export": export_plan.to_dict(),
               "input_kept": input_kept},
        split=from_json(Split, split, "split"), before=_headline(before), after=_headline(after), outcome=outcome,
        timings=Timings(fine_tune_s=result.seconds, fine_tune_session_s=result.session_seconds,
                        total_s=time.perf_counter() - t_start, resumed=resume_state is not None),
        environment=Environment({**environment(device), **distributed.describe()}),
        warnings=tlog.warnings,
        files={"before": "before/results.json", "after": "after/results.json", "training_log": "training_log.json",
               "checkpoint": CHECKPOINT_NAME, "model": exported.path.name})
    reports: dict[str, Path] = {}
    if distributed.is_main():  # [distributed] rank 0 writes
        reports = _write_top_level(out, config, tlog, summary, after_run.results_path, exported.path.name, t_start,
                                   render)
    return RepairRun(out_dir=out, before=before, after=after, log=tlog, model_path=exported.path,
                     best_epoch=result.best_epoch, repair=summary, reports=reports,
                     module=exported.audit_model if isinstance(exported.audit_model, torch.nn.Module) else None)


def _outcome(before: AuditResults, after: AuditResults, out: Path, config: RepairConfig, result: Any,
             input_kept: bool, model_file: str, method: str, steps: int, tlog: TrainingLog) -> RepairOutcome:
    """The repair's verdict: headline figures plus McNemar's tests on the points both audits scored, and advice
    read off the training log (advice.next_steps) for when it did not measurably help."""
    pb, pa = read_points(out / "before"), read_points(out / "after")
    tests = paired_tests(pb, pa, before.group_of("tail")) if pb is not None and pa is not None else None
    names = before.class_names
    changes = [(names[i], a.clean_acc - b.clean_acc) for i, (b, a) in enumerate(zip(before.per_class, after.per_class))
               if a.clean_acc is not None and b.clean_acc is not None]
    return decide(_headline(before), _headline(after), input_kept=input_kept,
                  after_meaningful=after.verdict is None or after.verdict.meaningful,
                  min_clean_kept=config.min_clean_kept, tests=tests, kept_note=result.best_note,
                  model_file=model_file, method=method, budget=f"{steps} steps", class_clean_changes=changes,
                  actions_if_not=_advice(tlog, method, steps, config.eps_schedule))


def _advice(tlog: TrainingLog, method: str, steps: int, eps_schedule: str) -> list[str]:
    sel = tlog.selection or Selection()
    val = sel.validation or Validation()
    return next_steps(tlog, method=method, lr=tlog.lr, steps=steps,
                      selection_counts=val.per_class_counts or [], source=str(val.source),
                      floor=(sel.floors or {}).get("clean"), eps_schedule=eps_schedule)


def _shift_bn(loaded: Any, setup: TrainSetup, config: RepairConfig, result: Any) -> str:
    """MiSLAS's shifted BatchNorm on the kept model, undone unless validation stays as good; returns what happened."""
    from .heads import shift_batchnorm
    from .selection import ineligible_because, score
    from .train import epoch_order, evaluate

    net = loaded.module.net
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    order = epoch_order(setup.train.y, "class-balanced", torch.Generator().manual_seed(config.seed))
    order = order[: min(len(order), 20 * int(config.batch_size))]
    batches = (fit_images(setup.train.batch(order[i:i + int(config.batch_size)])[0].to(setup.device).float(),
                            setup.input_size) for i in range(0, len(order), int(config.batch_size)))
    n = shift_batchnorm(loaded.module, batches)
    loaded.module.eval()
    v = evaluate(loaded.module, setup.val, config.validation_specs(), device=setup.device, input_size=setup.input_size,
                 num_classes=setup.num_classes, seed=config.seed)
    kept = next((e for e in result.log if e.get("step") == result.best_step), {})
    floors = result.state.floors if result.state is not None else None
    worse = ineligible_because(v, floors) or (score(v) is not None and score(kept) is not None
                                              and score(v) < score(kept) - 1e-12)
    if not n or worse:
        net.load_state_dict(saved)
        why = "no BatchNorm layer" if not n else "validation got worse"
        log.warning("--shift-bn: not applied (%s)", why)
        return f"--shift-bn was not applied ({why})"
    log.info("--shift-bn: %d BatchNorm layers re-estimated on %d class-balanced images", n, len(order))
    return f"--shift-bn: {n} BatchNorm layers re-estimated on {len(order)} class-balanced training images"


def _preflight(loaded: Any, data: LTDataset, config: RepairConfig, device: torch.device) -> ExportPlan:
    """Export the unmodified model as the repaired one will be (rank 0), before any attack or training step."""
    plan = None
    if distributed.is_main():
        size = tuple(loaded.preprocessing.input_size)
        plan = preflight_export(loaded, _eval_images(data, PROBE, size), tol=config.audit.parity_tol, device=device)
    return distributed.broadcast_from_main(plan)  # [distributed] a refusal on rank 0 fails every rank


def _write_top_level(out: Path, config: RepairConfig, tlog: TrainingLog, summary: RepairDocument,
                     after_path: Path, model_name: str, t_start: float,
                     render: Optional[Renderer]) -> dict[str, Path]:
    """training_log.json, the before/after report and repair.json as one set (before/ and after/ have their own)."""
    reports: dict[str, Path] = {}
    with RunFiles(out) as files:
        files.add_json("training_log.json", tlog.to_json())
        files.own([CHECKPOINT_NAME, model_name])
        reports = render_into(files, render, out / "before" / "results.json", config.formats, compare=after_path,
                              training_log=tlog, repair=summary, basename="report")
        summary.files.update({k: p.name for k, p in reports.items()})
        summary.timings.total_s = time.perf_counter() - t_start
        files.add_json("repair.json", summary.to_json())
        files.commit()
    return reports


def format_comparison(run: RepairRun) -> str:
    """A small before/after table for the terminal."""
    s = run.repair
    b, a = s.before or Headline(), s.after or Headline()

    def pct(v: Any) -> str:
        return "   n/a" if v is None else f"{100 * v:5.1f}%"

    rows = [("clean accuracy", b.clean, a.clean), ("worst-case robust", b.robust_worst_case, a.robust_worst_case)]
    for g in ("head", "medium", "tail"):  # a balanced set has no groups: no rows rather than n/a rows
        if b.group(g) is not None or a.group(g) is not None:
            rows.append((f"  {g} robust", b.group(g), a.group(g)))
    rows.append(("worst class robust", b.worst_class_robust, a.worst_class_robust))
    o = s.outcome
    lines = [f"repair outcome: {o.headline if o else '?'}"] + ([o.significance] if o and o.significance else []) + ["",
             f"{'':<22}{'before':>8}{'after':>8}{'change':>9}"]
    for name, x, y in rows:
        d = "" if x is None or y is None else f"{100 * (y - x):+8.1f}"
        lines.append(f"{name:<22}{pct(x):>8}{pct(y):>8}{d:>9}")
    bud = s.budget or Budget()
    search = bud.search_steps or 0
    kept = ("no fine-tuned checkpoint qualified: the input model was returned" if s.best_step == 0 else
            f"kept step {s.best_step} of {bud.steps_total} by balanced worst-case robust accuracy on "
            f"{s.split.n_val if s.split.n_val is not None else 'the'} selection images")
    lines.append(f"method {s.method} (tail penalty {s.tail_penalty}, {s.sampler} sampling, lr {s.lr:g}); "
                 f"budget {bud.steps_total + search} steps ({bud.source}"
                 + (f", {search} of them searching the learning rate" if search else "")
                 + f"); {kept}; "
                 f"fine-tuning {s.timings.fine_tune_s:.1f} s, total {s.timings.total_s:.0f} s")
    missing = s.selection.validation.missing_classes if s.selection and s.selection.validation else []
    if missing:
        lines.append(f"classes without selection images (guarded on their training images): {', '.join(missing)}")
    return "\n".join(lines)
