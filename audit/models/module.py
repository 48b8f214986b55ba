"""An ``nn.Module`` built in Python, audited as it is (docs/python_api.md).

The module is copied (the audit puts its copy in eval mode and freezes it; the caller's object is
never changed), wrapped so attacks work on [0, 1] pixels with ``mean``/``std`` applied inside the
wrapper, and identified by the sha256 of its state dict, so two audits of the same weights can
be told apart from two audits of different ones.
"""
from __future__ import annotations

import copy
import hashlib
from typing import Optional

import torch
from torch import nn

from ..errors import ModelLoadError
from .wrapper import LoadedModel, PixelClassifier, Preprocessing, check_norm_channels

__all__ = ["final_linear", "module_spec", "state_sha256", "wrap_module"]


def module_spec(module: nn.Module) -> str:
    """What results.json records as the model: ``python:<class name>``."""
    return f"python:{type(module).__qualname__}"


def state_sha256(module: nn.Module) -> str:
    """sha256 over the state dict's names, dtypes, shapes and values (CPU bytes, name order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def wrap_module(module: nn.Module, *, mean: Optional[tuple[float, ...]], std: Optional[tuple[float, ...]],
                input_size: Optional[int], data_size: tuple[int, int, int],
                device: torch.device | str = "cpu") -> LoadedModel:
    """A copy of ``module`` as a :class:`LoadedModel` taking ``data_size`` pixels (or ``input_size`` squares).

    ``mean``/``std`` None: the module takes [0, 1] pixels (normalisation inside it). The number
    of classes is what the module returns for one image.
    """
    if isinstance(module, PixelClassifier):
        raise ModelLoadError("pass your own network, not tailaudit's PixelClassifier wrapper (or pass the "
                             "LoadedModel it belongs to)")
    c = int(data_size[0])
    size = (c, int(input_size), int(input_size)) if input_size else tuple(int(v) for v in data_size)
    spec = module_spec(module)
    check_norm_channels(mean, std, c, spec)
    pre = Preprocessing(input_size=size, mean=tuple(mean) if mean is not None else None,  # type: ignore[arg-type]
                        std=tuple(std) if std is not None else None)
    net = copy.deepcopy(module)
    wrapped = PixelClassifier(net, pre).to(device).eval()
    try:
        with torch.no_grad():
            out = wrapped(torch.full((1, *size), 0.5, device=device))
    except Exception as exc:  # noqa: BLE001 - any forward failure is an input-size or wiring problem
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{spec} cannot run on a {size} image ({first[:200]}); pass input_size= or "
                             "data of the size the module expects") from exc
    if out.dim() != 2 or out.shape[0] != 1:
        raise ModelLoadError(f"{spec} returns shape {tuple(out.shape)} for one image; an image classifier returns "
                             "(batch, classes) logits")
    return LoadedModel(module=wrapped, spec=spec, format="torch", num_classes=int(out.shape[1]),
                       preprocessing=pre, sha256=state_sha256(module), arch=type(module).__qualname__,
                       info={"source": "python"})


def final_linear(net: nn.Module) -> Optional[nn.Linear]:
    """The module's logit-producing nn.Linear, found as for a converted ONNX graph (traced with torch.fx;
    the trace shares the module's layers, so the layer returned is the module's own). None when the
    module cannot be traced or does not end in a plain linear layer."""
    from .onnx_model import find_final_linear

    if isinstance(net, nn.Linear) or hasattr(net, "get_classifier"):
        return find_final_linear(net)
    try:
        traced = torch.fx.symbolic_trace(net)
    except Exception:  # noqa: BLE001 - data-dependent control flow: no classifier to name, not an error
        return None
    return find_final_linear(traced)
