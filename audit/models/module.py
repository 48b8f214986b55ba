"""An ``nn.Module`` built in Python, audited as it is (docs/python_api.md).

The module is copied (the audit puts its copy in eval mode and freezes it; the caller's object is
never changed), wrapped so attacks work on [0, 1] pixels with ``mean``/``std`` applied inside the
wrapper, and identified by the sha256 of its state dict, so two audits of the same weights can
be told apart from two audits of different ones.
"""
from __future__ import annotations

import copy
import hashlib
import logging
from typing import Optional

import torch
from torch import nn

from ..errors import ModelLoadError
from .wrapper import LOGITS_KEY, LoadedModel, PixelClassifier, Preprocessing, check_norm_channels, output_rule

__all__ = ["final_linear", "module_spec", "state_sha256", "wrap_module"]

log = logging.getLogger(__name__)


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
    _check_tensors(module, spec)
    pre = Preprocessing(input_size=size, mean=tuple(mean) if mean is not None else None,  # type: ignore[arg-type]
                        std=tuple(std) if std is not None else None)
    net = copy.deepcopy(module)
    wrapped = PixelClassifier(net, pre).to(device).eval()
    out = _probe_output(wrapped, size, device, spec)
    if out.dim() != 2 or out.shape[0] != 1:
        raise ModelLoadError(f"{spec} returns shape {tuple(out.shape)} for one image; an image classifier returns "
                             "(batch, classes) logits")
    return LoadedModel(module=wrapped, spec=spec, format="torch", num_classes=int(out.shape[1]),
                       preprocessing=pre, sha256=state_sha256(module), arch=type(module).__qualname__,
                       info={"source": "python"})


def _check_tensors(module: nn.Module, spec: str) -> None:
    """One sentence for weights the audit cannot run: on the meta device (no values) or not float32."""
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.is_meta for t in tensors):
        raise ModelLoadError(f"model= ({spec}) has weights on the meta device, which hold no values (built under "
                             "init_empty_weights or device='meta'); load its weights first, e.g. "
                             "load_state_dict(state, assign=True)")
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors
                     if t.is_floating_point() and t.dtype != torch.float32})
    if dtypes:
        raise ModelLoadError(f"model= ({spec}) has {' and '.join(dtypes)} weights but the audit runs float32 pixels; "
                             "pass model.float() (a float32 copy; amp='bf16' runs the attacks in bfloat16 on a GPU)")


def _probe_output(wrapped: PixelClassifier, size: tuple[int, ...], device: torch.device | str,
                  spec: str) -> torch.Tensor:
    """The logits for one grey image; the rule that reads a tuple or dict output is said once (docs/python_api.md)."""
    x = torch.full((1, *size), 0.5, device=device)
    try:
        with torch.no_grad():
            raw = wrapped.net(wrapped.normalise(x))
    except Exception as exc:  # noqa: BLE001 - any forward failure is an input-size or wiring problem
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{spec} cannot run on a {size} image ({first[:200]}); pass input_size= or "
                             "data of the size the module expects") from exc
    try:
        rule = output_rule(raw)
    except ValueError as exc:
        raise ModelLoadError(f"{spec} returns {exc}; return the logits, a tuple (logits, ...) or a dict with a "
                             "'logits' entry") from None
    if rule is not None:
        log.warning("%s returns a %s: the audit takes its %s as the logits", spec, type(raw).__name__,
                    "first element" if rule == "first" else "'logits' entry")
    with torch.no_grad():
        return wrapped(x)


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
    out = next(n for n in traced.graph.nodes if n.op == "output")
    value = out.args[0]
    if isinstance(value, (tuple, list)) and value:  # (logits, features): the rule of wrapper.logits_of
        out.args = (value[0],)
    elif isinstance(value, dict) and LOGITS_KEY in value:
        out.args = (value[LOGITS_KEY],)
    return find_final_linear(traced)
