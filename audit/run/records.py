"""Per-point records of an audit (what the engine produces and the metrics, exports and merge read)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class PointRecords:
    """Per-point outcome of an audit, column-wise."""

    index: np.ndarray
    label: np.ndarray
    clean_pred: np.ndarray
    pred: np.ndarray  # (A, N): prediction after each attack (clean prediction where not broken)
    step: np.ndarray  # (A, N): step at which each attack broke the point, -1 if not
    attack_names: list[str]
    attack_seconds: list[float]
    clean_seconds: float
    zero_grad: list[int]
    attacked: list[int]
    rescored: int = 0
    rescore_disagreed: int = 0
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # (A, N) bool: the input gradient was exactly zero at the attack's first step (indexed like ``index``)
    zero_grad_points: Optional[np.ndarray] = None
    # (N,) largest |logit difference| between two identical clean forward passes (randomised model check)
    logit_jitter: Optional[np.ndarray] = None
    # which runtime's verdict counts: "model", "onnxruntime" (ONNX) or "fp32" (--amp bf16 re-check)
    verified_by: str = "model"
    # per attack: points the attack left robust on the attacked model but the verifying runtime misclassifies
    survivors_broken: list[int] = field(default_factory=list)
    # (A, N) bool: the point carried on past Square's probe to the attack's full budget
    carried_points: Optional[np.ndarray] = None
    # (A, N) bool: the point got Square's extra independent runs (gradients blind there, still robust after one)
    rerun_points: Optional[np.ndarray] = None
    # calibration (audit/calibration.py, set after the cascade): (N,) clean confidence (max softmax); with
    # --calibration-steps > 0 also the attacked prediction, the confidence the procedure reached, and whether it
    # misclassified a point the cascade left robust / did not reach the class the cascade assigned
    cal_clean_conf: Optional[np.ndarray] = None
    cal_attacked_pred: Optional[np.ndarray] = None
    cal_attacked_conf: Optional[np.ndarray] = None
    cal_flipped: Optional[np.ndarray] = None
    cal_unreached: Optional[np.ndarray] = None
    calibration_seconds: float = 0.0

    @property
    def clean_correct(self) -> np.ndarray:
        return self.clean_pred == self.label

    def broken(self) -> np.ndarray:
        """(A, N) bool: attack a broke the point."""
        return self.step >= 0

    def robust_masks(self, independent: bool) -> dict[str, np.ndarray]:
        """Per attack name (and ``worst_case``): which points stayed robust.

        Cascade: cumulative after each attack in order. Independent: each attack on its own.
        """
        correct = self.clean_correct
        broken = self.broken()
        out: dict[str, np.ndarray] = {}
        acc = np.zeros_like(correct)
        for a, name in enumerate(self.attack_names):
            acc = acc | broken[a]
            out[name] = correct & ~(broken[a] if independent else acc)
        out["worst_case"] = correct & ~broken.any(0)
        return out

    def sanity_warnings(self, independent: bool) -> list[str]:
        """AutoAttack-style check: in head-to-head mode, a weak attack must not beat a strong one.

        Temperature-PGD is meant to find what PGD misses; when PGD breaks clearly more points
        than a Temperature-PGD run on the same points, that temperature is the weaker loss here.
        """
        if not independent or "pgd" not in self.attack_names:
            return []
        broken = self.broken()
        n_pgd = int(broken[self.attack_names.index("pgd")].sum())
        out = []
        for a, name in enumerate(self.attack_names):
            if not name.startswith("temp-pgd"):
                continue
            n = int(broken[a].sum())
            if n_pgd - n > max(2, 0.01 * len(self.label)):
                out.append(f"{name} broke fewer points than plain PGD ({n} vs {n_pgd}) on the same points: "
                           "this temperature is a weaker loss for this model; keep pgd in the cascade, sweep "
                           "--temperature and report the worst case")
        return out

    def to_json(self) -> dict:
        d = {"index": self.index.tolist(), "label": self.label.tolist(), "clean_pred": self.clean_pred.tolist()}
        d["attacks"] = {
            name: {"pred": self.pred[a].tolist(), "step": self.step[a].tolist()}
            for a, name in enumerate(self.attack_names)
        }
        if self.cal_clean_conf is not None:  # per point, so every calibration figure can be re-computed
            d["calibration"] = {name: (None if v is None else v.tolist()) for name, v in (
                ("clean_conf", self.cal_clean_conf), ("attacked_pred", self.cal_attacked_pred),
                ("attacked_conf", self.cal_attacked_conf), ("flipped", self.cal_flipped),
                ("unreached", self.cal_unreached))}
        return d
