"""ONNX files made the way users' files come from real exporters, for the repair's export tests.

Each fixture is a small digits CNN (1x8x8, 10 classes), trained for a few seconds on the
digitslt training split so it is well above chance, then written as a particular exporter
would write it:

* ``old-numeric``: ``torch.onnx.export`` with no names, as scripts from before 2020 did:
  input ``input.1``, output named by number (e.g. ``"14"``), batch fixed to 1, opset 9;
* ``punctuated``: TensorFlow-style names with ``:``/``/`` (``image:0`` -> ``scores/logits:0``),
  dynamic batch, opset 11;
* ``keras-nhwc``: NHWC input as Keras/tf2onnx export it (input ``input_1``, symbolic batch
  ``unk__6``, node names such as ``sequential/conv2d/Conv2D``), opset 13;
* ``norm-inside``: mean/std normalisation as Sub/Div nodes in the graph, opset 12;
* ``norm-outside``: expects normalised pixels (``--mean/--std`` on the command line), batch
  fixed to 1, opset 10;
* ``odd-names``: node and weight names that become odd module attribute names in onnx2torch
  (``0``, ``features.0/conv:0``, ``onnx::Conv_12``), opset 13;
* ``keras-dense``: a Keras CNN as tf2onnx writes it, dense layers as MatMul + Add: NHWC input
  ``input_1`` (batch ``unk__6``), a Normalization layer (Sub of a per-pixel mean image, Div by
  a std) on the raw input, Transpose ``[0, 3, 1, 2]`` into two Conv + Relu, Transpose
  ``[0, 2, 3, 1]`` back, Flatten as Reshape to the constant ``[-1, 256]``, then
  MatMul + Add, Relu, MatMul + Add; weights named ``sequential/dense/MatMul/ReadVariableOp:0``,
  ``sequential/dense/BiasAdd/ReadVariableOp:0`` as tf2onnx names them, opset 13;
* ``flatten-matmul``: ``torch.onnx.export`` of a module whose dense layers are ``x @ W + b``
  after ``nn.Flatten`` (Flatten -> MatMul -> Add; BatchNorm folded into the Conv), opset 13;
* ``keras-nobias``: a Keras CNN with ``use_bias=False`` layers: a bias-free Conv followed by an
  inference-mode BatchNorm written as Mul + Add per channel (``batchnorm/mul``, ``batchnorm/add_1``),
  and a bias-free dense layer after the flatten as a lone MatMul, opset 13.

tensorflow and tf2onnx are not installable here, so the two Keras-style files are written with
``onnx.helper`` in tf2onnx's conventions (node and initializer names, Transpose perms, the
Reshape shape constant, opset, producer ``tf2onnx``) from a torch network that computes the
same function and is trained like the others.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

MEAN, STD = (0.3,), (0.35,)


@dataclass(frozen=True)
class ExporterCase:
    name: str
    opset: int
    layout: str = "NCHW"
    batch_one: bool = False
    names: Optional[tuple[str, str]] = None  # (input, output); None: torch's own numeric names
    norm: str = "none"  # none | inside | outside
    rename_nodes: str = ""  # "" | keras | odd
    kind: str = "torch"  # torch (_Net via torch.onnx.export) | keras-dense | flatten-matmul | keras-nobias

    @property
    def audit_norm(self) -> dict:
        """``AuditConfig`` keywords the model needs (mean/std for a model that takes normalised pixels)."""
        return {"mean": MEAN, "std": STD} if self.norm == "outside" else {}


CASES = (
    ExporterCase("old-numeric", 9, batch_one=True),
    ExporterCase("punctuated", 11, names=("image:0", "scores/logits:0")),
    ExporterCase("keras-nhwc", 13, layout="NHWC", names=("input_1", "dense_1"), rename_nodes="keras"),
    ExporterCase("norm-inside", 12, names=("pixels", "logits"), norm="inside"),
    ExporterCase("norm-outside", 10, batch_one=True, names=("x", "y"), norm="outside"),
    ExporterCase("odd-names", 13, names=("0", "1"), rename_nodes="odd"),
    ExporterCase("keras-dense", 13, layout="NHWC", names=("input_1", "dense_1"), kind="keras-dense"),
    ExporterCase("flatten-matmul", 13, names=("input", "logits"), kind="flatten-matmul"),
    ExporterCase("keras-nobias", 13, layout="NHWC", names=("input_1", "dense"), kind="keras-nobias"),
)
DENSE_CASES = tuple(c for c in CASES if c.kind != "torch")  # dense layers as MatMul (+ Add)


class _Net(nn.Module):
    def __init__(self, case: ExporterCase) -> None:
        super().__init__()
        self.case = case
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.case.layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        if self.case.norm == "inside":
            x = (x - MEAN[0]) / STD[0]
        return self.fc(self.body(x))


def _train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> None:
    """A few seconds of Adam on [0, 1] pixels, fed as the exported graph will take them."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        xb = x[idx]
        if net.case.norm == "outside":
            xb = (xb - MEAN[0]) / STD[0]
        if net.case.layout == "NHWC":
            xb = xb.permute(0, 2, 3, 1)
        loss = nn.functional.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def _rename_nodes(model: onnx.ModelProto, style: str) -> None:
    """Exporter-style node names (keras) or names that make odd module attributes (odd)."""
    for i, node in enumerate(model.graph.node):
        if style == "keras":
            node.name = f"sequential/{node.op_type.lower()}_{i}/{node.op_type};StatefulPartitionedCall:0"
        elif style == "odd":
            node.name = [f"{i}", f"features.{i}/conv:0", f"onnx::{node.op_type}_{i}", f"{i}.weight"][i % 4]
    if style == "odd":
        from reat_finetune.export import rename_tensors

        rename_tensors(model, {init.name: f"{k}.{init.name}" for k, init in enumerate(model.graph.initializer)})


def build(case: ExporterCase, folder: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    """Train the case's network on (x, y) and write it as its exporter would; returns the .onnx path."""
    torch.manual_seed(0)
    if case.kind != "torch":
        return _DENSE_BUILDERS[case.kind](case, folder, x, y)
    net = _Net(case)
    _train(net, x, y)
    shape = (1, 8, 8, 1) if case.layout == "NHWC" else (1, 1, 8, 8)
    path = folder / f"{case.name}.onnx"
    kw: dict = {}
    if case.names:  # torch refuses some names ("0"): export under plain ones, rename as other tools write them
        kw.update(input_names=["in"], output_names=["out"])
        if not case.batch_one:
            batch = "unk__6" if case.rename_nodes == "keras" else "N"
            kw["dynamic_axes"] = {"in": {0: batch}, "out": {0: batch}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(shape),), str(path), dynamo=False, opset_version=case.opset, **kw)
    model = onnx.load(str(path))
    if case.names:
        from reat_finetune.export import rename_tensors

        rename_tensors(model, {"in": case.names[0], "out": case.names[1]})
    if case.rename_nodes:
        _rename_nodes(model, case.rename_nodes)
    model.producer_name = {"keras": "tf2onnx"}.get(case.rename_nodes, "pytorch")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- dense layers as MatMul

PIXEL_MEAN = np.linspace(0.2, 0.4, 64, dtype=np.float32).reshape(1, 8, 8, 1)  # a Normalization layer's mean image
PIXEL_STD = np.float32(0.35)


class _KerasCNN(nn.Module):
    """What the Keras-style graphs compute, on NHWC input; trained in torch, written with onnx.helper."""

    def __init__(self, case: ExporterCase) -> None:
        super().__init__()
        self.case = case
        dense = case.kind == "keras-dense"
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=dense)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        if dense:
            self.fc1, self.fc2 = nn.Linear(256, 32), nn.Linear(32, 10)
        else:
            self.scale, self.shift = nn.Parameter(torch.ones(8, 1, 1)), nn.Parameter(torch.zeros(8, 1, 1))
            self.fc = nn.Linear(256, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.case.kind == "keras-dense":
            x = (x - torch.from_numpy(PIXEL_MEAN)) / float(PIXEL_STD)
            x = torch.relu(self.conv2(torch.relu(self.conv1(x.permute(0, 3, 1, 2)))))
            x = x.permute(0, 2, 3, 1).reshape(-1, 256)
            return self.fc2(torch.relu(self.fc1(x)))
        x = torch.relu(self.conv1(x.permute(0, 3, 1, 2)) * self.scale + self.shift)
        return self.fc(torch.relu(self.conv2(x)).permute(0, 2, 3, 1).reshape(-1, 256))


def _arr(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def _keras_graph(net: _KerasCNN, case: ExporterCase) -> tuple[list, list]:
    """tf2onnx-style nodes and initializers for the trained ``net``."""
    p, inits, nodes = "sequential", [], []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list, out: str, name: str, **kw) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=name, **kw))
        return out

    x = "input_1"
    if case.kind == "keras-dense":
        x = node("Sub", [x, init(f"{p}/normalization/sub/y:0", PIXEL_MEAN)], f"{p}/normalization/sub:0",
                 f"{p}/normalization/sub")
        x = node("Div", [x, init(f"{p}/normalization/Sqrt:0", PIXEL_STD)], f"{p}/normalization/truediv:0",
                 f"{p}/normalization/truediv")
    x = node("Transpose", [x], f"{p}/conv2d/BiasAdd__6:0", f"{p}/conv2d/BiasAdd__6", perm=[0, 3, 1, 2])
    conv1 = [x, init(f"{p}/conv2d/Conv2D/ReadVariableOp:0", _arr(net.conv1.weight))]
    if net.conv1.bias is not None:
        conv1.append(init(f"{p}/conv2d/BiasAdd/ReadVariableOp:0", _arr(net.conv1.bias)))
    x = node("Conv", conv1, f"{p}/conv2d/BiasAdd:0", f"{p}/conv2d/BiasAdd", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    if case.kind == "keras-nobias":
        bn = f"{p}/batch_normalization/batchnorm"
        x = node("Mul", [x, init(f"{bn}/mul:0", _arr(net.scale))], f"{bn}/mul_1:0", f"{bn}/mul_1")
        x = node("Add", [x, init(f"{bn}/sub:0", _arr(net.shift))], f"{bn}/add_1:0", f"{bn}/add_1")
    x = node("Relu", [x], f"{p}/conv2d/Relu:0", f"{p}/conv2d/Relu")
    x = node("Conv", [x, init(f"{p}/conv2d_1/Conv2D/ReadVariableOp:0", _arr(net.conv2.weight)),
                      init(f"{p}/conv2d_1/BiasAdd/ReadVariableOp:0", _arr(net.conv2.bias))],
             f"{p}/conv2d_1/BiasAdd:0", f"{p}/conv2d_1/BiasAdd", pads=[1, 1, 1, 1], kernel_shape=[3, 3], strides=[2, 2])
    x = node("Relu", [x], f"{p}/conv2d_1/Relu:0", f"{p}/conv2d_1/Relu")
    x = node("Transpose", [x], f"{p}/conv2d_1/Relu__12:0", f"{p}/conv2d_1/Relu__12", perm=[0, 2, 3, 1])
    x = node("Reshape", [x, init(f"{p}/flatten/Const:0", np.asarray([-1, 256], np.int64))],
             f"{p}/flatten/Reshape:0", f"{p}/flatten/Reshape")
    if case.kind == "keras-dense":
        x = node("MatMul", [x, init(f"{p}/dense/MatMul/ReadVariableOp:0", _arr(net.fc1.weight.T))],
                 f"{p}/dense/MatMul:0", f"{p}/dense/MatMul")
        x = node("Add", [x, init(f"{p}/dense/BiasAdd/ReadVariableOp:0", _arr(net.fc1.bias))],
                 f"{p}/dense/BiasAdd:0", f"{p}/dense/BiasAdd")
        x = node("Relu", [x], f"{p}/dense/Relu:0", f"{p}/dense/Relu")
        x = node("MatMul", [x, init(f"{p}/dense_1/MatMul/ReadVariableOp:0", _arr(net.fc2.weight.T))],
                 f"{p}/dense_1/MatMul:0", f"{p}/dense_1/MatMul")
        node("Add", [x, init(f"{p}/dense_1/BiasAdd/ReadVariableOp:0", _arr(net.fc2.bias))], case.names[1],
             f"{p}/dense_1/BiasAdd")
    else:  # Dense(10, use_bias=False): a lone MatMul
        node("MatMul", [x, init(f"{p}/dense/MatMul/ReadVariableOp:0", _arr(net.fc.weight.T))], case.names[1],
             f"{p}/dense/MatMul")
    return nodes, inits


def _build_keras(case: ExporterCase, folder: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    net = _KerasCNN(case)
    _train(net, x, y)
    nodes, inits = _keras_graph(net, case)
    graph = helper.make_graph(nodes, "tf2onnx", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT,
                                                                              ["unk__6", 8, 8, 1])],
                              [helper.make_tensor_value_info(case.names[1], TensorProto.FLOAT, ["unk__6", 10])],
                              initializer=inits)
    model = helper.make_model(graph, producer_name="tf2onnx", producer_version="1.16.1 15c810",
                              opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / f"{case.name}.onnx"
    onnx.save(model, str(path))
    return path


class _FlattenMatMul(nn.Module):
    """A torch module whose dense layers are ``x @ W + b`` after nn.Flatten (exported as MatMul + Add)."""

    def __init__(self, case: ExporterCase) -> None:
        super().__init__()
        self.case = case
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten())
        self.w1, self.b1 = nn.Parameter(torch.randn(256, 32) / 16), nn.Parameter(torch.zeros(32))
        self.w2, self.b2 = nn.Parameter(torch.randn(32, 10) / 6), nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.relu(self.body(x) @ self.w1 + self.b1) @ self.w2 + self.b2


def _build_flatten_matmul(case: ExporterCase, folder: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    net = _FlattenMatMul(case)
    _train(net, x, y)
    path = folder / f"{case.name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=case.opset,
                          input_names=list(case.names[:1]), output_names=list(case.names[1:]),
                          dynamic_axes={case.names[0]: {0: "N"}, case.names[1]: {0: "N"}})
    return path


_DENSE_BUILDERS = {"keras-dense": _build_keras, "keras-nobias": _build_keras,
                   "flatten-matmul": _build_flatten_matmul}
