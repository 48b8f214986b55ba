"""What a running cascade tells the user: one line per attack, updated while the attack works.

Each line says which attack, how many points it has attacked and how many are still robust,
where the current batch is (iteration or query *i* of at most *K*: early stop ends most points
sooner), the time spent and an upper bound on the time left for the batch. Iterations are
counted as forward passes of the attacked model (:class:`Counted`), so every attack reports
without knowing about progress. On a terminal the block is redrawn in place at most every half
second; elsewhere (a log file, CI) a plain line is written when an attack starts on a batch,
every ``log_every`` seconds while it runs, and when the run ends, each ending in a newline.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO, Callable, Optional, Sequence

import torch
from torch import nn

__all__ = ["CascadeProgress", "Counted"]


class Counted(nn.Module):
    """``model`` with a callback after each forward pass (the attack's iteration or query count)."""

    def __init__(self, model: nn.Module, on_forward: Callable[[], None]) -> None:
        super().__init__()
        self.inner = model
        self.on_forward = on_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = self.inner(x)
        self.on_forward()
        return out


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclass
class _Line:
    name: str
    budget: int
    unit: str  # "iteration" (gradient attacks) or "query" (score-based)
    attacked: int = 0
    broken: int = 0
    seconds: float = 0.0
    batch_points: int = 0
    calls: int = 0  # forward passes on the current batch
    started: Optional[float] = None  # monotonic time the current batch began; None when idle


class CascadeProgress:
    """Progress of :meth:`audit.run.engine.Evaluator.cascade` on ``stream`` (stderr); a no-op when disabled."""

    def __init__(self, names: Sequence[str], budgets: Sequence[int], n_total: int, *, enabled: bool,
                 units: Optional[Sequence[str]] = None, stream: Optional[IO[str]] = None, log_every: float = 15.0,
                 redraw_every: float = 0.5) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        units = list(units) if units is not None else ["iteration"] * len(names)
        self.lines = [_Line(n, int(b), u) for n, b, u in zip(names, budgets, units)]
        self.n_total, self.scored, self.correct, self.robust = int(n_total), 0, 0, 0
        self.t0 = time.monotonic()
        self.log_every, self.redraw_every = log_every, redraw_every
        self._drawn = 0  # lines of the block on screen (terminal mode)
        self._last = 0.0
        self.current: Optional[int] = None

    # -- events ---------------------------------------------------------------------------
    def scored_clean(self, n: int, correct: int) -> None:
        self.scored += n
        self.correct += correct
        self._show(force=self.scored == n)  # the first batch is on screen at once

    def begin(self, a: int, n_points: int) -> None:
        line = self.lines[a]
        line.attacked += n_points
        line.batch_points, line.calls, line.started = n_points, 0, time.monotonic()
        self.current = a
        self._show(force=True)

    def forward(self) -> None:
        """One forward pass of the attacked model (an iteration, or a query for Square)."""
        if self.current is not None:
            self.lines[self.current].calls += 1
            self._show()

    def end(self, a: int, n_broken: int) -> None:
        line = self.lines[a]
        line.broken += n_broken
        if line.started is not None:
            line.seconds += time.monotonic() - line.started
        line.started, self.current = None, None

    def batch_done(self, n_robust: int) -> None:
        self.robust += n_robust
        self._show()

    def close(self) -> None:
        """The final figures, left on screen (terminal) or as the last log lines."""
        if self.enabled:
            self._show(force=True, final=True)

    # -- drawing ---------------------------------------------------------------------------
    def text(self, final: bool = False) -> list[str]:
        """The block as it would be shown now: the clean pass, then one line per attack."""
        now = time.monotonic()
        head = (f"audit: {self.scored}/{self.n_total} points scored, {self.correct} correct"
                + (f", {self.robust} robust after every attack" if final else "") + f" · {_clock(now - self.t0)}")
        return [head] + [self._line(line, now) for line in self.lines]

    @staticmethod
    def _line(line: _Line, now: float) -> str:
        if not line.attacked:
            return f"  {line.name}: waiting"
        running = line.started is not None
        done = line.attacked - (line.batch_points if running else 0)
        text = f"  {line.name}: {done} points attacked, {done - line.broken} still robust"
        spent = line.seconds + (now - line.started if running else 0.0)  # type: ignore[operator]
        text += f" · {_clock(spent)}"
        if running:
            i, k = min(line.calls, max(line.budget, 1)), max(line.budget, 1)
            left = (now - line.started) / i * (k - i) if i else None  # type: ignore[operator]
            text += (f" · now {line.batch_points} more: {line.unit} {i} of at most {k}"
                     + (f", at most {_clock(left)} left" if left is not None else ""))
        return text

    def _show(self, force: bool = False, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (self.redraw_every if self.tty else self.log_every):
            return
        self._last = now
        lines = self.text(final)
        if self.tty:  # redraw the block in place
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{t}\n" for t in lines))
            self._drawn = len(lines)
        elif self.current is not None and not final:  # a log: the attack that just moved, one line
            self.stream.write(self._line(self.lines[self.current], now).lstrip() + "\n")
        else:
            self.stream.write("".join(f"{t}\n" for t in lines))
        self.stream.flush()
