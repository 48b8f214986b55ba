"""The corruption audit as one phase of an audit run: check, generate or read, score, join, figures.

:func:`prepare_points` runs before the attacks so a missing file or a bad flag stops the run early;
:func:`run_phase` scores this rank's shard (DataLoader workers make the images), joins the shards
on rank 0 and returns the results sections.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
from torch.utils.data import DataLoader

from ..contract.codec import from_json
from ..contract.model import ClassCorruption, CorruptionSummary
from ..run import distributed
from ..data.loading import loader_options
from .evaluate import CorruptionRecords, class_figures, corruption_pass, join_records, summary_figures
from .generate import MIN_SIDE, library_version, warm_up, working_side
from .official import official_points
from .points import GeneratedPoints, JobPoints

if TYPE_CHECKING:  # pragma: no cover
    from ..config import AuditConfig
    from ..data import LTDataset
    from ..run.engine import Evaluator

log = logging.getLogger(__name__)

PARAMETERS = "ImageNet-C"  # whose severity parameters the package uses (docs/corruptions.md)


def jobs_of(config: "AuditConfig") -> list[tuple[str, int]]:
    """(corruption, severity) pairs in registry then severity order."""
    return [(n, s) for n in config.corruptions for s in config.severities]


def prepare_points(config: "AuditConfig", data: "LTDataset", shard_idx: np.ndarray,
                   input_size: Sequence[int]) -> Optional[JobPoints]:
    """The corrupted points of this rank's shard, checked before any attack (None without --corruptions)."""
    if not config.corruptions:
        return None
    jobs = jobs_of(config)
    if config.corruption_root:
        return official_points(config.corruption_root, data.test, data.test_labels, shard_idx, jobs, input_size)
    side = working_side(input_size)
    if side != tuple(int(v) for v in input_size[1:]):
        log.warning("corruptions: the model's %d×%d images are below the package's %d px minimum; each is upsampled "
                    "(bilinear) to %d×%d, corrupted there and resized back (docs/corruptions.md)",
                    input_size[1], input_size[2], MIN_SIDE, side[0], side[1])
    return GeneratedPoints(data.test, shard_idx, jobs, input_size, config.seed)


def run_phase(config: "AuditConfig", evaluator: "Evaluator", points: JobPoints, *, n_points: int,
              progress: bool) -> Optional[CorruptionRecords]:
    """Score this rank's corrupted points (one bar over every rank's images); rank 0 gets the whole run's records
    (None on the others). ``n_points``: the audited points of the whole run."""
    if isinstance(points, GeneratedPoints):
        warm_up(config.corruptions)  # before the workers fork
    loader = DataLoader(points, batch_size=config.batch_size, shuffle=False,
                        **loader_options(config.workers, evaluator.device))
    bar = distributed.GlobalProgress(len(points.jobs) * n_points, enabled=progress, desc="corruptions", unit="img")
    records = corruption_pass(evaluator, distributed.counted(loader, bar.add), points.jobs, points.indices)
    bar.close()
    if evaluator.dist is None:
        return records
    parts = distributed.gather_to_main(records)
    return join_records(parts) if parts is not None else None


def sections(config: "AuditConfig", records: CorruptionRecords, label: np.ndarray, clean_correct: np.ndarray,
             num_classes: int, groups: dict[str, list[int]],
             input_size: Sequence[int]) -> tuple[list[dict], dict[str, Any]]:
    """(per-class ``corruptions`` entries, ``summary.corruptions``) for results.json."""
    per_class = class_figures(records, label, clean_correct, num_classes)
    summary = summary_figures(records, label, clean_correct, num_classes, groups)
    side = working_side(input_size)
    official = bool(config.corruption_root)
    summary.update({
        "source": "official" if official else "generated",
        "library": None if official else library_version(),
        "parameters": "released files" if official else PARAMETERS,
        "names": list(config.corruptions), "severities": list(config.severities),
        "seed": None if official else int(config.seed),
        "input_side": [int(input_size[1]), int(input_size[2])],
        "generated_side": None if official else [int(side[0]), int(side[1])],
        "images": int(records.pred.size), "seconds": float(records.seconds),
    })
    return per_class, summary


def attach_corruptions(results: Any, config: "AuditConfig", records: CorruptionRecords, points: Any,
                       data: "LTDataset", input_size: Sequence[int]) -> None:
    """Put the figures into the typed results: ``per_class[i].corruptions`` and ``summary.corruptions``.

    ``points`` are the audit's joined :class:`~audit.run.records.PointRecords` (labels, clean verdicts)."""
    from ..data import class_groups, groups_to_indices

    where = {int(j): p for p, j in enumerate(points.index)}
    order = np.array([where[int(j)] for j in records.index], np.int64)
    label = np.asarray(points.label, np.int64)[order]
    clean_correct = np.asarray(points.clean_correct, bool)[order]
    groups = groups_to_indices(class_groups([int(c) for c in data.train_counts], config.group_rule))
    per_class, summary = sections(config, records, label, clean_correct, len(data.class_names), groups, input_size)
    for row, figures in zip(results.per_class, per_class):
        row.corruptions = from_json(dict[str, ClassCorruption], figures)
    from .story import compare

    typed = from_json(CorruptionSummary, summary)
    typed.note, typed.differs = compare(results, typed)
    results.summary.corruptions = typed
