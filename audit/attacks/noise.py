"""Where an attack's randomness comes from: one stream per point, or one per batch.

The audit uses :class:`PointNoise`: each point gets its own generator, seeded from
(seed, attack name, the point's index in the test set). Random starts, restarts and
Square's draws then depend only on the point itself, so results are identical for any
``--batch-size``, batch order or split of the points into shards (docs/method.md,
"Reproducibility"). Training uses :class:`BatchNoise`, one generator for the whole batch,
which is cheaper and reproducible because the batch order is itself seeded.

Both hand out tensors with one row per point still under attack; :meth:`subset` follows
the attack when fooled points leave the batch.
"""
from __future__ import annotations

import hashlib
from typing import Sequence, Union

import numpy as np
import torch

Shape = Sequence[int]
Keep = Union[torch.Tensor, np.ndarray]


def point_seed(seed: int, attack: str, index: int) -> int:
    """A 63-bit seed from (run seed, attack name, test-set index), stable across platforms."""
    h = hashlib.blake2b(f"{int(seed)}/{attack}/{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class Noise:
    """Random tensors with one row per point under attack."""

    device: torch.device

    def __len__(self) -> int:
        raise NotImplementedError

    def rand(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) of shape ``(len(self), *shape)``."""
        raise NotImplementedError

    def randn(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal of shape ``(len(self), *shape)``."""
        raise NotImplementedError

    def randint(self, high: Union[int, torch.Tensor], shape: Shape = ()) -> torch.Tensor:
        """Integers in ``[0, high)`` (``high`` a scalar or one bound per point), shape ``(len(self), *shape)``."""
        u = self.rand(shape, dtype=torch.float64)
        h = torch.as_tensor(high, device=u.device, dtype=torch.float64)
        if h.dim() == 1:
            h = h.view(-1, *[1] * len(shape))
        return torch.minimum((u * h).floor(), h - 1).long()

    def subset(self, keep: Keep) -> "Noise":
        """The streams of the points in ``keep`` (bool mask or indices), in order."""
        raise NotImplementedError

    def fork(self, tag: str) -> "Noise":
        """New streams for the same points, independent of these ones and of how far they were drawn."""
        raise NotImplementedError


class PointNoise(Noise):
    """One CPU generator per point; draws are moved to ``device``."""

    def __init__(self, generators: list[torch.Generator], device: torch.device | str = "cpu") -> None:
        self._gens = generators
        self.device = torch.device(device)

    @classmethod
    def for_points(cls, seed: int, attack: str, indices: Sequence[int] | torch.Tensor | np.ndarray,
                   device: torch.device | str = "cpu") -> "PointNoise":
        """Streams for the points with these test-set indices under attack ``attack``."""
        idx = indices.tolist() if hasattr(indices, "tolist") else list(indices)
        gens = [torch.Generator().manual_seed(point_seed(seed, attack, int(i))) for i in idx]
        return cls(gens, device)

    def __len__(self) -> int:
        return len(self._gens)

    def _draw(self, fn, shape: Shape, dtype: torch.dtype) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if not self._gens:
            return torch.empty((0, *shape), dtype=dtype, device=self.device)
        rows = [fn(shape, generator=g, dtype=dtype) for g in self._gens]
        return torch.stack(rows).to(self.device)

    def rand(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._draw(torch.rand, shape, dtype)

    def randn(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._draw(torch.randn, shape, dtype)

    def subset(self, keep: Keep) -> "PointNoise":
        k = torch.as_tensor(keep)
        if k.dtype == torch.bool:
            k = k.nonzero().squeeze(1)
        return PointNoise([self._gens[int(i)] for i in k.tolist()], self.device)

    def fork(self, tag: str) -> "PointNoise":
        """Each point's new stream is seeded by (its own stream's seed, ``tag``): a function of the point alone."""
        return PointNoise([torch.Generator().manual_seed(point_seed(g.initial_seed(), tag, 0)) for g in self._gens],
                          self.device)


class BatchNoise(Noise):
    """One generator shared by the batch (training): draws depend on the batch composition."""

    def __init__(self, generator: torch.Generator, n: int) -> None:
        self._gen = generator
        self._n = int(n)
        self.device = generator.device

    def __len__(self) -> int:
        return self._n

    def rand(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.rand((self._n, *shape), generator=self._gen, device=self.device, dtype=dtype)

    def randn(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn((self._n, *shape), generator=self._gen, device=self.device, dtype=dtype)

    def subset(self, keep: Keep) -> "BatchNoise":
        k = torch.as_tensor(keep)
        n = int(k.sum()) if k.dtype == torch.bool else int(k.numel())
        return BatchNoise(self._gen, n)

    def fork(self, tag: str) -> "BatchNoise":
        """The batch's generator, drawn on (training only needs fresh numbers)."""
        return BatchNoise(self._gen, self._n)
