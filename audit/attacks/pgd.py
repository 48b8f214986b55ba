"""PGD (Madry et al. 2018): fixed-step projected gradient ascent on the cross-entropy.

Points are dropped from the working set the step they first fool the model (the "early
stop" half of the cascade), so a standard-trained model costs a fraction of a full run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..bounds import MAX_STEPS
from ..registry import register_attack
from .base import (Attack, AttackOutcome, AttackParams, Autocast, ascent_direction, logit_margin, project,
                   random_start)
from .noise import Noise



@dataclass(frozen=True)
class PGDParams(AttackParams):
    """``steps`` iterations of size ``step_size`` (None: eps/4) from a random start."""

    steps: int = 20
    step_size: Optional[float] = None
    random_start: bool = True
    bounds: ClassVar[dict] = {"steps": (1, MAX_STEPS, "--steps"), "step_size": (0.0, 1.0, "--step-size")}


@register_attack("pgd")
class PGD(Attack):
    """Projected gradient descent on cross-entropy, random start in the ball."""

    display_name = "PGD"
    Params = PGDParams

    @property
    def alpha(self) -> float:
        p = self.params
        return float(p.step_size) if p.step_size is not None else self.spec.eps / 4

    def label(self) -> str:
        return f"{self.display_name}-{self.params.steps}"

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss to ascend."""
        return F.cross_entropy(logits, y, reduction="none")

    def _start(self, x: torch.Tensor, noise: Noise) -> torch.Tensor:
        if not self.params.random_start:
            return x.clone()
        return random_start(x, self.spec.eps, self.spec.norm, noise)

    def _step(self, x_adv: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return project(x_adv + self.alpha * ascent_direction(grad, self.spec.norm), x0, self.spec.eps, self.spec.norm)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, noise: Noise, early_stop: bool = True,
            autocast: Autocast = None, margin_to_beat: Optional[torch.Tensor] = None) -> AttackOutcome:
        n = x.shape[0]
        steps = self.params.steps
        ctx = autocast or contextlib.nullcontext
        out_x = x.detach().clone()
        out_pred = y.clone()
        out_step = torch.full((n,), -1, dtype=torch.long, device=x.device)
        zero = torch.zeros(n, dtype=torch.bool, device=x.device)
        low = torch.full((n,), float("inf"), device=x.device)  # lowest margin seen
        idx = torch.arange(n, device=x.device)
        x0 = x.detach()
        yy = y
        xa = self._start(x0, noise)
        forwards = 0
        for t in range(steps + 1):
            if xa.shape[0] == 0:
                break
            last = t == steps
            xa.requires_grad_(not last)
            with torch.set_grad_enabled(not last), ctx():
                logits = model(xa)
            forwards += xa.shape[0]
            pred = logits.argmax(1)
            fooled = pred != yy
            low[idx] = torch.minimum(low[idx], logit_margin(logits.detach().float(), yy))
            first = fooled & (out_step[idx] < 0)
            if first.any():
                sel = idx[first]
                out_step[sel] = t
                out_pred[sel] = pred[first]
                out_x[sel] = xa.detach()[first]
            if last:
                never = out_step[idx] < 0
                out_pred[idx[never]] = pred[never]
                out_x[idx[never]] = xa.detach()[never]
                break
            loss = self.loss(logits.float(), yy).sum()
            (grad,) = torch.autograd.grad(loss, xa)
            if t == 0:
                zero[idx] = grad.flatten(1).abs().amax(1) == 0
            with torch.no_grad():
                xa = self._step(xa.detach(), x0, grad)
            if early_stop:
                keep = ~fooled
                if not bool(keep.all()):
                    xa, x0, yy, idx = xa[keep], x0[keep], yy[keep], idx[keep]
        return AttackOutcome(out_x, out_pred, out_step, zero, forwards, min_margin=low)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, noise: Noise,
                autocast: Autocast = None) -> torch.Tensor:
        """The final iterate after every step, no early stop (what adversarial training uses).

        ``model`` must be in eval mode (BatchNorm statistics untouched); gradients go to the input only.
        """
        ctx = autocast or contextlib.nullcontext
        x0 = x.detach()
        xa = self._start(x0, noise)
        for _ in range(self.params.steps):
            xa.requires_grad_(True)
            with ctx():
                logits = model(xa)
            loss = self.loss(logits.float(), y).sum()
            (grad,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                xa = self._step(xa.detach(), x0, grad)
        return xa.detach()
