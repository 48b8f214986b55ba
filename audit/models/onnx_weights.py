"""Which tensors of a converted ONNX classifier are weights, and where each lives in the input file.

onnx2torch turns Conv, Gemm and normalisation nodes into torch modules with parameters, but
keeps every other initializer as a frozen buffer: the weights of dense layers exported as
MatMul + Add (Keras/tf2onnx, many torch exports), per-channel scales and shifts written as
Mul/Add, PRelu slopes. :func:`bind_weights` makes the buffers that are weights trainable
parameters and records, for every trainable tensor, the initializer (or Constant node) of the
*input* file that holds it and the transform between the two (a transpose, a Gemm alpha), so
that a repair writes the trained values back in place: same tensor names, layout, dtype and
opset, no other change to the graph (reat_finetune/export.py).

The rule for a buffer (docs/repair.md, "Which tensors train"): a float tensor with more than
one value is a weight when every node that reads it is MatMul/Gemm/Conv (either operand),
PRelu (slope), a normalisation op (scale or bias, never running statistics), or Add/Sub/Mul
with a computed operand that is not preprocessing. Preprocessing is whatever is computed from
the image input by layout and element-wise ops alone (Transpose, Reshape, Cast, Sub/Div/Mul/Add
by constants) before any layer with weights: the mean/std normalisation a graph carries is a
convention of the input, not a weight. Scalars (activation constants), integer and shape
tensors, Div divisors and tensors the conversion made itself never train.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

log = logging.getLogger(__name__)

# Ops that read a constant as a weight at these input positions (None: any position).
_WEIGHT_INPUTS: dict[str, Optional[tuple[int, ...]]] = {
    "MatMul": None, "Gemm": (0, 1, 2), "Conv": (1, 2), "ConvTranspose": (1, 2), "PRelu": (1,),
    "BatchNormalization": (1, 2), "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2),
}
_BIAS_OR_SCALE = {"Add", "Sub", "Mul"}
# Ops that keep a tensor "preprocessing" when all their computed inputs are.
_PREPROCESSING_OPS = {"Transpose", "Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                      "Sub", "Div", "Mul", "Add"}
# Module parameters/buffers onnx2torch fills from a node's inputs: attribute -> input position.
_MODULE_INPUTS: dict[str, dict[str, int]] = {
    "Conv": {"weight": 1, "bias": 2}, "ConvTranspose": {"weight": 1, "bias": 2},
    "Gemm": {"weight": 1, "bias": 2},
    "BatchNormalization": {"weight": 1, "bias": 2, "running_mean": 3, "running_var": 4},
    "InstanceNormalization": {"weight": 1, "bias": 2}, "LayerNormalization": {"weight": 1, "bias": 2},
}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Slot:
    """One tensor of the converted network (``key`` in its state dict) and its place in the input file.

    ``torch value = scale * (file value, transposed if ``transpose``)``, reshaped to the torch shape.
    """

    key: str
    name: str
    transpose: bool = False
    scale: float = 1.0

    def to_file(self, value: torch.Tensor, proto: onnx.TensorProto) -> onnx.TensorProto:
        """The file's tensor holding ``value``: same name, dims and data type."""
        arr = value.detach().cpu().double().numpy()
        if self.scale != 1.0:
            arr = arr / self.scale
        if self.transpose:
            arr = arr.T
        dtype = helper.tensor_dtype_to_np_dtype(proto.data_type)
        out = numpy_helper.from_array(arr.reshape(tuple(proto.dims)).astype(dtype), proto.name)
        out.doc_string = proto.doc_string
        return out


@dataclass
class WeightMap:
    """Where every tensor that training may change sits in the input ONNX file.

    ``unbound``: state-dict keys that may change but have no place in the file (a weight the
    exporter computed from others); with any, the repaired model is re-exported instead.
    ``frozen``: float constants that stay constants, (name, values, why).
    """

    slots: list[Slot] = field(default_factory=list)
    unbound: list[str] = field(default_factory=list)
    frozen: list[tuple[str, int, str]] = field(default_factory=list)
    trainable_values: int = 0
    converter_values: int = 0  # what onnx2torch alone made trainable (module parameters)

    @property
    def complete(self) -> bool:
        """True when the trained network can be written back into the input file in place."""
        return bool(self.slots) and not self.unbound

    def summary(self) -> dict[str, Any]:
        """Counts for logs and repair records."""
        return {"trainable_values": self.trainable_values, "converter_values": self.converter_values,
                "tensors_in_file": len({s.name for s in self.slots}), "unbound": list(self.unbound),
                "frozen_constants": len(self.frozen), "frozen_values": sum(n for _, n, _ in self.frozen)}


def file_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The input file's constant tensors by name: initializers and Constant-node values (the protos themselves)."""
    out = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = attr.t
    return out


class _Resolver:
    """Finds the input-file tensor a prepared-graph tensor came from: same name and values, else unique values."""

    def __init__(self, original: onnx.ModelProto) -> None:
        self.arrays = {n: numpy_helper.to_array(t) for n, t in file_tensors(original).items()
                       if t.data_type in _FLOAT_TYPES}

    def __call__(self, name: str, value: np.ndarray) -> Optional[str]:
        same = self.arrays.get(name)
        if same is not None and same.size == value.size and np.array_equal(same.reshape(-1), value.reshape(-1)):
            return name
        hits = [n for n, a in self.arrays.items()
                if a.size == value.size and np.array_equal(a.reshape(-1).astype(value.dtype), value.reshape(-1))]
        return hits[0] if len(hits) == 1 else None


def _module_nodes(net: torch.fx.GraphModule, prepared: onnx.ModelProto
                  ) -> Iterator[tuple[torch.fx.Node, onnx.NodeProto]]:
    """(fx call_module node, ONNX node) pairs: onnx2torch makes one module per node, in graph order."""
    calls = [n for n in net.graph.nodes if n.op == "call_module"]
    nodes = list(prepared.graph.node)
    if len(calls) != len(nodes):
        raise ValueError(f"{len(calls)} modules for {len(nodes)} ONNX nodes")
    return zip(calls, nodes)


def _preprocessing_values(prepared: onnx.ModelProto, consts: set[str]) -> set[str]:
    """Values computed from the image input by layout and element-wise ops with constants alone."""
    g = prepared.graph
    pre = {vi.name for vi in g.input if vi.name not in consts}
    for node in g.node:
        computed = [i for i in node.input if i and i not in consts]
        if node.op_type in _PREPROCESSING_OPS and computed and all(i in pre for i in computed):
            pre.update(node.output)
    return pre


def _is_weight_use(node: onnx.NodeProto, pos: int, consts: set[str], pre: set[str]) -> bool:
    if node.op_type in _WEIGHT_INPUTS:
        allowed = _WEIGHT_INPUTS[node.op_type]
        return allowed is None or pos in allowed
    if node.op_type in _BIAS_OR_SCALE and len(node.input) == 2:
        other = node.input[1 - pos]
        return other not in consts and other not in pre
    return False


def _bind_modules(net: nn.Module, pairs: list, inits: dict[str, np.ndarray], resolve: _Resolver,
                  wmap: WeightMap) -> set[str]:
    """Slots for the parameters/buffers onnx2torch built into modules (Conv, Gemm as Linear, norms)."""
    bound: set[str] = set()
    for call, node in pairs:
        mod = net.get_submodule(str(call.target))
        rule = _MODULE_INPUTS.get(node.op_type, {})
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for attr, pos in rule.items():
            value = getattr(mod, attr, None)
            if not isinstance(value, torch.Tensor) or pos >= len(node.input) or node.input[pos] not in inits:
                continue
            key = f"{call.target}.{attr}"
            src = inits[node.input[pos]]
            transpose = node.op_type == "Gemm" and attr == "weight" and not attrs.get("transB", 0)
            scale = float(attrs.get("alpha" if attr == "weight" else "beta", 1.0)) if node.op_type == "Gemm" else 1.0
            want = scale * (src.T if transpose else src).astype(np.float64)
            name = resolve(node.input[pos], src)
            if name is None or want.size != value.numel() or not np.allclose(
                    want.reshape(-1), value.detach().cpu().double().numpy().reshape(-1), rtol=1e-6, atol=1e-7):
                continue
            wmap.slots.append(Slot(key, name, transpose, scale))
            bound.add(key)
    return bound


def _buffer_uses(net: nn.Module, pairs: list, inits: dict[str, np.ndarray]) -> list[tuple[str, onnx.NodeProto, int]]:
    """(initializer, reading node, input position) in the order onnx2torch numbers its buffers."""
    uses = []
    for call, node in pairs:
        mapping = getattr(net.get_submodule(str(call.target)), "onnx_mapping", None)
        if mapping is None:
            raise ValueError("the conversion carries no ONNX mapping")
        for v in mapping.inputs:
            if v in inits:
                uses.append((v, node, list(node.input).index(v)))
    return uses


def _bind_buffers(net: nn.Module, pairs: list, prepared: onnx.ModelProto, inits: dict[str, np.ndarray],
                  resolve: _Resolver, wmap: WeightMap) -> None:
    """Make the initializer buffers that are weights trainable (shared ones tied) and give each a slot."""
    container = net.get_submodule("initializers")
    uses = _buffer_uses(net, pairs, inits)
    consts = set(inits) | {n.output[0] for n in prepared.graph.node if n.op_type == "Constant"}
    pre = _preprocessing_values(prepared, consts)
    by_name: dict[str, list[tuple[str, bool]]] = {}
    for k, (name, node, pos) in enumerate(uses):
        by_name.setdefault(name, []).append((f"onnx_initializer_{k}", _is_weight_use(node, pos, consts, pre)))
    for name, reads in by_name.items():
        value = inits[name]
        if not np.issubdtype(value.dtype, np.floating) or value.size <= 1:
            continue
        bufs = [b for b, _ in reads]
        tensors = [container._buffers.get(b) for b in bufs]
        if any(t is None or t.numel() != value.size for t in tensors):
            raise ValueError(f"buffer order does not match the initializers at {name!r}")
        why = ("preprocessing or not read as a weight" if not all(w for _, w in reads)
               else None if (file_name := resolve(name, value)) is not None else "made by the conversion")
        if why is not None:
            wmap.frozen.append((name, int(value.size), why))
            continue
        param = nn.Parameter(tensors[0].detach().clone())
        for b in bufs:  # one parameter under every buffer name: a shared weight stays shared
            del container._buffers[b]
            container.register_parameter(b, param)
        wmap.slots.append(Slot(f"initializers.{bufs[0]}", file_name))


def bind_weights(net: nn.Module, prepared: onnx.ModelProto, original: onnx.ModelProto) -> WeightMap:
    """Make the weights among ``net``'s constant buffers trainable and map every trainable tensor to ``original``.

    ``net``: onnx2torch's conversion of ``prepared`` (with ``attach_onnx_mapping``); ``original``:
    the input file. Changes ``net`` in place; raises ValueError when the conversion does not
    line up with the graph (the caller then keeps the buffers frozen).
    """
    wmap = WeightMap()
    wmap.converter_values = sum(p.numel() for p in net.parameters())
    if not isinstance(net, torch.fx.GraphModule):
        raise ValueError("not an onnx2torch conversion")
    pairs = list(_module_nodes(net, prepared))
    inits = {i.name: numpy_helper.to_array(i) for i in prepared.graph.initializer}
    resolve = _Resolver(original)
    bound = _bind_modules(net, pairs, inits, resolve, wmap)
    _bind_buffers(net, pairs, prepared, inits, resolve, wmap)
    bound |= {s.key for s in wmap.slots}
    for key, p in net.named_parameters():
        if key not in bound:
            wmap.unbound.append(key)
    for key, b in net.named_buffers():  # running statistics change in training too
        if key.endswith(("running_mean", "running_var")) and key not in bound:
            wmap.unbound.append(key)
    state = net.state_dict(keep_vars=True)
    first: dict[str, torch.Tensor] = {}
    for s in wmap.slots:  # two torch tensors on one file tensor must be one tensor
        if first.setdefault(s.name, state[s.key]) is not state[s.key]:
            wmap.unbound.append(s.key)
    wmap.trainable_values = sum(p.numel() for p in net.parameters())
    return wmap


def write_back(original: onnx.ModelProto, net: nn.Module, wmap: WeightMap) -> onnx.ModelProto:
    """A copy of ``original`` whose bound tensors hold ``net``'s current values; nothing else changes."""
    if not wmap.complete:
        raise ValueError("the weight map is incomplete: " + ", ".join(wmap.unbound[:3]))
    model = onnx.ModelProto()
    model.CopyFrom(original)
    tensors = file_tensors(model)
    state = net.state_dict()
    for slot in wmap.slots:
        proto = tensors[slot.name]
        proto.CopyFrom(slot.to_file(state[slot.key], proto))
    return model
