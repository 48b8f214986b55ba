"""The repaired model in the input's form: ONNX in, ONNX out (parity-checked); timm in, safetensors out.

An ONNX model whose every trainable tensor sits in the input file (audit.models.onnx_weights)
is written *in place*: the input file with the trained values in its own initializers (same
names, layout, dtype and opset; no other change to the graph). Otherwise the re-export below
applies. The re-export keeps the original input and output tensor names (whatever the exporter
accepts: the file is written under placeholders and renamed), layout (NCHW/NHWC), batch axis
(dynamic or fixed to 1), opset where the exporter still writes it (else the nearest newer one)
and normalisation convention: the inner network is exported, so an input that expected
normalised pixels still does, and the wrapper's ``--mean/--std`` apply to it unchanged.

:func:`preflight_export` does all of this on the *unmodified* model before any training, so
a model that cannot be written back is refused in seconds (docs/repair.md, "Export preflight").
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnx
import torch

from audit.errors import TailAuditError
from audit.models import (LoadedModel, PixelClassifier, check_parity, converted_network, load_onnx, load_timm,
                          onnx_input_shape, onnx_opset, onnx_with_weights)
from audit.phases import write_atomic

from .errors import RepairError

log = logging.getLogger(__name__)

ONNX_NAME = "repaired.onnx"
SAFETENSORS_NAME = "repaired.safetensors"
EXPORT_OPSET = 17
MIN_EXPORT_OPSET = 9  # torch.onnx.export's oldest opset that onnx2torch still converts back


@dataclass
class ExportResult:
    """Where the repaired model went and how to audit it."""

    path: Path
    format: str
    audit_model: Any  # what the after-audit loads: a file, ``timm:ARCH`` or (Python modules) the module
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


@dataclass(frozen=True)
class OnnxSignature:
    """What the repaired file must keep from the input file: tensor names, dims, batch axis and opset."""

    input: str
    output: str
    dims: tuple[Optional[int], ...]
    batch_name: str
    opset: int

    @classmethod
    def of(cls, path: Path) -> "OnnxSignature":
        model = onnx.load(str(path), load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        inp = [vi for vi in model.graph.input if vi.name not in inits][0]
        dims = tuple(onnx_input_shape(inp) or ())
        batch_name = inp.type.tensor_type.shape.dim[0].dim_param or "batch"
        return cls(inp.name, model.graph.output[0].name, dims, batch_name, onnx_opset(model))

    def opsets(self) -> list[int]:
        """Opsets to try, the input's own first, then the nearest newer ones the exporter writes."""
        own = max(self.opset, MIN_EXPORT_OPSET)
        return [own] + [o for o in (11, 13, EXPORT_OPSET) if o > own]


@dataclass(frozen=True)
class ExportPlan:
    """How the repaired model will be written, proved on the unmodified model before any training."""

    format: str  # onnx | safetensors
    opset: Optional[int] = None
    input_name: Optional[str] = None
    output_name: Optional[str] = None
    batch: Optional[int] = None  # None: dynamic batch axis; 1: fixed, as in the input file
    layout: Optional[str] = None
    parity: dict[str, Any] = field(default_factory=dict)  # the unmodified export against the input runtime
    mode: str = "re-export"  # ONNX: in-place (trained values written into the input file) | re-export
    weights: dict[str, Any] = field(default_factory=dict)  # ONNX: what trains (audit.models.onnx_weights summary)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PLACEHOLDER_IN, PLACEHOLDER_OUT = "tailaudit_export_input", "tailaudit_export_output"


def rename_tensors(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Rename graph tensors in place (``old -> new``), first moving any other tensor already called ``new``.

    Any string is a valid ONNX tensor name; torch's exporter refuses some (numeric names such as
    "16" collide with its own), so the file is written with placeholders and renamed here.
    """
    g = model.graph
    used = {n for node in g.node for n in (*node.input, *node.output)}
    used |= {v.name for v in (*g.input, *g.output, *g.value_info)} | {i.name for i in g.initializer}
    clash = {new for old, new in mapping.items() if new != old and new in used}
    full = dict(mapping)
    for name in clash:
        k = 0
        while f"{name}__{k}" in used:
            k += 1
        full[name] = f"{name}__{k}"

    def sub(n: str) -> str:
        return full.get(n, n)

    for node in g.node:
        node.input[:] = [sub(n) for n in node.input]
        node.output[:] = [sub(n) for n in node.output]
    for vi in (*g.input, *g.output, *g.value_info):
        vi.name = sub(vi.name)
    for init in g.initializer:
        init.name = sub(init.name)


def _inner_network(loaded: LoadedModel, sig: OnnxSignature) -> tuple[torch.nn.Module, Optional[int]]:
    """The network to export (on the CPU, eval mode) and its fixed batch size (None: dynamic)."""
    net, per_sample = converted_network(loaded)
    fixed = 1 if per_sample else sig.dims[0]
    return copy.deepcopy(net).cpu().eval(), fixed


def _write_onnx(net: torch.nn.Module, sig: OnnxSignature, fixed: Optional[int], opset: int, path: Path) -> None:
    """torch.onnx.export under placeholder names, then the input file's own names restored; checked."""
    dummy = torch.zeros((fixed or 1, *[int(d) for d in sig.dims[1:]]))
    dynamic = None if fixed is not None else {PLACEHOLDER_IN: {0: sig.batch_name}, PLACEHOLDER_OUT: {0: sig.batch_name}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=[PLACEHOLDER_IN], output_names=[PLACEHOLDER_OUT], dynamic_axes=dynamic)
    model = onnx.load(str(path))
    rename_tensors(model, {PLACEHOLDER_IN: sig.input, PLACEHOLDER_OUT: sig.output})
    model.producer_name, model.producer_version = "tailaudit repair", ""
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _export_any_opset(net: torch.nn.Module, sig: OnnxSignature, fixed: Optional[int], path: Path,
                      opsets: Sequence[int]) -> int:
    """Write ``net`` at the first opset of ``opsets`` the exporter accepts; returns it."""
    errors = []
    for opset in opsets:
        try:
            _write_onnx(net, sig, fixed, opset, path)
            return opset
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
            errors.append(f"opset {opset}: {type(exc).__name__}: {_first_line(exc)}")
            log.debug("export at opset %d failed: %s", opset, exc)
    raise RepairError("this ONNX model cannot be written back as ONNX after repair (torch.onnx.export of its "
                      f"PyTorch conversion fails; {errors[0]}); it can be audited but not repaired: re-export it "
                      "from its training framework with a standard opset (13 or 17) and try again")


def _check_exported(loaded: LoadedModel, path: Path, probe: torch.Tensor, tol: float,
                    device: torch.device | str, what: str) -> dict[str, Any]:
    """Load ``path`` like the audit will, and compare it with the in-memory model (and its own conversion)."""
    pre = loaded.preprocessing
    exported = load_onnx(path, num_classes=loaded.num_classes, mean=pre.mean, std=pre.std, device=device,
                         fallback=False)
    got = exported.preprocessing
    if got.layout != pre.layout or tuple(got.input_size) != tuple(pre.input_size):
        raise RepairError(f"{what} takes {got.layout} {list(got.input_size)} instead of {pre.layout} "
                          f"{list(pre.input_size)}; this model cannot be repaired in its own format")
    x = probe.detach().float().cpu()
    parity = _parity(_logits(loaded.module, x), exported.reference_scorer(x.numpy()), tol, what)
    conv = check_parity(exported, x, tol=tol)
    parity["conversion"] = {k: conv[k] for k in ("max_abs_logit_diff", "argmax_agreement")}
    parity["providers"] = conv.get("providers")
    return parity


def untrained_note(loaded: LoadedModel) -> Optional[str]:
    """One line on the ONNX constants that stay as they are although they may be weights; None when all train."""
    wmap = loaded.weights
    if loaded.format != "onnx" or not loaded.gradient_access:
        return None
    if wmap is None:  # the conversion could not be mapped to the file: its constant buffers stay frozen
        net, _ = converted_network(loaded)
        frozen = [b for name, b in net.named_buffers()
                  if name.startswith("initializers.") and b.is_floating_point() and b.numel() > 1]
        if not frozen:
            return None
        return (f"{len(frozen)} float constants of the ONNX graph ({sum(b.numel() for b in frozen)} values, e.g. "
                "MatMul weights) could not be traced to the input file, so they stay as they are; only "
                "Conv/Gemm/BatchNorm parameters are fine-tuned")
    lost = [(n, k) for n, k, why in wmap.frozen if why == "made by the conversion"]
    for name, k, why in wmap.frozen:
        log.info("ONNX constant %r (%d values) stays constant: %s", name, k, why)
    if not lost:
        return None
    return (f"{len(lost)} weight-like constants of the ONNX graph ({sum(k for _, k in lost)} values, e.g. "
            f"{lost[0][0]!r}) are computed by the graph rather than stored in the file, so they stay as they are")


def _in_place_map(loaded: LoadedModel) -> Optional[Any]:
    """The model's weight map when every tensor that trains now is in it (in-place export possible), else None."""
    wmap = loaded.weights
    if wmap is None or not wmap.complete:
        return None
    net, _ = converted_network(loaded)
    keys = {s.key for s in wmap.slots}
    changing = {k for k, _ in net.named_parameters()} | {k for k, _ in net.named_buffers()
                                                         if k.endswith(("running_mean", "running_var"))}
    missing = sorted(changing - keys)
    if missing:  # e.g. a head folded back with a bias the input layer lacked
        log.info("in-place export not possible: %d trained tensor(s) have no place in the input file (%s)",
                 len(missing), ", ".join(missing[:3]))
        return None
    return wmap


def _write_in_place(loaded: LoadedModel, wmap: Any, path: Path) -> None:
    """The input file with the network's current values in its own tensors, written to ``path``."""
    net, _ = converted_network(loaded)
    model = onnx_with_weights(onnx.load(str(loaded.path)), net, wmap)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@torch.no_grad()
def _perturbed(loaded: LoadedModel, wmap: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    """Add seeded noise (about 5 % of each tensor's scale) to every mapped tensor; returns the values to restore."""
    net, _ = converted_network(loaded)
    state = net.state_dict(keep_vars=True)
    saved = {s.key: state[s.key].detach().clone() for s in wmap.slots}
    gen = torch.Generator().manual_seed(seed)
    for slot in wmap.slots:
        t = state[slot.key]
        noise = torch.randn(t.shape, generator=gen).to(t.device, t.dtype)
        if slot.key.endswith("running_var"):
            t.mul_(torch.exp(0.05 * noise))
        else:
            t.add_(0.05 * (t.abs().mean() + 1e-3) * noise)
    return saved


def preflight_in_place(loaded: LoadedModel, probe: torch.Tensor, *, tol: float = 1e-3,
                       device: torch.device | str = "cpu") -> Optional[ExportPlan]:
    """Prove the in-place write-back on a perturbed copy of the weights; None when it does not apply or fails.

    Every mapped tensor gets seeded noise, the values are written into a copy of the input file,
    and onnxruntime on it must match the perturbed network; the weights are restored afterwards.
    """
    wmap = _in_place_map(loaded)
    if wmap is None:
        return None
    sig = OnnxSignature.of(loaded.path)  # type: ignore[arg-type]
    net, _ = converted_network(loaded)
    saved = _perturbed(loaded, wmap)
    try:
        with tempfile.TemporaryDirectory(prefix="tailaudit-preflight-") as tmp:
            path = Path(tmp) / "preflight.onnx"
            _write_in_place(loaded, wmap, path)
            parity = _check_exported(loaded, path, probe, tol, device, "the input file with perturbed weights")
    except Exception as exc:  # noqa: BLE001 - any failure of the write-back means: re-export instead
        log.info("in-place export preflight failed (%s); the model will be re-exported", _first_line(exc))
        return None
    finally:
        with torch.no_grad():
            state = net.state_dict(keep_vars=True)
            for key, value in saved.items():
                state[key].copy_(value)
    log.info("export preflight: trained weights are written in place into the input file (%d tensors, opset %d "
             "kept), parity %.2g on perturbed weights", len({s.name for s in wmap.slots}), sig.opset,
             parity["max_abs_logit_diff"])
    return ExportPlan("onnx", sig.opset, sig.input, sig.output, sig.dims[0], loaded.preprocessing.layout, parity,
                      mode="in-place", weights=wmap.summary())


def preflight_onnx(loaded: LoadedModel, probe: torch.Tensor, *, tol: float = 1e-3,
                   device: torch.device | str = "cpu") -> ExportPlan:
    """Export the *unmodified* model the way the repaired one will be, before any attack or training step.

    Proves the exporter accepts the converted network at some opset, that the file keeps the
    input's tensor names, layout and batch axis, and that onnxruntime on it agrees with the
    input model on ``probe``. Raises RepairError (one line) otherwise; takes seconds.
    """
    if loaded.path is None:
        raise RepairError("the ONNX model's original file is unknown; cannot export it in the same form")
    in_place = preflight_in_place(loaded, probe, tol=tol, device=device)
    if in_place is not None:
        return in_place
    sig = OnnxSignature.of(loaded.path)
    net, fixed = _inner_network(loaded, sig)
    with tempfile.TemporaryDirectory(prefix="tailaudit-preflight-") as tmp:
        path = Path(tmp) / "preflight.onnx"
        opset = _export_any_opset(net, sig, fixed, path, sig.opsets())
        try:
            parity = _check_exported(loaded, path, probe, tol, device, "the re-exported input model")
        except (RepairError, TailAuditError) as exc:
            raise RepairError(f"this ONNX model cannot be repaired in its own format: a test export of the "
                              f"unmodified model fails its check ({_first_line(exc)})") from None
        again = OnnxSignature.of(path)
    if (again.input, again.output) != (sig.input, sig.output) or again.dims[0] != sig.dims[0]:
        raise RepairError(f"the re-exported model has input/output {again.input!r}/{again.output!r} with batch "
                          f"{again.dims[0]} instead of {sig.input!r}/{sig.output!r} with batch {sig.dims[0]}")
    log.info("export preflight: the input model re-exports at opset %d (input %r, output %r, %s batch), "
             "parity %.2g", opset, sig.input, sig.output, "dynamic" if fixed is None else f"fixed {fixed}",
             parity["max_abs_logit_diff"])
    weights = loaded.weights.summary() if loaded.weights is not None else {}
    return ExportPlan("onnx", opset, sig.input, sig.output, fixed, loaded.preprocessing.layout, parity,
                      weights=weights)


def export_onnx(loaded: LoadedModel, out_dir: Path, probe: torch.Tensor, plan: ExportPlan, *, tol: float = 1e-3,
                device: torch.device | str = "cpu") -> ExportResult:
    """Export the repaired inner network to ``out_dir/repaired.onnx`` as the preflight ``plan`` did, checked first.

    ``probe``: real NCHW [0, 1] images. The file is only renamed into place when onnxruntime's
    logits match the trained module's, and its own conversion passes ``check_parity``.
    """
    if loaded.path is None:
        raise RepairError("the ONNX model's original file is unknown; cannot export in the same form")
    sig = OnnxSignature.of(loaded.path)
    wmap = _in_place_map(loaded) if plan.mode == "in-place" else None
    final = out_dir / ONNX_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{ONNX_NAME}.tmp.onnx"
    try:
        if wmap is not None:
            _write_in_place(loaded, wmap, tmp)
            opset = sig.opset
        else:
            net, fixed = _inner_network(loaded, sig)
            opsets = [plan.opset or EXPORT_OPSET] if plan.mode != "in-place" else sig.opsets()
            opset = _export_any_opset(net, sig, fixed, tmp, opsets)
        parity = _check_exported(loaded, tmp, probe, tol, device, "onnxruntime on the exported ONNX file")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    how = "trained weights in place" if wmap is not None else "re-exported"
    log.info("wrote %s (%s, opset %d, parity %.2g on %d images)", final, how, opset, parity["max_abs_logit_diff"],
             parity["n"])
    return ExportResult(final, "onnx", str(final), None,
                        {**parity, "opset": opset, "mode": "in-place" if wmap is not None else "re-export"})


def export_timm(loaded: LoadedModel, out_dir: Path, probe: torch.Tensor, *, tol: float = 1e-3,
                device: torch.device | str = "cpu") -> ExportResult:
    """Write the repaired timm network's state dict to ``out_dir/repaired.safetensors``, reloaded and checked."""
    from safetensors.torch import save

    net = loaded.module.net
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    blob = save(tensors, metadata={"arch": str(loaded.arch), "producer": "tailaudit repair"})
    final = out_dir / SAFETENSORS_NAME
    write_atomic(final, lambda fh: fh.write(blob))
    pre = loaded.preprocessing
    again = load_timm(str(loaded.arch), final, num_classes=loaded.num_classes, mean=pre.mean, std=pre.std,
                      input_size=pre.input_size[1], device=device)
    x = probe.detach().float().cpu()
    parity = _parity(_logits(loaded.module, x), _logits(again.module, x), tol, f"the reloaded {final.name}")
    log.info("wrote %s", final)
    return ExportResult(final, "safetensors", f"timm:{loaded.arch}", str(final), parity)


def export_module(loaded: LoadedModel, out_dir: Path, probe: torch.Tensor, *, tol: float = 1e-3,
                  device: torch.device | str = "cpu") -> ExportResult:
    """A Python module's weights as ``out_dir/repaired.safetensors`` (load them with ``load_state_dict``).

    The after-audit runs a copy of the module with the file's weights loaded, so it audits what
    the file holds; a module whose state dict does not round-trip fails the parity check here.
    """
    from safetensors.torch import load, save

    net = loaded.module.net
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    blob = save(tensors, metadata={"module": str(loaded.arch), "producer": "tailaudit repair"})
    final = out_dir / SAFETENSORS_NAME
    write_atomic(final, lambda fh: fh.write(blob))
    again = copy.deepcopy(net).cpu()
    again.load_state_dict(load(final.read_bytes()))
    again.eval()
    x = probe.detach().float().cpu()
    wrapped = PixelClassifier(again, loaded.preprocessing).eval()
    parity = _parity(_logits(loaded.module, x), _logits(wrapped, x), tol, f"the reloaded {final.name}")
    log.info("wrote %s", final)
    return ExportResult(final, "safetensors", again, None, parity)


def preflight_module(loaded: LoadedModel, probe: torch.Tensor, *, tol: float = 1e-3,
                     device: torch.device | str = "cpu") -> ExportPlan:
    """Write the unmodified module's weights as safetensors, load them into a copy, compare."""
    with tempfile.TemporaryDirectory(prefix="tailaudit-preflight-") as tmp:
        try:
            res = export_module(loaded, Path(tmp), probe, tol=tol, device=device)
        except (RepairError, TailAuditError, RuntimeError) as exc:
            raise RepairError(f"this module cannot be repaired: a test export of its unmodified weights fails "
                              f"({_first_line(exc)})") from None
    return ExportPlan("safetensors", layout=loaded.preprocessing.layout, parity=res.parity)


def preflight_timm(loaded: LoadedModel, probe: torch.Tensor, *, tol: float = 1e-3,
                   device: torch.device | str = "cpu") -> ExportPlan:
    """Write the unmodified timm weights as safetensors, reload them into the architecture, compare."""
    with tempfile.TemporaryDirectory(prefix="tailaudit-preflight-") as tmp:
        try:
            res = export_timm(loaded, Path(tmp), probe, tol=tol, device=device)
        except (RepairError, TailAuditError) as exc:
            raise RepairError(f"this timm model cannot be repaired in its own format: a test export of the "
                              f"unmodified weights fails ({_first_line(exc)})") from None
    return ExportPlan("safetensors", layout=loaded.preprocessing.layout, parity=res.parity)


def _without_label_order(loaded: LoadedModel, fn):  # noqa: ANN001, ANN202
    """Run ``fn()`` with a ``--labels`` re-ordering switched off: files keep the network's own output order."""
    order, loaded.module.output_order = loaded.module.output_order, None
    try:
        return fn()
    finally:
        loaded.module.output_order = order


def preflight_export(loaded: LoadedModel, probe: torch.Tensor, *, tol: float = 1e-3,
                     device: torch.device | str = "cpu") -> ExportPlan:
    """Prove, before any training, that this model can be written back in its own format (RepairError if not)."""
    if not loaded.gradient_access:
        raise RepairError(f"{loaded.spec} runs in black-box mode (no gradients: it could not be converted to "
                          "PyTorch), so it cannot be fine-tuned; repair needs a model that converts (audit it "
                          "without --black-box to see why it does not)")
    if loaded.format == "onnx":
        return _without_label_order(loaded, lambda: preflight_onnx(loaded, probe, tol=tol, device=device))
    if loaded.format == "timm":
        return _without_label_order(loaded, lambda: preflight_timm(loaded, probe, tol=tol, device=device))
    if loaded.format == "torch":
        return _without_label_order(loaded, lambda: preflight_module(loaded, probe, tol=tol, device=device))
    raise RepairError(f"cannot write a repaired model of format {loaded.format!r}; repair takes ONNX files, "
                      "timm checkpoints and nn.Modules")


def keep_input(loaded: LoadedModel, out_dir: Path) -> Optional[ExportResult]:
    """The input ONNX file copied unchanged as the output (repair kept the input model); None for timm."""
    if loaded.format != "onnx" or loaded.path is None:
        return None
    final = out_dir / ONNX_NAME
    write_atomic(final, lambda fh: fh.write(Path(loaded.path).read_bytes()))  # type: ignore[arg-type]
    log.info("wrote %s: the input model, unchanged", final)
    return ExportResult(final, "onnx", str(final), None, {"identical_to_input": True})


def export_repaired(loaded: LoadedModel, out_dir: Path, probe: torch.Tensor, plan: ExportPlan, *,
                    tol: float = 1e-3, device: torch.device | str = "cpu") -> ExportResult:
    """ONNX in, ONNX out (as ``plan``, from :func:`preflight_export`); timm or a Python module in, safetensors out.

    The file keeps the network's own output order: a ``--labels`` re-ordering is switched off
    for the parity checks (the after-audit applies the same ``--labels`` again).
    """
    if loaded.format == "onnx":
        return _without_label_order(loaded, lambda: export_onnx(loaded, out_dir, probe, plan, tol=tol, device=device))
    if loaded.format == "timm":
        return _without_label_order(loaded, lambda: export_timm(loaded, out_dir, probe, tol=tol, device=device))
    if loaded.format == "torch":
        return _without_label_order(loaded, lambda: export_module(loaded, out_dir, probe, tol=tol, device=device))
    raise RepairError(f"cannot write a repaired model of format {loaded.format!r}")
