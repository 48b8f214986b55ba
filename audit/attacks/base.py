"""The projected-gradient loop shared by every attack; attacks only define their loss.

Points are dropped from the working set the step they first fool the model (the
"early stop" half of the cascade), so a standard-trained model costs a fraction of a full
PGD run. Inputs and outputs are NCHW pixels in [0, 1].
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..config import AttackSpec
from .noise import Noise


@dataclass
class AttackOutcome:
    """Per-point result of one attack on a batch.

    ``step`` is the step at which the point first fooled the model (0 = the random start)
    or -1; ``pred`` is the prediction at that step (the last prediction where never fooled);
    ``x_adv`` holds the first fooling iterate (the last iterate where never fooled).
    ``zero_grad`` counts points whose input gradient was exactly zero at the first step.
    """

    x_adv: torch.Tensor
    pred: torch.Tensor
    step: torch.Tensor
    zero_grad: int
    forwards: int


class Attack:
    """Base class: PGD ascent on :meth:`loss` inside an L-inf or L2 ball, pixels kept in [0, 1]."""

    def __init__(self, spec: AttackSpec) -> None:
        self.spec = spec

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss to ascend; subclasses define it."""
        raise NotImplementedError

    # -- geometry -----------------------------------------------------------------------
    def _random_start(self, x: torch.Tensor, noise: Noise) -> torch.Tensor:
        eps = self.spec.eps
        if not self.spec.random_start or eps == 0:
            return x.clone()
        shape = tuple(x.shape[1:])
        if self.spec.norm == "linf":
            delta = (noise.rand(shape, dtype=x.dtype).to(x.device) * 2 - 1) * eps
        else:
            d = noise.randn(shape, dtype=x.dtype).to(x.device)
            norms = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            r = noise.rand((1,) * (x.dim() - 1), dtype=x.dtype).to(x.device)
            delta = d / norms * r * eps
        return (x + delta).clamp_(0, 1)

    def _step(self, x_adv: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        eps, alpha = self.spec.eps, self.spec.step_size
        shape = (-1,) + (1,) * (x_adv.dim() - 1)
        if self.spec.norm == "linf":
            x_new = x_adv + alpha * grad.sign()
            x_new = torch.min(torch.max(x_new, x0 - eps), x0 + eps)
        else:
            g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            x_new = x_adv + alpha * grad / g_norm
            delta = x_new - x0
            d_norm = delta.flatten(1).norm(dim=1).view(shape)
            factor = torch.where(d_norm > eps, eps / d_norm.clamp_min(1e-12), torch.ones_like(d_norm))
            x_new = x0 + delta * factor
        return x_new.clamp_(0, 1)

    # -- the loop -----------------------------------------------------------------------
    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        noise: Noise,
        early_stop: bool = True,
        autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
    ) -> AttackOutcome:
        """Attack ``x`` (labels ``y``) for the audit; ``model`` maps pixels to logits and is in eval mode.

        ``noise`` gives one random stream per point (:mod:`.noise`). With ``early_stop`` a point
        leaves the batch the step it is first fooled.
        """
        n = x.shape[0]
        ctx = autocast or contextlib.nullcontext
        out_x = x.detach().clone()
        out_pred = y.clone()
        out_step = torch.full((n,), -1, dtype=torch.long, device=x.device)
        idx = torch.arange(n, device=x.device)
        x0 = x.detach()
        yy = y
        xa = self._random_start(x0, noise)
        zero_grad = 0
        forwards = 0
        for t in range(self.spec.steps + 1):
            if xa.shape[0] == 0:
                break
            last = t == self.spec.steps
            xa.requires_grad_(not last)
            with torch.set_grad_enabled(not last), ctx():
                logits = model(xa)
            forwards += xa.shape[0]
            pred = logits.argmax(1)
            fooled = pred != yy
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
                zero_grad += int((grad.flatten(1).abs().amax(1) == 0).sum())
            with torch.no_grad():
                xa = self._step(xa.detach(), x0, grad)
            if early_stop:
                keep = ~fooled
                if not bool(keep.all()):
                    xa, x0, yy, idx = xa[keep], x0[keep], yy[keep], idx[keep]
        return AttackOutcome(out_x, out_pred, out_step, zero_grad, forwards)

    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        noise: Noise,
        autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
    ) -> torch.Tensor:
        """The final iterate after every step, no early stop (what adversarial training uses).

        ``model`` must be in eval mode (BatchNorm statistics untouched); gradients go to the input only.
        """
        ctx = autocast or contextlib.nullcontext
        x0 = x.detach()
        xa = self._random_start(x0, noise)
        for _ in range(self.spec.steps):
            xa.requires_grad_(True)
            with ctx():
                logits = model(xa)
            loss = self.loss(logits.float(), y).sum()
            (grad,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                xa = self._step(xa.detach(), x0, grad)
        return xa.detach()
