"""The repaired model in the input's form: ONNX in, ONNX out (parity-checked); timm in, safetensors out.

The ONNX export keeps the original input name, layout (NCHW/NHWC), batch axis (dynamic or
fixed) and normalisation convention: the inner network is exported, so an input that expected
normalised pixels still does, and the wrapper's ``--mean/--std`` apply to it unchanged.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import torch

from audit.models import LoadedModel
from audit.results import _atomic

from .errors import RepairError

log = logging.getLogger(__name__)

ONNX_NAME = "repaired.onnx"
SAFETENSORS_NAME = "repaired.safetensors"
EXPORT_OPSET = 17


@dataclass
class ExportResult:
    """Where the repaired model went and how to audit it."""

    path: Path
    format: str
    audit_model: str
    audit_checkpoint: Optional[str]
    parity: dict[str, Any] = field(default_factory=dict)


def _parity(ours: np.ndarray, ref: np.ndarray, tol: float, what: str) -> dict[str, Any]:
    finite = bool(np.isfinite(ours).all() and np.isfinite(ref).all()) and ours.shape == ref.shape
    diff = float(np.abs(ours - ref).max()) if finite else float("inf")
    rel = diff / max(1.0, float(np.abs(ref).max())) if finite else float("inf")
    agree = float(np.mean(ours.argmax(1) == ref.argmax(1))) if ours.shape == ref.shape else 0.0
    if not finite or rel > tol or agree < 1.0:
        raise RepairError(f"{what} disagrees with the trained PyTorch model (max logit difference {diff:.3g}, "
                          f"top-class agreement {agree:.1%} on {len(ours)} images); the repaired model was not "
                          "written; report this with the model file")
    return {"n": int(len(ours)), "max_abs_logit_diff": diff, "max_rel_logit_diff": rel, "argmax_agreement": agree,
            "tolerance": tol}


@torch.no_grad()
def _logits(module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    return module.eval()(x.to(dev)).float().cpu().numpy()


def _signature(path: Path) -> dict[str, Any]:
    """Input/output names, input dims (None for a symbolic batch) and opset of the original file."""
    from audit.models import onnx_graph

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inp = [vi for vi in model.graph.input if vi.name not in inits][0]
    dims = onnx_graph.tensor_shape(inp)
    batch_name = inp.type.tensor_type.shape.dim[0].dim_param or "batch"
    return {"input": inp.name, "output": model.graph.output[0].name, "dims": dims, "batch_name": batch_name,
            "opset": onnx_graph.opset_of(model)}


def export_onnx(loaded: LoadedModel, out_dir: Path, probe: torch.Tensor, *, tol: float = 1e-3,
                device: torch.device | str = "cpu") -> ExportResult:
    """Export the repaired inner network to ``out_dir/repaired.onnx``, checked with onnxruntime first.

    ``probe``: real NCHW [0, 1] images. The file is only renamed into place when onnxruntime's
    logits match the trained module's, and its own conversion passes ``check_parity``.
    """
    from audit.models.onnx_model import _PerSample, check_parity, load_onnx

    if loaded.path is None:
        raise RepairError("the ONNX model's original file is unknown; cannot export in the same form")
    sig = _signature(loaded.path)
    net = loaded.module.net
    fixed_batch = sig["dims"][0]
    if isinstance(net, _PerSample):
        net, fixed_batch = net.net, 1
    net_cpu = copy.deepcopy(net).cpu().eval()
    opset = sig["opset"] if 11 <= sig["opset"] <= EXPORT_OPSET else EXPORT_OPSET
    dummy = torch.zeros((fixed_batch or 1, *[int(d) for d in sig["dims"][1:]]))
    dynamic = None
    if fixed_batch is None:
        dynamic = {sig["input"]: {0: sig["batch_name"]}, sig["output"]: {0: sig["batch_name"]}}
    final = out_dir / ONNX_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{ONNX_NAME}.tmp.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net_cpu, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[sig["input"]], output_names=[sig["output"]], dynamic_axes=dynamic)
        pre = loaded.preprocessing
        exported = load_onnx(tmp, num_classes=loaded.num_classes, mean=pre.mean, std=pre.std, device=device)
        if exported.preprocessing.layout != pre.layout or tuple(exported.preprocessing.input_size) != tuple(pre.input_size):
            raise RepairError(f"the exported model takes {exported.preprocessing.layout} "
                              f"{list(exported.preprocessing.input_size)} instead of {pre.layout} {list(pre.input_size)}")
        x = probe.detach().float().cpu()
        parity = _parity(_logits(loaded.module, x), exported.reference_scorer(x.numpy()), tol,
                         "onnxruntime on the exported ONNX file")
        conv = check_parity(exported, x, tol=tol)
        parity["conversion"] = {k: conv[k] for k in ("max_abs_logit_diff", "argmax_agreement")}
        parity["providers"] = conv.get("providers")
        os.replace(tmp, final)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s (opset %d, parity %.2g on %d images)", final, opset, parity["max_abs_logit_diff"], parity["n"])
    return ExportResult(final, "onnx", str(final), None, {**parity, "opset": opset})


def export_timm(loaded: LoadedModel, out_dir: Path, probe: torch.Tensor, *, tol: float = 1e-3,
                device: torch.device | str = "cpu") -> ExportResult:
    """Write the repaired timm network's state dict to ``out_dir/repaired.safetensors``, reloaded and checked."""
    from safetensors.torch import save

    from audit.models.timm_model import load_timm

    net = loaded.module.net
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    blob = save(tensors, metadata={"arch": str(loaded.arch), "producer": "tailaudit repair"})
    final = out_dir / SAFETENSORS_NAME
    _atomic(final, lambda fh: fh.write(blob))
    pre = loaded.preprocessing
    again = load_timm(str(loaded.arch), final, num_classes=loaded.num_classes, mean=pre.mean, std=pre.std,
                      input_size=pre.input_size[1], device=device)
    x = probe.detach().float().cpu()
    parity = _parity(_logits(loaded.module, x), _logits(again.module, x), tol, f"the reloaded {final.name}")
    log.info("wrote %s", final)
    return ExportResult(final, "safetensors", f"timm:{loaded.arch}", str(final), parity)


def export_repaired(loaded: LoadedModel, out_dir: Path, probe: torch.Tensor, *, tol: float = 1e-3,
                    device: torch.device | str = "cpu") -> ExportResult:
    """ONNX in, ONNX out; timm in, safetensors out.

    The file keeps the network's own output order: a ``--labels`` re-ordering is switched off
    for the parity checks (the after-audit applies the same ``--labels`` again).
    """
    order, loaded.module.output_order = loaded.module.output_order, None
    try:
        if loaded.format == "onnx":
            return export_onnx(loaded, out_dir, probe, tol=tol, device=device)
        if loaded.format == "timm":
            return export_timm(loaded, out_dir, probe, tol=tol, device=device)
    finally:
        loaded.module.output_order = order
    raise RepairError(f"cannot write a repaired model of format {loaded.format!r}")
