"""What to try next when a repair did not measurably help, read off what happened in the training log.

Each piece of advice has a cause in the log (docs/repair.md, "Advice that follows from what
happened"); "try a longer budget" is given only when robustness on the selection images was still
rising at the last evaluation and the clean accuracy held.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from audit.contract.repair import Evaluation, TrainingLog

from .selection import MIN_SELECTION_PER_CLASS

RISING = 0.01  # the last evaluation beats the best before it by this much: "still rising"


def _trained(log: TrainingLog) -> list[Evaluation]:
    return [e for e in log.epochs if e.step]


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def next_steps(log: TrainingLog | Mapping[str, Any], *, method: str, lr: Optional[float], steps: int,
               selection_counts: Sequence[int], source: str, floor: Optional[float],
               eps_schedule: str = "warmup") -> list[str]:
    """Advice for a repair that did not measurably improve the model, most telling cause first."""
    log = log if isinstance(log, TrainingLog) else TrainingLog.from_json(log)
    entries, out = _trained(log), []
    start = log.epochs[0] if log.epochs else Evaluation()
    cleans = [e.val_clean_acc for e in entries if e.val_clean_acc is not None]
    robs = [e.val_robust_acc for e in entries if e.val_robust_acc is not None]
    rob0, clean0 = start.val_robust_acc, start.val_clean_acc
    divergences = log.divergences
    if divergences:
        d = divergences[-1]
        out.append(f"Start at a lower learning rate (--lr {d.lr_to:.3g}): training diverged at "
                   f"{len(divergences)} point(s) ({d.why})")
    if cleans and floor is not None and cleans[-1] < floor and clean0 is not None:
        out.append(f"Lower the learning rate (--lr {(lr or 0.05) / 4:.3g}) or shorten the budget "
                   f"(--train-steps-total {max(1, steps // 2)}): clean accuracy on the selection images fell from "
                   f"{_pct(clean0)} to {_pct(cleans[-1])} as training went on, below the floor {_pct(floor)}")
    if robs and rob0 is not None and max(robs) <= rob0 + 1e-12:
        other = "constant" if eps_schedule == "warmup" else "warmup"
        stronger = "trades-bsl" if method != "trades-bsl" else "reat"
        out.append(f"Try a stronger method or another radius schedule (--method {stronger}, or --eps-schedule "
                   f"{other}): robust accuracy on the selection images never rose above the input's {_pct(rob0)} "
                   f"with --method {method}")
    elif len(robs) >= 2 and robs[-1] >= max(robs[:-1]) + RISING and (floor is None or cleans[-1:] >= [floor]):
        out.append(f"Try a longer budget (--train-steps-total {2 * steps}): robust accuracy on the selection images "
                   f"was still rising at the last evaluation ({_pct(max(robs[:-1]))} → {_pct(robs[-1])})")
    present = [int(c) for c in selection_counts if c]
    if present and min(present) < MIN_SELECTION_PER_CLASS:
        where = ("give a validation folder with --val-root DIR" if source == "evaluation"
                 else "add images to the --val-root folder")
        out.append(f"Select on more images ({where}; at least {MIN_SELECTION_PER_CLASS} per class): with "
                   f"{min(present)} in some classes the choice of checkpoint is noisy")
    return out or [f"Try another --method than {method}: training was healthy but did not make the model "
                   "measurably more robust on the audited points"]
