"""The audit's public surface: the phases that the repair, the Python API and the benches compose.

A caller above the engine (``reat_finetune``, ``tailaudit``, ``bench/``) runs an audit through the
names here, the package faces :mod:`audit.attacks` and :mod:`audit.models`, the run's process
group :mod:`audit.distributed`, and the results contract; never through the engine's own modules,
so the engine can be rearranged without touching its callers (docs/architecture.md, "The audit's
public surface"; tests/test_surface.py keeps it so). Each name is the engine's own code, not a
second copy:

- **run**: :func:`start` (torchrun, threads, seed, device), :func:`output_folder` (created, probed,
  locked by rank 0), the renderer policy (:func:`render_into`);
- **prepare**: :func:`prepare` loads the dataset and the model wrapped with its normalisation inside,
  checks they fit and picks the evaluation points; :func:`fit_images` sizes pixels for the model;
- **evaluate**: :func:`run_audit` audits a prepared model (clean, the attack suite, calibration,
  corruptions) and assembles and writes its results; :func:`score_points` runs the same cascade on
  given batches of a model in training (eval mode) and returns typed per-class figures;
- **assemble**: :func:`created_now`, :func:`environment`, the verdict's :func:`chance_floor`;
- **write**: :class:`RunFiles` publishes a run's files as one set (audit/outputs.py),
  :func:`keep_previous_run` keeps a finished run until the new one has finished, :func:`write_atomic`
  writes one file whole or not at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from .attacks import create_attack
from .data import LTDataset, class_groups
from .data.core import ImageFileDataset, scan_image_folder
from .engine import Evaluator, adapt_images
from .gate import check_available, parse_fail_under
from .labels import clean_confusion
from .lifecycle import (Renderer, check_ranks_agree, created_now, default_out_dir, output_folder, render_into,
                        resolve_device, start)
from .metrics import per_class_accuracy
from .outputs import PARTIAL, RunFiles, keep_previous_run, out_dir_guard, output_error, with_reports
from .pipeline import AuditRun, Prepared, prepare, run_audit
from .results import _atomic as write_atomic
from .results import environment
from .values import AttackSpec
from .verdict import CHANCE_MARGIN, prediction_collapse

fit_images = adapt_images  # pixels N x C x H x W in [0, 1] resized to the model's input size (the audit's rule)

__all__ = [
    # run
    "Renderer", "check_ranks_agree", "default_out_dir", "output_folder", "render_into", "resolve_device", "start",
    # prepare
    "ImageFileDataset", "LTDataset", "Prepared", "check_gate", "class_groups", "fit_images", "prepare",
    "scan_image_folder",
    # evaluate
    "AuditRun", "Evaluator", "PointScores", "run_audit", "score_points",
    # assemble
    "chance_floor", "created_now", "environment",
    # write
    "PARTIAL", "RunFiles", "keep_previous_run", "out_dir_guard", "output_error", "with_reports", "write_atomic",
]


def check_gate(fail_under: str, groups: Sequence[Optional[str]]) -> None:
    """Refuse a ``--fail-under`` condition that the run's class groups cannot answer, before any long work."""
    check_available(parse_fail_under(fail_under), groups)


def chance_floor(num_classes: int) -> float:
    """Accuracy "clearly above chance" for ``num_classes`` classes: the audit verdict's rule (audit/verdict.py)."""
    return 1.0 / num_classes + CHANCE_MARGIN * (1.0 - 1.0 / num_classes)


@dataclass(frozen=True)
class PointScores:
    """What :func:`score_points` measured: per point, per class, and the audit verdict's collapse check."""

    clean: np.ndarray  # per point: the clean prediction is right
    robust: np.ndarray  # per point: clean-correct and no attack of the cascade fooled it (worst case)
    clean_by_class: np.ndarray  # accuracy per class; NaN for a class without points
    robust_by_class: np.ndarray
    collapse: Optional[str]  # the sentence when the clean predictions collapse onto few classes, else None


def score_points(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 specs: Sequence[AttackSpec], *, n_total: int, num_classes: int, input_size: Sequence[int],
                 device: torch.device, seed: int, amp: str = "off") -> PointScores:
    """Clean and worst-case robust verdicts of ``specs`` (a cascade) on ``batches``, in eval mode.

    The audit's own evaluation (:class:`Evaluator`): ``batches`` yields (pixels, labels, positions);
    each point's noise is seeded by (``seed``, attack, position), so batching does not matter; a bf16
    run's verdicts are re-checked in fp32. Non-finite logits of a model being trained count as wrong
    answers, not as an error.
    """
    model.eval()
    evaluator = Evaluator(model, num_classes, input_size, device, amp=amp, strict_outputs=False)
    rec = evaluator.cascade(batches, [create_attack(s) for s in specs], n_total=n_total, seed=seed,
                            examples_per_class=0)
    clean, robust = rec.clean_correct, rec.robust_masks(independent=False)["worst_case"]
    return PointScores(
        clean=clean, robust=robust,
        clean_by_class=per_class_accuracy(clean, rec.label, num_classes)[0],
        robust_by_class=per_class_accuracy(robust, rec.label, num_classes)[0],
        collapse=prediction_collapse(clean_confusion(rec.label, rec.clean_pred, num_classes).tolist()),
    )
