"""The corrupted points an audit scores, as torch datasets a DataLoader's workers fill.

Item ``k`` of a set over jobs (corruption, severity) × points is job ``k // n``, point ``k % n``:
(pixels at the model's input size in [0, 1], label, test-set index, job number). Generation
(:class:`GeneratedPoints`) or reading released files (audit/corruptions/official.py) happens in
``__getitem__``, so ``--workers`` processes do it off the model's critical path.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .generate import corrupt_tensor

Job = tuple[str, int]  # (corruption name, severity)


def model_input(x: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    """One image resized to the model's input exactly as the attacks see it (the engine's ``adapt_images``)."""
    from ..run.engine import adapt_images

    return adapt_images(x[None].float(), input_size)[0]


class JobPoints(Dataset):
    """Jobs × points; subclasses say how one (job, point) image is made."""

    def __init__(self, base: Dataset, indices: np.ndarray, jobs: Sequence[Job], input_size: Sequence[int]) -> None:
        self.base, self.indices, self.jobs = base, np.asarray(indices, np.int64), list(jobs)
        self.input_size = tuple(int(v) for v in input_size)

    def __len__(self) -> int:
        return len(self.jobs) * len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int, int]:
        n = len(self.indices)
        job, pos = divmod(int(k), n)
        index = int(self.indices[pos])
        name, severity = self.jobs[job]
        x, label = self.image(name, severity, index)
        return x, int(label), index, job

    def image(self, name: str, severity: int, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class GeneratedPoints(JobPoints):
    """Corrupted on the fly by the package, seeded per (seed, corruption, severity, test-set index)."""

    def __init__(self, base: Dataset, indices: np.ndarray, jobs: Sequence[Job], input_size: Sequence[int],
                 seed: int) -> None:
        super().__init__(base, indices, jobs, input_size)
        self.seed = int(seed)

    def image(self, name: str, severity: int, index: int) -> tuple[torch.Tensor, int]:
        x, label = self.base[index]
        return corrupt_tensor(model_input(x, self.input_size), name, severity, seed=self.seed, index=index), label
