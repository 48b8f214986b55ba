"""The cascade over a stream of batches: clean scoring, attacks on still-robust points, records.

Memory stays flat: only per-point integers and a few example images are kept.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..attacks import Attack, PointNoise
from ..attacks.base import logit_margin
from . import distributed
from ..errors import DatasetError, ModelLoadError
from .merge import concat_records
from ..models.wrapper import Scorer, ScorerClassifier
from .progress import CascadeProgress, Counted
from .records import PointRecords

log = logging.getLogger(__name__)


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


@dataclass
class _Tally:
    """What a cascade accumulates over its batches (column-wise, like :class:`PointRecords`)."""

    n_total: int
    n_attacks: int
    num_classes: int
    examples_per_class: int

    def __post_init__(self) -> None:
        A, n = self.n_attacks, self.n_total
        self.index = np.empty(n, np.int64)
        self.label = np.empty(n, np.int64)
        self.clean = np.empty(n, np.int64)
        self.pred = np.empty((A, n), np.int64)
        self.step = np.full((A, n), -1, np.int64)
        self.zero_grad_points = np.zeros((A, n), bool)
        self.carried = np.zeros((A, n), bool)  # points that went past Square's probe
        self.reran = np.zeros((A, n), bool)  # points that got Square's reruns
        self.jitter = np.zeros(n, np.float32)
        self.seconds = [0.0] * A
        self.zero_grad = [0] * A
        self.attacked = [0] * A
        self.survivors_broken = [0] * A
        self.clean_s = 0.0
        self.rescored = self.disagreed = 0
        self.pos = self.n_robust = 0
        self.keeper = _ExampleKeeper(self.num_classes, self.examples_per_class)
        self.warnings: list[str] = []
        self.non_finite = [np.zeros(self.num_classes, np.int64) for _ in range(A)]  # broken with NaN/inf logits


@dataclass
class Evaluator:
    """How points are scored: the model, where it runs, at which precision, and which runtime's verdict counts.

    The one evaluation path: the audit, the robustness curve, the sanity checks, the benches and
    repair's validation all score points through :meth:`cascade`. With a ``reference_scorer``
    (onnxruntime for ONNX models) the clean predictions and every attack's final point, fooled or
    not, are scored by it and only its verdict counts; score-based attacks (Square) query it
    directly. With ``amp="bf16"`` and no reference scorer, every verdict is re-checked in fp32.
    ``strict_outputs=False`` (repair's validation of a model being trained) counts non-finite
    logits as wrong answers instead of refusing the model.
    """

    model: torch.nn.Module
    num_classes: int
    input_size: Sequence[int]
    device: torch.device
    amp: str = "off"
    reference_scorer: Optional[Scorer] = None
    strict_outputs: bool = True
    dist: Optional[distributed.Dist] = field(default_factory=distributed.current, repr=False)  # torchrun: this rank

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """The points this process scores: all of them in a plain run, this rank's contiguous block under torchrun."""
        if self.dist is None:
            return indices
        lo, hi = distributed.shard_bounds(len(indices), self.dist.rank, self.dist.world_size)
        return indices[lo:hi]

    def join(self, records: PointRecords, *, examples_per_class: int,
             on_wait: Optional[Callable[[], None]] = None) -> Optional[PointRecords]:
        """The whole run's records: ``records`` in a plain run; under torchrun, once every rank finished its shard,
        the shards joined in rank order on rank 0 (None on the others). A rank that failed makes this raise
        :class:`~audit.run.distributed.PeerFailed`."""
        if self.dist is None:
            return records
        distributed.wait_for_peers("shards", on_wait)
        parts = distributed.gather_to_main(records)
        return concat_records(parts, examples_per_class=examples_per_class) if parts is not None else None

    @property
    def autocast(self) -> Optional[Callable[[], contextlib.AbstractContextManager]]:
        if self.amp != "bf16":
            return None
        return lambda: torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @property
    def verified_by(self) -> str:
        """Whose verdict counts: "onnxruntime", "fp32" (a bf16 run re-checked) or "model"."""
        return "onnxruntime" if self.reference_scorer is not None else "fp32" if self.amp == "bf16" else "model"

    def reference_pred(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.reference_scorer(x.detach().float().cpu().numpy())  # type: ignore[misc]
        return torch.from_numpy(np.asarray(logits)).argmax(1).to(self.device)

    def verify(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The verifying runtime's predictions for final points, or None when the attacked model's own count."""
        if self.reference_scorer is not None:
            return self.reference_pred(x)
        if self.amp == "bf16":
            with torch.no_grad():
                return self.model(x.detach().float()).argmax(1)
        return None

    def cascade(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], attacks: Sequence[Attack],
                *, n_total: int, seed: int, independent: bool = False, examples_per_class: int = 2,
                progress: bool = False) -> PointRecords:
        """Score clean, then run ``attacks`` in order on the points each leaves robust (all correct points
        when ``independent``). ``batches`` yields (pixels N×C×H×W in [0, 1], labels, test-set indices);
        each point's attack noise is seeded by (``seed``, attack, index), so batches do not matter. The model
        is scored in the mode it is in (callers put it in eval mode; the randomised-model check needs that)."""
        tally = _Tally(n_total, len(attacks), self.num_classes, examples_per_class)
        shown = CascadeProgress([a.spec.name for a in attacks], [a.budget for a in attacks], n_total, enabled=progress,
                                units=["query" if a.gradient_free else "iteration" for a in attacks])
        for b, (x, y, ids) in enumerate(batches):
            self._batch(tally, b, x, y, ids, attacks, seed, independent, shown)
        shown.close()
        if tally.pos != n_total:
            raise DatasetError(f"expected {n_total} evaluation images, the loader gave {tally.pos}")
        return self._records(tally, attacks)

    def _clean(self, tally: _Tally, b: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean logits (run twice: the difference shows a randomised model), checked, and the predictions
        whose verdict counts."""
        with torch.no_grad():
            try:
                logits = self.model(x)
                again = self.model(x)
            except Exception as exc:  # shape errors surface as RuntimeError, AssertionError, ...
                raise ModelLoadError(
                    f"the model cannot run on inputs of size {tuple(x.shape[1:])} ({str(exc).splitlines()[0]}); "
                    "pass --input-size the model was trained at") from exc
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ModelLoadError(f"the model returns shape {tuple(logits.shape)}, expected (batch, {self.num_classes})")
        if self.strict_outputs and not bool(torch.isfinite(logits).all()):
            raise ModelLoadError("the model returns NaN or infinite outputs on evaluation images; check its "
                                 "weights and --mean/--std")
        if b == 0 and _looks_like_probabilities(logits):
            tally.warnings.append("the model outputs probabilities (rows sum to 1), not logits: attack gradients "
                                  "are weak and robust accuracy is overestimated; export the logits")
        sl = slice(tally.pos, tally.pos + x.shape[0])
        tally.jitter[sl] = (logits.float() - again.float()).abs().amax(1).cpu().numpy()
        return logits, (self.reference_pred(x) if self.reference_scorer is not None else logits.argmax(1))

    def _batch(self, tally: _Tally, b: int, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
               attacks: Sequence[Attack], seed: int, independent: bool, shown: CascadeProgress) -> None:
        x = adapt_images(x.to(self.device, non_blocking=True).float(), self.input_size)
        y = y.to(self.device).long()
        n, A = x.shape[0], len(attacks)
        t0 = time.perf_counter()
        logits, clean = self._clean(tally, b, x)
        tally.clean_s += time.perf_counter() - t0
        correct = clean == y
        shown.scored_clean(n, int(correct.sum()))
        alive = correct.clone()
        # per point, the lowest margin the gradient attacks have reached so far (Square's probe uses it),
        # and whether any of them had a non-zero gradient there (else that margin says nothing)
        margins = _Margins(logit_margin(logits.float(), y), torch.zeros(n, dtype=torch.bool, device=self.device))
        pred_b = clean.unsqueeze(0).repeat(A, 1)
        step_b = torch.full((A, n), -1, dtype=torch.long, device=self.device)
        for a, attack in enumerate(attacks):
            sel = (correct if independent else alive).nonzero().squeeze(1)
            if sel.numel():
                shown.begin(a, int(sel.numel()))
                before = int(alive.sum())
                self._attack(tally, a, attack, x, y, ids, sel, seed, independent, margins, pred_b, step_b, alive,
                             shown.forward)
                shown.end(a, before - int(alive.sum()) if not independent else int((step_b[a] >= 0).sum()))
        sl = slice(tally.pos, tally.pos + n)
        tally.index[sl], tally.label[sl], tally.clean[sl] = ids.numpy(), y.cpu().numpy(), clean.cpu().numpy()
        tally.pred[:, sl], tally.step[:, sl] = pred_b.cpu().numpy(), step_b.cpu().numpy()
        tally.pos += n
        tally.n_robust += int(alive.sum())
        shown.batch_done(int(alive.sum()))

    def _attack(self, tally: _Tally, a: int, attack: Attack, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                sel: torch.Tensor, seed: int, independent: bool, margins: "_Margins", pred_b: torch.Tensor,
                step_b: torch.Tensor, alive: torch.Tensor, on_forward: Callable[[], None]) -> None:
        """One attack on the selected points of a batch; its verdicts (re-checked where a runtime verifies)."""
        t0 = time.perf_counter()
        noise = PointNoise.for_points(seed, attack.spec.name, ids[sel.cpu()], self.device)
        ref_model = ScorerClassifier(self.reference_scorer, self.device) if self.reference_scorer is not None else None
        on_ref = attack.gradient_free and ref_model is not None
        to_beat = None
        if margins.gradient_ran and not independent:
            to_beat = torch.where(margins.informed[sel], margins.best[sel], torch.full_like(margins.best[sel],
                                                                                             float("inf")))
        attacked = Counted(ref_model if on_ref else self.model, on_forward)  # each forward pass: one iteration
        out = attack.run(attacked, x[sel], y[sel], noise=noise, early_stop=True,
                         autocast=None if on_ref else self.autocast, margin_to_beat=to_beat)
        if out.min_margin is not None and not independent:
            margins.gradient_ran = True
            margins.best[sel] = torch.minimum(margins.best[sel], out.min_margin.to(margins.best))
            margins.informed[sel] |= ~out.zero_grad_mask.to(self.device)
        fooled, adv_pred, step = out.step >= 0, out.pred, out.step
        rp = None if on_ref else self.verify(out.x_adv)
        if rp is not None:  # every verdict on the deployed runtime: fooled points and survivors alike
            tally.rescored += int(sel.numel())
            confirmed = rp != y[sel]
            tally.disagreed += int((fooled & ~confirmed).sum())
            only_there = confirmed & ~fooled
            rejected = sel[fooled & ~confirmed]  # a near miss the runtime rejected: Square gets its full budget
            margins.informed[rejected], margins.best[rejected] = False, float("inf")
            tally.survivors_broken[a] += int(only_there.sum())
            step = torch.where(only_there, torch.full_like(step, attack.budget), step)
            fooled, adv_pred = confirmed, rp
        cols = tally.pos + sel.cpu().numpy()
        if out.carried_on is not None:
            tally.carried[a, cols] = out.carried_on.cpu().numpy()
        if out.reran is not None:
            tally.reran[a, cols] = out.reran.cpu().numpy()
        tally.seconds[a] += time.perf_counter() - t0
        tally.zero_grad[a] += out.zero_grad
        tally.zero_grad_points[a, cols] = out.zero_grad_mask.cpu().numpy()
        tally.attacked[a] += int(sel.numel())
        br = sel[fooled]
        pred_b[a, br] = adv_pred[fooled]
        step_b[a, br] = step[fooled]
        alive[br] = False
        if bool(fooled.any()):
            tally.keeper.offer(x[br], out.x_adv[fooled], y[br], adv_pred[fooled], a, ids.to(self.device)[br])
            self._count_non_finite(tally, a, out.x_adv[fooled], y[br])

    def _count_non_finite(self, tally: _Tally, a: int, x_adv: torch.Tensor, y: torch.Tensor) -> None:
        """Broken points where the model's logits are NaN or infinite: counted per class, never silently."""
        with torch.no_grad():
            bad = ~torch.isfinite(self.model(x_adv.detach().float())).all(1)
        if bool(bad.any()):
            tally.non_finite[a] += np.bincount(y[bad].cpu().numpy(), minlength=self.num_classes)

    def _records(self, t: _Tally, attacks: Sequence[Attack]) -> PointRecords:
        for a, attack in enumerate(attacks):
            if t.attacked[a] and t.zero_grad[a] / t.attacked[a] > 0.05:
                t.warnings.append(
                    f"{attack.spec.name}: the input gradient was exactly zero for {t.zero_grad[a]} of {t.attacked[a]} "
                    "attacked points; the model may saturate or mask gradients, so its robust accuracy is an upper "
                    "bound (try Temperature-PGD with T > 1)")
        for a, attack in enumerate(attacks):
            if t.non_finite[a].any():
                classes = ", ".join(f"class {c} ({int(k)})" for c, k in enumerate(t.non_finite[a]) if k)
                t.warnings.append(
                    f"{attack.spec.name}: {int(t.non_finite[a].sum())} points count as broken only because the model "
                    f"returns NaN or infinite logits at the perturbed image ({classes}); the model is numerically "
                    "unstable within the budget: fix it (e.g. a division or log without a guard) before trusting "
                    "its robust accuracy")
        verifying = self.verified_by != "model"
        runtime = "onnxruntime" if self.reference_scorer is not None else "the fp32 model"
        if verifying and t.disagreed:
            t.warnings.append(f"{runtime} rejected {t.disagreed} of the adversarial examples found on the attacked "
                              f"model ({t.rescored} final points re-checked); they count as robust")
        if verifying and sum(t.survivors_broken):
            t.warnings.append(f"{runtime} misclassifies {sum(t.survivors_broken)} final points that survived the "
                              "attack on the attacked model; they count as broken")
        return PointRecords(t.index, t.label, t.clean, t.pred, t.step, [a.spec.name for a in attacks], t.seconds,
                            t.clean_s, t.zero_grad, t.attacked, t.rescored, t.disagreed, t.keeper.arrays(),
                            t.warnings, zero_grad_points=t.zero_grad_points, logit_jitter=t.jitter,
                            verified_by=self.verified_by, survivors_broken=t.survivors_broken,
                            carried_points=t.carried, rerun_points=t.reran)


@dataclass
class _Margins:
    """Per point of a batch: the lowest margin the gradient attacks reached, and whether it means anything."""

    best: torch.Tensor
    informed: torch.Tensor
    gradient_ran: bool = False
