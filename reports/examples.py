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


def check_npz_headers(path: Path, limit: int = MAX_EXAMPLES_BYTES) -> None:
    """Read every array's .npy header (shape, dtype) and refuse the file before loading it when the
    declared arrays exceed ``limit`` bytes in total, hold objects, or disagree with the zip sizes."""
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            if dtype.hasobject:
                raise ResultsError(f"{path}: array {name!r} holds Python objects; examples.npz holds numbers only, "
                                   "re-run the audit")
            want = _DTYPES.get(name)
            if want is not None and dtype.str.lstrip("|<>=") != want:
                raise ResultsError(f"{path}: array {name!r} is {dtype}, expected uint8 images; re-run the audit")
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            total += nbytes
            if total > limit or nbytes > info.file_size:
                raise ResultsError(f"{path}: array {name!r} declares shape {tuple(shape)[:6]} ({dtype}), "
                                   f"{nbytes:,} bytes, beyond {'the file' if total <= limit else 'the limit of'}"
                                   f"{'' if total <= limit else f' {limit:,} bytes'}; the file is damaged or "
                                   "not tailaudit's, remove it or re-run the audit")


def _read_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        check_npz_headers(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        LOG.warning("cannot read example images from %s: %s", path, exc)
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if not all(k in data.files for k in _KEYS):
                LOG.warning("%s lacks one of %s; no example images shown", path, ", ".join(_KEYS))
                return None
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        LOG.warning("cannot read example images from %s: %s", path, exc)
        return None
    n = len(arrays["label"])
    if arrays["clean"].shape != arrays["adv"].shape or arrays["clean"].ndim != 4 or len(arrays["clean"]) != n:
        LOG.warning("%s has inconsistent array shapes; no example images shown", path)
        return None
    return arrays


def build_examples(results: Mapping[str, Any], folder: Path, max_classes: int = 5) -> dict[str, Any]:
    """Rows for the weakest classes that have a kept example; ``note`` says why when there are none."""
    rel = (results.get("files") or {}).get("examples")
    path = resolve_inside(folder, rel)
    if path is None or not path.is_file():
        why = "refused (outside the results folder)" if rel and path is None else "not found"
        return {"rows": [], "note": "No example images were kept for this run." if not rel else
                f"No example images: {rel} {why}."}
    arrays = _read_npz(path)
    if arrays is None:
        return {"rows": [], "note": f"No example images: {rel} could not be read."}
    classes = results["dataset"]["classes"]
    attacks = results["attacks"]
    labels = arrays["label"].astype(int)
    rows = []
    for cls in weakest(results, len(results["per_class"])):
        hits = np.nonzero(labels == int(cls["index"]))[0]
        if len(hits) == 0:
            continue
        i = int(hits[0])
        clean, adv = arrays["clean"][i], arrays["adv"][i]
        pert, factor = magnified(clean, adv)
        pred = int(arrays["adv_pred"][i])
        atk = int(arrays["attack"][i]) if "attack" in arrays and arrays["attack"].ndim == 1 else -1
        rows.append({
            "name": cls["name"],
            "robust": cls["robust_acc"]["worst_case"],
            "pred": classes[pred] if 0 <= pred < len(classes) else str(pred),
            "attack": short_name(attacks[atk]) if 0 <= atk < len(attacks) else "",
            "clean_uri": png_data_uri(clean), "pert_uri": png_data_uri(pert), "adv_uri": png_data_uri(adv),
            "factor": factor, "size": f"{clean.shape[-1]}×{clean.shape[-2]}",
        })
        if len(rows) >= max_classes:
            break
    note = None if rows else "The examples file holds no image of the weakest classes."
    return {"rows": rows, "note": note}
