"""Settings that adapt to the model: a short learning-rate search within the budget, and divergence caught.

**Search** (:func:`plan_search`, :func:`run_search`): successive halving over a log grid around
the default rate (``DEFAULT_LR x 4^k``, k = 1, 0, -1, -2: 0.2 … 0.003). Round 1 trains every
candidate for ``r`` steps from the input model's weights on the same batches; the better half
(ranked by the selection rule itself: eligible first — clean floor, no collapse — then balanced
worst-case robust accuracy, then clean accuracy, on up to ``SEARCH_PER_CLASS`` selection images
per class) trains ``2r`` more steps; the best rate wins. We chose successive halving over an
LR range test because the range test ranks rates by the training *loss*, which under adversarial
fine-tuning says little about the robust accuracy we select on, and over Optuna because a
four-point grid needs no sampler or pruner library (no new dependency). Its steps (``8r``, at
most ``SEARCH_SHARE`` of the budget) count in ``--train-steps-total``; the main run trains the
rest from the input model's weights at the chosen rate. Skipped when ``--lr`` is given or the
budget is too small (``r < MIN_TRIAL_STEPS``), with the reason recorded.

**Divergence** (:class:`Watch`): a non-finite loss, or a loss spike (more than ``SPIKE`` times the
median of the last ``WINDOW`` steps, once ``MIN_HISTORY`` steps are seen), or a collapse at an
evaluation (the predictions collapse onto a few classes *and* clean accuracy falls to chance)
stops that stretch: the trainer restores the last good state (the last healthy evaluation, or the
input model), lowers the rate by ``LOWER`` and continues, at most ``MAX_RECOVERIES`` times; each
event goes to ``training_log.json`` (``divergences``) and is said in one line. Rules and
measurements: docs/repair.md ("Settings that adapt").
"""
from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_LR = 0.05  # the centre of the grid and the rate when no search runs
GRID_FACTORS = (4.0, 1.0, 0.25, 0.0625)  # x DEFAULT_LR: 0.2, 0.05, 0.0125, 0.003125
SEARCH_SHARE = 0.15  # the search takes at most this share of the budget
MIN_TRIAL_STEPS = 3  # round 1 steps per candidate below which no search runs
SEARCH_PER_CLASS = 20  # selection images per class the search scores on
SPIKE = 10.0
SPIKE_FLOOR = 0.5  # a spike is measured against at least this loss: 0.01 -> 0.1 is noise, not divergence
WINDOW = 20
MIN_HISTORY = 2
LOWER = 0.25
MAX_RECOVERIES = 3


@dataclass(frozen=True)
class SearchPlan:
    """Whether and how long the search runs (decided with the budget, before any training)."""

    grid: tuple[float, ...]
    round1_steps: int  # r; round 2 trains the better half 2r more
    reason: str

    @property
    def steps(self) -> int:
        """Optimizer steps the search spends: len(grid) x r + half x 2r."""
        if not self.grid:
            return 0
        return len(self.grid) * self.round1_steps + (len(self.grid) // 2) * 2 * self.round1_steps

    def to_dict(self) -> dict[str, Any]:
        return {"grid": list(self.grid), "round1_steps": self.round1_steps, "steps": self.steps,
                "reason": self.reason}


def plan_search(lr: Optional[float], steps_total: int) -> SearchPlan:
    """The search for a budget of ``steps_total`` steps; none when ``lr`` was given or the budget is too small."""
    if lr is not None:
        return SearchPlan((), 0, f"--lr {lr:g} given: no search")
    grid = tuple(DEFAULT_LR * f for f in GRID_FACTORS)
    per = len(grid) + (len(grid) // 2) * 2  # steps per unit of r
    r = int(SEARCH_SHARE * steps_total) // per
    if r < MIN_TRIAL_STEPS:
        return SearchPlan((), 0, f"budget of {steps_total} steps too small for a search (needs "
                                 f"{math.ceil(MIN_TRIAL_STEPS * per / SEARCH_SHARE)}); default rate {DEFAULT_LR:g}")
    return SearchPlan(grid, r, f"successive halving over {', '.join(f'{g:g}' for g in grid)}: {r} steps each, "
                               f"then {2 * r} more for the better half ({len(grid) * r + (len(grid) // 2) * 2 * r} "
                               f"of the {steps_total} steps)")


def trial_key(entry: dict[str, Any]) -> tuple:
    """How the search ranks a trial: healthy and eligible first, then robust, then clean accuracy; ties go to
    the rate nearest the default, then to the smaller one (a tie on a small selection split is no evidence)."""
    near = -abs(math.log(entry["lr"] / DEFAULT_LR))
    if entry.get("diverged"):
        return (0, 0, -1.0, -1.0, near, -entry["lr"])
    rob, clean = entry.get("val_robust_acc"), entry.get("val_clean_acc")
    return (1, int(bool(entry.get("eligible"))), -1.0 if rob is None else round(rob, 9),
            -1.0 if clean is None else round(clean, 9), near, -entry["lr"])


def run_search(plan: SearchPlan, train: Callable[[float, int, Optional[dict]], tuple[dict, Optional[str]]],
               score: Callable[[], dict[str, Any]], restore: Callable[[dict], None],
               snapshot: Callable[[], dict]) -> dict[str, Any]:
    """Successive halving: ``train(lr, steps, state)`` trains from ``state`` (None: the input) and returns
    (new state, divergence or None); ``score()`` evaluates the current weights; returns the record with
    ``chosen_lr``. The input's weights are restored at the end."""
    start = snapshot()
    rounds, alive = [], [(lr, None) for lr in plan.grid]
    steps = plan.round1_steps
    while True:
        trials, states = [], {}
        for lr, state in alive:
            new, diverged = train(lr, steps, state)
            entry = {"lr": lr, "steps": steps, **({"diverged": diverged} if diverged else score())}
            trials.append(entry)
            states[lr] = new
        rounds.append({"steps": steps, "trials": trials})
        ranked = sorted(trials, key=trial_key, reverse=True)
        healthy = [t for t in ranked if not t.get("diverged")]  # a diverged rate never goes on to the next round
        if len(alive) <= 2 or not healthy:
            break
        alive = [(t["lr"], states[t["lr"]]) for t in healthy[: len(alive) // 2]]
        steps *= 2
    restore(start)
    best = ranked[0]
    chosen = best["lr"] if not best.get("diverged") else min(plan.grid)
    return {**plan.to_dict(), "method": "successive halving", "rounds": rounds, "chosen_lr": chosen,
            "chosen_because": _because(best)}


def _because(best: dict[str, Any]) -> str:
    """Why the search chose its rate, in the words the record keeps."""
    if best.get("diverged"):
        return "every rate diverged: the smallest is used"
    if not best.get("eligible"):
        return ("no rate kept the clean floor on the selection images without collapsing: the most robust rate "
                "that did not diverge is used")
    return "eligible on the selection images, then highest worst-case robust accuracy, then clean accuracy"


def selection_subset(labels: np.ndarray, per_class: int = SEARCH_PER_CLASS) -> np.ndarray:
    """Positions of at most ``per_class`` selection images of each class (the first ones: deterministic)."""
    labels = np.asarray(labels)
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
                                  or [np.zeros(0, np.int64)]))


@dataclass
class Watch:
    """Recent losses and the rule that calls a step divergent."""

    losses: list[float] = field(default_factory=list)

    def check(self, loss: float) -> Optional[str]:
        """The divergence in words, or None (the loss then joins the history)."""
        if not math.isfinite(loss):
            return f"the loss became {loss}"
        if len(self.losses) >= MIN_HISTORY:
            med = statistics.median(self.losses[-WINDOW:])
            if loss > SPIKE * max(med, SPIKE_FLOOR):
                return f"the loss spiked to {loss:.4g} ({loss / max(med, 1e-12):.0f}x the recent median {med:.3g})"
        self.losses.append(loss)
        return None

    def reset(self) -> None:
        self.losses.clear()


def collapsed(entry: dict[str, Any], chance: Optional[float]) -> Optional[str]:
    """A collapse at an evaluation: predictions onto few classes *and* clean accuracy at chance."""
    clean = entry.get("val_clean_acc")
    if entry.get("val_collapse") and chance is not None and clean is not None and clean <= chance:
        return f"the predictions collapsed ({entry['val_collapse']}; clean accuracy {clean:.1%})"
    return None


def lower_sentence(step: int, why: str, restored: int, lr_from: float, lr_to: float) -> str:
    """The one line a divergence gets (log and warnings)."""
    where = "the input model" if restored == 0 else f"step {restored}"
    return (f"training diverged at step {step} ({why}): restored {where} and lowered the learning rate from "
            f"{lr_from:.3g} to {lr_to:.3g}")


def copy_state(module: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """A deep CPU copy of the weights and the optimizer state (the last good state)."""
    import copy

    return {"model": {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()},
            "optimizer": copy.deepcopy(opt.state_dict())}


def words(record: Optional[dict[str, Any]], divergences: Sequence[dict[str, Any]]) -> list[str]:
    """What adapted, for the summary: the search's choice and the divergences caught."""
    out = []
    if record and record.get("chosen_lr") is not None:
        out.append(f"learning rate {record['chosen_lr']:g} chosen by a {record['steps']}-step search "
                   f"({record['reason']})")
    out += [d["sentence"] for d in divergences]
    return out
