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
  (``0``, ``features.0/conv:0``, ``onnx::Conv_12``), opset 13.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnx
import torch
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
)


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


def _train(net: _Net, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> None:
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
