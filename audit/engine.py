"""The cascade over a stream of batches: clean scoring, attacks on still-robust points, records.

Memory stays flat: only per-point integers and a few example images are kept.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .attacks import Attack, PointNoise
from .attacks.base import logit_margin
from .errors import DatasetError, ModelLoadError
from .models.wrapper import Scorer, ScorerClassifier

log = logging.getLogger(__name__)


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
        return d


def adapt_images(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Match channels (grey <-> RGB) and spatial size (bilinear, antialiased) of the model input."""
    c, h, w = int(size[0]), int(size[1]), int(size[2])
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and c == 1:
            x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        else:
            raise DatasetError(f"images have {x.shape[1]} channels but the model takes {c}; use a model for this data")
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x.contiguous()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class _ExampleKeeper:
    """Keeps the first few broken points of each class (bounded memory)."""

    def __init__(self, num_classes: int, per_class: int) -> None:
        self.per_class = per_class if num_classes <= 100 else min(per_class, 1)
        self.count = np.zeros(num_classes, dtype=np.int64)
        self.items: list[tuple[np.ndarray, np.ndarray, int, int, int, int]] = []

    def offer(self, clean: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
              attack: int, indices: torch.Tensor) -> None:
        if self.per_class <= 0:
            return
        for i in range(len(labels)):
            c = int(labels[i])
            if self.count[c] < self.per_class:
                self.count[c] += 1
                self.items.append((_to_uint8(clean[i]), _to_uint8(adv[i]), c, int(preds[i]), attack, int(indices[i])))

    def arrays(self) -> dict[str, np.ndarray]:
        if not self.items:
            return {}
        return {
            "clean": np.stack([it[0] for it in self.items]),
            "adv": np.stack([it[1] for it in self.items]),
            "label": np.array([it[2] for it in self.items], dtype=np.int64),
            "adv_pred": np.array([it[3] for it in self.items], dtype=np.int64),
            "attack": np.array([it[4] for it in self.items], dtype=np.int64),
            "index": np.array([it[5] for it in self.items], dtype=np.int64),
        }


def _looks_like_probabilities(logits: torch.Tensor) -> bool:
    return bool(((logits >= 0) & (logits <= 1)).all()) and bool(
        torch.allclose(logits.sum(1), torch.ones(logits.shape[0], device=logits.device), atol=1e-3))


def run_cascade(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    attacks: Sequence[Attack],
    *,
    n_total: int,
    num_classes: int,
    input_size: Sequence[int],
    device: torch.device,
    seed: int,
    independent: bool = False,
    reference_scorer: Optional[Scorer] = None,
    examples_per_class: int = 2,
    amp: str = "off",
    progress: bool = True,
) -> PointRecords:
    """Score clean, then run ``attacks`` in order on the points each leaves robust.

    ``batches`` yields (pixels N×C×H×W in [0, 1], labels, test-set indices). With a
    ``reference_scorer`` (onnxruntime for ONNX models) the clean predictions and every
    attack's final point, fooled or not, are scored by it and only its verdict counts;
    score-based attacks (Square) query it directly. With ``amp="bf16"`` and no reference
    scorer, every verdict is re-checked in fp32.
    """
    A = len(attacks)
    idx_all = np.empty(n_total, np.int64)
    lab_all = np.empty(n_total, np.int64)
    clean_all = np.empty(n_total, np.int64)
    pred_all = np.empty((A, n_total), np.int64)
    step_all = np.full((A, n_total), -1, np.int64)
    secs = [0.0] * A
    zero_grad = [0] * A
    attacked = [0] * A
    zg_all = np.zeros((A, n_total), bool)
    jitter_all = np.zeros(n_total, np.float32)
    surv_broken = [0] * A
    carried_all = np.zeros((A, n_total), bool)  # points that went past Square's probe
    clean_s = 0.0
    rescored = disagreed = 0
    keeper = _ExampleKeeper(num_classes, examples_per_class)
    warnings: list[str] = []
    autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None
    if amp == "bf16":
        autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)  # noqa: E731

    def ref_pred(x: torch.Tensor) -> torch.Tensor:
        logits = reference_scorer(x.detach().float().cpu().numpy())  # type: ignore[misc]
        return torch.from_numpy(np.asarray(logits)).argmax(1).to(device)

    def fp32_pred(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x.detach().float()).argmax(1)

    verify: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    verified_by = "model"
    if reference_scorer is not None:
        verify, verified_by = ref_pred, "onnxruntime"
    elif amp == "bf16":
        verify, verified_by = fp32_pred, "fp32"
    ref_model = ScorerClassifier(reference_scorer, device) if reference_scorer is not None else None

    pos = 0
    n_robust = 0
    bar = tqdm(total=n_total, unit="pt", file=sys.stderr, disable=not progress, dynamic_ncols=True,
               desc="audit", leave=False)
    try:
        for b, (x, y, ids) in enumerate(batches):
            x = adapt_images(x.to(device, non_blocking=True).float(), input_size)
            y = y.to(device).long()
            n = x.shape[0]
            sl = slice(pos, pos + n)
            t0 = time.perf_counter()
            with torch.no_grad():
                try:
                    logits = model(x)
                    again = model(x)
                except Exception as exc:  # shape errors surface as RuntimeError, AssertionError, ...
                    raise ModelLoadError(
                        f"the model cannot run on inputs of size {tuple(x.shape[1:])} ({str(exc).splitlines()[0]}); "
                        "pass --input-size the model was trained at") from exc
            if logits.dim() != 2 or logits.shape[1] != num_classes:
                raise ModelLoadError(f"the model returns shape {tuple(logits.shape)}, expected (batch, {num_classes})")
            if not bool(torch.isfinite(logits).all()):
                raise ModelLoadError("the model returns NaN or infinite outputs on evaluation images; check its "
                                     "weights and --mean/--std")
            if b == 0 and _looks_like_probabilities(logits):
                warnings.append("the model outputs probabilities (rows sum to 1), not logits: attack gradients "
                                "are weak and robust accuracy is overestimated; export the logits")
            jitter_all[sl] = (logits.float() - again.float()).abs().amax(1).cpu().numpy()
            clean = ref_pred(x) if reference_scorer else logits.argmax(1)
            clean_s += time.perf_counter() - t0
            correct = clean == y
            alive = correct.clone()
            # per point, the lowest margin the gradient attacks have reached so far (Square's probe uses it),
            # and whether any of them had a non-zero gradient there (else that margin says nothing)
            best_margin = logit_margin(logits.float(), y)
            informed = torch.zeros(n, dtype=torch.bool, device=device)
            gradient_ran = False
            pred_b = clean.unsqueeze(0).repeat(A, 1)
            step_b = torch.full((A, n), -1, dtype=torch.long, device=device)
            for a, attack in enumerate(attacks):
                target = correct if independent else alive
                sel = target.nonzero().squeeze(1)
                if sel.numel() == 0:
                    continue
                t0 = time.perf_counter()
                noise = PointNoise.for_points(seed, attack.spec.name, ids[sel.cpu()], device)
                on_ref = attack.gradient_free and ref_model is not None
                to_beat = None
                if gradient_ran and not independent:
                    to_beat = torch.where(informed[sel], best_margin[sel], torch.full_like(best_margin[sel], float("inf")))
                out = attack.run(ref_model if on_ref else model, x[sel], y[sel], noise=noise, early_stop=True,
                                 autocast=None if on_ref else autocast, margin_to_beat=to_beat)
                if out.min_margin is not None and not independent:
                    gradient_ran = True
                    best_margin[sel] = torch.minimum(best_margin[sel], out.min_margin.to(best_margin))
                    informed[sel] |= ~out.zero_grad_mask.to(device)
                fooled = out.step >= 0
                adv_pred = out.pred
                step = out.step
                if verify is not None and not on_ref:
                    # every verdict on the deployed runtime: fooled points and survivors alike
                    rp = verify(out.x_adv)
                    rescored += int(sel.numel())
                    confirmed = rp != y[sel]
                    disagreed += int((fooled & ~confirmed).sum())
                    only_there = confirmed & ~fooled
                    # a near miss the runtime rejected: Square gets its full budget there
                    rejected = sel[fooled & ~confirmed]
                    informed[rejected], best_margin[rejected] = False, float("inf")
                    surv_broken[a] += int(only_there.sum())
                    step = torch.where(only_there, torch.full_like(step, attack.budget), step)
                    fooled, adv_pred = confirmed, rp
                if out.carried_on is not None:
                    carried_all[a, pos + sel.cpu().numpy()] = out.carried_on.cpu().numpy()
                secs[a] += time.perf_counter() - t0
                zero_grad[a] += out.zero_grad
                zg_all[a, pos + sel.cpu().numpy()] = out.zero_grad_mask.cpu().numpy()
                attacked[a] += int(sel.numel())
                br = sel[fooled]
                pred_b[a, br] = adv_pred[fooled]
                step_b[a, br] = step[fooled]
                alive[br] = False
                if bool(fooled.any()):
                    keeper.offer(x[br], out.x_adv[fooled], y[br], adv_pred[fooled], a, ids.to(device)[br])
            idx_all[sl] = ids.numpy()
            lab_all[sl] = y.cpu().numpy()
            clean_all[sl] = clean.cpu().numpy()
            pred_all[:, sl] = pred_b.cpu().numpy()
            step_all[:, sl] = step_b.cpu().numpy()
            pos += n
            n_robust += int(alive.sum())
            bar.set_postfix(robust=f"{n_robust / max(pos, 1):.1%}", refresh=False)  # before update: it refreshes
            bar.update(n)
        bar.set_postfix(robust=f"{n_robust / max(pos, 1):.1%}", refresh=True)  # the final figure, never stale
    finally:
        bar.close()
    if pos != n_total:
        raise DatasetError(f"expected {n_total} evaluation images, the loader gave {pos}")
    for a, attack in enumerate(attacks):
        if attacked[a] and zero_grad[a] / attacked[a] > 0.05:
            warnings.append(
                f"{attack.spec.name}: the input gradient was exactly zero for {zero_grad[a]} of {attacked[a]} "
                "attacked points; the model may saturate or mask gradients, so its robust accuracy is an upper "
                "bound (try Temperature-PGD with T > 1)")
    runtime = "onnxruntime" if reference_scorer is not None else "the fp32 model"
    if verify is not None and disagreed:
        warnings.append(f"{runtime} rejected {disagreed} of the adversarial examples found on the attacked model "
                        f"({rescored} final points re-checked); they count as robust")
    if verify is not None and sum(surv_broken):
        warnings.append(f"{runtime} misclassifies {sum(surv_broken)} final points that survived the attack on the "
                        "attacked model; they count as broken")
    return PointRecords(idx_all, lab_all, clean_all, pred_all, step_all, [a.spec.name for a in attacks], secs,
                        clean_s, zero_grad, attacked, rescored, disagreed, keeper.arrays(), warnings,
                        zero_grad_points=zg_all, logit_jitter=jitter_all, verified_by=verified_by,
                        survivors_broken=surv_broken, carried_points=carried_all)
