"""Square Attack (Andriushchenko et al., ECCV 2020): score-based random search, no gradients.

It only needs pixels -> logits, so for ONNX models the engine hands it onnxruntime directly
(the deployed runtime) and it also runs on models that cannot be converted to PyTorch
(black-box mode). Each query changes one random square window of the current best point:

* L-inf: the window is set to ``x ± eps`` (one random sign per channel); the start is
  ``x ± eps`` in random vertical stripes.
* L2: mass is moved from a second random window into the first, shaped by a pseudo-Gaussian
  pattern, keeping the total perturbation norm at eps.

A change is kept when it lowers the margin ``z_y - max_{j != y} z_j``. The window side
shrinks on a fixed schedule of the query count (``p_init`` = 0.8 of the image area at the
start). Every draw comes from the point's own random stream, and a point stops querying the
moment it is misclassified. With ``reruns`` (the standard suite: 2), a point no gradient attack
had a non-zero gradient on, and that the run left robust, gets further complete runs from fresh
starts on independent streams of its own (docs/attacks.md, "Square's reruns").
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Optional

import torch
from torch import nn

from ..bounds import MAX_QUERIES
from ..registry import register_attack
from .base import Attack, AttackOutcome, AttackParams, Autocast, Classifier, logit_margin, view_rows
from .noise import Noise

_CANDIDATES = 4  # L-inf colour candidates per query: the first one that changes the window is used
_CHUNK = 32  # queries' worth of random numbers drawn per point at once (cheaper than one draw per query)


@dataclass(frozen=True)
class SquareParams(AttackParams):
    """``queries`` model evaluations per point at most; ``p_init`` = initial window share of the image."""

    queries: int = 5000
    p_init: float = 0.8
    probe: int = 0
    reruns: int = 0
    bounds: ClassVar[dict] = {"queries": (1, MAX_QUERIES, "--queries"), "p_init": (1e-4, 1.0, "--p-init"),
                              "probe": (0, MAX_QUERIES, "--probe"), "reruns": (0, 10, "reruns")}


def window_share(p_init: float, it: int, queries: int) -> float:
    """The original schedule (defined for 10000 queries, rescaled to ``queries``)."""
    it = int(it / queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


@lru_cache(maxsize=64)
def _eta(s: int) -> torch.Tensor:
    """The L2 attack's s×s pattern: two rectangles of opposite sign, each peaked in its centre, unit norm."""
    def rect(a: int, b: int) -> torch.Tensor:
        d = torch.zeros(a, b)
        ca, cb = a // 2, b // 2
        for k in range(max(ca + 1, cb + 1)):
            d[max(ca - k, 0):min(ca + k + 1, a), max(cb - k, 0):min(cb + k + 1, b)] += 1.0 / (k + 1) ** 2
        return d / d.norm().clamp_min(1e-12)

    e = torch.zeros(s, s)
    e[: s // 2] = rect(s // 2, s) if s // 2 > 0 else e[: s // 2]
    e[s // 2:] = -rect(s - s // 2, s)
    return e / e.norm().clamp_min(1e-12)


def _grid(v: torch.Tensor, s: int) -> torch.Tensor:
    """(n,) window offsets -> (n, s) pixel indices."""
    return v[:, None] + torch.arange(s, device=v.device)[None, :]


def _take(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    n, c = t.shape[:2]
    i = torch.arange(n, device=t.device)[:, None, None, None]
    ch = torch.arange(c, device=t.device)[None, :, None, None]
    return t[i, ch, rows[:, None, :, None], cols[:, None, None, :]]


def _put(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, v: torch.Tensor | float) -> None:
    n, c = t.shape[:2]
    i = torch.arange(n, device=t.device)[:, None, None, None]
    ch = torch.arange(c, device=t.device)[None, :, None, None]
    t[i, ch, rows[:, None, :, None], cols[:, None, None, :]] = v


def _window_mask(shape: tuple[int, ...], vh: torch.Tensor, vw: torch.Tensor, s: int, device) -> torch.Tensor:
    h, w = shape[-2], shape[-1]
    r = torch.arange(h, device=device)[None, :]
    c = torch.arange(w, device=device)[None, :]
    mr = (r >= vh[:, None]) & (r < vh[:, None] + s)
    mc = (c >= vw[:, None]) & (c < vw[:, None] + s)
    return (mr[:, :, None] & mc[:, None, :])[:, None]  # (n, 1, h, w)


def _signs(u: torch.Tensor) -> torch.Tensor:
    return torch.where(u < 0.5, -1.0, 1.0).to(u.dtype)


@register_attack("square")
class Square(Attack):
    """Score-based Square Attack on the margin loss (L-inf and L2)."""

    display_name = "Square"
    Params = SquareParams
    gradient_free = True

    @property
    def budget(self) -> int:
        """Queries of the run, plus a start and the queries of each rerun (on points the gradients were blind on)."""
        return int(self.params.queries) + int(self.params.reruns) * (int(self.params.queries) + 1)

    def label(self) -> str:
        return f"{self.display_name}-{self.params.queries}"

    # -- starting points ----------------------------------------------------------------
    def _init_linf(self, x: torch.Tensor, noise: Noise) -> torch.Tensor:
        c, w = x.shape[1], x.shape[3]
        sign = _signs(noise.rand((c, 1, w), dtype=x.dtype).to(x.device))
        return (x + self.spec.eps * sign).clamp(0, 1)

    def _init_l2(self, x: torch.Tensor, noise: Noise) -> torch.Tensor:
        n, c, h, w = x.shape
        s = max(h // 5, 1)
        k_h, k_w = h // s, w // s
        start_h, start_w = (h - s * k_h) // 2, (w - s * k_w) // 2
        u = noise.rand((k_h * k_w, c + 1), dtype=x.dtype).to(x.device)
        eta = _eta(s).to(x.device, x.dtype)
        delta = torch.zeros_like(x)
        for a in range(k_h):
            for b in range(k_w):
                q = u[:, a * k_w + b]
                pat = torch.where((q[:, c] > 0.5).view(-1, 1, 1), eta.t(), eta)  # (n, s, s)
                hh, ww = start_h + a * s, start_w + b * s
                delta[:, :, hh:hh + s, ww:ww + s] += pat[:, None] * _signs(q[:, :c])[:, :, None, None]
        return (x + self._to_sphere(delta)).clamp(0, 1)

    def _to_sphere(self, delta: torch.Tensor) -> torch.Tensor:
        return delta * self.spec.eps / view_rows(delta.flatten(1).norm(dim=1) + 1e-12, delta)

    # -- one query per active point -------------------------------------------------------
    def _draws(self, c: int) -> int:
        """Uniform numbers one query uses per point."""
        return 5 + c if self.spec.norm == "l2" else 2 + _CANDIDATES * c

    def _propose_linf(self, x: torch.Tensor, xb: torch.Tensor, u: torch.Tensor, s: int) -> torch.Tensor:
        n, c, h, w = x.shape
        eps = self.spec.eps
        vh = (u[:, 0] * (h - s + 1)).floor().long().clamp_(0, h - s)
        vw = (u[:, 1] * (w - s + 1)).floor().long().clamp_(0, w - s)
        mask = _window_mask(x.shape, vh, vw, s, x.device)
        cols = _signs(u[:, 2:]).view(n, _CANDIDATES, c).to(x.dtype)
        chosen = cols[:, 0]
        left = ~self._changes(x, xb, mask, cols[:, 0])
        if bool(left.any()):
            # rare: the first colour equals the window's current one; take the first that differs, else the last
            li = left.nonzero().squeeze(1)
            pick = cols[li, -1]
            found = torch.zeros(li.numel(), dtype=torch.bool, device=x.device)
            for k in range(1, _CANDIDATES):
                differs = self._changes(x[li], xb[li], mask[li], cols[li, k])
                pick = torch.where((differs & ~found)[:, None], cols[li, k], pick)
                found |= differs
            chosen = chosen.clone()
            chosen[li] = pick
        new = (x + eps * chosen[:, :, None, None]).clamp(0, 1)
        return torch.where(mask, new, xb)

    def _changes(self, x: torch.Tensor, xb: torch.Tensor, mask: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Whether setting the window to ``x + eps * col`` changes the current point ``xb``."""
        cand = (x + self.spec.eps * col[:, :, None, None]).clamp(0, 1)
        return ((cand - xb).abs() * mask).flatten(1).amax(1) > 1e-7

    def _propose_l2(self, x: torch.Tensor, xb: torch.Tensor, u: torch.Tensor, s: int) -> torch.Tensor:
        n, c, h, w = x.shape
        eps = self.spec.eps
        span = h - s + 1, w - s + 1
        vh = (u[:, 0] * span[0]).floor().long().clamp_(0, h - s)
        vw = (u[:, 1] * span[1]).floor().long().clamp_(0, w - s)
        vh2 = (u[:, 2] * span[0]).floor().long().clamp_(0, h - s)
        vw2 = (u[:, 3] * span[1]).floor().long().clamp_(0, w - s)
        eta = _eta(s).to(x.device, x.dtype)
        pat = torch.where((u[:, 4] > 0.5).view(-1, 1, 1), eta.t(), eta)  # (n, s, s)
        sign = _signs(u[:, 5:]).to(x.dtype)  # (n, c)
        delta = xb - x
        r1, c1, r2, c2 = _grid(vh, s), _grid(vw, s), _grid(vh2, s), _grid(vw2, s)
        win1 = _take(delta, r1, c1)  # (n, c, s, s)
        norm_win1 = win1.flatten(2).norm(dim=2)[:, :, None, None]
        norm_img = view_rows(delta.flatten(1).norm(dim=1), delta)
        both = _window_mask(x.shape, vh, vw, s, x.device) | _window_mask(x.shape, vh2, vw2, s, x.device)
        norm_wins = view_rows((delta * both).flatten(1).norm(dim=1), delta)
        new = pat[:, None] * sign[:, :, None, None] + win1 / (1e-12 + norm_win1)
        budget = ((eps ** 2 - norm_img ** 2).clamp_min(0) / c + norm_wins ** 2).sqrt()
        new = new / (1e-12 + new.flatten(2).norm(dim=2)[:, :, None, None]) * budget
        delta = delta.clone()
        _put(delta, r2, c2, 0.0)
        _put(delta, r1, c1, new)
        return (x + self._to_sphere(delta)).clamp(0, 1)

    def _side(self, it: int, h: int, w: int, c: int) -> int:
        p = window_share(self.params.p_init, it, self.params.queries)
        if self.spec.norm == "linf":
            s = max(int(round(math.sqrt(p * h * w))), 1)
        else:
            s = max(int(round(math.sqrt(p * h * w))), 3)
            s += 1 - s % 2
        return min(s, h, w)

    def run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, *, noise: Noise, early_stop: bool = True,
            autocast: Autocast = None, margin_to_beat: Optional[torch.Tensor] = None) -> AttackOutcome:
        """Up to ``queries`` queries per point; a point stops the moment it is misclassified.

        ``model`` only has to map pixels to logits (an ``nn.Module`` or a reference scorer).
        With ``probe`` > 0 and ``margin_to_beat`` (the lowest margin the gradient attacks reached
        on each point), a point whose margin after ``probe`` queries is not below that figure
        stops there; the others carry on with the same schedule to ``queries`` (docs/attacks.md).
        With ``reruns`` > 0 and ``margin_to_beat``, a point whose figure is +inf (no gradient attack
        had a non-zero gradient there, or the verifying runtime rejected its near miss) and that
        the run left robust gets ``reruns`` more complete runs of ``queries`` from fresh starts, each
        drawn from new streams of its own (:meth:`Noise.fork`). Steps count every model evaluation of
        the point (a run is a start and ``queries`` queries), so a point the r-th rerun breaks at its
        query k is recorded at step ``r * (queries + 1) + k``.
        """
        ctx = autocast or contextlib.nullcontext
        n = x.shape[0]
        x = x.detach()

        def score(z: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), ctx():
                return model(z).float()

        zero = torch.zeros(n, dtype=torch.bool, device=x.device)
        if self.spec.eps == 0:
            logits = score(x)
            return AttackOutcome(x.clone(), logits.argmax(1), torch.where(logits.argmax(1) != y, 0, -1), zero, n)
        probe = int(self.params.probe) if (early_stop and margin_to_beat is not None) else 0
        xb, margin, pred, out_step, forwards, carried_on = self._search(score, x, y, noise, early_stop, probe,
                                                                        margin_to_beat)
        reruns = int(self.params.reruns) if (early_stop and margin_to_beat is not None) else 0
        reran = torch.zeros(n, dtype=torch.bool, device=x.device) if reruns else None
        if reruns:
            blind = torch.isposinf(margin_to_beat.to(device=x.device, dtype=torch.float32))
            for r in range(1, reruns + 1):
                sel = ((out_step < 0) & blind).nonzero().squeeze(1)
                if sel.numel() == 0:
                    break
                reran[sel] = True
                # fresh streams per point: the rerun depends on (seed, attack, point, r) only
                xb2, m2, p2, s2, f2, _ = self._search(score, x[sel], y[sel], noise.subset(sel.cpu()).fork(f"rerun{r}"),
                                                      True, 0, None)
                forwards += f2
                fooled2 = s2 >= 0
                better = fooled2 | (m2 < margin[sel])
                xb[sel] = torch.where(view_rows(better, xb2), xb2, xb[sel])
                margin[sel] = torch.where(better, m2, margin[sel])
                pred[sel] = torch.where(better, p2, pred[sel])
                out_step[sel] = torch.where(fooled2, s2 + r * (int(self.params.queries) + 1), out_step[sel])
        return AttackOutcome(xb, pred, out_step, zero, forwards, carried_on if probe else None, reran=reran)

    def _search(self, score, x: torch.Tensor, y: torch.Tensor, noise: Noise, early_stop: bool, probe: int,
                margin_to_beat: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                 torch.Tensor, int, torch.Tensor]:
        """One random search from a fresh start: (best points, margins, predictions, steps, forwards, carried on)."""
        n, c, h, w = x.shape
        out_step = torch.full((n,), -1, dtype=torch.long, device=x.device)
        xb = self._init_l2(x, noise) if self.spec.norm == "l2" else self._init_linf(x, noise)
        logits = score(xb)
        forwards = n
        margin = logit_margin(logits, y)
        pred = logits.argmax(1)
        fooled = pred != y
        out_step[fooled] = 0
        # the points still querying, kept compact: (batch index, pixels, best point, label, margin, best pred)
        idx = (~fooled).nonzero().squeeze(1) if early_stop else torch.arange(n, device=x.device)
        xa, xba, ya, ma, pa = x[idx], xb[idx], y[idx], margin[idx], pred[idx]
        done_a = fooled[idx]  # only ever True without early stop
        buf = torch.empty(0)

        def write_back() -> None:
            xb[idx], margin[idx], pred[idx] = xba, ma, pa

        def keep_only(keep: torch.Tensor) -> None:
            nonlocal idx, xa, xba, ya, ma, pa, done_a, buf
            write_back()
            idx, xa, xba, ya = idx[keep], xa[keep], xba[keep], ya[keep]
            ma, pa, done_a = ma[keep], pa[keep], done_a[keep]
            if buf.numel():
                buf = buf[keep]

        carried_on = torch.zeros(n, dtype=torch.bool, device=x.device)
        for it in range(self.params.queries):
            if probe and it == probe:
                # not doing better than the gradient attacks on this point: stop at the probe
                keep = ma < margin_to_beat[idx].to(ma)
                carried_on[idx[keep]] = True
                if not bool(keep.all()):
                    keep_only(keep)
            if idx.numel() == 0:
                break
            if it % _CHUNK == 0:
                # every point still querying draws its next _CHUNK queries' numbers from its own stream;
                # points only ever leave, so a point's draws never depend on the others
                buf = noise.subset(idx.cpu()).rand((_CHUNK, self._draws(c)), dtype=torch.float64).to(x.device)
            u = buf[:, it % _CHUNK]
            s = self._side(it, h, w, c)
            x_new = self._propose_l2(xa, xba, u, s) if self.spec.norm == "l2" else self._propose_linf(xa, xba, u, s)
            lg = score(x_new)
            forwards += int(idx.numel())
            m_new = logit_margin(lg, ya)
            p_new = lg.argmax(1)
            newly = (p_new != ya) & ~done_a
            better = (m_new < ma) | newly
            if bool(better.any()):
                xba = torch.where(view_rows(better, xba), x_new, xba)
                ma = torch.where(better, m_new, ma)
                pa = torch.where(better, p_new, pa)
            if bool(newly.any()):
                ni = idx[newly]
                fooled[ni] = True
                out_step[ni] = it + 1
                if early_stop:
                    keep_only(~newly)
                else:
                    done_a = done_a | newly
        write_back()
        return xb, margin, pred, out_step, forwards, carried_on

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, noise: Noise,
                autocast: Autocast = None) -> torch.Tensor:
        """The best point found for every point after all queries (no early stop)."""
        return self.run(model, x, y, noise=noise, early_stop=False, autocast=autocast).x_adv
