"""How far the evaluation images had to be changed to fit the model (channels, size)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from .contract.model import InputFit

MAX_RESIZE = 4.0  # resizing by more than this factor (either way) means the model was made for other data


def input_info(data_shape: Sequence[int], model_shape: Sequence[int]) -> InputFit:
    """``results.input``: data and model shapes (C, H, W), channel conversion and resize factor.

    ``resize_factor`` is model size / data size along the side that changes most (>1: enlarged).
    """
    dc, dh, dw = (int(v) for v in data_shape)
    mc, mh, mw = (int(v) for v in model_shape)
    conversion: Optional[str] = None
    if dc != mc:
        conversion = {(1, 3): "grey to RGB", (3, 1): "RGB to grey"}.get((dc, mc), f"{dc} to {mc} channels")
    ratios = [mh / dh if dh else 1.0, mw / dw if dw else 1.0]
    factor = max(ratios, key=lambda r: abs(math.log(r)) if r > 0 else 0.0)
    return InputFit(data_shape=[dc, dh, dw], model_shape=[mc, mh, mw], channel_conversion=conversion,
                    resize_factor=float(factor))


def input_warnings(info: InputFit) -> list[str]:
    """Warnings for a channel conversion or a resize by more than 4x."""
    out = []
    if info.channel_conversion:
        out.append(f"input mismatch: the {info.data_shape[0]}-channel images were converted {info.channel_conversion} "
                   f"for a {info.model_shape[0]}-channel model; it was probably trained on other data, so its "
                   "figures here may not mean much")
    f = info.resize_factor if info.resize_factor is not None else 1.0
    if f > MAX_RESIZE or f < 1 / MAX_RESIZE:
        out.append(f"input mismatch: the images were resized by a factor {f:.3g} (from {info.data_shape[1]}x"
                   f"{info.data_shape[2]} to {info.model_shape[1]}x{info.model_shape[2]}); the model was "
                   "probably trained on other data")
    return out
