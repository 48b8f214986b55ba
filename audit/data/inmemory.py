"""A dataset object from Python (a torch ``Dataset`` or ``DataLoader``) as the audit's :class:`LTDataset`.

This is how a notebook audits its own data (docs/python_api.md): items are ``(image, label)``
with the image a C x H x W tensor of pixels in [0, 1] (what ``torchvision.transforms.ToTensor``
gives) and the label a class index. A ``DataLoader`` contributes its ``dataset`` (the audit
batches, orders and shards the points itself, so results do not depend on the loader's batch
size or shuffling).
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..bounds import MAX_CLASSES
from ..errors import DatasetError
from .core import LTDataset

__all__ = ["from_torch", "is_dataset_object"]

log = logging.getLogger(__name__)


def is_dataset_object(value: Any) -> bool:
    """True for what :func:`from_torch` takes (a map-style ``Dataset``, a ``DataLoader``, an ``LTDataset``)."""
    return isinstance(value, (Dataset, DataLoader, LTDataset))


def _labels_of(ds: Dataset, n: int) -> np.ndarray:
    """The labels without decoding images when the dataset lists them (``targets``, torchvision's convention)."""
    targets = getattr(ds, "targets", None)
    if targets is not None and len(targets) == n:
        return np.asarray(torch.as_tensor(targets).cpu().numpy(), dtype=np.int64).reshape(-1)
    return np.asarray([int(_item(ds, i)[1]) for i in range(n)], dtype=np.int64)


def _item(ds: Dataset, i: int) -> tuple[torch.Tensor, Any]:
    item = ds[i]
    if not isinstance(item, (tuple, list)) or len(item) < 2 or not isinstance(item[0], torch.Tensor):
        raise DatasetError(f"item {i} of the dataset is {type(item).__name__}, not (image tensor, label); "
                           "return (C x H x W float tensor in [0, 1], class index) from __getitem__, e.g. with "
                           "torchvision.transforms.ToTensor()")
    return item[0], item[1]


def _check_first(ds: Dataset) -> tuple[int, int, int]:
    x, _ = _item(ds, 0)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise DatasetError(f"dataset images must be C x H x W with 1 or 3 channels, got shape {tuple(x.shape)}; "
                           "an H x W x C image needs .permute(2, 0, 1)")
    if not x.is_floating_point() or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise DatasetError(f"dataset images must be float pixels in [0, 1] (got {x.dtype}, range "
                           f"{float(x.min()):g}..{float(x.max()):g}); leave normalisation to the model's mean/std")
    return int(x.shape[0]), int(x.shape[1]), int(x.shape[2])


def from_torch(dataset: Dataset | DataLoader | LTDataset, *, classes: Optional[Sequence[str]] = None,
               train_counts: Optional[Sequence[int]] = None, train: Optional[Dataset] = None,
               name: Optional[str] = None) -> LTDataset:
    """Wrap evaluation data from Python; ``train_counts`` (or a ``train`` set) says how long-tailed training was.

    ``classes`` defaults to the dataset's ``classes`` attribute, else ``0..C-1``; without
    ``train_counts`` and ``train`` the training set is taken as balanced (no head/tail groups,
    and the report says so). ``train`` (items like the evaluation set) is what ``repair`` fine-tunes on.
    """
    if isinstance(dataset, LTDataset):
        return dataset
    ds = dataset.dataset if isinstance(dataset, DataLoader) else dataset
    if not isinstance(ds, Dataset) or not hasattr(ds, "__len__"):
        raise DatasetError(f"{type(dataset).__name__} is not a map-style torch Dataset with a length; pass a "
                           "Dataset (or a DataLoader over one) whose items are (image, label)")
    n = len(ds)
    if n == 0:
        raise DatasetError("the dataset is empty; pass the evaluation images")
    shape = _check_first(ds)
    labels = _labels_of(ds, n)
    names = list(classes if classes is not None else getattr(ds, "classes", None) or [])
    n_classes = len(names) if names else int(labels.max()) + 1
    if not 1 <= n_classes <= MAX_CLASSES or labels.min() < 0 or labels.max() >= n_classes:
        raise DatasetError(f"labels run from {int(labels.min())} to {int(labels.max())} for {n_classes} classes; "
                           "labels must be class indices 0..C-1 (pass classes=[...] naming every class)")
    names = [str(c) for c in names] if names else [str(c) for c in range(n_classes)]
    train_labels = _labels_of(train, len(train)) if train is not None else None
    counts = _train_counts(train_counts, train_labels, labels, n_classes)
    return LTDataset(name=name or type(ds).__name__, class_names=names, train_counts=counts, test=ds,
                     test_labels=labels, train=train, train_labels=train_labels, image_shape=shape,
                     info={"source": "python", "imbalance": min(counts) / max(counts) if max(counts) else None})


def _train_counts(given: Optional[Sequence[int]], train_labels: Optional[np.ndarray], labels: np.ndarray,
                  n_classes: int) -> list[int]:
    if given is not None:
        counts = [int(c) for c in given]
        if len(counts) != n_classes or min(counts) < 0:
            raise DatasetError(f"train_counts has {len(counts)} entries for {n_classes} classes; give one "
                               "non-negative training-image count per class")
        return counts
    if train_labels is not None:
        return [int(c) for c in np.bincount(train_labels, minlength=n_classes)[:n_classes]]
    log.warning("no train_counts (or train set) given with the dataset: the training set is taken as balanced, "
                "so the audit forms no head/medium/tail groups; pass train_counts=[...] for the long-tail analysis")
    return [max(1, len(labels) // n_classes)] * n_classes  # equal counts: balanced, no groups
