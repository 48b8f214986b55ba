"""Up-front checks that a loaded model can give meaningful numbers: finite weights and finite logits.

A NaN in the weights or the outputs makes every comparison false, so an audit would report
nonsense (or trip unrelated checks at the very end); refuse such models before any attack.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from .wrapper import LoadedModel


def check_finite_weights(loaded: "LoadedModel", limit: int = 3) -> None:
    """ModelLoadError naming the first parameters/buffers with NaN or infinite values."""
    net = getattr(loaded.module, "net", None)
    if net is None:  # black-box: onnxruntime alone, no tensors to inspect (the logits check still runs)
        return
    bad = []
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    if bad:
        raise ModelLoadError(f"the weights of {loaded.spec} contain NaN or infinite values (in {', '.join(bad)}); "
                             "the model is broken (diverged training or a damaged file): re-export or re-train it")


def check_finite_logits(loaded: "LoadedModel", images: torch.Tensor) -> None:
    """ModelLoadError when the model returns NaN or infinite logits on real images (checked before the audit)."""
    module = loaded.module.eval()
    try:
        with torch.no_grad():
            logits = module(images)
    except Exception as exc:  # noqa: BLE001 - shape errors surface as RuntimeError, AssertionError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"the model cannot run on inputs of size {tuple(images.shape[1:])} ({first[:200]}); "
                             "pass --input-size the model was trained at") from exc
    if not logits.is_floating_point():
        raise ModelLoadError(f"{loaded.spec} returns {str(logits.dtype).replace('torch.', '')} outputs, not float "
                             "logits, so no attack can follow a gradient; export the logits (before any argmax, "
                             "rounding or cast)")
    if not bool(torch.isfinite(logits).all()):
        n = int((~torch.isfinite(logits)).any(1).sum())
        hint = ("check --mean/--std (a zero std divides by zero)" if loaded.preprocessing.mean is not None
                else "check the weights and that the model takes [0, 1] pixels")
        raise ModelLoadError(f"{loaded.spec} returns NaN or infinite outputs on {n} of the first {len(images)} "
                             f"images; {hint}")
