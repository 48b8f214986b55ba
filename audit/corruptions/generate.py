"""Seeded corruption of single images with the ``imagecorruptions-imaug`` package.

The package draws its randomness from NumPy's global generator, plus two private ones: impulse
noise takes a ``seed`` for scikit-image's generator and glass blur a ``seed`` for numba's. Every
call here derives one seed sequence from (seed, corruption, severity, test-set index), seeds all
three from it and restores the global generator afterwards, so a point's corrupted image does not
depend on batch, order, worker or shard. The other corruptions are deterministic.

The package needs images of at least 32 pixels a side. Smaller images (the 8×8 digits demo) are
upsampled bilinearly to 32 pixels on the short side, corrupted there, and resized back to the
model's input (bilinear, antialiased) — every corruption, none refused (docs/corruptions.md).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .registry import corruption_id

MIN_SIDE = 32  # the package refuses smaller images
_SEEDED_KWARG = {"impulse_noise", "glass_blur"}  # corruptions with a private generator taking ``seed``


def library_version() -> str:
    """``imagecorruptions-imaug`` and its version, as results record it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"imagecorruptions-imaug {version('imagecorruptions-imaug')}"
    except PackageNotFoundError:  # pragma: no cover - a source checkout without the package installed
        return "imagecorruptions-imaug (version unknown)"


def point_state(seed: int, name: str, severity: int, index: int) -> np.ndarray:
    """The 32-bit words that seed one point's corruption: a function of its four coordinates only."""
    ss = np.random.SeedSequence([int(seed) & (2**64 - 1), corruption_id(name), int(severity), int(index)])
    return ss.generate_state(4, np.uint32)


class _CachedReads:
    """OpenCV as the package's module sees it, with image files decoded once per process.

    Frost reads one of its six texture files (PNG/JPEG up to 900×600) from disk for every image it
    corrupts: decoding took most of its time (about 50 images/s on 32×32 images). The decoded
    texture is kept and a copy handed out, so the output is the package's, byte for byte
    (tests/test_corruptions_cifar.py compares with the package called directly)."""

    def __init__(self, cv2: Any) -> None:
        self._cv2 = cv2

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cv2, name)

    @functools.lru_cache(maxsize=8)
    def _read(self, path: str) -> Any:
        return self._cv2.imread(path)

    def imread(self, path: Any, *args: Any) -> Any:
        if args:
            return self._cv2.imread(path, *args)
        img = self._read(str(path))
        return None if img is None else img.copy()


@functools.lru_cache(maxsize=1)
def _package() -> Any:
    """The package's ``corrupt``, with :class:`_CachedReads` installed in its corruptions module."""
    import imagecorruptions
    from imagecorruptions import corruptions as module

    if not isinstance(module.cv2, _CachedReads):
        module.cv2 = _CachedReads(module.cv2)
    return imagecorruptions.corrupt


def corrupt_uint8(image: np.ndarray, name: str, severity: int, *, seed: int, index: int) -> np.ndarray:
    """``image`` (H×W×3 uint8, sides >= 32) corrupted by ``name`` at ``severity``, seeded per point."""
    corrupt = _package()

    words = point_state(seed, name, severity, index)
    kwargs = {"seed": int(words[0])} if name in _SEEDED_KWARG else {}
    saved = np.random.get_state()
    np.random.seed(words)
    try:
        with warnings.catch_warnings(), np.errstate(invalid="raise" if name == "spatter" else "warn"):
            warnings.simplefilter("ignore")
            out = corrupt(np.ascontiguousarray(image), severity=int(severity), corruption_name=name, **kwargs)
    except FloatingPointError:
        # spatter at severities 1-3 divides its drop mask by its maximum; when no drop falls on the image (3 of
        # 100 CIFAR-10 images at severity 1 on 32 px) that is 0/0 and the package returns an all-black image.
        # No drop means no corruption: the image is returned unchanged (docs/corruptions.md)
        out = image
    finally:
        np.random.set_state(saved)
    return np.asarray(out, dtype=np.uint8)


def warm_up(names: Sequence[str]) -> None:
    """Compile glass blur's numba kernel in this process before DataLoader workers fork from it, so each worker
    does not compile it again (a few seconds each)."""
    if "glass_blur" in names:
        corrupt_uint8(np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8), "glass_blur", 1, seed=0, index=0)


def working_side(shape: Sequence[int]) -> tuple[int, int]:
    """(H, W) at which an image of ``shape`` (C, H, W) is corrupted: itself, or upsampled to a 32-pixel short side."""
    h, w = int(shape[-2]), int(shape[-1])
    if min(h, w) >= MIN_SIDE:
        return h, w
    scale = MIN_SIDE / min(h, w)
    return max(MIN_SIDE, math.ceil(h * scale)), max(MIN_SIDE, math.ceil(w * scale))


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """C×H×W float in [0, 1] -> H×W×3 uint8 (a grey image repeated on three channels).

    NumPy, not torch: per-image torch ops in a process with several torch threads pay a thread wake-up
    each, which made generation 15-30× slower with --threads 2 on a busy machine (bench/corruption_speed.py)."""
    arr = np.rint(np.clip(x.detach().float().cpu().numpy(), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def corrupt_tensor(x: torch.Tensor, name: str, severity: int, *, seed: int, index: int) -> torch.Tensor:
    """One model-input image (C×H×W float in [0, 1], C = 1 or 3) corrupted, same shape, float32 in [0, 1].

    Pixels are quantised to 8 bits first (the package works on uint8, as CIFAR-10-C's files are).
    A grey image is corrupted as RGB and brought back with the luma weights the engine uses.
    """
    c, h, w = (int(v) for v in x.shape)
    side = working_side(x.shape)
    small = side != (h, w)
    if small:
        x = F.interpolate(x[None].float(), size=side, mode="bilinear", align_corners=False).clamp(0, 1)[0]
    out = corrupt_uint8(to_uint8_hwc(x), name, severity, seed=seed, index=index)
    y = out.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    if c == 1:
        y = np.float32(0.299) * y[:1] + np.float32(0.587) * y[1:2] + np.float32(0.114) * y[2:3]
    t = torch.from_numpy(np.ascontiguousarray(y))
    if small:
        t = F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)[0]
    return t.contiguous()
