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

from audit.contract.schema import load_repair_file

from .fmt import count, over_255, seconds
from .verdict import quote

LOG = logging.getLogger(__name__)
SIDE_FILES = ("training_log.json", "repair.json")


def read_side_file(path: Path) -> dict[str, Any] | None:
    """A repair folder's ``training_log.json`` or ``repair.json``, checked against its schema
    (audit/contract/repair_files.schema.json); None when absent, :class:`ResultsError` naming the file and the
    field when damaged (remove the file to render without it)."""
    return load_repair_file(path)


def find_repair_files(before_dir: Path, after_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(training log, repair summary) of the repair folder holding both runs, e.g. ``run/before`` and
    ``run/after``; (None, None) when the two results do not share a parent folder."""
    if before_dir.resolve().parent != after_dir.resolve().parent or before_dir.resolve() == after_dir.resolve():
        return None, None
    folder = before_dir.resolve().parent
    return read_side_file(folder / SIDE_FILES[0]), read_side_file(folder / SIDE_FILES[1])


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _eps(v: Any) -> str:
    x = _num(v)
    if x is None:
        return "n/a"
    return over_255(x) or f"{x:g}"


def _budget(budget: Mapping[str, Any] | None, cfg: Mapping[str, Any], done: int) -> str | None:
    if budget:
        total, epochs, per = budget.get("steps_total"), budget.get("epochs"), budget.get("steps_per_epoch")
        search = budget.get("search_steps") if isinstance(budget.get("search_steps"), int) else 0
        text = f"{count(total + search)} optimiser steps" if total is not None else ""
        inner = [f"{count(search)} choosing the learning rate, {count(total)} training"] if search and total else []
        exact = _num(budget.get("epochs_exact"))  # 1.36 passes, not the 2 passes started
        if exact is not None or epochs is not None:
            e = exact if exact is not None else _num(epochs)
            inner.append(f"{e:g} epoch{'' if e == 1 else 's'}" if e is not None else f"{epochs} epochs")
        if per is not None:
            inner.append(f"{count(per)} steps per epoch")
        if inner:
            text += (" (" + ", ".join(inner) + ")") if text else ", ".join(inner)
        source = {"auto": "chosen automatically from the training-set size", "flag": "set on the command line"}.get(
            str(budget.get("source")), None)
        return text + (f", {source}" if source else "") if text else None
    epochs = cfg.get("epochs") or done or None
    return f"{epochs} epochs" if epochs else None


def _done_sentence(method: Any, budget: str | None, lr: float | None, sel: Mapping[str, Any], chosen: Any,
                   raw: Any) -> str:
    """'Repaired with reat for 300 optimiser steps (100 epochs) at learning rate 0.05; the checkpoint after
    step 84 of 88 was kept' — the selection rule itself is on the training page, not repeated here."""
    parts = [f"Repaired with {method}" if method else "Repaired"]
    if budget:
        parts.append(f"for {budget.split(', chosen')[0].split(', set on')[0]}")
    if lr is not None:
        parts.append(f"at learning rate {lr:g}")
    sentence = " ".join(parts)
    step = sel.get("chosen_step")
    total = (raw or {}).get("steps_total") if isinstance(raw, Mapping) else None
    if sel.get("input_kept") or step == 0:
        sentence += "; no fine-tuned checkpoint qualified, so the input model was kept unchanged"
    elif isinstance(step, int) and isinstance(total, int):
        sentence += f"; the checkpoint after step {count(step)} of {count(total)} was kept"
    elif chosen is not None:
        sentence += f"; epoch {chosen} was kept"
    return sentence


def _options(cfg: Mapping[str, Any]) -> str | None:
    """The ε schedule, class-wise radii, smoothing and LBGAT guide that ran, in words (None: none of them)."""
    out = []
    if cfg.get("eps_schedule") == "warmup":
        out.append("training radius ramped up from 0 over the first 30% of the budget")
    if cfg.get("eps_per_class") is True:
        out.append("class-wise training radii, larger for rarer classes (RobustLT)")
    if cfg.get("smoothing") == "label-aware":
        out.append(f"label-aware smoothing from {_num(cfg.get('smoothing_head'))} (most common class) to "
                   f"{_num(cfg.get('smoothing_tail'))} (rarest), {cfg.get('smoothing_shape')}")
    if cfg.get("method") == "lbgat":
        out.append(f"{cfg.get('guide')} guide (the input model), KL weight {_num(cfg.get('lbgat_beta'))}")
    return "; ".join(str(o) for o in out) or None


def repair_view(log: Mapping[str, Any] | None, repair: Mapping[str, Any] | None,
                classes: Sequence[str]) -> dict[str, Any] | None:
    """Rows, sentence, validation composition and warnings of the training section; None without either file."""
    if not log and not repair:
        return None
    log, repair = log or {}, repair or {}
    cfg = repair.get("config") or {}
    epochs = [e for e in log.get("epochs") or [] if isinstance(e, Mapping) and (e.get("epoch") or 0) > 0]
    method = repair.get("method") or log.get("method") or cfg.get("method")
    penalty = repair.get("tail_penalty") or log.get("tail_penalty")
    budget = _budget(repair.get("budget") or log.get("budget"), cfg, len(epochs))

    selection = repair.get("selection") or log.get("selection")
    sel = selection if isinstance(selection, Mapping) else {}
    rule = str(sel.get("rule")) if sel.get("rule") else (str(selection) if isinstance(selection, str) else None)
    chosen = sel.get("chosen_epoch", repair.get("best_epoch", log.get("best_epoch")))
    validation = sel.get("validation") if isinstance(sel.get("validation"), Mapping) else {}
    val_counts = validation.get("per_class_counts") or (repair.get("split") or {}).get("val_counts")
    train_counts = log.get("train_counts_split") or (repair.get("split") or {}).get("train_counts")
    missing = list(validation.get("missing_classes") or [])
    if not missing and val_counts and len(val_counts) == len(classes):
        missing = [classes[i] for i, c in enumerate(val_counts) if not c]
    fallback = validation.get("fallback")
    source = validation.get("source")  # None: a repair that selected on held-out training images (older)
    split = repair.get("split") if isinstance(repair.get("split"), Mapping) else {}
    n_audit = split.get("n_audit")
    set_name = "selection" if source else "validation"
    selection_note = {
        "evaluation": "Selection images used to choose the checkpoint: carved from the evaluation data, so the input "
                      "model never trained on them" + (f"; the audits report the other {count(n_audit)} points"
                                                       if n_audit is not None else "") + ".",
        "val-root": f"Selection images used to choose the checkpoint: your validation folder "
                    f"{split.get('selection_root') or ''} (not the training or evaluation images).",
    }.get(str(source), "Validation split used to choose the epoch (held out of the training set, never the test set).")

    lr = _num(repair.get("lr")) if _num(repair.get("lr")) is not None else _num(log.get("lr"))
    if lr is None:
        lr = _num(cfg.get("lr"))
    if lr is None and epochs:
        lr = _num(epochs[0].get("lr"))
    search = repair.get("lr_search") or log.get("lr_search")
    searched = (f", chosen by a {count(search.get('steps'))}-step search over "
                f"{', '.join(f'{_num(g):g}' for g in search.get('grid') or [] if _num(g) is not None)}"
                if isinstance(search, Mapping) and search.get("steps") else "")
    fine_tune = _num((repair.get("timings") or {}).get("fine_tune_s"))
    if fine_tune is None and epochs:
        fine_tune = sum(_num(e.get("time_s")) or 0.0 for e in epochs)
    env = repair.get("environment") or {}
    device = env.get("device_name") or env.get("device")
    if device and env.get("device") and env.get("device_name") and env["device"] != env["device_name"]:
        device = f"{env['device']} ({env['device_name']})"
    n_val = (repair.get("split") or {}).get("n_val", log.get("n_val"))
    n_train = (repair.get("split") or {}).get("n_train", log.get("n_train"))
    attack = None
    resolved = cfg.get("resolved") or {}
    if cfg.get("train_steps") or resolved.get("train_eps"):
        attack = (f"PGD, {cfg.get('train_steps', '?')} steps, ε = {_eps(resolved.get('train_eps', cfg.get('train_eps')))}, "
                  f"step {_eps(resolved.get('train_step_size', cfg.get('train_step_size')))}")

    rows = [(k, str(v)) for k, v in (
        ("method", f"{method}" + (f" — {repair['description']}" if repair.get("description") else "")
         if method else None),
        ("tail penalty", penalty),
        ("budget", budget),
        ("learning rate", (f"{lr:g}" + searched + (f", {cfg['schedule']} schedule" if cfg.get("schedule") else ""))
         if lr is not None else None),
        ("batch size", cfg.get("batch_size")),
        ("training attack", attack),
        ("long-tail options", _options(cfg)),
        (f"training / {set_name} images", f"{count(n_train)} / {count(n_val)}" if n_train is not None else None),
        ("audited points", count(n_audit) if n_audit is not None else None),
        ("chosen epoch", chosen),
        ("selection rule", rule),
        ("selection metric", sel.get("metric")),
        ("fine-tuning time", seconds(fine_tune) if fine_tune is not None else None),
        ("device", device),
        ("resumed", "yes" if (repair.get("timings") or {}).get("resumed") else None),
    ) if v is not None and v != ""]

    warnings = []
    if missing:
        listed = ", ".join(quote(m) for m in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        noun = "class has" if len(missing) == 1 else "classes have"
        warnings.append(f"{len(missing)} {noun} no images in the {set_name} split ({listed}): the epoch was chosen "
                        "without checking " + ("it" if len(missing) == 1 else "them")
                        + (f"; fallback used: {fallback}" if fallback else "") + ".")
    warnings += [str(w) for w in log.get("warnings") or repair.get("warnings") or []]

    composition = []
    if val_counts and len(val_counts) == len(classes):
        composition = [{"name": str(classes[i]), "val": count(c),
                        "train": count(train_counts[i]) if train_counts and len(train_counts) == len(classes) else "–",
                        "missing": not c} for i, c in enumerate(val_counts)]

    sentence = _done_sentence(method, budget, lr, sel, chosen, repair.get("budget") or log.get("budget"))
    div = [d for d in log.get("divergences") or repair.get("divergences") or [] if isinstance(d, Mapping)]
    if div and _num(div[-1].get("lr_to")) is not None:
        sentence += (f"; training diverged {len(div)} time{'s' if len(div) > 1 else ''} and went on from the last "
                     f"good state at a lower rate (last {_num(div[-1]['lr_to']):.3g})")
    if fine_tune is not None:
        sentence += f"; fine-tuning took {seconds(fine_tune)}" + (f" on {device}" if device else "")
    plain_missing = None
    if missing:
        names = ", ".join(quote(m) for m in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        spare = "evaluation images" if source else "training images"
        plain_missing = (f"{names} had too few {spare} to set any aside for checking the repaired model. "
                         "For " + ("it" if len(missing) == 1 else "them") + ", the tool checked instead that the "
                         "repair did not make their own training images easier to attack than before; read their "
                         "figures below with that in mind.")
    return {"rows": rows, "sentence": sentence + ".", "warnings": warnings, "missing": missing,
            "plain_missing": plain_missing, "selection_note": selection_note, "set_name": set_name,
            "composition": composition if len(composition) <= 40 else [],
            "composition_note": (f"{len(composition)} classes: {set_name} images per class from "
                                 f"{min(val_counts)} to {max(val_counts)}") if len(composition) > 40 else None,
            "epochs": list(log.get("epochs") or [])}
