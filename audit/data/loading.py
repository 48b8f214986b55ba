"""DataLoader settings for decoding images: ``--workers`` processes, pinned memory on a GPU.

Workers only decode; the order of the items is the loader's, so results are the same
with and without them.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError


def loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    """Keyword arguments for ``DataLoader``: ``workers`` decoding processes, pinned memory when the device is a GPU."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers must be a whole number >= 0 (0 decodes in the main process), got {workers!r}")
    opts: dict[str, Any] = {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda"}
    if workers > 0:
        opts["prefetch_factor"] = 2
    return opts
