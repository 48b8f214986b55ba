"""Example images (clean, magnified perturbation, adversarial) as inline PNG data URIs."""
from __future__ import annotations

import base64
import io
import logging
import math
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from audit.bounds import MAX_EXAMPLES_BYTES
from audit.errors import ResultsError
from audit.contract.model import AuditResults

from .fmt import short_name
from .load import resolve_inside
from .verdict import weakest

LOG = logging.getLogger(__name__)

DISPLAY_PX = 96  # tiny images (8x8 digits) are upscaled with nearest neighbour to about this size
MAX_PX = 160  # large images are shrunk to keep the single-file report small
_KEYS = ("clean", "adv", "label", "adv_pred")


def _to_image(chw: np.ndarray) -> Image.Image:
    arr = np.asarray(chw)
    if arr.ndim == 2:
        arr = arr[None]
    c = arr.shape[0]
    if c == 3:
        img = Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)).astype(np.uint8), "RGB")
    else:
        img = Image.fromarray(np.ascontiguousarray(arr[0]).astype(np.uint8), "L")
    h, w = img.height, img.width
    side = max(h, w)
    if side < DISPLAY_PX:
        k = math.ceil(DISPLAY_PX / side)
        img = img.resize((w * k, h * k), Image.Resampling.NEAREST)
    elif side > MAX_PX:
        scale = MAX_PX / side
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)
    return img


def png_data_uri(chw: np.ndarray) -> str:
    """C×H×W uint8 array (C = 1 or 3) -> 'data:image/png;base64,…'."""
    buf = io.BytesIO()
    _to_image(chw).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def magnified(clean: np.ndarray, adv: np.ndarray) -> tuple[np.ndarray, float]:
    """(adv - clean) stretched around mid-grey to fill [0, 255], and the magnification factor."""
    delta = adv.astype(np.int16) - clean.astype(np.int16)
    peak = int(np.abs(delta).max())
    if peak == 0:
        return np.full(clean.shape, 128, dtype=np.uint8), 1.0
    factor = 127.0 / peak
    return np.clip(128 + delta * factor, 0, 255).astype(np.uint8), factor


_DTYPES = {"clean": "u1", "adv": "u1"}  # images are uint8; labels and indices any integer type
_INDEX_ARRAYS = ("label", "adv_pred", "attack", "index")  # one integer per kept example
_ZIP_SLACK = 2**20  # .npy headers and zip bookkeeping on top of the arrays' bytes
_FIX = "the file is damaged or not tailaudit's, remove it to render without example images or re-run the audit"


def check_npz_headers(path: Path, limit: int = MAX_EXAMPLES_BYTES) -> None:
    """Read every array's .npy header (shape, dtype) and refuse the file before loading it when the
    declared arrays exceed ``limit`` bytes in total, hold objects, or disagree with the zip sizes."""
    total = 0
    with zipfile.ZipFile(path) as zf:
        declared = sum(info.file_size for info in zf.infolist())  # the zip's own uncompressed sizes: a bomb stops here
        if declared > limit + _ZIP_SLACK:
            raise ResultsError(f"{path}: its entries unpack to {declared:,} bytes, above the limit of {limit:,} "
                               f"bytes; {_FIX}")
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if not info.filename.endswith(".npy"):
                raise ResultsError(f"{path}: entry {name!r} is not an array; {_FIX}")
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            if dtype.hasobject:
                raise ResultsError(f"{path}: array {name!r} holds Python objects, examples.npz holds numbers only; "
                                   f"{_FIX}")
            want = _DTYPES.get(name)
            if want is not None and dtype.str.lstrip("|<>=") != want:
                raise ResultsError(f"{path}: array {name!r} is {dtype}, expected uint8 images; {_FIX}")
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            total += nbytes
            if total > limit or nbytes > info.file_size:
                raise ResultsError(f"{path}: array {name!r} declares shape {tuple(shape)[:6]} ({dtype}), "
                                   f"{nbytes:,} bytes, beyond {'the file' if total <= limit else 'the limit of'}"
                                   f"{'' if total <= limit else f' {limit:,} bytes'}; {_FIX}")


def check_example_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse arrays the report cannot draw: clean/adv N x C x H x W uint8 of one shape (C, H and W >= 1),
    label/adv_pred (and attack/index when there) one integer per example."""
    def bad(name: str, what: str) -> ResultsError:
        return ResultsError(f"{path}: array {name!r} {what}; {_FIX}")

    missing = [k for k in _KEYS if k not in arrays]
    if missing:
        raise bad(missing[0], "is missing")
    clean = arrays["clean"]
    if clean.ndim != 4 or 0 in clean.shape[1:]:
        raise bad("clean", f"has shape {clean.shape[:6]}, expected N x C x H x W images (C, H and W at least 1)")
    if arrays["adv"].shape != clean.shape:
        raise bad("adv", f"has shape {arrays['adv'].shape[:6]}, not the clean images' {clean.shape}")
    for name in _INDEX_ARRAYS:
        if name not in arrays:
            continue
        a = arrays[name]
        if a.dtype.kind not in "iu":
            raise bad(name, f"is {a.dtype}, expected integers")
        if a.shape != (len(clean),):
            raise bad(name, f"has shape {a.shape[:6]}, expected one value for each of the {len(clean)} images")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of examples.npz, checked from the zip's and .npy headers before loading and by shape after;
    :class:`ResultsError` naming the file and the array otherwise (a damaged file is refused, never half-drawn)."""
    try:
        check_npz_headers(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ResultsError(f"cannot read example images {path} ({type(exc).__name__}: {exc}); {_FIX}") from None
    check_example_arrays(path, arrays)
    return arrays


def build_examples(results: AuditResults, folder: Path, max_classes: int = 5) -> dict[str, Any]:
    """Rows for the weakest classes that have a kept example; ``note`` says why when there are none."""
    rel = (results.files or {}).get("examples")
    path = resolve_inside(folder, rel)
    if path is None or not path.is_file():
        why = "refused (outside the results folder)" if rel and path is None else "not found"
        return {"rows": [], "note": "No example images were kept for this run." if not rel else
                f"No example images: {rel} {why}."}
    arrays = _read_npz(path)
    classes = results.dataset.classes
    attacks = results.attacks
    labels = arrays["label"].astype(int)
    rows = []
    for cls in weakest(results, len(results.per_class)):
        hits = np.nonzero(labels == int(cls.index))[0]
        if len(hits) == 0:
            continue
        i = int(hits[0])
        clean, adv = arrays["clean"][i], arrays["adv"][i]
        pert, factor = magnified(clean, adv)
        pred = int(arrays["adv_pred"][i])
        atk = int(arrays["attack"][i]) if "attack" in arrays and arrays["attack"].ndim == 1 else -1
        rows.append({
            "name": cls.name,
            "robust": cls.worst_case,
            "pred": classes[pred] if 0 <= pred < len(classes) else str(pred),
            "attack": short_name(attacks[atk]) if 0 <= atk < len(attacks) else "",
            "clean_uri": png_data_uri(clean), "pert_uri": png_data_uri(pert), "adv_uri": png_data_uri(adv),
            "factor": factor, "size": f"{clean.shape[-1]}×{clean.shape[-2]}",
        })
        if len(rows) >= max_classes:
            break
    note = None if rows else "The examples file holds no image of the weakest classes."
    return {"rows": rows, "note": note}
