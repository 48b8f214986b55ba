"""ONNX graph passes that make exported classifiers convertible by onnx2torch.

Every pass edits a ``ModelProto`` in place (or returns a new one) and returns how many
nodes it changed, so the loader can record what it did in ``model.info``. The passes only
rewrite a node into an exactly equivalent ONNX subgraph; onnxruntime on the original file
stays the reference that the converted module is checked against.
"""
from __future__ import annotations

import contextlib
import logging
import math
from functools import partial
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

# onnx2torch 1.5 implements most ops up to opset 17; dynamo exports use 18+.
TARGET_OPSET = 17
# Below this, onnx2torch lacks converters for common ops (e.g. BatchNormalization-7), and
# its Slice-9 converter is broken, so such graphs are upgraded first.
MIN_OPSET = 9
UPGRADE_OPSET = 11

Shape = Optional[list[Optional[int]]]


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Temporarily raise the level of third-party loggers that warn on stderr."""
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, old):
            lg.setLevel(lvl)


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain (ai.onnx) opset the model imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelLoadError("the ONNX model imports no ai.onnx opset; re-export it with a standard exporter")


def tensor_shape(vi: onnx.ValueInfoProto) -> Shape:
    """Dims of a tensor value (None for symbolic dims), or None when the rank is unknown."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def inferred_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes of all values after ONNX shape inference (inputs, outputs, intermediates)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference is best effort
        log.debug("shape inference failed: %s", exc)
        inferred = model
    g = inferred.graph
    out: dict[str, Shape] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        out[vi.name] = tensor_shape(vi)
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs as numpy arrays."""
    vals = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    vals[node.output[0]] = numpy_helper.to_array(attr.t)
    return vals


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Rewriter:
    """Collects replacement nodes and new initializers with unique names."""

    def __init__(self, model: onnx.ModelProto, prefix: str) -> None:
        self.model = model
        self.prefix = prefix
        self.count = 0
        self._n = 0
        self.taken = {i.name for i in model.graph.initializer}
        for node in model.graph.node:
            self.taken.update(node.output)
        self.taken.update(i.name for i in model.graph.input)

    def name(self, hint: str) -> str:
        while True:
            self._n += 1
            cand = f"{self.prefix}/{hint}_{self._n}"
            if cand not in self.taken:
                self.taken.add(cand)
                return cand

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        name = self.name(hint)
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.model.graph.initializer.append(tensor)
        if self.model.ir_version < 4:  # old IR: every initializer must also be a graph input
            self.model.graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, tensor.dims))
        return name

    def node(self, out: list[onnx.NodeProto], op: str, inputs: list[str], output: Optional[str] = None,
             **attrs: Any) -> str:
        output = output or self.name(op.lower())
        out.append(helper.make_node(op, inputs, [output], name=self.name(op), **attrs))
        return output


def _rewrite(model: onnx.ModelProto, prefix: str, fn, op_type: Optional[str] = None) -> int:
    """Replace nodes for which ``fn(node, rw)`` returns a node list, keeping topological order.

    With ``op_type``, ``fn`` only sees nodes of that type (the decompositions need no guard).
    """
    rw = _Rewriter(model, prefix)
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        repl = fn(node, rw) if op_type is None or node.op_type == op_type else None
        if repl is None:
            new_nodes.append(node)
        else:
            new_nodes.extend(repl)
            rw.count += 1
    if rw.count:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return rw.count


# --------------------------------------------------------------------------- batch


def make_batch_symbolic(model: onnx.ModelProto, batch_one_shapes: dict[str, Shape],
                        dim_name: str = "batch") -> int:
    """Turn a batch dimension fixed to 1 into a symbolic one (call on a constant-folded graph).

    Sets dim 0 of the image input and the logits output to ``dim_name`` and rewrites the
    nodes where folding left the batch 1 as a constant: Reshape targets (``[1, -1]`` ->
    ``[-1, K]``, ``[1, K]`` -> ``[-1, K]``), Expand targets ``[1, ...]`` and constants with
    batch 1 concatenated to batch tensors (class tokens), which get the batch from the input.
    Returns the number of nodes changed. The caller must verify the result with
    onnxruntime: other ops may still bake the batch in.
    """
    g = model.graph
    inits = {i.name for i in g.initializer}
    image = next(v.name for v in g.input if v.name not in inits)
    for vi in [v for v in g.input if v.name not in inits] + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = dim_name
    del g.value_info[:]  # stale shapes with the batch 1 baked in
    consts = constant_values(model)

    def batch_shape(nodes: list[onnx.NodeProto], rw: _Rewriter, tail: Sequence[int]) -> str:
        batch = rw.node(nodes, "Gather", [rw.node(nodes, "Shape", [image]),
                                          rw.const(np.asarray([0], dtype=np.int64), "zero")], axis=0)
        return rw.node(nodes, "Concat", [batch, rw.const(np.asarray(tail, dtype=np.int64), "tail")], axis=0)

    def fix_concat(node: onnx.NodeProto, rw: _Rewriter) -> Optional[list[onnx.NodeProto]]:
        out_shape = batch_one_shapes.get(node.output[0])
        if not out_shape or out_shape[0] != 1 or int(_attrs(node).get("axis", 0)) % len(out_shape) == 0:
            return None
        fixed = [i for i in node.input if i in consts and consts[i].ndim == len(out_shape)
                 and consts[i].shape[0] == 1]
        if not fixed or len(fixed) == len(node.input):
            return None
        nodes: list[onnx.NodeProto] = []
        inputs = [rw.node(nodes, "Expand", [i, batch_shape(nodes, rw, consts[i].shape[1:])]) if i in fixed else i
                  for i in node.input]
        repl = onnx.NodeProto()
        repl.CopyFrom(node)
        del repl.input[:]
        repl.input.extend(inputs)
        return nodes + [repl]

    def fix(node: onnx.NodeProto, rw: _Rewriter) -> Optional[list[onnx.NodeProto]]:
        if node.op_type == "Concat":
            return fix_concat(node, rw)
        if node.op_type not in ("Reshape", "Expand") or len(node.input) < 2 or node.input[1] not in consts:
            return None
        target = consts[node.input[1]].astype(np.int64).reshape(-1)
        if node.op_type == "Expand":
            out_shape = batch_one_shapes.get(node.output[0])
            if target.size < 2 or target[0] != 1 or not out_shape or out_shape[0] != 1:
                return None
            nodes: list[onnx.NodeProto] = []
            rw.node(nodes, "Expand", [node.input[0], batch_shape(nodes, rw, target[1:])], output=node.output[0])
            return nodes
        in_shape = batch_one_shapes.get(node.input[0])
        if target.size < 1 or target[0] != 1 or not in_shape or in_shape[0] != 1:
            return None
        out_shape = batch_one_shapes.get(node.output[0])
        new = target.copy()
        if -1 not in target[1:]:
            new[0] = -1
        elif out_shape and len(out_shape) == target.size and all(d is not None for d in out_shape[1:]):
            new = np.asarray([-1] + list(out_shape[1:]), dtype=np.int64)
        else:
            new[0] = 0  # copy the batch from the input
        repl = onnx.NodeProto()
        repl.CopyFrom(node)
        repl.input[1] = rw.const(new, "batch_shape")
        for attr in list(repl.attribute):
            if attr.name == "allowzero":
                repl.attribute.remove(attr)
        return [repl]

    return _rewrite(model, "tailaudit_batch", fix)


# --------------------------------------------------------------------------- folding


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Constant-fold and inline functions with onnxscript; fall back to resolving Identity.

    Exporters leave constant subgraphs (Identity of shared initializers, weight
    standardisation, shape arithmetic) that onnx2torch cannot read as weights.
    """
    try:
        import onnxscript.optimizer as oso

        with quiet_loggers("onnxscript", "onnx_ir"):
            folded = oso.optimize(model, input_size_limit=1 << 25, output_size_limit=1 << 25)
        return folded, True
    except Exception as exc:  # noqa: BLE001 - folding is an optimisation, not a requirement
        log.debug("onnxscript constant folding failed (%s); resolving Identity nodes only", exc)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _resolve_identity_of_initializers(copy)
    return copy, False


def _resolve_identity_of_initializers(model: onnx.ModelProto) -> int:
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}

    def fix(node: onnx.NodeProto, rw: _Rewriter) -> Optional[list[onnx.NodeProto]]:
        if node.op_type != "Identity" or node.input[0] not in inits or node.output[0] in outputs:
            return None
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        g.initializer.append(copy)
        return []

    return _rewrite(model, "tailaudit_identity", fix)


# --------------------------------------------------------------------------- decompositions


def _gelu(node: onnx.NodeProto, rw: _Rewriter) -> list[onnx.NodeProto]:
    x, out = node.input[0], node.output[0]
    approx = _attrs(node).get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
    nodes: list[onnx.NodeProto] = []
    if approx == "tanh":
        x3 = rw.node(nodes, "Mul", [rw.node(nodes, "Mul", [x, x]), x])
        inner = rw.node(nodes, "Add", [x, rw.node(nodes, "Mul", [x3, rw.const(f32(0.044715))])])
        t = rw.node(nodes, "Tanh", [rw.node(nodes, "Mul", [inner, rw.const(f32(math.sqrt(2 / math.pi)))])])
    else:
        t = rw.node(nodes, "Erf", [rw.node(nodes, "Mul", [x, rw.const(f32(1 / math.sqrt(2)))])])
    one_plus = rw.node(nodes, "Add", [t, rw.const(f32(1.0))])
    half_x = rw.node(nodes, "Mul", [x, rw.const(f32(0.5))])
    rw.node(nodes, "Mul", [half_x, one_plus], output=out)
    return nodes


def _split(node: onnx.NodeProto, rw: _Rewriter, *, shapes: dict[str, Shape], consts: dict[str, np.ndarray]
           ) -> list[onnx.NodeProto]:
    a = _attrs(node)
    shape = shapes.get(node.input[0])
    axis = int(a.get("axis", 0))
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in consts:
            raise ModelLoadError("the model splits a tensor into sizes computed at run time, "
                                 "which the PyTorch conversion cannot follow; re-export with opset_version=17")
        sizes = [int(s) for s in consts[node.input[1]].reshape(-1)]
    else:
        if shape is None or shape[axis] is None:
            raise ModelLoadError("the model splits a tensor of unknown size; re-export it with a fixed "
                                 "input size and opset_version=17")
        n = int(a.get("num_outputs", len(node.output)))
        chunk = -(-shape[axis] // n)
        sizes = [min(chunk, shape[axis] - i * chunk) for i in range(n)]
    nodes: list[onnx.NodeProto] = []
    start = 0
    axes = rw.const(np.asarray([axis], dtype=np.int64), "axes")
    for out, size in zip(node.output, sizes):
        starts = rw.const(np.asarray([start], dtype=np.int64), "starts")
        ends = rw.const(np.asarray([start + size], dtype=np.int64), "ends")
        if out:
            rw.node(nodes, "Slice", [node.input[0], starts, ends, axes], output=out)
        start += size
    return nodes


def _group_norm(node: onnx.NodeProto, rw: _Rewriter, *, shapes: dict[str, Shape], consts: dict[str, np.ndarray]
                ) -> list[onnx.NodeProto]:
    a = _attrs(node)
    g = int(a["num_groups"])
    eps = float(a.get("epsilon", 1e-5))
    shape = shapes.get(node.input[0])
    if shape is None or shape[1] is None or node.input[1] not in consts or node.input[2] not in consts:
        raise ModelLoadError("the model's GroupNormalization has an unknown channel count or computed "
                             "weights; re-export it with opset_version=17")
    c, rank = shape[1], len(shape)
    scale = consts[node.input[1]].astype(np.float32).reshape(-1)
    bias = consts[node.input[2]].astype(np.float32).reshape(-1)
    if scale.size == g and c != g:  # opset-18 semantics: one scale per group
        scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
    bshape = [c] + [1] * (rank - 2)
    nodes: list[onnx.NodeProto] = []
    x = rw.node(nodes, "Reshape", [node.input[0], rw.const(np.asarray([0, g, -1], dtype=np.int64))])
    x = rw.node(nodes, "InstanceNormalization",
                [x, rw.const(np.ones(g, np.float32)), rw.const(np.zeros(g, np.float32))], epsilon=eps)
    if all(d is not None for d in shape[1:]):
        back = rw.const(np.asarray([0] + list(shape[1:]), dtype=np.int64))
    else:
        back = rw.node(nodes, "Shape", [node.input[0]])
    x = rw.node(nodes, "Reshape", [x, back])
    x = rw.node(nodes, "Mul", [x, rw.const(scale.reshape(bshape))])
    rw.node(nodes, "Add", [x, rw.const(bias.reshape(bshape))], output=node.output[0])
    return nodes


def _attention(node: onnx.NodeProto, rw: _Rewriter, *, shapes: dict[str, Shape], bools: set[str]
               ) -> list[onnx.NodeProto]:
    a = _attrs(node)
    q, k, v = node.input[:3]
    mask = node.input[3] if len(node.input) > 3 and node.input[3] else None
    qs, ks = shapes.get(q), shapes.get(k)
    unsupported = (
        any(node.input[4:]) or any(node.output[1:]) or a.get("is_causal", 0)
        or a.get("softcap", 0.0) or a.get("qk_matmul_output_mode", 0)
        or qs is None or len(qs) != 4 or ks is None or len(ks) != 4 or qs[1] != ks[1]
    )
    if unsupported:
        raise ModelLoadError("the model uses an ONNX Attention op variant (causal, cached, grouped or "
                             "3-D) that the PyTorch conversion does not support; re-export with "
                             "opset_version=18")
    scale = a.get("scale")
    if scale is None:
        if qs[3] is None:
            raise ModelLoadError("the model's Attention op has an unknown head size; re-export with a "
                                 "fixed input size")
        scale = 1.0 / math.sqrt(qs[3])
    nodes: list[onnx.NodeProto] = []
    kt = rw.node(nodes, "Transpose", [k], perm=[0, 1, 3, 2])
    s = rw.node(nodes, "MatMul", [q, kt])
    s = rw.node(nodes, "Mul", [s, rw.const(np.asarray(scale, dtype=np.float32))])
    if mask is not None:
        if mask in bools:
            ninf = rw.const(np.asarray(-np.inf, dtype=np.float32))
            s = rw.node(nodes, "Where", [mask, s, ninf])
        else:
            s = rw.node(nodes, "Add", [s, mask])
    p = rw.node(nodes, "Softmax", [s], axis=-1)
    rw.node(nodes, "MatMul", [p, v], output=node.output[0])
    return nodes


def _bool_values(model: onnx.ModelProto) -> set[str]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        inferred = model
    g = inferred.graph
    names = {vi.name for vi in list(g.value_info) + list(g.input)
             if vi.type.tensor_type.elem_type == TensorProto.BOOL}
    return names | {i.name for i in g.initializer if i.data_type == TensorProto.BOOL}


def _mish(node: onnx.NodeProto, rw: _Rewriter) -> list[onnx.NodeProto]:
    nodes: list[onnx.NodeProto] = []
    t = rw.node(nodes, "Tanh", [rw.node(nodes, "Softplus", [node.input[0]])])
    rw.node(nodes, "Mul", [node.input[0], t], output=node.output[0])
    return nodes


def decompose_new_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite ops that onnx.version_converter cannot take below opset 18.

    Gelu (opset 20), Mish (18), GroupNormalization (18/21), Split with ``num_outputs`` (18)
    and Attention (23) become equivalent opset-17 subgraphs.
    """
    done: dict[str, int] = {}
    ops = {n.op_type for n in model.graph.node}
    if "Gelu" in ops:
        done["gelu_decomposed"] = _rewrite(model, "tailaudit_gelu", _gelu, "Gelu")
    if "Mish" in ops:
        done["mish_decomposed"] = _rewrite(model, "tailaudit_mish", _mish, "Mish")
    needs_shapes = ops & {"Split", "GroupNormalization", "Attention"}
    if needs_shapes:
        shapes, consts = inferred_shapes(model), constant_values(model)
        if "Split" in ops and opset_of(model) >= 18:
            done["split18_to_slices"] = _rewrite(model, "tailaudit_split",
                                                 partial(_split, shapes=shapes, consts=consts), "Split")
        if "GroupNormalization" in ops:
            done["group_norm_decomposed"] = _rewrite(model, "tailaudit_gn",
                                                     partial(_group_norm, shapes=shapes, consts=consts),
                                                     "GroupNormalization")
        if "Attention" in ops:
            done["attention_decomposed"] = _rewrite(model, "tailaudit_attn",
                                                    partial(_attention, shapes=shapes, bools=_bool_values(model)),
                                                    "Attention")
    return {k: v for k, v in done.items() if v}


# Ops the version converter has no down-adapter for, although their opset-17 form is the
# same once Pad's ``axes`` input is expanded: held in a private domain while converting.
_HOLD_DOMAIN = "tailaudit.hold"
_HOLD_OPS = {"Pad", "ConstantOfShape", "GlobalMaxPool"}


def hold_for_downgrade(model: onnx.ModelProto) -> int:
    """Move Pad/ConstantOfShape/GlobalMaxPool out of the converter's way, in opset-17 form."""
    shapes: Optional[dict[str, Shape]] = None
    consts = constant_values(model)
    n = 0
    for node in model.graph.node:
        if node.op_type not in _HOLD_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Pad":
            mode = _attrs(node).get("mode", b"constant")
            if (mode.decode() if isinstance(mode, bytes) else mode) == "wrap":
                raise ModelLoadError("the model pads in 'wrap' mode, which the PyTorch conversion does not "
                                     "support; re-export it with opset_version=17")
            if len(node.input) > 3 and node.input[3]:
                shapes = shapes if shapes is not None else inferred_shapes(model)
                rank = len(shapes.get(node.input[0]) or [])
                if node.input[1] not in consts or node.input[3] not in consts or not rank:
                    raise ModelLoadError("the model pads along axes computed at run time; re-export it with "
                                         "opset_version=17")
                pads = consts[node.input[1]].astype(np.int64).reshape(-1)
                axes = [int(a) % rank for a in consts[node.input[3]].reshape(-1)]
                full = np.zeros(2 * rank, dtype=np.int64)
                for i, a in enumerate(axes):
                    full[a], full[a + rank] = pads[i], pads[i + len(axes)]
                name = f"{node.name or node.output[0]}/tailaudit_full_pads"
                model.graph.initializer.append(numpy_helper.from_array(full, name))
                node.input[1] = name
                del node.input[3:]
        node.domain = _HOLD_DOMAIN
        n += 1
    if n:
        model.opset_import.append(helper.make_opsetid(_HOLD_DOMAIN, 1))
    return n


def release_held(model: onnx.ModelProto) -> None:
    """Undo :func:`hold_for_downgrade` after the opset conversion."""
    for node in model.graph.node:
        if node.domain == _HOLD_DOMAIN:
            node.domain = ""
    keep = [imp for imp in model.opset_import if imp.domain != _HOLD_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """onnx.version_converter with a clear error."""
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001 - the C++ converter raises RuntimeError/others
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot convert the opset-{opset_of(model)} graph to opset {target} for PyTorch ({first}); "
            f"re-export the model with opset_version={TARGET_OPSET}"
        ) from None


# --------------------------------------------------------------------------- converter quirks


def drop_reshape_allowzero(model: onnx.ModelProto) -> int:
    """Drop ``allowzero=1`` (dynamo exports) where it cannot matter; onnx2torch rejects it.

    It only changes Reshape when the target shape contains a 0; classifier reshapes never
    ask for an empty dimension, but a constant target with a 0 is left alone.
    """
    consts = constant_values(model)
    n = 0
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        for attr in list(node.attribute):
            if attr.name == "allowzero" and attr.i == 1:
                target = consts.get(node.input[1])
                if target is None or not np.any(target == 0):
                    node.attribute.remove(attr)
                    n += 1
    return n


def gemm_bias_to_1d(model: onnx.ModelProto) -> int:
    """Give Gemm a 1-D bias when it is a constant row (1, K), so it converts to nn.Linear."""
    inits = {i.name: i for i in model.graph.initializer}

    def fix(node: onnx.NodeProto, rw: _Rewriter) -> Optional[list[onnx.NodeProto]]:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in inits:
            return None
        bias = numpy_helper.to_array(inits[node.input[2]])
        if bias.ndim != 2 or bias.shape[0] != 1:
            return None
        repl = onnx.NodeProto()
        repl.CopyFrom(node)
        repl.input[2] = rw.const(bias.reshape(-1), "gemm_bias")
        return [repl]

    return _rewrite(model, "tailaudit_gemm", fix)


def _pool_counts(size: int, k: int, s: int, pb: int, pe: int) -> np.ndarray:
    n_out = (size + pb + pe - k) // s + 1
    starts = np.arange(n_out) * s - pb
    return (np.minimum(starts + k, size) - np.maximum(starts, 0)).astype(np.float32)


def fix_asymmetric_avgpool(model: onnx.ModelProto) -> int:
    """Rewrite 2-D AveragePool with asymmetric pads (old exports of ceil_mode) as Pad + pool.

    With ``count_include_pad=0`` the result is rescaled by a constant map of
    kernel area / valid cells, so borders are averaged over real pixels only, as in ONNX.
    """
    if not any(n.op_type == "AveragePool" for n in model.graph.node):
        return 0
    shapes = inferred_shapes(model)
    opset = opset_of(model)

    def fix(node: onnx.NodeProto, rw: _Rewriter) -> Optional[list[onnx.NodeProto]]:
        if node.op_type != "AveragePool":
            return None
        a = _attrs(node)
        pads = list(a.get("pads", []))
        shape = shapes.get(node.input[0])
        auto_pad = a.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if (len(pads) != 4 or pads[:2] == pads[2:] or auto_pad != "NOTSET" or a.get("ceil_mode", 0)
                or shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None
                or any(d != 1 for d in a.get("dilations", [1, 1]))):
            return None
        k = list(a["kernel_shape"])
        s = list(a.get("strides", [1, 1]))
        full_pads = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
        nodes: list[onnx.NodeProto] = []
        if opset >= 11:
            x = rw.node(nodes, "Pad", [node.input[0], rw.const(np.asarray(full_pads, dtype=np.int64), "pads")])
        else:
            x = rw.node(nodes, "Pad", [node.input[0]], pads=full_pads)
        out = node.output[0]
        include = a.get("count_include_pad", 0)
        pooled = rw.node(nodes, "AveragePool", [x], output=out if include else None,
                         kernel_shape=k, strides=s)
        if not include:
            rows = _pool_counts(shape[2], k[0], s[0], pads[0], pads[2])
            cols = _pool_counts(shape[3], k[1], s[1], pads[1], pads[3])
            factor = (k[0] * k[1]) / np.outer(rows, cols)
            rw.node(nodes, "Mul", [pooled, rw.const(factor.astype(np.float32)[None, None], "avg_rescale")],
                    output=out)
        return nodes

    return _rewrite(model, "tailaudit_avgpool", fix)


def _symbolic_shapes(model: onnx.ModelProto) -> Optional[onnx.ModelProto]:
    """onnxruntime's symbolic shape inference, or None when it cannot finish.

    Its ``infer_shapes`` saves an unfinished model as ``sym_shape_infer_temp.onnx`` (plus a .data file)
    into the current folder, over any file of that name (a quantised model with QLinearConv does it):
    the same steps are run here without that save. Without those steps (another onnxruntime), None.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_opset

    opset = get_opset(model)
    ssi = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    steps = ("_preprocess", "_infer_impl", "_update_output_from_vi", "out_mp_")
    if not opset or opset < 7 or not all(hasattr(ssi, a) or a == "out_mp_" for a in steps):
        return None
    ssi._preprocess(model)
    done = False
    while ssi.run_:
        done = ssi._infer_impl()
    ssi._update_output_from_vi()
    return ssi.out_mp_ if done else None


def complete_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Symbolic shape inference, so every tensor has a known rank.

    onnx2torch reads ranks from value_info (pooling, normalisation); plain ONNX inference
    loses them after ``Reshape(x, Shape(y))`` and onnx2torch then silently reduces over all
    dims. onnxruntime's symbolic inference keeps them; plain inference is the fallback.
    """
    try:
        with quiet_loggers("onnxruntime.tools.symbolic_shape_infer"):
            out = _symbolic_shapes(model)
        if out is not None:
            return out
    except Exception as exc:  # noqa: BLE001
        log.debug("symbolic shape inference failed (%s); using onnx shape inference", exc)
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        log.debug("onnx shape inference failed: %s", exc)
        return model


def prepare_for_torch(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Fold, decompose, convert the opset and fix converter quirks; returns (model, info)."""
    info: dict[str, Any] = {"opset_original": opset_of(model)}
    passes: dict[str, int] = {}
    model, info["constant_folded"] = fold_constants(model)
    opset = opset_of(model)
    if opset > TARGET_OPSET:
        passes.update(decompose_new_ops(model))
        passes["held_through_opset_conversion"] = hold_for_downgrade(model)
        model = convert_opset(model, TARGET_OPSET)
        release_held(model)
    elif opset < MIN_OPSET or (opset < 10 and any(n.op_type == "Slice" for n in model.graph.node)):
        model = convert_opset(model, UPGRADE_OPSET)
    info["opset_converted"] = opset_of(model)
    passes["reshape_allowzero_dropped"] = drop_reshape_allowzero(model)
    passes["gemm_bias_1d"] = gemm_bias_to_1d(model)
    passes["avgpool_asymmetric_pads"] = fix_asymmetric_avgpool(model)
    info["graph_passes"] = {k: v for k, v in passes.items() if v}
    return complete_shapes(model), info
