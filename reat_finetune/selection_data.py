"""Where the selection images come from: carved from the evaluation data, or the user's validation folder.

Never the training images the input model was fitted on (docs/repair.md, "Selection on unseen
images"): ``--val-root DIR`` / ``--val-split NAME`` is refused when it holds training or
evaluation files, and the carved split is disjoint from the points the audits report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from torch.utils.data import Dataset

from audit.errors import DatasetError
from audit.phases import ImageFileDataset, LTDataset, scan_image_folder

from .config import RepairConfig
from .errors import RepairError
from .selection import carve_selection


@dataclass
class SelectionData:
    """The selection images (``dataset`` at ``idx``, labels ``labels`` indexed like ``dataset``) and the
    evaluation points left to the audits (``audit_idx``, indices into the evaluation data)."""

    dataset: Dataset
    labels: np.ndarray
    idx: np.ndarray
    audit_idx: np.ndarray
    source: str  # "evaluation" | "val-root"
    root: Optional[str]
    image_shape: tuple[int, int, int]

    @property
    def words(self) -> str:
        if self.source == "evaluation":
            return (f"carved from the evaluation data; the audits report the other {len(self.audit_idx)} points")
        return f"from {self.root}"


def selection_data(data: LTDataset, eval_idx: np.ndarray, config: RepairConfig,
                   size: tuple[int, ...]) -> SelectionData:
    """The selection split of a repair run (checked before any long work)."""
    root = config.val_root or (str(Path(config.audit.data_root) / config.val_split)  # type: ignore[arg-type]
                               if config.val_split else None)
    if root is None:
        audit_idx, sel_idx = carve_selection(np.asarray(data.test_labels), eval_idx, config.val_fraction, config.seed)
        if not len(sel_idx):
            raise RepairError(f"the evaluation data has too few points per class ({len(eval_idx)} in all) to carve a "
                              "selection split for choosing the checkpoint; raise --n-per-class, or give a "
                              "validation folder with --val-root DIR")
        return SelectionData(data.test, np.asarray(data.test_labels, np.int64), sel_idx, audit_idx, "evaluation",
                             None, tuple(data.image_shape))  # type: ignore[arg-type]
    folder = Path(root)
    flag = "--val-root" if config.val_root else "--val-split"
    try:
        paths, labels, _ = scan_image_folder(folder, class_names=data.class_names)
    except DatasetError as exc:
        raise RepairError(f"{flag}: {exc}") from None
    _refuse_overlap(folder, paths, data, flag)
    hw = (int(size[2]), int(size[1]))
    ds = ImageFileDataset(paths, labels, size=hw)
    return SelectionData(ds, labels, np.arange(len(labels), dtype=np.int64), np.asarray(eval_idx, np.int64),
                         "val-root", str(folder), (3, int(size[1]), int(size[2])))


def _refuse_overlap(folder: Path, paths: list[Path], data: LTDataset, flag: str) -> None:
    """Refuse a validation folder that holds the training images or the evaluation images the audits report."""
    mine = {p.resolve() for p in paths}
    for name, ds in (("training", data.train), ("evaluation", data.test)):
        theirs = {p.resolve() for p in getattr(ds, "paths", [])} if isinstance(ds, ImageFileDataset) else set()
        shared = mine & theirs
        if shared:
            raise RepairError(f"{flag} {folder} holds {len(shared)} of the {name} images (e.g. {sorted(shared)[0]}); "
                              "selection must be on images the model was not trained on and the audits do not "
                              "report: give a separate validation folder")
