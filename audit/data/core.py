"""The :class:`LTDataset` bundle and the two torch datasets behind it (in-memory arrays, image files).

Every item is ``(image, label)`` with ``image`` a float32 C x H x W tensor in [0, 1]:
normalisation belongs to the model wrapper, never to the data.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from ..bounds import MAX_IMAGE_PIXELS
from ..errors import DatasetError
from .longtail import class_groups

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def default_data_root() -> Path:
    """Where datasets live when no ``--data-root`` is given."""
    return Path.home() / ".cache" / "tailaudit" / "data"


@dataclass(kw_only=True)
class LTDataset:
    """A long-tailed dataset: balanced test set plus the training counts the audit relates to."""

    name: str
    class_names: list[str]
    train_counts: list[int]
    test: Dataset
    test_labels: np.ndarray
    train: Optional[Dataset] = None
    train_labels: Optional[np.ndarray] = None
    image_shape: tuple[int, int, int]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.train_counts):
            raise DatasetError(
                f"{self.name}: {len(self.class_names)} classes but {len(self.train_counts)} training counts; "
                "give one count per class"
            )
        if len(self.test_labels) != len(self.test):  # type: ignore[arg-type]
            raise DatasetError(f"{self.name}: test labels and test images differ in length")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fit_to_model(self, input_size: Sequence[int]) -> None:
        """Decode a user's image files straight to the model's (C, H, W) input size.

        Datasets with a fixed native size (CIFAR's 32x32, in memory or as files) are left as they
        are and resized by the engine like any tensor, so both CIFAR layouts give the same pixels.
        """
        changed = False
        for ds in (self.test, self.train):
            if isinstance(ds, ImageFileDataset) and ds.follow_model:
                ds.size = (int(input_size[2]), int(input_size[1]))
                changed = True
        if changed:
            self.image_shape = (self.image_shape[0], int(input_size[1]), int(input_size[2]))

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for ``tailaudit dataset NAME --json``."""
        test_counts = np.bincount(self.test_labels.astype(np.int64), minlength=self.num_classes)
        return {
            "name": self.name,
            "classes": list(self.class_names),
            "train_counts": [int(n) for n in self.train_counts],
            "test_counts": [int(n) for n in test_counts],
            "groups": class_groups(self.train_counts),
            "imbalance": self.info.get("imbalance"),
            "root": self.info.get("root"),
            "source": self.info.get("source"),
            "image_shape": list(self.image_shape),
            "train_available": self.train is not None,
        }


class ArrayImageDataset(Dataset):
    """Images held in memory as an N x C x H x W array (uint8 0..255 or float already in [0, 1])."""

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray, scale: Optional[float] = None) -> None:
        if images.ndim != 4:
            raise DatasetError(f"expected an N x C x H x W image array, got shape {images.shape}")
        if len(images) != len(labels):
            raise DatasetError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.scale = scale if scale is not None else (1.0 / 255.0 if images.dtype == np.uint8 else 1.0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.asarray(self.images[i], dtype=np.float32) * np.float32(self.scale))
        return x, int(self.labels[i])


# PIL's own guard, set to the documented limit: decoding larger images raises (see _open_rgb).
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def _too_large(path: Path, size: tuple[int, int]) -> DatasetError:
    return DatasetError(f"image {path} is {size[0]}x{size[1]} pixels, above tailaudit's limit of "
                        f"{MAX_IMAGE_PIXELS:,} pixels per image; shrink or remove the file")


@contextlib.contextmanager
def _truncation_is_an_error() -> Iterator[None]:
    """PIL's ``LOAD_TRUNCATED_IMAGES`` is process-wide and WeasyPrint sets it to True on import
    (so importing the report renderer would let a cut-off file decode as grey pixels); decoding
    here always treats a truncated file as unreadable and restores the flag afterwards."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


ORIENTATION_TAG = 0x0112  # EXIF Orientation: 5..8 turn the image by 90 degrees
WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale PNGs open as one of these


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB pixels of an image in any mode Pillow opens, as a viewer shows it: the EXIF orientation applied,
    16-bit greyscale scaled to 8 bits (Pillow's own conversion clips it at 255, turning it white), and CMYK,
    YCbCr, palettes and 1-bit images through Pillow's conversions. Transparency (an alpha channel, or a
    palette's or colour key's transparent entry) is dropped, keeping the stored colour, as torchvision's
    ``ImageFolder`` loader does: the audit sees the pixels most training pipelines fed the model."""
    im = ImageOps.exif_transpose(im)
    if im.mode in WIDE_GREY:  # 0..65535: v * 255 / 65535, rounded
        wide = np.asarray(im, dtype=np.float64).clip(0, 65535)
        im = Image.fromarray(np.floor(wide / 257.0 + 0.5).astype(np.uint8), mode="L")
    if im.mode == "P" and "transparency" in im.info:  # via RGBA: Pillow warns on a direct P -> RGB here
        im = im.convert("RGBA")
    return im.convert("RGB")


def _open_rgb(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings(), _truncation_is_an_error():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                    raise _too_large(path, im.size)
                return to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DatasetError(f"image {path} is above tailaudit's limit of {MAX_IMAGE_PIXELS:,} pixels per image "
                           "(a decompression bomb?); shrink or remove the file") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {path} ({exc}); remove or replace the file") from None


class ImageFileDataset(Dataset):
    """Image files decoded lazily with PIL (RGB); resized bilinearly to ``size`` (W, H) when they differ.

    The audit sets ``size`` to the model's input size (:meth:`LTDataset.fit_to_model`), so no
    data file decides how large every image becomes.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | np.ndarray,
                 size: Optional[tuple[int, int]] = None, follow_model: bool = False) -> None:
        if len(paths) != len(labels):
            raise DatasetError(f"{len(paths)} images but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size = size
        self.follow_model = follow_model  # True: ``size`` becomes the model's input size (user folders)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        im = _open_rgb(self.paths[i])
        if self.size is not None and im.size != self.size:
            im = im.resize(self.size, Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
        x = torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0))
        return x, int(self.labels[i])


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image from its header only; DatasetError when PIL cannot read it or it is too large."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size = im.size
                if _orientation(im) in (5, 6, 7, 8):  # shown turned by 90 degrees
                    size = (size[1], size[0])
    except Image.DecompressionBombError:
        raise DatasetError(f"image {path} is above tailaudit's limit of {MAX_IMAGE_PIXELS:,} pixels per image "
                           "(a decompression bomb?); shrink or remove the file") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image {path} ({exc}); remove or replace the file") from None
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise _too_large(path, size)
    return size


def _orientation(im: Image.Image) -> Optional[int]:
    """The EXIF orientation found in the file's header, without decoding the pixels (``getexif`` of a PNG does)."""
    raw = im.info.get("exif")
    if not isinstance(raw, bytes):
        return None
    exif = Image.Exif()
    try:
        exif.load(raw)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels decide (to_rgb), not the size hint
        return None
    value = exif.get(ORIENTATION_TAG)
    return value if isinstance(value, int) else None


def _is_image(p: Path, folder: Path) -> bool:
    """An image file under ``folder`` that neither is hidden nor lies in a hidden folder (.ipynb_checkpoints/,
    .thumbs/, ._AppleDouble files): what a file browser shows is what the audit counts."""
    *dirs, name = p.relative_to(folder).parts
    hidden = name.startswith(".") or any(_tool_folder(d) for d in dirs)
    return not hidden and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()


def _tool_folder(name: str) -> bool:
    """A hidden folder of some tool (.git, .ipynb_checkpoints, ._AppleDouble): a dot, then a letter, digit or '_'.
    Any other name is a class, however it looks: '...', '-e', 'a∕b' (U+2215), 'back\\slash'."""
    return len(name) > 1 and name[0] == "." and (name[1].isalnum() or name[1] == "_")


def list_class_folders(folder: Path) -> list[str]:
    """Sorted names of the class subfolders of ``folder`` (tool folders such as .git skipped); a name that is not
    UTF-8 text cannot be shown or stored and is refused, naming its bytes."""
    if not folder.is_dir():
        raise DatasetError(f"folder {folder} does not exist; expected {folder}/<class>/<images>")
    names = []
    for fs in (p.name for p in folder.iterdir() if p.is_dir() and not _tool_folder(p.name)):
        try:  # the name's bytes as UTF-8, whatever the locale (LC_ALL=C may decode them as ASCII and surrogates)
            names.append(os.fsencode(fs).decode("utf-8"))
        except UnicodeDecodeError:
            raise DatasetError(f"class folder {os.fsencode(fs)!r} in {folder} has a name that is not UTF-8 text, which "
                               "cannot be shown in the report; rename it") from None
    names.sort()
    if not names:
        raise DatasetError(f"folder {folder} has no class subfolders; put images in {folder}/<class>/")
    return names


def scan_image_folder(folder: Path,
                      class_names: Optional[Sequence[str]] = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths and labels of ``folder/<class>/**/*`` in class then file-name order.

    Class order is the sorted folder names, or ``class_names`` when given (e.g. the
    training classes, so evaluation labels line up); unknown folders are an error.
    """
    found = list_class_folders(folder)
    if class_names is None:
        class_names = found
    else:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise DatasetError(
                f"{folder} has class folders not in the training classes: {', '.join(unknown[:5])}; "
                "use the same class folder names in train and eval"
            )
        missing = [c for c in class_names if c not in found]
        if missing:
            log.warning("%s has no folder for %d classes (%s); they get no evaluation images", folder, len(missing),
                        ", ".join(missing[:5]))
    paths: list[Path] = []
    labels: list[int] = []
    for idx, name in enumerate(class_names):
        cdir = folder / os.fsdecode(name.encode("utf-8"))  # the file system's form of the UTF-8 name
        if not cdir.is_dir():
            continue
        files = sorted((p for p in cdir.rglob("*") if _is_image(p, cdir)), key=lambda p: p.relative_to(cdir).as_posix())
        if not files:
            raise DatasetError(
                f"class folder {cdir} has no images ({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        paths.extend(files)
        labels.extend([idx] * len(files))
    return paths, np.asarray(labels, dtype=np.int64), list(class_names)
