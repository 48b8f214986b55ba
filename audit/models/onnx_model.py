"""Load an ONNX image classifier as a differentiable PyTorch module, checked against onnxruntime.

The attack needs gradients, so the ONNX graph is converted with onnx2torch; onnxruntime on
the (batch-fixed) original graph stays the reference scorer, and :func:`check_parity`
refuses to audit a conversion that disagrees with it.
"""
from __future__ import annotations

import logging
import re
import stat
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError, ParityError
from . import onnx_graph
from .onnx_weights import WeightMap, bind_weights
from ..bounds import check_input_size
from .wrapper import LoadedModel, PixelClassifier, Preprocessing, ScorerClassifier, check_norm_channels, sha256_of

log = logging.getLogger(__name__)

ORT_CHUNK = 256
TORCH_CHUNK = 64
_PROBE_BATCH = 8
_DTYPE_NAMES = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}


class ConversionError(ModelLoadError):
    """The ONNX graph cannot be converted to a differentiable PyTorch module (black-box mode still works)."""


class OrtScorer:
    """Reference scorer: NCHW float32 pixels in [0, 1] (numpy) -> logits (numpy), via onnxruntime."""

    def __init__(self, session: Any, preprocessing: Preprocessing, chunk: int = ORT_CHUNK) -> None:
        self.session = session
        self.preprocessing = preprocessing
        self.chunk = chunk
        self.input_name = session.get_inputs()[0].name

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = self.preprocessing.apply_numpy(np.asarray(pixels, dtype=np.float32))
        outs = [self.session.run(None, {self.input_name: x[i:i + self.chunk]})[0]
                for i in range(0, len(x), self.chunk)]
        if not outs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outs).astype(np.float32, copy=False)


class _PerSample(nn.Module):
    """Runs a network whose batch is fixed to 1 one image at a time."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.cat([self.net(x[i:i + 1]) for i in range(x.shape[0])], dim=0)


class _Slice(nn.Module):
    """ONNX Slice (opset 10+) with ONNX clamping and tuple indexing.

    Replaces onnx2torch's OnnxSlice, which indexes with a list (deprecated in torch, warns
    on every call) and leaves out-of-range ends to torch's truncation (warns as well).
    """

    def forward(self, x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,  # noqa: D102
                axes: Optional[torch.Tensor] = None, steps: Optional[torch.Tensor] = None) -> torch.Tensor:
        s_list, e_list = starts.tolist(), ends.tolist()
        a_list = list(range(len(s_list))) if axes is None else axes.tolist()
        st_list = [1] * len(s_list) if steps is None else steps.tolist()
        index: list[slice] = [slice(None)] * x.dim()
        for start, end, axis, step in zip(s_list, e_list, a_list, st_list):
            axis = axis + x.dim() if axis < 0 else axis
            n = x.shape[axis]
            start = start + n if start < 0 else start
            end = end + n if end < 0 else end
            if step > 0:
                index[axis] = slice(min(max(start, 0), n), min(max(end, 0), n), step)
            else:
                idx = torch.arange(min(max(start, 0), n - 1), min(max(end, -1), n - 1), step, device=x.device)
                x = x.index_select(axis, idx)
        return x[tuple(index)]


def _patch_converted(net: nn.Module) -> int:
    """Swap onnx2torch modules that misbehave for drop-in replacements; returns how many."""
    from onnx2torch.node_converters.slice import OnnxSlice

    n = 0
    for name, child in list(net.named_children()):
        if isinstance(child, OnnxSlice):
            setattr(net, name, _Slice())
            n += 1
    return n


class _GlobalMaxPool(nn.Module):
    """ONNX GlobalMaxPool: max over all spatial dims, kept as size 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


def _register_converters() -> None:
    """Add onnx2torch converters for ops it lacks (once per process)."""
    from onnx2torch.node_converters.registry import add_converter, get_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    try:
        get_converter("GlobalMaxPool", 1)
    except NotImplementedError:
        @add_converter(operation_type="GlobalMaxPool", version=1)
        def _global_max_pool(node: Any, graph: Any) -> Any:  # noqa: ARG001 - onnx2torch signature
            return OperationConverterResult(torch_module=_GlobalMaxPool(), onnx_mapping=onnx_mapping_from_node(node))


_register_converters()


# --------------------------------------------------------------------------- reading


def _read(path: Path) -> onnx.ModelProto:
    if path.is_dir():
        raise ModelLoadError(f"model file {path} is a directory; pass the path of an .onnx file")
    if not path.exists():
        raise ModelLoadError(f"model file {path} not found; pass the path of an .onnx file")
    if not stat.S_ISREG(path.stat().st_mode):  # checked before open(): a pipe blocks it, a device never ends
        raise ModelLoadError(f"model file {path} is not a regular file (a device or a pipe), which tailaudit does "
                             "not read; pass the path of an .onnx file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ModelLoadError(f"model file {path} cannot be read ({exc.strerror}); check its permissions") from None
    try:
        model = onnx.load(str(path))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path} refers to external weight data that is missing ({exc}); copy the "
                             f".data file next to the .onnx file") from None
    except Exception as exc:  # noqa: BLE001 - protobuf raises assorted errors on garbage
        if "points outside the directory" in str(exc) or "outside the directory" in str(exc):
            raise ModelLoadError(f"{path} refers to external weight data outside its folder, which tailaudit "
                                 "does not read; keep the .data file next to the .onnx file (re-save it with "
                                 "onnx.save(..., location='NAME.data'))") from None
        raise ModelLoadError(f"{path} is not a valid ONNX model ({type(exc).__name__}); re-export it "
                             f"(e.g. torch.onnx.export) and check the file was copied completely") from None
    if model.ir_version <= 0 or not model.graph.node or not model.graph.output:
        raise ModelLoadError(f"{path} is not a valid ONNX model (no graph in it); re-export it "
                             f"(e.g. torch.onnx.export) and check the file was copied completely")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - ValidationError and C++ errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{path} is not a valid ONNX model (the ONNX checker says: {first}); "
                             f"re-export it") from None
    return model


def _describe(vi: onnx.ValueInfoProto) -> str:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        return f"{vi.name}: non-tensor"
    shape = onnx_graph.tensor_shape(vi)
    dims = "?" if shape is None else ", ".join(
        str(d) if d is not None else (tt.shape.dim[i].dim_param or "?") for i, d in enumerate(shape))
    return f"{vi.name}: {_DTYPE_NAMES.get(tt.elem_type, tt.elem_type)}[{dims}]"


def _image_io(model: onnx.ModelProto, path: Path) -> tuple[onnx.ValueInfoProto, list[Optional[int]]]:
    """The single image input and its dims; raises unless the model looks like a classifier."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [vi for vi in g.input if vi.name not in inits]
    got = "; ".join(_describe(vi) for vi in inputs) or "no inputs"
    not_image = (f"{path} is not an image classifier: expected input N×C×H×W or N×H×W×C, got {got}")
    if len(inputs) != 1 or not inputs[0].type.HasField("tensor_type"):
        raise ModelLoadError(not_image)
    dims = onnx_graph.tensor_shape(inputs[0])
    if dims is None or len(dims) != 4:
        raise ModelLoadError(not_image)
    elem = inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise ModelLoadError(f"{path} takes {_DTYPE_NAMES.get(elem, elem)} input ({got}); tailaudit needs a "
                             f"float32 model: re-export it in float32")
    if any(d is None for d in dims[1:]):
        raise ModelLoadError(f"{path} has a dynamic image size ({got}); re-export it with a fixed channel "
                             f"count, height and width (only the batch axis may be dynamic)")
    if any(d <= 0 for d in dims[1:]):
        raise ModelLoadError(f"{path} takes images with a zero-size dimension ({got}); re-export it with its real "
                             f"channel count, height and width")
    outs = [_describe(vi) for vi in g.output]
    out_dims = onnx_graph.tensor_shape(g.output[0]) if len(g.output) == 1 else None
    if len(g.output) != 1 or (out_dims is not None and len(out_dims) != 2):
        raise ModelLoadError(f"{path} is not an image classifier: expected one output of shape "
                             f"(batch, classes), got {'; '.join(outs)}")
    return inputs[0], dims


def detect_layout(dims: Sequence[Optional[int]]) -> str:
    """NHWC when only the last dim looks like channels (1 or 3), else NCHW."""
    return "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"


# --------------------------------------------------------------------------- onnxruntime


def _providers(device: torch.device) -> list[Any]:
    import onnxruntime as ort

    if (device.type == "cuda" and torch.cuda.is_available()
            and "CUDAExecutionProvider" in ort.get_available_providers()):
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _ort_severity() -> int:
    """onnxruntime's own log lines go straight to stderr (coloured): shown from warnings up with --debug, otherwise
    only fatal ones, so that a refusal is tailaudit's one line (the error reaches us as an exception anyway)."""
    return 2 if log.isEnabledFor(logging.DEBUG) else 4


def _session(model: onnx.ModelProto | Path, device: torch.device, *, severity: Optional[int] = None) -> Any:
    """An onnxruntime session on providers that can load, logging at ``severity`` (default :func:`_ort_severity`)."""
    import onnxruntime as ort

    severity = _ort_severity() if severity is None else severity
    ort.set_default_logger_severity(severity)  # the process-wide logger: environment and provider messages
    opts = ort.SessionOptions()
    opts.log_severity_level = severity
    # onnxruntime's worker threads spin after each run by default, starving the PyTorch attack
    # that runs between re-scoring calls; let them sleep instead.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    providers = _providers(device)
    if len(providers) == 1:
        return ort.InferenceSession(src, sess_options=opts, providers=providers)
    # The CUDA provider can still fail to load (driver/cuDNN mismatch): keep that off the
    # console and fall back to the CPU; load_onnx reports it in info["warnings"].
    opts.log_severity_level = 4
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001
        log.debug("onnxruntime CUDA session failed (%s); using the CPU", exc)
        opts.log_severity_level = severity
        return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def _run(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _batch_fix(model: onnx.ModelProto, k_shape: tuple[int, ...], device: torch.device,
               original: Any) -> Optional[tuple[onnx.ModelProto, Any]]:
    """Make a batch-1 model batch-dynamic; None when onnxruntime shows the fix does not hold."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    fixed, _ = onnx_graph.fold_constants(copy)  # exposes shape arithmetic as constants to fix
    n = onnx_graph.make_batch_symbolic(fixed, onnx_graph.inferred_shapes(fixed))
    x = np.random.default_rng(0).random((4, *k_shape), dtype=np.float32)
    try:
        trial = _session(fixed, device, severity=4)  # a failure here is expected and handled
        got = _run(trial, x)
        want = np.concatenate([_run(original, x[i:i + 1]) for i in range(len(x))])
    except Exception as exc:  # noqa: BLE001 - any failure means "keep batch 1"
        log.debug("batch-1 fix failed in onnxruntime: %s", exc)
        return None
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(want).max())):
        log.debug("batch-1 fix changes the outputs (%s vs %s)", got.shape, want.shape)
        return None
    log.debug("made the batch symbolic (%d reshapes fixed)", n)
    return fixed, _session(fixed, device)


# --------------------------------------------------------------------------- conversion


def _convert(model: onnx.ModelProto, path: Path, original: onnx.ModelProto
             ) -> tuple[nn.Module, dict[str, Any], Optional[WeightMap]]:
    """onnx2torch's conversion of the prepared ``model``, its weights made trainable and mapped to ``original``."""
    from onnx2torch import convert

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            prepared, info = onnx_graph.prepare_for_torch(model)
        except ModelLoadError as exc:
            raise ConversionError(f"{path}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a graph the passes do not understand
            raise ConversionError(f"cannot prepare {path} for conversion to PyTorch ({type(exc).__name__}: {exc}); "
                                 f"re-export it with opset_version={onnx_graph.TARGET_OPSET}") from None
        try:
            net = convert(prepared, attach_onnx_mapping=True)
        except Exception as exc:  # noqa: BLE001 - onnx2torch raises NotImplementedError, KeyError, ...
            raise ConversionError(f"onnx2torch cannot convert {path} ({type(exc).__name__}: {exc}); re-export it "
                                 f"with opset_version={onnx_graph.TARGET_OPSET} or audit a timm checkpoint") from None
    for w in caught:
        log.debug("conversion warning: %s", w.message)
    try:
        weights: Optional[WeightMap] = bind_weights(net, prepared, original)
    except Exception as exc:  # noqa: BLE001 - the conversion still audits; its constants stay frozen
        log.debug("weights of %s not mapped to the file (%s); its ONNX constants stay frozen", path, exc)
        weights = None
    patched = _patch_converted(net)
    if patched:
        info.setdefault("graph_passes", {})["slice_modules_replaced"] = patched
    return net, info, weights


def find_final_linear(module: nn.Module) -> Optional[nn.Linear]:
    """The nn.Linear that produces the logits of a converted (fx) or timm network, else None.

    Walks back from the graph output through ops that keep the logits' meaning (identity,
    dropout, softmax); a classifier ending in anything else (OnnxGemm, MatMul + Add) gives None.
    """
    from onnx2torch.node_converters.activations import OnnxSoftmaxV1V11
    from onnx2torch.node_converters.dropout import OnnxDropoutDynamic
    from onnx2torch.node_converters.identity import OnnxCopyIdentity

    passthrough = (nn.Identity, nn.Dropout, nn.Softmax, nn.LogSoftmax, OnnxCopyIdentity, OnnxDropoutDynamic,
                   OnnxSoftmaxV1V11)
    net = module
    while isinstance(net, (PixelClassifier, _PerSample)):
        net = net.net
    if isinstance(net, nn.Linear):
        return net
    if not isinstance(net, torch.fx.GraphModule):
        head = net.get_classifier() if hasattr(net, "get_classifier") else None
        return head if isinstance(head, nn.Linear) else None
    out = next(n for n in net.graph.nodes if n.op == "output")
    node = out.args[0]
    if isinstance(node, (tuple, list)):
        node = node[0] if len(node) == 1 else None
    while isinstance(node, torch.fx.Node) and node.op == "call_module":
        sub = net.get_submodule(node.target)
        if isinstance(sub, nn.Linear):
            return sub
        if not isinstance(sub, passthrough) or not node.args:
            return None
        node = node.args[0]
    return None


def load_onnx(path: str | Path, *, num_classes: int | None = None, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None, device: str | torch.device = "cpu",
              allow_large_input: bool = False, black_box: bool = False, fallback: bool = True) -> LoadedModel:
    """Validate, normalise and convert an ONNX image classifier; onnxruntime becomes its reference scorer.

    ``mean``/``std`` are folded into the wrapper for models that expect normalised input.
    With ``black_box`` (or, with ``fallback``, when the conversion fails) nothing is converted:
    the model is onnxruntime alone (``gradient_access`` False), for score-based attacks only.
    """
    spec = str(path)
    path = Path(path).expanduser()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} was requested but no CUDA GPU is available; use the cpu device")
    model = _read(path)
    _, dims = _image_io(model, path)
    layout = detect_layout(dims)
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    check_input_size((c, h, w), str(path), allow_large_input)
    check_norm_channels(mean, std, c, str(path))
    prep = Preprocessing(input_size=(c, h, w), mean=tuple(mean) if mean is not None else None,
                         std=tuple(std) if std is not None else None, layout=layout)
    info: dict[str, Any] = {"exporter": model.producer_name or None,
                            "exporter_version": model.producer_version or None,
                            "batch_fixed_to_1": dims[0] is not None, "warnings": []}

    try:
        original = _session(path, device)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"onnxruntime cannot run {path} ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); re-export it") from None
    per_sample = False
    torch_source, session = model, original
    if dims[0] is not None:
        if dims[0] != 1:
            raise ModelLoadError(f"{path} has its batch size fixed to {dims[0]}; re-export it with a dynamic "
                                 f"batch axis (or batch 1)")
        fixed = _batch_fix(model, tuple(dims[1:]), device, original)
        info["made_batch_symbolic"] = fixed is not None
        if fixed is None:
            per_sample = True
            info["warnings"].append("the model's batch size is fixed to 1 and could not be made dynamic; it is "
                                    "run one image at a time (slow): re-export it with a dynamic batch axis")
        else:
            torch_source, session = fixed
    scorer = OrtScorer(session, prep, chunk=1 if per_sample else ORT_CHUNK)
    info["providers"] = scorer.providers
    if device.type == "cuda" and "CUDAExecutionProvider" not in scorer.providers:
        info["warnings"].append("onnxruntime could not use the GPU (its CUDA provider did not load); the "
                                "reference scorer runs on the CPU")

    probe = np.random.default_rng(0).random((_PROBE_BATCH, c, h, w), dtype=np.float32)
    try:
        ref = scorer(probe)
    except Exception as exc:  # noqa: BLE001
        log.debug("onnxruntime on the probe batch: %s", exc)  # its own log line is hidden without --debug
        node = re.search(r"while running (\w+) node", str(exc))
        where = f"its {node.group(1)} node fails" if node else type(exc).__name__
        raise ModelLoadError(f"onnxruntime cannot run {path} on a batch of images ({where}; --debug shows "
                             f"onnxruntime's message); check the model's input size and re-export it") from None
    if ref.ndim != 2 or ref.shape[0] != _PROBE_BATCH:
        raise ModelLoadError(f"{path} is not an image classifier: expected one output of shape (batch, classes), "
                             f"got shape {list(ref.shape)}")
    k = int(ref.shape[1])
    if num_classes is not None and num_classes != k:
        raise ModelLoadError(f"model has {k} outputs but the dataset has {num_classes} classes; pass a model "
                             f"trained on this dataset or --num-classes")
    if np.all(ref >= 0) and np.allclose(ref.sum(axis=1), 1.0, atol=1e-4):
        info["warnings"].append("the model outputs probabilities (softmax at the end): gradients of softmax "
                                "outputs are weak and understate attacks; export the logits instead")

    def black_box_model(reason: Optional[str]) -> LoadedModel:
        info["black_box"] = True
        info["black_box_reason"] = reason or "asked for with --black-box"
        if reason:
            info["warnings"].append(f"{reason}; audited in black-box mode: Square on onnxruntime alone, an upper "
                                    "bound on robust accuracy (use --black-box to ask for it explicitly)")
        return LoadedModel(module=ScorerClassifier(scorer, device).eval(), spec=spec, format="onnx", num_classes=k,
                           preprocessing=prep, path=path.resolve(), sha256=sha256_of(path), arch=None,
                           reference_scorer=scorer, parity=None, info=info, gradient_access=False)

    if black_box:
        return black_box_model(None)
    try:
        net, graph_info, weights = _convert(torch_source, path, model)
    except ConversionError as exc:
        if not fallback:
            raise
        log.info("%s", exc)
        op = re.search(r"operation_type='(\w+)'", str(exc))
        why = f"onnx2torch lacks the {op.group(1)} operator" if op else str(exc).replace(str(path), path.name)[:120]
        return black_box_model(f"{path.name} cannot be converted to PyTorch for gradients ({why})")
    info.update(graph_info)
    if per_sample:
        net = _PerSample(net)
    module = PixelClassifier(net, prep).to(device).eval()
    try:
        with torch.no_grad():
            out = module(torch.from_numpy(probe[:2]).to(device))
    except Exception as exc:  # noqa: BLE001
        if fallback:
            return black_box_model(f"the PyTorch conversion of {path.name} fails to run ({type(exc).__name__})")
        raise ModelLoadError(f"the PyTorch conversion of {path} fails to run ({type(exc).__name__}: {exc}); "
                             f"re-export it with opset_version={onnx_graph.TARGET_OPSET} or audit a timm "
                             f"checkpoint") from None
    if tuple(out.shape) != (2, k):
        raise ModelLoadError(f"the PyTorch conversion of {path} returns shape {list(out.shape)} instead of "
                             f"[2, {k}]; re-export it with opset_version={onnx_graph.TARGET_OPSET}")
    linear = find_final_linear(module)
    if linear is not None and linear.out_features == k:
        info["final_linear"] = {"in_features": linear.in_features, "out_features": linear.out_features}
    log.debug("loaded %s: %s input %s, %d classes, opset %s -> %s", spec, layout, list(dims), k,
             info.get("opset_original"), info.get("opset_converted"))
    return LoadedModel(module=module, spec=spec, format="onnx", num_classes=k, preprocessing=prep,
                       path=path.resolve(), sha256=sha256_of(path), arch=None, reference_scorer=scorer,
                       parity=None, info=info, weights=weights)


def check_parity(model: LoadedModel, images: torch.Tensor, *, tol: float = 1e-3) -> dict[str, Any]:
    """Compare the converted module with onnxruntime on real NCHW [0, 1] images; store and return the figures.

    Raises ParityError when the largest logit difference relative to max(1, max |logit|)
    exceeds ``tol`` or any image gets a different top class.
    """
    if model.reference_scorer is None:
        raise ValueError("check_parity needs an ONNX model with a reference scorer")
    x = images.detach().float().cpu()
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"check_parity needs a non-empty N×C×H×W batch, got shape {list(x.shape)}")
    module = model.module.eval()
    dev = next((t.device for t in module.parameters()), None) or next(
        (t.device for t in module.buffers()), torch.device("cpu"))
    with torch.no_grad():
        ours = torch.cat([module(x[i:i + TORCH_CHUNK].to(dev)).float().cpu()
                          for i in range(0, len(x), TORCH_CHUNK)]).numpy()
    ref = model.reference_scorer(x.numpy())
    n = int(x.shape[0])
    if not (np.isfinite(ours).all() and np.isfinite(ref).all()):
        side = "onnxruntime and the conversion" if not np.isfinite(ref).all() else "the PyTorch conversion"
        hint = ("check --mean/--std (a zero std divides by zero)" if model.preprocessing.mean is not None
                else "check the model's weights")
        raise ModelLoadError(f"{model.spec}: {side} return NaN or infinite outputs on real images, so the model "
                             f"cannot be audited; {hint}")
    finite = bool(np.isfinite(ours).all() and np.isfinite(ref).all()) and ours.shape == ref.shape
    diff = float(np.abs(ours - ref).max()) if finite else float("inf")
    rel = diff / max(1.0, float(np.abs(ref).max())) if finite else float("inf")
    agree = float(np.mean(ours.argmax(1) == ref.argmax(1))) if ours.shape == ref.shape else 0.0
    providers = getattr(model.reference_scorer, "providers", model.info.get("providers"))
    parity = {"n": n, "max_abs_logit_diff": diff, "max_rel_logit_diff": rel, "argmax_agreement": agree,
              "tolerance": tol, "providers": list(providers) if providers is not None else None}
    model.parity = parity
    if not finite or rel > tol or agree < 1.0:
        raise ParityError(f"the PyTorch conversion of {model.spec} disagrees with onnxruntime (max logit "
                          f"difference {diff:.3g} on {n} images, top-class agreement {agree:.1%}); the model "
                          f"uses an op onnx2torch converts wrongly; report it, or audit a timm checkpoint instead")
    return parity
