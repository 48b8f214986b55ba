"""Training-ε schedules: a warm-up from 0 and RobustLT's class-wise budgets (docs/repair.md, "ε schedules").

Fine-tuning a non-robust model at the full radius from the first step can collapse its clean
accuracy; ramping ε up from 0 avoids it. ``warmup`` scales the training radius (and the PGD
step with it) linearly from ``1/W`` of it at the first step to all of it after ``W`` steps,
``W = WARMUP_SHARE`` of the budget. ``--eps-per-class`` gives class ``c`` the radius
``eps_c = ((1 - a) + tau * sqrt(log(n_max / n_c))) * eps`` (RobustLT, ``a = 0.3``), ``tau`` chosen
so that the mean of ``eps_c`` over the training images is ``eps``: rarer classes get larger
budgets. The evaluation radius never changes.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from audit.attacks import Noise, ascent_direction, project, view_rows

WARMUP_SHARE = 0.3  # the radius reaches its full value after this share of the budget
ROBUSTLT_A = 0.3
SCHEDULES = ("constant", "warmup")


def eps_scale(schedule: str, step: int, total: int) -> float:
    """The share of the training radius used at optimizer step ``step`` (0-based) of ``total``."""
    if schedule == "constant":
        return 1.0
    ramp = max(1, int(math.ceil(WARMUP_SHARE * total)))
    return min(1.0, (step + 1) / ramp)


def class_eps_factors(counts: Sequence[int], a: float = ROBUSTLT_A) -> torch.Tensor:
    """Per-class radius multipliers with mean 1 over the training images (all 1 on a balanced set)."""
    n = torch.as_tensor([max(1, int(c)) for c in counts], dtype=torch.float64)
    g = torch.sqrt(torch.log(n.max() / n))
    weighted = float((n * g).sum() / n.sum())
    if weighted <= 0:
        return torch.ones(len(n), dtype=torch.float32)
    tau = a / weighted
    return ((1 - a) + tau * g).float()


class PerSampleEps:
    """Mixin for a PGD-style training attack: the radius (and step) of each image is scaled.

    ``scale`` (the schedule's share) and ``class_factors`` (per class, or None) are set by the
    method before each batch; :meth:`perturb` turns them into a per-image radius.
    """

    scale: float = 1.0
    class_factors: Optional[torch.Tensor] = None
    _rows: Optional[torch.Tensor] = None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, noise: Noise,  # noqa: D102
                autocast=None) -> torch.Tensor:  # noqa: ANN001
        f = torch.full((x.shape[0],), float(self.scale), device=x.device)
        if self.class_factors is not None:
            f = f * self.class_factors.to(x.device)[y]
        self._rows = view_rows(f * self.spec.eps, x)  # type: ignore[attr-defined]
        try:
            return super().perturb(model, x, y, noise=noise, autocast=autocast)  # type: ignore[misc]
        finally:
            self._rows = None

    def _start(self, x: torch.Tensor, noise: Noise) -> torch.Tensor:
        rows, norm = self._rows, self.spec.norm  # type: ignore[attr-defined]
        shape = tuple(x.shape[1:])
        if norm == "linf":
            delta = (noise.rand(shape, dtype=x.dtype).to(x.device) * 2 - 1) * rows
        else:
            d = noise.randn(shape, dtype=x.dtype).to(x.device)
            r = noise.rand((1,) * (x.dim() - 1), dtype=x.dtype).to(x.device)
            delta = d / view_rows(d.flatten(1).norm(dim=1).clamp_min(1e-12), d) * r * rows
        return (x + delta).clamp_(0, 1)

    def _step(self, x_adv: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        rows, norm = self._rows, self.spec.norm  # type: ignore[attr-defined]
        alpha = rows * (self.alpha / self.spec.eps)  # type: ignore[attr-defined]  # the step keeps its share of eps
        return project(x_adv + alpha * ascent_direction(grad, norm), x0, rows, norm)
