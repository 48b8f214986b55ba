"""Before any attack: can the model be graded on this data at all?

The verdict's not-meaningful rules (audit/checks/verdict.py, :func:`~audit.checks.verdict.clean_problems`) are
applied to a clean pass over a stratified sample of the evaluation points. When they fire, the
audit stops before the first attack with :class:`~audit.errors.UngradableModel` (exit code 4)
and a message naming the most likely cause, found by trying the usual fixes on the same points:
the label order (an assignment on the clean confusion matrix), the input normalisation (common
mean/std sets applied, or dropped when the user gave one), and input conversion (grey ↔ colour,
heavy resizing). ``--force`` runs the attacks anyway. See docs/method.md, "Stop early".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import LTDataset
from ..data.loading import Indexed, loader_options
from ..run.engine import Evaluator
from ..run.records import PointRecords
from ..errors import UngradableModel
from ..inputs import input_info
from .labels import check_label_order, clean_confusion
from ..contract.figures import wilson_interval
from ..models import LoadedModel
from ..models.wrapper import PixelClassifier
from .verdict import clean_problems, input_reasons

log = logging.getLogger(__name__)

SAMPLE = 2000  # clean points checked before the attacks (stratified over classes, in evaluation order)
NORMALISATIONS: dict[int, tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]] = {
    3: (("CIFAR-10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ("CIFAR-100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        ("ImageNet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("[-1, 1]", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))),
    1: (("MNIST", (0.1307,), (0.3081,)), ("[-1, 1]", (0.5,), (0.5,))),
}


@dataclass(frozen=True)
class Gradability:
    """The clean check's outcome: figures on the sample, the problems (empty: gradable), and the likely cause."""

    correct: int
    n: int
    problems: tuple[str, ...]
    cause: Optional[str] = None

    @property
    def gradable(self) -> bool:
        return not self.problems

    def message(self, dataset: str) -> str:
        """One line: what is wrong, the likely cause and its fix, and that no attack ran."""
        cause = self.cause or ("check the label order (--labels FILE), that --dataset is the model's data, the "
                               "preprocessing (--mean/--std, --input-size) and that the weights are the trained ones")
        return (f"the model cannot be graded on {dataset}: {'; '.join(self.problems)} (on {self.n} clean test "
                f"images). Most likely cause: {cause}. No attack was run; pass --force to run the attacks anyway")


def sample_points(eval_idx: np.ndarray, labels: np.ndarray, num_classes: int, limit: int = SAMPLE) -> np.ndarray:
    """Up to ``limit`` evaluation points, the first ones of each class in evaluation order (all when fewer)."""
    if len(eval_idx) <= limit:
        return eval_idx
    per = max(1, limit // num_classes)
    y = np.asarray(labels)[eval_idx]
    keep = np.concatenate([np.flatnonzero(y == c)[:per] for c in range(num_classes)])
    return eval_idx[np.sort(keep)]


def _clean_records(evaluator: Evaluator, data: LTDataset, indices: np.ndarray, batch_size: int,
                   workers: int) -> PointRecords:
    loader = DataLoader(Indexed(data.test, indices), batch_size=batch_size, shuffle=False,
                        **loader_options(workers, evaluator.device))
    return evaluator.cascade(loader, [], n_total=len(indices), seed=0, progress=False)


def _accuracy(evaluator: Evaluator, data: LTDataset, indices: np.ndarray, batch_size: int, workers: int) -> float:
    records = _clean_records(evaluator, data, indices, batch_size, workers)
    return float(records.clean_correct.mean()) if len(indices) else 0.0


def _normalisation_cause(model: LoadedModel, evaluator: Evaluator, data: LTDataset, indices: np.ndarray,
                         now: float, batch_size: int, workers: int) -> Optional[str]:
    """The fix when another normalisation makes the model work: clearly better accuracy on the same points."""
    module = model.module
    if not isinstance(module, PixelClassifier) or not model.gradient_access:
        return None  # black-box: onnxruntime applies the preprocessing; nothing to try in torch
    pre = module.preprocessing
    given = pre.mean is not None
    trials = [("no normalisation", None, None)] if given else list(NORMALISATIONS.get(pre.input_size[0], ()))
    plain = Evaluator(module, evaluator.num_classes, evaluator.input_size, evaluator.device, strict_outputs=False)
    saved = (module.mean, module.std)
    best: tuple[float, str, Any, Any] = (now, "", None, None)
    try:
        for name, mean, std in trials:
            module.preprocessing = replace(pre, mean=mean, std=std)
            module.mean, module.std = _buffer(mean, 0.0, saved[0]), _buffer(std, 1.0, saved[1])
            acc = _accuracy(plain, data, indices, batch_size, workers)
            if acc > best[0]:
                best = (acc, name, mean, std)
    finally:
        module.preprocessing = pre
        module.mean, module.std = saved
    acc, name, mean, std = best
    n = len(indices)
    if not name or wilson_interval(round(acc * n), n)[0] <= wilson_interval(round(now * n), n)[1]:
        return None
    if mean is None:
        return (f"the model normalises its input itself: clean accuracy is {100 * now:.1f}% with the given "
                f"--mean/--std but {100 * acc:.1f}% without them; drop --mean and --std")
    values = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
    return (f"the model expects normalised input: clean accuracy is {100 * now:.1f}% on [0, 1] pixels but "
            f"{100 * acc:.1f}% with {name} normalisation; pass --mean {values(mean)} --std {values(std)}, or the "
            "values it was trained with")


def _buffer(values: Optional[Sequence[float]], default: float, like: torch.Tensor) -> torch.Tensor:
    """A (1, C, 1, 1) normalisation buffer of ``values`` (or ``default``) on the wrapper's device."""
    return torch.tensor(values if values else (default,), dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)


def check_gradable(evaluator: Evaluator, model: LoadedModel, data: LTDataset, eval_idx: np.ndarray, *,
                   batch_size: int, workers: int = 0) -> Gradability:
    """The not-meaningful rules on a clean pass over :func:`sample_points`, with the most likely cause."""
    names = list(data.class_names)
    labels = np.asarray(data.test_labels)
    indices = sample_points(eval_idx, labels, len(names))
    records = _clean_records(evaluator, data, indices, batch_size, workers)
    conf = clean_confusion(records.label, records.clean_pred, len(names))
    label_check = check_label_order(conf, names, model.info.get("output_order"))
    k, n = int(records.clean_correct.sum()), len(indices)
    problems = clean_problems(k, n, conf.tolist(), names, label_check) if n else []
    if not problems:
        return Gradability(k, n, ())
    cause = None
    if label_check:
        mapping = ", ".join(m.class_name for m in label_check.mapping)
        cause = (f"the label order: {100 * label_check.accuracy_mapped:.1f}% of the answers are right once the "
                 f"outputs are re-mapped; pass --labels FILE listing the model's outputs in order ({mapping})")
    cause = cause or _normalisation_cause(model, evaluator, data, indices, k / n, batch_size, workers)
    if cause is None:
        inp = input_info(data.info.get("native_shape") or data.image_shape, model.preprocessing.input_size)
        converted = input_reasons(inp)
        if converted:
            cause = f"{converted[0]}; check --dataset (and --input-size)"
    return Gradability(k, n, tuple(problems), cause)


def stop_if_ungradable(evaluator: Evaluator, model: LoadedModel, data: LTDataset, eval_idx: np.ndarray, *,
                       dataset_name: str, batch_size: int, workers: int = 0) -> None:
    """Raise :class:`UngradableModel` (exit code 4) before any attack when the model cannot be graded."""
    result = check_gradable(evaluator, model, data, eval_idx, batch_size=batch_size, workers=workers)
    if not result.gradable:
        raise UngradableModel(result.message(dataset_name))
    log.debug("clean check before the attacks: %d of %d correct", result.correct, result.n)
