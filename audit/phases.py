"""The audit's public surface: the phases that the repair, the Python API and the benches compose.

A caller above the engine (``reat_finetune``, ``tailaudit``, ``bench/``) runs an audit through the
names here, the package faces :mod:`audit.attacks` and :mod:`audit.models`, the run's process
group :mod:`audit.run.distributed`, and the results contract; never through the engine's own modules,
so the engine can be rearranged without touching its callers (docs/architecture.md, "The audit's
public surface"; tests/test_surface.py keeps it so). Each phase runs the engine's own code, never
a second copy of it:

- **run**: :func:`start` (torchrun, threads, seed, device, the ranks' agreement), :func:`run_folder`
  (created, probed and locked by rank 0; a finished run kept until the new one has finished), the
  renderer policy (:func:`render_into`);
- **prepare**: :func:`prepare` loads the dataset and the model wrapped with its normalisation inside
  (eval mode), checks they fit and picks the evaluation points; :func:`fit_images` sizes pixels for it;
- **evaluate**: :func:`run_audit` audits a prepared model (clean, the attack suite, calibration,
  corruptions) and assembles and writes its results; :func:`score_points` runs the same cascade on
  given batches of a model in training (in eval mode) and returns typed per-class figures;
- **assemble**: :func:`created_now`, :func:`environment`, the verdict's :func:`chance_floor`;
- **write**: :class:`RunFiles` publishes a run's files as one set (audit/run/outputs.py),
  :func:`write_atomic` one file whole or not at all.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from . import pipeline
from .run import lifecycle
from .attacks import create_attack
from .config import AuditConfig
from .data import LTDataset, class_groups
from .data.core import ImageFileDataset, scan_image_folder
from .run.engine import Evaluator, adapt_images
from .contract.files import atomic_write, out_dir_guard, output_error
from .contract.model import AuditResults
from .errors import ResultsError
from .checks.gate import check_available
from .checks.labels import clean_confusion
from .run.lifecycle import Renderer, created_now, default_out_dir, environment, render_into, resolve_device
from .metrics import per_class_accuracy
from .run.outputs import PARTIAL, RunFiles, keep_previous_run, with_reports
from .pipeline import AuditRun, Prepared
from .values import AttackSpec
from .checks.verdict import CHANCE_MARGIN, grade_on_load, load_graded, prediction_collapse

log = logging.getLogger(__name__)

__all__ = [
    # run
    "Renderer", "default_out_dir", "render_into", "resolve_device", "run_folder", "start",
    # prepare
    "ImageFileDataset", "LTDataset", "Prepared", "check_gate", "class_groups", "fit_images", "prepare",
    "scan_image_folder",
    # evaluate
    "AuditRun", "Evaluator", "PointScores", "reusable_results", "run_audit", "score_points",
    # assemble
    "chance_floor", "created_now", "environment", "grade_on_load",
    # write
    "PARTIAL", "RunFiles", "out_dir_guard", "output_error", "write_atomic",
]


# -- run ---------------------------------------------------------------------------------------------


def start(device: str, threads: Optional[int], seed: int, *, settings: Optional[Mapping[str, Any]] = None
          ) -> torch.device:
    """The first phase of a run: torchrun setup, thread pools, the global seed, the device; under torchrun every
    rank then checks that it runs rank 0's ``settings`` (the command's flags) before anything is created."""
    dev = lifecycle.start(device, threads, seed)
    if settings is not None:
        lifecycle.check_ranks_agree(settings, "flags")
    return dev


@contextlib.contextmanager
def run_folder(out: Path, files: Sequence[str], formats: Sequence[str], *, keep_previous: bool = False,
               resume: bool = False) -> Iterator[Optional[Path]]:
    """The run's output folder, created, probed and locked by rank 0 before any loading (None on other ranks).

    Refuses when ``files`` and the ``formats`` reports would replace files tailaudit did not write;
    ``keep_previous``: a finished run of many files (a repair) stays whole in the folder until this one
    has finished (audit/run/outputs.py), ``resume`` continuing it.
    """
    with lifecycle.output_folder(out, with_reports(files, formats)) as made:
        every = with_reports(files, ("html", "pdf"))
        with keep_previous_run(made, every, resume=resume) if made and keep_previous else contextlib.nullcontext():
            yield made


# -- prepare -----------------------------------------------------------------------------------------


def prepare(config: AuditConfig, device: torch.device) -> Prepared:
    """The dataset, the model wrapped with its normalisation inside (eval mode) and the evaluation points,
    checked to fit each other: what :func:`run_audit` audits."""
    return pipeline.prepare(config, device)


def fit_images(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Pixels N x C x H x W in [0, 1] sized to the model's input (``size`` = C, H, W), as the audit sizes them."""
    return adapt_images(x, size)


def check_gate(config: AuditConfig, groups: Sequence[Optional[str]]) -> None:
    """Refuse a ``--fail-under`` condition that the run's class groups cannot answer, before any long work (the
    conditions are the config's, parsed once)."""
    check_available(config.gate_conditions(), groups)


# -- evaluate ----------------------------------------------------------------------------------------


def run_audit(config: AuditConfig, *, progress: Optional[bool] = None, formats: Sequence[str] = (),
              render: Optional[Renderer] = None, prepared: Optional[Prepared] = None) -> AuditRun:
    """Audit ``config.model``: clean accuracy, the attack suite, calibration and corruptions on the evaluation
    points, the results assembled, the verdict and the gate, every file written as one set.

    ``prepared`` is :func:`prepare`'s triple for a caller that has loaded the data and the model already
    (a repair's before-audit; its after-audit, on the same points); ``render`` draws ``formats``.
    """
    return pipeline.run_audit(config, progress=progress, formats=formats, render=render, prepared=prepared)


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


def reusable_results(path: Path, config: AuditConfig) -> Optional[AuditResults]:
    """The results in ``path`` when they exist and were made with ``config``'s settings (a resumed repair's
    before-audit); None otherwise. Read bounded and schema-checked: a damaged file is audited again, never trusted.
    """
    if not path.is_file():
        return None
    try:
        res = load_graded(path)  # graded as the audit grades an older file
    except ResultsError as exc:
        log.warning("not reusing the audit in %s: %s", path.parent, exc)
        return None
    if _comparable_config(res.config or {}) != _comparable_config(config.to_dict()):
        return None
    return res


def _comparable_config(d: dict[str, Any]) -> dict[str, Any]:
    """An audit config as JSON, without the fields that do not change results."""
    d = json.loads(json.dumps(d, default=str))
    for k in ("out", "quiet", "device", "model", "checkpoint", "batch_size", "workers"):
        d.pop(k, None)
    return d


# -- assemble ----------------------------------------------------------------------------------------


def chance_floor(num_classes: int) -> float:
    """Accuracy "clearly above chance" for ``num_classes`` classes: the audit verdict's rule
    (audit/checks/verdict.py)."""
    return 1.0 / num_classes + CHANCE_MARGIN * (1.0 - 1.0 / num_classes)


# -- write -------------------------------------------------------------------------------------------


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], Any]) -> Path:
    """``path`` written whole or not at all: ``write`` fills a temporary file that then replaces ``path``."""
    return atomic_write(path, write)
