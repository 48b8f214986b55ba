"""CIFAR-10-LT and CIFAR-100-LT from torchvision's pickle layout or an image-folder layout.

The test set stays balanced and complete; the training set is the seeded exponential
long-tail selection of docs/method.md ("Datasets") with ``n_max`` = the largest class.
Pickles go through :mod:`audit.data.safe_pickle`, never through torchvision's loader.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import DatasetError
from ..registry import register_dataset
from .counts import read_class_counts
from .core import ArrayImageDataset, ImageFileDataset, LTDataset, default_data_root, scan_image_folder
from .longtail import longtail_counts, select_longtail
from .safe_pickle import load_pickle

log = logging.getLogger(__name__)

SELECTION_SEED = 0


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR variant's files live and what they are called."""

    name: str
    title: str
    num_classes: int
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    meta_key: str
    label_key: str
    url: str
    filename: str
    md5: str


CIFAR10 = CifarSpec(
    name="cifar10lt", title="CIFAR-10", num_classes=10, folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
    meta_file="batches.meta", meta_key="label_names", label_key="labels",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", filename="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR100 = CifarSpec(
    name="cifar100lt", title="CIFAR-100", num_classes=100, folder="cifar-100-python",
    train_files=("train",), test_files=("test",), meta_file="meta", meta_key="fine_label_names",
    label_key="fine_labels", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    filename="cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
)


def _layout_hint(spec: CifarSpec) -> str:
    return f"pass --data-root DIR holding {spec.folder}/ or train/<class>/ and test/<class>/"


def _find_layout(spec: CifarSpec, root: Path) -> Optional[tuple[str, Path]]:
    """("torchvision", batches dir) or ("imagefolder", root) when ``root`` holds the data, else None."""
    for cand in (root / spec.folder, root):
        if (cand / spec.train_files[0]).is_file() and (cand / spec.test_files[0]).is_file():
            return "torchvision", cand
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "imagefolder", root
    return None


def _locate(spec: CifarSpec, data_root: Optional[Path], download: bool) -> tuple[str, Path]:
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data root {root} does not exist; {_layout_hint(spec)}")
        found = _find_layout(spec, root)
        if found is None:
            raise DatasetError(f"{spec.title} not found under {root}; {_layout_hint(spec)}")
        return found
    root = default_data_root()
    found = _find_layout(spec, root) if root.is_dir() else None
    if found is not None:
        return found
    if not download:
        raise DatasetError(f"{spec.title} not found under {root} and download is off; {_layout_hint(spec)}")
    try:
        from torchvision.datasets.utils import download_and_extract_archive

        log.debug("downloading %s to %s", spec.title, root)
        root.mkdir(parents=True, exist_ok=True)
        chatter = io.StringIO()  # torchvision prints and draws a bar: a failed download must stay one line
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            download_and_extract_archive(spec.url, download_root=str(root), filename=spec.filename, md5=spec.md5)
    except Exception as exc:  # offline, proxy, checksum: all mean the same to the user
        log.debug("download failed: %r", exc)
        raise DatasetError(
            f"{spec.title} not found under {root} and could not be downloaded (offline?); {_layout_hint(spec)}"
        ) from None
    log.info("downloaded %s to %s", spec.title, root)
    found = _find_layout(spec, root)
    if found is None:
        raise DatasetError(f"{spec.title} downloaded to {root} but its files are missing; {_layout_hint(spec)}")
    return found


def _str_keys(entry: Any, path: Path) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise DatasetError(f"{path} is not a CIFAR batch (no dictionary inside); replace it with the official file")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in entry.items()}


def _read_batch(spec: CifarSpec, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x 3 x 32 x 32 images, int64 labels) of one pickled batch."""
    entry = _str_keys(load_pickle(path), path)
    if "data" not in entry or spec.label_key not in entry:
        raise DatasetError(f"{path} lacks 'data' or '{spec.label_key}'; it is not a {spec.title} batch")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[spec.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DatasetError(
            f"{path} holds data of shape {data.shape} ({data.dtype}) with {len(labels)} labels; "
            f"expected uint8 N x 3072 as in the official {spec.title} files"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetError(f"{path} has labels outside 0..{spec.num_classes - 1}; it is not a {spec.title} batch")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(spec: CifarSpec, folder: Path) -> list[str]:
    path = folder / spec.meta_file
    if not path.is_file():
        log.warning("%s missing; naming classes by index", path)
        return [str(i) for i in range(spec.num_classes)]
    meta = _str_keys(load_pickle(path), path)
    names = meta.get(spec.meta_key)
    if not isinstance(names, (list, tuple)) or len(names) != spec.num_classes:
        raise DatasetError(f"{path} has no list of {spec.num_classes} '{spec.meta_key}'; "
                           "replace it with the official file")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _load_torchvision(spec: CifarSpec, folder: Path, rho: float) -> dict[str, Any]:
    test_parts = [_read_batch(spec, folder / f) for f in spec.test_files]
    test_x = np.concatenate([p[0] for p in test_parts])
    test_y = np.concatenate([p[1] for p in test_parts])
    train_parts = [_read_batch(spec, folder / f) for f in spec.train_files]
    targets = np.concatenate([p[1] for p in train_parts])
    pool = np.bincount(targets, minlength=spec.num_classes)
    counts = longtail_counts(int(pool.max()), spec.num_classes, rho)
    sel = select_longtail(targets, counts, seed=SELECTION_SEED)
    train_x = np.empty((len(sel), 3, 32, 32), dtype=np.uint8)
    offset = 0
    for data, _ in train_parts:  # fill batch by batch: never concatenate the whole pool
        mask = (sel >= offset) & (sel < offset + len(data))
        train_x[mask] = data[sel[mask] - offset]
        offset += len(data)
    del train_parts
    return {
        "class_names": _class_names(spec, folder),
        "test": ArrayImageDataset(test_x, test_y),
        "test_labels": test_y,
        "train": ArrayImageDataset(train_x, targets[sel]),
        "train_labels": targets[sel],
        "counts": counts,
        "pool": [int(n) for n in pool],
    }


def _load_imagefolder(spec: CifarSpec, root: Path, rho: float) -> dict[str, Any]:
    train_paths, targets, names = scan_image_folder(root / "train")
    if len(names) != spec.num_classes:
        raise DatasetError(
            f"{root / 'train'} has {len(names)} class folders but {spec.title} has {spec.num_classes}; "
            "point --data-root at the right dataset or use --dataset imagefolder"
        )
    test_paths, test_y, _ = scan_image_folder(root / "test", class_names=names)
    pool = np.bincount(targets, minlength=spec.num_classes)
    counts = longtail_counts(int(pool.max()), spec.num_classes, rho)
    sel = select_longtail(targets, counts, seed=SELECTION_SEED)
    return {
        "class_names": names,
        "test": ImageFileDataset(test_paths, test_y, size=(32, 32)),
        "test_labels": test_y,
        "train": ImageFileDataset([train_paths[i] for i in sel], targets[sel], size=(32, 32)),
        "train_labels": targets[sel],
        "counts": counts,
        "pool": [int(n) for n in pool],
    }


def load_cifar(spec: CifarSpec, *, imbalance: float, data_root: Optional[Path], class_counts: Any,
               download: bool) -> LTDataset:
    """Load a CIFAR-LT variant; see the module docstring."""
    longtail_counts(1, spec.num_classes, imbalance)  # validate rho before reading anything
    source, where = _locate(spec, data_root, download)
    load = _load_torchvision if source == "torchvision" else _load_imagefolder
    parts = load(spec, where, imbalance)
    given = read_class_counts(class_counts, parts["class_names"]) if class_counts is not None else None
    log.debug("%s from %s (%s): %d train, %d test", spec.name, where, source, len(parts["train_labels"]),
              len(parts["test_labels"]))
    return LTDataset(
        name=spec.name,
        class_names=parts["class_names"],
        train_counts=given if given is not None else parts["counts"],  # --class-counts: the model's real counts
        test=parts["test"],
        test_labels=parts["test_labels"],
        train=parts["train"],
        train_labels=parts["train_labels"],
        image_shape=(3, 32, 32),
        info={
            "root": str(where),
            "source": source,
            "imbalance": float(imbalance),
            # "exponential": the counts are this tool's sampling profile; "given": the model's, from --class-counts
            "profile": "exponential" if given is None else "given",
            **({"counts_source": str(class_counts), "sampled_counts": [int(c) for c in parts["counts"]]}
               if given is not None else {}),
            "n_max": int(max(parts["counts"])),
            "selection_seed": SELECTION_SEED,
            "train_pool_counts": parts["pool"],
        },
    )


@register_dataset("cifar10lt")
def _cifar10lt(*, imbalance: float, data_root: Optional[Path], class_counts: Any, download: bool) -> LTDataset:
    return load_cifar(CIFAR10, imbalance=imbalance, data_root=data_root, class_counts=class_counts, download=download)


@register_dataset("cifar100lt")
def _cifar100lt(*, imbalance: float, data_root: Optional[Path], class_counts: Any, download: bool) -> LTDataset:
    return load_cifar(CIFAR100, imbalance=imbalance, data_root=data_root, class_counts=class_counts, download=download)
