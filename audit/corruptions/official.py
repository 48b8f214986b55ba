"""Released corruption sets read instead of generated (``--corruption-root DIR``).

* CIFAR-10-C / CIFAR-100-C: ``DIR/<name>.npy``, uint8 of shape (5·N, 32, 32, 3) — severity 1's N
  test images in test-set order, then severity 2's, … — and ``DIR/labels.npy`` (5·N labels).
  Test point ``j`` at severity ``s`` is row ``(s-1)·N + j``; the labels must agree with the
  dataset's for every audited point (a reordered test set is refused, not silently mismatched).
* ImageNet-C: ``DIR/<name>/<severity>/<class>/<file>``, the same relative path as the clean image
  in the dataset's evaluation folder (an image-folder dataset is needed to know the paths).

Files are opened with ``allow_pickle=False`` and memory-mapped; everything is checked before the
first attack, with one sentence naming what is missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.core import ImageFileDataset
from ..errors import DatasetError
from .points import Job, JobPoints, model_input


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"--corruption-root: cannot read {path} as a .npy array ({exc}); use the released "
                           "CIFAR-10-C/CIFAR-100-C files") from None


class NpyPoints(JobPoints):
    """CIFAR-10-C / CIFAR-100-C arrays."""

    def __init__(self, root: Path, base: Dataset, test_labels: np.ndarray, indices: np.ndarray,
                 jobs: Sequence[Job], input_size: Sequence[int]) -> None:
        super().__init__(base, indices, jobs, input_size)
        self.root = Path(root)
        self.n_test = len(test_labels)
        self.test_labels = np.asarray(test_labels, np.int64)
        labels = _npy(self.root / "labels.npy")
        if labels.ndim != 1 or len(labels) % 5 or len(labels) // 5 != self.n_test:
            raise DatasetError(f"--corruption-root: {self.root / 'labels.npy'} holds {len(labels)} labels; expected "
                               f"5 × {self.n_test} (five severities of this dataset's test set)")
        self.arrays: dict[str, np.ndarray] = {}
        for name, severity in self.jobs:
            if name not in self.arrays:
                arr = _npy(self.root / f"{name}.npy") if (self.root / f"{name}.npy").is_file() else None
                if arr is None:
                    raise DatasetError(f"--corruption-root: {self.root / (name + '.npy')} is missing; give a folder "
                                       "with the released files or drop --corruption-root to generate them")
                if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != len(labels) or arr.shape[3] != 3:
                    raise DatasetError(f"--corruption-root: {name}.npy has shape {arr.shape} ({arr.dtype}); expected "
                                       f"uint8 ({len(labels)}, H, W, 3)")
                self.arrays[name] = arr
            rows = (severity - 1) * self.n_test + self.indices
            if not np.array_equal(np.asarray(labels[rows], np.int64), np.asarray(test_labels, np.int64)[self.indices]):
                raise DatasetError(f"--corruption-root: labels.npy does not match the dataset's test labels at "
                                   f"severity {severity}; the files must follow this test set's order")

    def image(self, name: str, severity: int, index: int) -> tuple[torch.Tensor, int]:
        row = np.array(self.arrays[name][(severity - 1) * self.n_test + index])
        x = torch.from_numpy(row.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0))
        return model_input(x, self.input_size), int(self.test_labels[index])  # checked equal to the file's


class FolderPoints(JobPoints):
    """ImageNet-C folders mirroring the evaluation folder's ``<class>/<file>`` paths."""

    def __init__(self, root: Path, base: Dataset, indices: np.ndarray, jobs: Sequence[Job],
                 input_size: Sequence[int]) -> None:
        super().__init__(base, indices, jobs, input_size)
        if not isinstance(base, ImageFileDataset):
            raise DatasetError("--corruption-root with ImageNet-C folders needs an image-folder dataset (its file "
                               "names); for CIFAR give the folder with the .npy files")
        self.root, self.size = Path(root), base.size
        self.rel = {int(j): Path(*base.paths[int(j)].parts[-2:]) for j in self.indices}
        for name, severity in self.jobs:  # every file, before the first attack (one stat each)
            missing = [p for p in (self.root / name / str(severity) / self.rel[int(j)] for j in self.indices)
                       if not p.is_file()]
            if missing:
                raise DatasetError(f"--corruption-root: {missing[0]} is missing ({len(missing)} of {len(self.indices)} "
                                   f"at {name} severity {severity}); ImageNet-C's layout is "
                                   "<root>/<corruption>/<severity>/<class>/<file>")

    def image(self, name: str, severity: int, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.base.labels[index])  # type: ignore[attr-defined]
        one = ImageFileDataset([self.root / name / str(severity) / self.rel[index]], [label], size=self.size)
        return model_input(one[0][0], self.input_size), label


def official_points(root: str | Path, base: Dataset, test_labels: np.ndarray, indices: np.ndarray,
                    jobs: Sequence[Job], input_size: Sequence[int]) -> JobPoints:
    """The reader for ``root``: .npy files (CIFAR-10-C/CIFAR-100-C) or ImageNet-C folders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--corruption-root {root} is not a folder; give the folder holding CIFAR-10-C's .npy "
                           "files or ImageNet-C's <corruption>/<severity>/ folders")
    if (root / "labels.npy").is_file():
        return NpyPoints(root, base, test_labels, indices, jobs, input_size)
    return FolderPoints(root, base, indices, jobs, input_size)
