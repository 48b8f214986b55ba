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
from torch.utils.data import DataLoader, Dataset, Subset

from ..bounds import MAX_CLASSES
from ..errors import DatasetError
from .core import LTDataset

__all__ = ["CheckedItems", "check_pixels", "from_torch", "is_dataset_object", "label_index"]

log = logging.getLogger(__name__)


def is_dataset_object(value: Any) -> bool:
    """True for what :func:`from_torch` takes (a map-style ``Dataset``, a ``DataLoader``, an ``LTDataset``)."""
    return isinstance(value, (Dataset, DataLoader, LTDataset))


HINT = "return (C x H x W float tensor in [0, 1], class index) from __getitem__, e.g. with transforms.ToTensor()"


def _kind(value: Any) -> str:
    """A value's type as a message names it (never its repr: user data stays out of error lines)."""
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def label_index(y: Any, where: str) -> int:
    """A label as a class index: an int, a numpy integer or a one-element integer tensor; one sentence for text,
    float and one-hot labels (``where`` names the item, e.g. "item 7")."""
    if isinstance(y, (torch.Tensor, np.ndarray)) and not isinstance(y, bool):
        t = torch.as_tensor(y) if isinstance(y, np.ndarray) and y.dtype.kind in "biuf" else y
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise DatasetError(f"{where}'s label is on the meta device (no value); give class indices 0..C-1")
        if isinstance(t, torch.Tensor) and t.numel() > 1 and t.is_floating_point():
            raise DatasetError(f"{where}'s label is {_kind(t)}, which looks one-hot; labels are class indices "
                               "0..C-1: return label.argmax() (or int(label.argmax())) from __getitem__")
        if isinstance(t, torch.Tensor) and t.numel() == 1 and not t.is_floating_point() and t.dtype != torch.bool:
            return int(t.reshape(()).item())
        raise DatasetError(f"{where}'s label is {_kind(t)}; labels are class indices 0..C-1 (an int or a "
                           "one-element integer tensor)")
    if isinstance(y, (int, np.integer)) and not isinstance(y, (bool, np.bool_)):
        return int(y)
    if isinstance(y, str):
        raise DatasetError(f"{where}'s label is text; labels are class indices 0..C-1: map each name to its index "
                           "and pass the names in that order as classes=[...]")
    raise DatasetError(f"{where}'s label is {_kind(y)}; labels are class indices 0..C-1 (an int)")


def _item(ds: Dataset, i: int) -> tuple[Any, Any]:
    item = ds[i]
    if not isinstance(item, (tuple, list)):
        raise DatasetError(f"item {i} of the dataset is {_kind(item)}, not (image, label); {HINT}")
    if len(item) != 2:
        raise DatasetError(f"item {i} of the dataset has {len(item)} parts, not 2 (image, label); {HINT} "
                           "(wrap the dataset to drop the other parts)")
    return item[0], item[1]


def check_pixels(x: Any, where: str, shape: Optional[tuple[int, ...]] = None) -> torch.Tensor:
    """An item's image as float32 C x H x W pixels in [0, 1] on the CPU: uint8 0..255 is divided by 255 (each item
    on its own, so a dataset mixing uint8 and float items is never mis-scaled); any other type, layout, size
    (``shape``: the first item's), non-finite value or pixel outside [0, 1] is one DatasetError."""
    if not isinstance(x, torch.Tensor):
        raise DatasetError(f"{where}'s image is {_kind(x)}, not a tensor; {HINT}")
    if x.is_meta:
        raise DatasetError(f"{where}'s image is on the meta device (no pixel values); load the images first")
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise DatasetError(f"dataset images must be C x H x W with 1 or 3 channels, {where} is {tuple(x.shape)}; "
                           "an H x W x C image needs .permute(2, 0, 1)")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise DatasetError(f"{where} is {' x '.join(map(str, x.shape))} but the first image is "
                           f"{' x '.join(map(str, shape))}; give every image one size (e.g. transforms.Resize)")
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if not x.is_floating_point():
        raise DatasetError(f"{where}'s image is {str(x.dtype).replace('torch.', '')}; give float pixels in [0, 1] "
                           "(transforms.ToTensor()) or uint8 pixels 0..255")
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise DatasetError(f"{where}'s image has NaN or infinite pixels; give float pixels in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DatasetError(f"dataset images must be float pixels in [0, 1], {where} has {lo:.4g}..{hi:.4g}; "
                           "give raw pixels (leave normalisation to the model's mean/std)")
    return x


class CheckedItems(Dataset):
    """The user's dataset with every item checked as it is read (:func:`check_pixels`, :func:`label_index`):
    the first item sets the image shape, and an item whose label differs from the dataset's ``targets`` is refused
    (the audit groups points by those labels)."""

    def __init__(self, base: Dataset, shape: tuple[int, int, int], labels: Optional[np.ndarray] = None) -> None:
        self.base, self.shape, self.labels = base, tuple(shape), labels

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = _item(self.base, i)
        pixels = check_pixels(x, f"item {i}", self.shape)
        label = label_index(y, f"item {i}")
        if self.labels is not None and label != int(self.labels[i]):
            raise DatasetError(f"item {i}'s label is {label} but the dataset's targets say {int(self.labels[i])} "
                               "(a target_transform?); make targets and items agree")
        return pixels, label


def _subset_chain(ds: Dataset) -> tuple[Dataset, Optional[np.ndarray]]:
    """The dataset under (nested) ``Subset``s and the indices into it, so a Subset keeps its classes and targets."""
    idx: Optional[np.ndarray] = None
    while isinstance(ds, Subset):
        here = np.asarray(list(ds.indices), dtype=np.int64)
        idx = here if idx is None else here[idx]
        ds = ds.dataset
    return ds, idx


def _targets(ds: Dataset, n: int) -> Optional[np.ndarray]:
    """The labels the dataset lists (``targets``, torchvision's convention, through Subsets), checked; None when it
    lists none."""
    base, idx = _subset_chain(ds)
    targets = getattr(base, "targets", None)
    if targets is None or isinstance(targets, (str, bytes)):
        return None
    if isinstance(targets, torch.Tensor) and targets.dim() == 2 and targets.is_floating_point():
        label_index(targets[0], "targets[0]")  # one-hot: its own sentence
    values = targets if idx is None else [targets[int(j)] for j in idx]
    if len(values) != n:
        return None
    return np.asarray([label_index(t, f"targets[{k}]") for k, t in enumerate(values)], dtype=np.int64)


def _classes(ds: Dataset) -> list[str]:
    classes = getattr(_subset_chain(ds)[0], "classes", None)
    return [str(c) for c in classes] if isinstance(classes, (list, tuple)) and classes else []


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
    test, labels = _checked(ds, n)
    names = list(classes) if classes is not None else _classes(ds)
    n_classes = len(names) if names else int(labels.max()) + 1
    if not 1 <= n_classes <= MAX_CLASSES or labels.min() < 0 or labels.max() >= n_classes:
        raise DatasetError(f"labels run from {int(labels.min())} to {int(labels.max())} for {n_classes} classes; "
                           "labels must be class indices 0..C-1 (pass classes=[...] naming every class)")
    names = [str(c) for c in names] if names else [str(c) for c in range(n_classes)]
    train_set, train_labels = _checked(train, len(train), test.shape) if train is not None else (None, None)
    if train_labels is not None and len(train_labels) and (train_labels.min() < 0 or train_labels.max() >= n_classes):
        raise DatasetError(f"train= labels run from {int(train_labels.min())} to {int(train_labels.max())} for "
                           f"{n_classes} classes; give class indices 0..C-1 as in the evaluation set")
    counts = _train_counts(train_counts, train_labels, labels, n_classes)
    return LTDataset(name=name or type(ds).__name__, class_names=names, train_counts=counts, test=test,
                     test_labels=labels, train=train_set, train_labels=train_labels, image_shape=test.shape,
                     info={"source": "python", "imbalance": min(counts) / max(counts) if max(counts) else None})


def _checked(ds: Dataset, n: int, shape: Optional[tuple[int, ...]] = None) -> tuple[CheckedItems, np.ndarray]:
    """``ds`` behind :class:`CheckedItems` and its labels: from ``targets`` when it lists them, else read from
    every item (which checks every image now, before any work)."""
    first, _ = _item(ds, 0)
    first = check_pixels(first, "item 0", shape)
    targets = _targets(ds, n)
    checked = CheckedItems(ds, tuple(first.shape), targets)  # type: ignore[arg-type]
    labels = targets if targets is not None else np.asarray([checked[i][1] for i in range(n)], dtype=np.int64)
    return checked, labels


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
