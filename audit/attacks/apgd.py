"""APGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum and checkpoints.

Per point: start at a random point of the ball, step size 2*eps; each iteration takes a
projected step ``z`` and moves to ``x + 0.75 (z - x) + 0.25 (x - x_prev)`` (momentum). At
checkpoints ``w_j`` (first at 22% of the iterations, then ever closer, never under 6%) the
step size halves and the point restarts from its best (highest-loss) iterate when progress
stalled: fewer than ``rho`` = 75% of the steps since the last checkpoint raised the loss,
or the step size was not halved last time and the best loss has not moved since.
``restarts`` repeats the run from a fresh random start for the points still robust.
A point leaves the attack the moment it is fooled (per-point early stop).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..bounds import MAX_RESTARTS, MAX_STEPS
from ..registry import register_attack
from .base import (Attack, AttackOutcome, AttackParams, Autocast, ascent_direction, logit_margin, project,
                   view_rows)
from .noise import Noise

MOMENTUM = 0.75
RHO = 0.75


@dataclass(frozen=True)
class APGDParams(AttackParams):
    """``steps`` iterations per run, ``restarts`` runs (each from a fresh random start)."""

    steps: int = 100
    restarts: int = 1
    bounds: ClassVar[dict] = {"steps": (1, MAX_STEPS, "--steps"), "restarts": (1, MAX_RESTARTS, "--restarts")}


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3); scale invariant."""
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    third = srt[:, 2] if logits.shape[1] > 2 else srt[:, -1]
    return -(z_y - other) / (srt[:, 0] - third + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    srt = logits.sort(dim=1, descending=True).values
    k = logits.shape[1]
    z3 = srt[:, min(2, k - 1)]
    z4 = srt[:, min(3, k - 1)]
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, 0] - 0.5 * (z3 + z4) + 1e-12)


def checkpoints(steps: int) -> list[int]:
    """Iterations after which the step size may halve: p0 = 0, p1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    its = (math.ceil(round(q * steps, 6)) for q in p[1:])
    return sorted({i for i in its if 0 < i <= steps})


class _State:
    """Per-point tensors of one APGD run; :meth:`keep` drops the points that left."""

    names = ("x0", "y", "tgt", "idx", "xa", "x_prev", "grad", "x_best", "grad_best", "loss_best", "loss_prev",
             "eta", "n_up", "reduced", "best_at_check")

    def keep(self, mask: torch.Tensor) -> None:
        for n in self.names:
            v = getattr(self, n)
            if v is not None:
                setattr(self, n, v[mask])


class APGD(Attack):
    """APGD on a per-sample loss (subclasses pick it); see the module docstring."""

    display_name = "APGD"
    Params = APGDParams

    def label(self) -> str:
        return f"{self.display_name}-{self.params.steps}"

    @property
    def budget(self) -> int:
        return (self.params.steps + 1) * self.params.restarts * self.n_targets - 1

    n_targets: int = 1

    def loss(self, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _start(self, x: torch.Tensor, noise: Noise) -> torch.Tensor:
        """Random start on the sphere of radius eps (L-inf: scaled so the largest coordinate is eps)."""
        eps, norm = self.spec.eps, self.spec.norm
        if eps == 0:
            return x.clone()
        shape = tuple(x.shape[1:])
        if norm == "linf":
            t = noise.rand(shape, dtype=x.dtype).to(x.device) * 2 - 1
            t = t / view_rows(t.flatten(1).abs().amax(1).clamp_min(1e-12), t)
        else:
            t = noise.randn(shape, dtype=x.dtype).to(x.device)
            t = t / view_rows(t.flatten(1).norm(dim=1).clamp_min(1e-12), t)
        return (x + eps * t).clamp(0, 1)

    def _forward(self, model: nn.Module, xa: torch.Tensor, y: torch.Tensor, tgt: Optional[torch.Tensor], ctx,
                 need_grad: bool) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        xa = xa.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad), ctx():
            logits = model(xa)
        loss = self.loss(logits.float(), y, tgt)
        grad = torch.autograd.grad(loss.sum(), xa)[0].detach() if need_grad else None
        return logits.detach(), loss.detach(), grad

    def _single_run(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor, tgt: Optional[torch.Tensor],
                    idx: torch.Tensor, noise: Noise, early_stop: bool, ctx, rec: dict, step_offset: int) -> None:
        """One APGD run on the points ``idx``; writes first-fooling records into ``rec``."""
        eps, norm, steps = self.spec.eps, self.spec.norm, self.params.steps
        s = _State()
        s.x0, s.y, s.tgt, s.idx = x0, y, tgt, idx
        s.xa = self._start(x0, noise)
        logits, loss, grad = self._forward(model, s.xa, y, tgt, ctx, steps > 0)
        rec["forwards"] += s.xa.shape[0]
        if step_offset == 0 and grad is not None:
            rec["zero"][idx] |= grad.flatten(1).abs().amax(1) == 0
        s.grad, s.x_prev = grad, s.xa.clone()
        s.x_best, s.grad_best, s.loss_best, s.loss_prev = s.xa.clone(), grad, loss.clone(), loss.clone()
        n = x0.shape[0]
        s.eta = torch.full((n,), 2.0 * eps, dtype=x0.dtype, device=x0.device)
        s.n_up = torch.zeros(n, dtype=torch.long, device=x0.device)
        s.reduced = torch.ones(n, dtype=torch.bool, device=x0.device)
        s.best_at_check = loss.clone()
        marks = checkpoints(steps)
        last_mark = 0
        for t in range(steps + 1):
            if t > 0:
                with torch.no_grad():
                    a = MOMENTUM if t > 1 else 1.0
                    z = project(s.xa + view_rows(s.eta, s.xa) * ascent_direction(s.grad, norm), s.x0, eps, norm)
                    x_new = project(s.xa + a * (z - s.xa) + (1 - a) * (s.xa - s.x_prev), s.x0, eps, norm)
                    s.x_prev, s.xa = s.xa, x_new
                logits, loss, grad = self._forward(model, s.xa, s.y, s.tgt, ctx, t < steps)
                rec["forwards"] += s.xa.shape[0]
                s.grad = grad
            pred = logits.argmax(1)
            fooled = pred != s.y
            rec["margin"][s.idx] = torch.minimum(rec["margin"][s.idx], logit_margin(logits.float(), s.y))
            first = fooled & (rec["step"][s.idx] < 0)
            if bool(first.any()):
                sel = s.idx[first]
                rec["step"][sel] = step_offset + t
                rec["pred"][sel] = pred[first]
                rec["x"][sel] = s.xa[first]
            if t == 0:
                better = (rec["step"][s.idx] < 0) & (loss > rec["best_loss"][s.idx])
                if bool(better.any()):
                    sel = s.idx[better]
                    rec["best_loss"][sel] = loss[better]
                    rec["pred"][sel] = pred[better]
                    rec["x"][sel] = s.xa[better]
            else:
                up = loss > s.loss_best
                s.n_up += (loss > s.loss_prev).long()
                s.loss_prev = loss
                if bool(up.any()):
                    s.x_best[up], s.loss_best[up] = s.xa[up], loss[up]
                    if grad is not None:
                        s.grad_best[up] = grad[up]
                better = up & (rec["step"][s.idx] < 0) & (s.loss_best > rec["best_loss"][s.idx])
                if bool(better.any()):
                    sel = s.idx[better]
                    rec["best_loss"][sel] = s.loss_best[better]
                    rec["pred"][sel] = pred[better]
                    rec["x"][sel] = s.xa[better]
                if t in marks and t < steps:
                    k = t - last_mark
                    stalled = s.n_up.double() < RHO * k
                    flat = ~s.reduced & (s.best_at_check >= s.loss_best)
                    halve = stalled | flat
                    s.reduced, s.best_at_check, s.n_up = halve, s.loss_best.clone(), torch.zeros_like(s.n_up)
                    last_mark = t
                    if bool(halve.any()):
                        s.eta = torch.where(halve, s.eta / 2, s.eta)
                        s.xa[halve] = s.x_best[halve]
                        s.x_prev[halve] = s.x_best[halve]
                        s.grad[halve] = s.grad_best[halve]
            if early_stop and bool(fooled.any()):
                keep = ~fooled
                s.keep(keep)
                if s.xa.shape[0] == 0:
                    break

    def _targets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx) -> list[Optional[torch.Tensor]]:
        return [None]

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, noise: Noise, early_stop: bool = True,
            autocast: Autocast = None, margin_to_beat: Optional[torch.Tensor] = None) -> AttackOutcome:
        ctx = autocast or contextlib.nullcontext
        n = x.shape[0]
        x = x.detach()
        rec = {"x": x.clone(), "pred": y.clone(), "step": torch.full((n,), -1, dtype=torch.long, device=x.device),
               "zero": torch.zeros(n, dtype=torch.bool, device=x.device),
               "best_loss": torch.full((n,), float("-inf"), device=x.device), "forwards": 0,
               "margin": torch.full((n,), float("inf"), device=x.device)}
        targets = self._targets(model, x, y, ctx)
        offset = 0
        for tgt in targets:
            for _ in range(self.params.restarts):
                alive = rec["step"] < 0 if early_stop else torch.ones(n, dtype=torch.bool, device=x.device)
                if not bool(alive.any()):
                    break
                sel = alive.nonzero().squeeze(1)
                sub = noise.subset(alive.cpu())
                rec["best_loss"][sel] = float("-inf")  # keep the highest-loss iterate of the latest run
                self._single_run(model, x[sel], y[sel], tgt[sel] if tgt is not None else None, sel, sub,
                                 early_stop, ctx, rec, offset)
                offset += self.params.steps + 1
        # points never fooled: pred at the recorded point (the best iterate of their last run)
        return AttackOutcome(rec["x"], rec["pred"], rec["step"], rec["zero"], rec["forwards"],
                             min_margin=rec["margin"])

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, noise: Noise,
                autocast: Autocast = None) -> torch.Tensor:
        """Training use: every point runs every restart (no early stop); returns its first fooling
        iterate, else its highest-loss iterate of the last run."""
        out = self.run(model, x, y, noise=noise, early_stop=False, autocast=autocast)
        return out.x_adv.detach()


@register_attack("apgd-ce")
class APGDCE(APGD):
    """APGD on the cross-entropy (AutoAttack's first attack)."""

    display_name = "APGD-CE"

    def loss(self, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none")


@register_attack("apgd-dlr")
class APGDDLR(APGD):
    """APGD on the untargeted DLR loss (invariant to shifting and rescaling the logits)."""

    display_name = "APGD-DLR"

    def loss(self, logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        return dlr_loss(logits, y)
