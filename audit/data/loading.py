"""DataLoader settings for decoding images: ``--workers`` processes, pinned memory on a GPU.

Workers only decode; the order of the items is the loader's, so results are the same
with and without them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError


def loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    """Keyword arguments for ``DataLoader``: ``workers`` decoding processes, pinned memory when the device is a GPU."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers must be a whole number >= 0 (0 decodes in the main process), got {workers!r}")
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda"}
    if workers > 0:
        opts["prefetch_factor"] = 2
    return opts


class Indexed(Dataset):
    """Items (image, label, test-set index) of a subset of a test set: what the audit scores."""

    def __init__(self, base: Dataset, indices: np.ndarray) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        x, y = self.base[j]
        return x, int(y), j
