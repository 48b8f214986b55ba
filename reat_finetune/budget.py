"""The fine-tuning budget, counted in optimizer steps, and where in it the model is evaluated.

A budget in epochs starves small long-tailed training sets: 300 images at batch 128 make
3 steps an epoch, so "5 epochs" is 15 updates. The budget is therefore a number of
optimizer steps: ``--train-steps-total N``, or ``--epochs E`` (E whole passes), or, when
neither is given, the automatic budget ``max(AUTO_FLOOR_STEPS, AUTO_EPOCHS * steps per epoch)``.
Validation (and so model selection) happens at about ``EVALUATIONS`` checkpoints spread
evenly through the budget, at epoch ends whenever they are at least an epoch apart.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

AUTO_EPOCHS = 10  # automatic budget: ten passes over the training split ...
AUTO_FLOOR_STEPS = 300  # ... but never fewer optimizer steps than this (small training sets)
EVALUATIONS = 10  # validation checkpoints spread through the budget


def steps_per_epoch(n_train: int, batch: int) -> int:
    """Batches per pass; a last batch of a single image is dropped (BatchNorm cannot train on it)."""
    nb = n_train // batch
    rest = n_train - nb * batch
    return nb + (1 if rest >= 2 else 0)


@dataclass
class Budget:
    """How long to train and when to evaluate (dumped as ``budget`` in training_log.json and repair.json)."""

    steps_total: int
    steps_per_epoch: int
    source: str  # "auto" | "flag"
    rule: str  # one sentence: how steps_total was chosen
    eval_steps: list[int] = field(default_factory=list)
    search_steps: int = 0  # spent by the learning-rate search before the main run (in the budget, not in steps_total)

    @property
    def epochs(self) -> int:
        """Passes started over the training split (the last one may be partial)."""
        return int(math.ceil(self.steps_total / self.steps_per_epoch))

    def epoch_of(self, step: int) -> float:
        """Passes completed after ``step`` optimizer steps (an int at epoch ends)."""
        q = step / self.steps_per_epoch
        return int(q) if step % self.steps_per_epoch == 0 else round(q, 2)

    def after_search(self, steps: int, evaluations: int = EVALUATIONS) -> "Budget":
        """The budget left to the main run once a learning-rate search has spent ``steps`` of it."""
        if steps <= 0:
            return self
        left = self.steps_total - int(steps)
        return Budget(steps_total=left, steps_per_epoch=self.steps_per_epoch, source=self.source,
                      rule=f"{self.rule}; {steps} of the {self.steps_total} steps went to the learning-rate search",
                      eval_steps=eval_points(left, self.steps_per_epoch, evaluations), search_steps=int(steps))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["epochs"] = self.epochs
        d["epochs_exact"] = self.epoch_of(self.steps_total)
        return d


def eval_points(total: int, per_epoch: int, n: int = EVALUATIONS) -> list[int]:
    """About ``n`` step counts, evenly spread up to ``total`` (always included).

    When the evaluations are at least an epoch apart they are moved to the nearest epoch end,
    so the log reads in whole epochs and the RBL counts of an epoch are complete.
    """
    pts = set()
    for k in range(1, n + 1):
        s = total * k / n
        if total / n >= per_epoch:
            s = per_epoch * round(s / per_epoch)
        pts.add(int(min(total, max(1, round(s)))))
    pts.add(int(total))
    return sorted(pts)


def resolve_budget(n_train: int, batch: int, *, epochs: Optional[int], steps_total: Optional[int],
                   evaluations: int = EVALUATIONS) -> Budget:
    """The budget of a run from the flags (``epochs`` and ``steps_total`` are exclusive; both None: auto)."""
    nb = steps_per_epoch(n_train, batch)
    if steps_total is not None:
        total, source = int(steps_total), "flag"
        rule = f"--train-steps-total {total}"
    elif epochs is not None:
        total, source = int(epochs) * nb, "flag"
        rule = f"--epochs {epochs}: {epochs} x {nb} steps per epoch"
    else:
        total, source = max(AUTO_FLOOR_STEPS, AUTO_EPOCHS * nb), "auto"
        rule = (f"automatic: max({AUTO_FLOOR_STEPS} steps, {AUTO_EPOCHS} epochs x {nb} steps per epoch) "
                f"for {n_train} training images at batch {batch}")
    return Budget(steps_total=total, steps_per_epoch=nb, source=source, rule=rule,
                  eval_steps=eval_points(total, nb, evaluations))
