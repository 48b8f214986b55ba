"""What a repair did, for the before/after report: method, budget, chosen epoch and its rule, validation
composition, fine-tuning time and device.

Read from ``training_log.json`` and ``repair.json`` (written by ``cli.py repair`` beside ``before/``
and ``after/``); newer runs add ``budget`` and ``selection`` dicts, older ones have a selection
sentence and the split counts only — both render.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from audit.contract.repair import (Budget, Environment, Evaluation, RepairDocument, RepairSettings, Selection, Split,
                                   TrainingLog, Validation)
from audit.contract.schema import load_repair_file, read_repair_document

from .fmt import count, over_255, seconds
from .verdict import quote

LOG = logging.getLogger(__name__)
SIDE_FILES = ("training_log.json", "repair.json")


def read_side_file(path: Path) -> RepairDocument | TrainingLog | None:
    """A repair folder's ``training_log.json`` or ``repair.json``, checked against its schema
    (audit/contract/repair_files.schema.json) and typed; None when absent, :class:`ResultsError` naming the file and the
    field when damaged (remove the file to render without it)."""
    return load_repair_file(path)


def find_repair_files(before_dir: Path, after_dir: Path) -> tuple[TrainingLog | None, RepairDocument | None]:
    """(training log, repair summary) of the repair folder holding both runs, e.g. ``run/before`` and
    ``run/after``; (None, None) when the two results do not share a parent folder."""
    if before_dir.resolve().parent != after_dir.resolve().parent or before_dir.resolve() == after_dir.resolve():
        return None, None
    folder = before_dir.resolve().parent
    log, repair = read_side_file(folder / SIDE_FILES[0]), read_side_file(folder / SIDE_FILES[1])
    return log, repair  # type: ignore[return-value]


def typed_log(log: TrainingLog | Mapping[str, Any] | None) -> TrainingLog | None:
    """A training log as :class:`TrainingLog` (a parsed training_log.json is checked and typed)."""
    return log if log is None or isinstance(log, TrainingLog) else read_repair_document(log, SIDE_FILES[0])


def typed_repair(repair: RepairDocument | Mapping[str, Any] | None) -> RepairDocument | None:
    """A repair summary as :class:`RepairDocument` (a parsed repair.json is checked and typed)."""
    return repair if repair is None or isinstance(repair, RepairDocument) else \
        read_repair_document(repair, SIDE_FILES[1])


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _eps(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "n/a"
    return over_255(x) or f"{x:g}"


def _first(*values: Any) -> Any:
    """The first value that is not None (a field the repair summary or the training log may lack)."""
    return next((v for v in values if v is not None), None)


def _budget(budget: Budget | None, cfg: RepairSettings, done: int) -> str | None:
    if budget is not None and any(v is not None for v in (budget.steps_total, budget.epochs, budget.steps_per_epoch,
                                                          budget.epochs_exact)):
        total, epochs, per = budget.steps_total, budget.epochs, budget.steps_per_epoch
        search = budget.search_steps if isinstance(budget.search_steps, int) else 0
        text = f"{count(total + search)} optimiser steps" if total is not None else ""
        inner = [f"{count(search)} choosing the learning rate, {count(total)} training"] if search and total else []
        exact = _num(budget.epochs_exact)  # 1.36 passes, not the 2 passes started
        if exact is not None or epochs is not None:
            e = exact if exact is not None else _num(epochs)
            inner.append(f"{e:g} epoch{'' if e == 1 else 's'}" if e is not None else f"{epochs} epochs")
        if per is not None:
            inner.append(f"{count(per)} steps per epoch")
        if inner:
            text += (" (" + ", ".join(inner) + ")") if text else ", ".join(inner)
        source = {"auto": "chosen automatically from the training-set size", "flag": "set on the command line"}.get(
            str(budget.source), None)
        return text + (f", {source}" if source else "") if text else None
    epochs = cfg.epochs or done or None
    return f"{epochs} epochs" if epochs else None


def _done_sentence(method: Any, budget: str | None, lr: float | None, sel: Selection, chosen: Any,
                   raw: Budget | None) -> str:
    """'Repaired with reat for 300 optimiser steps (100 epochs) at learning rate 0.05; the checkpoint after
    step 84 of 88 was kept' — the selection rule itself is on the training page, not repeated here."""
    parts = [f"Repaired with {method}" if method else "Repaired"]
    if budget:
        parts.append(f"for {budget.split(', chosen')[0].split(', set on')[0]}")
    if lr is not None:
        parts.append(f"at learning rate {lr:g}")
    sentence = " ".join(parts)
    step = sel.chosen_step
    total = raw.steps_total if raw is not None else None
    if sel.input_kept or step == 0:
        sentence += "; no fine-tuned checkpoint qualified, so the input model was kept unchanged"
    elif isinstance(step, int) and isinstance(total, int):
        sentence += f"; the checkpoint after step {count(step)} of {count(total)} was kept"
    elif chosen is not None:
        sentence += f"; epoch {chosen} was kept"
    return sentence


def _options(cfg: RepairSettings) -> str | None:
    """The ε schedule, class-wise radii, smoothing and LBGAT guide that ran, in words (None: none of them)."""
    out = []
    if cfg.eps_schedule == "warmup":
        out.append("training radius ramped up from 0 over the first 30% of the budget")
    if cfg.eps_per_class:
        out.append("class-wise training radii, larger for rarer classes (RobustLT)")
    if cfg.smoothing == "label-aware":
        out.append(f"label-aware smoothing from {_num(cfg.smoothing_head)} (most common class) to "
                   f"{_num(cfg.smoothing_tail)} (rarest), {cfg.smoothing_shape}")
    if cfg.method == "lbgat":
        out.append(f"{cfg.guide} guide (the input model), KL weight {_num(cfg.lbgat_beta)}")
    return "; ".join(str(o) for o in out) or None


def _selection_note(source: str | None, n_audit: int | None, split: Split) -> str:
    """Where the images that chose the checkpoint came from, in one sentence."""
    return {
        "evaluation": "Selection images used to choose the checkpoint: carved from the evaluation data, so the input "
                      "model never trained on them" + (f"; the audits report the other {count(n_audit)} points"
                                                       if n_audit is not None else "") + ".",
        "val-root": f"Selection images used to choose the checkpoint: your validation folder "
                    f"{split.selection_root or ''} (not the training or evaluation images).",
    }.get(str(source), "Validation split used to choose the epoch (held out of the training set, never the test set).")


def _learning_rate(log: TrainingLog, repair: RepairDocument, epochs: Sequence[Evaluation]) -> tuple[float | None, str]:
    """(learning rate, ", chosen by a 40-step search over 0.2, 0.05" or "")."""
    lr = _first(_num(repair.lr), _num(log.lr), _num(repair.config.lr), _num(epochs[0].lr) if epochs else None)
    search = _first(repair.lr_search, log.lr_search)
    searched = (f", chosen by a {count(search.steps)}-step search over {', '.join(f'{g:g}' for g in search.grid)}"
                if search is not None and search.steps else "")
    return lr, searched


def _device(env: Environment) -> str | None:
    device = env.device_name or env.device
    if device and env.device and env.device_name and env.device != env.device_name:
        device = f"{env.device} ({env.device_name})"
    return device


def _training_attack(cfg: RepairSettings) -> str | None:
    if not (cfg.train_steps or cfg.resolved_train_eps):
        return None
    steps = cfg.train_steps if cfg.train_steps is not None else "?"
    return (f"PGD, {steps} steps, ε = {_eps(_first(cfg.resolved_train_eps, cfg.train_eps))}, "
            f"step {_eps(_first(cfg.resolved_train_step_size, cfg.train_step_size))}")


def repair_view(log: TrainingLog | Mapping[str, Any] | None, repair: RepairDocument | Mapping[str, Any] | None,
                classes: Sequence[str]) -> dict[str, Any] | None:
    """Rows, sentence, validation composition and warnings of the training section; None without either file."""
    log, repair = typed_log(log), typed_repair(repair)
    if log is None and repair is None:
        return None
    log, repair = log or TrainingLog(), repair or RepairDocument()
    cfg, split = repair.config, repair.split
    epochs = log.trained
    method = repair.method or log.method or cfg.method
    penalty = repair.tail_penalty or log.tail_penalty
    raw_budget = _first(repair.budget, log.budget)
    budget = _budget(raw_budget, cfg, len(epochs))

    sel = _first(repair.selection, log.selection) or Selection()
    rule = str(sel.rule) if sel.rule else None
    chosen = _first(sel.chosen_epoch, repair.best_epoch, log.best_epoch)
    validation = sel.validation or Validation()
    val_counts = validation.per_class_counts or split.val_counts
    train_counts = log.train_counts_split or split.train_counts
    missing = list(validation.missing_classes or [])
    if not missing and val_counts and len(val_counts) == len(classes):
        missing = [classes[i] for i, c in enumerate(val_counts) if not c]
    source = validation.source  # None: a repair that selected on held-out training images (older)
    n_audit = split.n_audit
    set_name = "selection" if source else "validation"
    lr, searched = _learning_rate(log, repair, epochs)
    fine_tune = _num(repair.timings.fine_tune_s)
    if fine_tune is None and epochs:
        fine_tune = sum(e.time_s or 0.0 for e in epochs)
    device = _device(repair.environment)
    n_val, n_train = _first(split.n_val, log.n_val), _first(split.n_train, log.n_train)

    rows = [(k, str(v)) for k, v in (
        ("method", f"{method}" + (f" — {repair.description}" if repair.description else "") if method else None),
        ("tail penalty", penalty),
        ("budget", budget),
        ("learning rate", (f"{lr:g}" + searched + (f", {cfg.schedule} schedule" if cfg.schedule else ""))
         if lr is not None else None),
        ("batch size", cfg.batch_size),
        ("training attack", _training_attack(cfg)),
        ("long-tail options", _options(cfg)),
        (f"training / {set_name} images", f"{count(n_train)} / {count(n_val)}" if n_train is not None else None),
        ("audited points", count(n_audit) if n_audit is not None else None),
        ("chosen epoch", chosen),
        ("selection rule", rule),
        ("selection metric", sel.metric),
        ("fine-tuning time", seconds(fine_tune) if fine_tune is not None else None),
        ("device", device),
        ("resumed", "yes" if repair.timings.resumed else None),
    ) if v is not None and v != ""]

    warnings = _missing_warning(missing, set_name, validation.fallback)
    warnings += [str(w) for w in log.warnings or repair.warnings or []]

    composition = []
    if val_counts and len(val_counts) == len(classes):
        composition = [{"name": str(classes[i]), "val": count(c),
                        "train": (count(train_counts[i]) if train_counts and len(train_counts) == len(classes)
                                  else "–"),
                        "missing": not c} for i, c in enumerate(val_counts)]

    sentence = _done_sentence(method, budget, lr, sel, chosen, raw_budget)
    div = log.divergences or repair.divergences
    if div and div[-1].lr_to is not None:
        sentence += (f"; training diverged {len(div)} time{'s' if len(div) > 1 else ''} and went on from the last "
                     f"good state at a lower rate (last {div[-1].lr_to:.3g})")
    if fine_tune is not None:
        sentence += f"; fine-tuning took {seconds(fine_tune)}" + (f" on {device}" if device else "")
    return {"rows": rows, "sentence": sentence + ".", "warnings": warnings, "missing": missing,
            "plain_missing": _plain_missing(missing, source), "selection_note": _selection_note(source, n_audit, split),
            "set_name": set_name, "composition": composition if len(composition) <= 40 else [],
            "composition_note": (f"{len(composition)} classes: {set_name} images per class from "
                                 f"{min(val_counts)} to {max(val_counts)}") if len(composition) > 40 else None,
            "epochs": list(log.epochs)}


def _names(missing: Sequence[str]) -> str:
    return ", ".join(quote(m) for m in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")


def _missing_warning(missing: Sequence[str], set_name: str, fallback: str | None) -> list[str]:
    if not missing:
        return []
    noun = "class has" if len(missing) == 1 else "classes have"
    return [f"{len(missing)} {noun} no images in the {set_name} split ({_names(missing)}): the epoch was chosen "
            "without checking " + ("it" if len(missing) == 1 else "them")
            + (f"; fallback used: {fallback}" if fallback else "") + "."]


def _plain_missing(missing: Sequence[str], source: str | None) -> str | None:
    if not missing:
        return None
    spare = "evaluation images" if source else "training images"
    return (f"{_names(missing)} had too few {spare} to set any aside for checking the repaired model. "
            "For " + ("it" if len(missing) == 1 else "them") + ", the tool checked instead that the "
            "repair did not make their own training images easier to attack than before; read their "
            "figures below with that in mind.")
