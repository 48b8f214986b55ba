"""``load_dataset`` and the offline datasets: ``digitslt`` (bundled) and ``imagefolder`` (the user's).

Every loader is registered with ``@register_dataset`` and takes the same keyword
arguments, so the CLI dispatches by name and unknown names get the registry's list.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DatasetError
from ..registry import DATASETS, register_dataset
from . import cifar as _cifar  # noqa: F401  (registers cifar10lt / cifar100lt)
from .counts import COUNTS_HINT as _COUNTS_HINT, read_class_counts
from .core import ArrayImageDataset, ImageFileDataset, LTDataset, image_size, scan_image_folder
from .inmemory import from_torch, is_dataset_object
from .longtail import longtail_counts, select_longtail

log = logging.getLogger(__name__)

DIGITS_TEST_PER_CLASS = 50
DIGITS_SPLIT_SEED = 0
SELECTION_SEED = 0


def load_dataset(
    name: Any,
    *,
    imbalance: float = 0.01,
    data_root: str | Path | None = None,
    class_counts: str | Path | None = None,
    download: bool = True,
) -> LTDataset:
    """Load a registered long-tailed dataset by name (``cifar10lt``, ``cifar100lt``, ``digitslt``, ``imagefolder``);
    a dataset object from Python is wrapped as it is (:func:`.inmemory.from_torch`)."""
    if is_dataset_object(name):
        if class_counts is not None:
            raise ConfigError("class_counts= (a file) goes with --dataset imagefolder; wrap your dataset with "
                              "audit.data.from_torch(dataset, train_counts=[...]) instead")
        return from_torch(name)
    if not isinstance(name, str):
        pairs = isinstance(name, (list, tuple)) and bool(name) and isinstance(name[0], (list, tuple))
        raise DatasetError(f"dataset= is a {type(name).__name__}, not a dataset name or a torch Dataset; "
                           + ("put the (image, label) pairs in a Dataset, e.g. TensorDataset(torch.stack(images), "
                              "torch.tensor(labels))" if pairs else
                              f"pass one of {', '.join(DATASETS.names())} or a torch Dataset / DataLoader"))
    loader = DATASETS.get(name.strip().lower())
    root = Path(data_root).expanduser() if data_root is not None else None
    counts_file = Path(class_counts).expanduser() if class_counts is not None else None
    return loader(imbalance=imbalance, data_root=root, class_counts=counts_file, download=download)


def dataset_names() -> list[str]:
    """Names :func:`load_dataset` accepts."""
    return DATASETS.names()


@register_dataset("digitslt")
def _digitslt(*, imbalance: float, data_root: Optional[Path], class_counts: Optional[Path],
              download: bool) -> LTDataset:
    """scikit-learn's bundled 8x8 digits: 50 test images per class, long-tailed train from the rest."""
    if class_counts is not None:
        raise ConfigError("--class-counts goes with cifar10lt, cifar100lt and imagefolder; digitslt derives its counts "
                          "from --imbalance")
    if data_root is not None:
        log.info("digitslt is bundled with scikit-learn; ignoring --data-root %s", data_root)
    longtail_counts(1, 10, imbalance)  # validate rho first
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_parts, pool_parts = [], []
    for c in range(10):
        idx = rng.permutation(np.where(y == c)[0])
        test_parts.append(idx[:DIGITS_TEST_PER_CLASS])
        pool_parts.append(idx[DIGITS_TEST_PER_CLASS:])
    test_idx = np.sort(np.concatenate(test_parts))
    pool_idx = np.sort(np.concatenate(pool_parts))
    pool_y = y[pool_idx]
    pool_counts = np.bincount(pool_y, minlength=10)
    counts = longtail_counts(int(pool_counts.min()), 10, imbalance)
    train_idx = pool_idx[select_longtail(pool_y, counts, seed=SELECTION_SEED)]
    return LTDataset(
        name="digitslt",
        class_names=[str(c) for c in range(10)],
        train_counts=counts,
        test=ArrayImageDataset(np.ascontiguousarray(x[test_idx]), y[test_idx], scale=1.0),
        test_labels=y[test_idx],
        train=ArrayImageDataset(np.ascontiguousarray(x[train_idx]), y[train_idx], scale=1.0),
        train_labels=y[train_idx],
        image_shape=(1, 8, 8),
        info={
            "root": None,
            "source": "sklearn",
            "imbalance": float(imbalance),
            "profile": "exponential",
            "n_max": int(counts[0]),
            "selection_seed": SELECTION_SEED,
            "split_seed": DIGITS_SPLIT_SEED,
            "test_per_class": DIGITS_TEST_PER_CLASS,
            "train_pool_counts": [int(n) for n in pool_counts],
        },
    )


def _target_size(paths: Sequence[Path], size: Optional[tuple[int, int]]) -> tuple[tuple[int, int], int]:
    """(the most common size, how many differ from it); reads headers, so bad or huge files fail early.

    The most common size is only a hint (a timm CNN may run at it); the audit decodes every
    image at the model's input size (:meth:`LTDataset.fit_to_model`).
    """
    sizes = [image_size(p) for p in paths]
    target = size or Counter(sizes).most_common(1)[0][0]
    return target, sum(s != target for s in sizes)


@register_dataset("imagefolder")
def _imagefolder(*, imbalance: float, data_root: Optional[Path], class_counts: Optional[Path],
                 download: bool) -> LTDataset:
    """The user's images: ``train/<class>/`` (counts as-is) plus ``test/`` or ``val/``, or an eval folder plus
    counts."""
    hint = ("pass --data-root DIR holding train/<class>/ and test/<class>/ (or val/), "
            "or an eval folder plus --class-counts FILE")
    if data_root is None:
        raise DatasetError(f"--dataset imagefolder needs your data; {hint}")
    root = Path(data_root)
    if not root.is_dir():
        raise DatasetError(f"data root {root} does not exist; {hint}")
    eval_dir = next((d for d in (root / "test", root / "val") if d.is_dir()), None)
    train_dir = root / "train"
    train = train_labels = None
    if train_dir.is_dir():
        train_paths, train_labels, names = scan_image_folder(train_dir)
        if eval_dir is None:
            raise DatasetError(f"{root} has train/ but no test/ or val/ folder; add one with the same class folders")
        test_paths, test_labels, _ = scan_image_folder(eval_dir, class_names=names)
        counts = [int(n) for n in np.bincount(train_labels, minlength=len(names))]
        if class_counts is not None:
            counts = read_class_counts(class_counts, names)
            log.info("training counts taken from %s instead of %s", class_counts, train_dir)
    else:
        eval_dir = eval_dir or root
        test_paths, test_labels, names = scan_image_folder(eval_dir)
        if class_counts is None:
            raise DatasetError(f"{root} has no train/ folder, so the training counts are unknown; {_COUNTS_HINT}")
        counts = read_class_counts(class_counts, names)
    size, resized_test = _target_size(test_paths, None)
    resized_train = 0
    if train_labels is not None:
        _, resized_train = _target_size(train_paths, size)
        train = ImageFileDataset(train_paths, train_labels, size=size, follow_model=True)
    if resized_test or resized_train:
        log.info("%d eval / %d train images differ from the most common size %dx%d; every image is resized to "
                 "the model's input size", resized_test, resized_train, *size)
    top = max(counts)
    return LTDataset(
        name="imagefolder",
        class_names=names,
        train_counts=counts,
        test=ImageFileDataset(test_paths, test_labels, size=size, follow_model=True),
        test_labels=test_labels,
        train=train,
        train_labels=train_labels,
        image_shape=(3, size[1], size[0]),
        info={
            "root": str(root),
            "source": "imagefolder",
            "eval_folder": str(eval_dir),
            "train_folder": str(train_dir) if train is not None else None,
            "class_counts_file": str(class_counts) if class_counts is not None else None,
            "imbalance": (min(counts) / top) if top > 0 else None,
            "image_size_wh": list(size),
            "resized": {"test": int(resized_test), "train": int(resized_train),
                        "method": "bilinear to the model input size"},
        },
    )
