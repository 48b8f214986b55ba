"""Every weight an exporter wrote trains, and goes back into the input file in place (audit.models.onnx_weights).

Real files written the way exporters write them (tests/exporter_fixtures.py: tf2onnx-style dense
layers as MatMul + Add, torch's Flatten -> MatMul, a bias-free MatMul) and real onnxruntime sessions.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from audit.data import load_dataset
from audit.models.onnx_model import check_parity, load_onnx
from audit.models.onnx_weights import file_tensors, write_back
from reat_finetune import export
from exporter_fixtures import DENSE_CASES, PIXEL_MEAN, build


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_dataset("digitslt", imbalance=0.01)
    x = torch.stack([d.train[i][0] for i in range(len(d.train))]).float()
    probe = torch.stack([d.test[i][0] for i in range(0, len(d.test), max(1, len(d.test) // 32))]).float()
    return x, torch.as_tensor(np.asarray(d.train_labels)), probe


@pytest.fixture(scope="module")
def dense_files(digits, tmp_path_factory) -> dict[str, Path]:
    x, y, _ = digits
    folder = tmp_path_factory.mktemp("dense")
    return {c.name: build(c, folder, x, y) for c in DENSE_CASES}


def _matmul_weights(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i for n in model.graph.node if n.op_type == "MatMul" for i in n.input if i in inits]


def _train_a_little(loaded, x: torch.Tensor, y: torch.Tensor, steps: int = 5) -> None:
    """A few plain SGD steps on every parameter, as a repair's optimizer would take them."""
    net = loaded.module
    params = [p for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=0.05)
    net.train()
    for i in range(steps):
        xb, yb = x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


@pytest.mark.parametrize("case", DENSE_CASES, ids=[c.name for c in DENSE_CASES])
def test_dense_layers_exported_as_matmul_train(case, dense_files):
    """MatMul weights (and Add biases, Mul/Add scale and shift) are parameters mapped to their file tensors."""
    path = dense_files[case.name]
    loaded = load_onnx(path, num_classes=10)
    wmap = loaded.weights
    assert wmap is not None and wmap.complete
    bound = {s.name for s in wmap.slots}
    model = onnx.load(str(path))
    floats = {i.name for i in model.graph.initializer
              if i.data_type == TensorProto.FLOAT and int(np.prod(i.dims)) > 1}
    matmul = _matmul_weights(model)
    assert matmul and set(matmul) <= bound
    assert sum(p.numel() for p in loaded.module.parameters()) == wmap.trainable_values
    assert wmap.trainable_values > wmap.converter_values  # onnx2torch alone leaves the dense layers frozen
    if case.kind == "keras-dense":  # the Normalization layer's mean image is preprocessing, not a weight
        assert floats - bound == {"sequential/normalization/sub/y:0"}
        assert [f[0] for f in wmap.frozen] == ["sequential/normalization/sub/y:0"]
        assert wmap.trainable_values == sum(int(np.prod(i.dims)) for i in model.graph.initializer
                                            if i.name in floats) - PIXEL_MEAN.size
    else:  # every float tensor with more than one value is a weight here (BatchNorm as Mul + Add included)
        assert floats == bound and not wmap.frozen
    if case.kind == "keras-nobias":
        bn = "sequential/batch_normalization/batchnorm"
        assert {f"{bn}/mul:0", f"{bn}/sub:0"} <= bound


@pytest.mark.parametrize("case", DENSE_CASES, ids=[c.name for c in DENSE_CASES])
def test_trained_values_go_back_in_place(case, dense_files, digits, tmp_path):
    """After training steps, the file keeps its graph, names, dims, dtypes and opset; onnxruntime matches torch."""
    x, y, probe = digits
    path = dense_files[case.name]
    loaded = load_onnx(path, num_classes=10)
    _train_a_little(loaded, x, y)
    original = onnx.load(str(path))
    net = loaded.module.net
    written = write_back(original, net, loaded.weights)
    out = tmp_path / "repaired.onnx"
    onnx.save(written, str(out))
    assert list(written.graph.node) == list(original.graph.node)
    assert written.opset_import == original.opset_import and written.ir_version == original.ir_version
    assert list(written.graph.input) == list(original.graph.input)
    assert list(written.graph.output) == list(original.graph.output)
    before, after = file_tensors(original), file_tensors(written)
    assert [(n, list(t.dims), t.data_type) for n, t in before.items()] == \
           [(n, list(t.dims), t.data_type) for n, t in after.items()]
    changed = {n for n in before if not np.array_equal(numpy_helper.to_array(before[n]),
                                                        numpy_helper.to_array(after[n]))}
    assert set(_matmul_weights(original)) <= changed  # the dense weights moved
    assert changed <= {s.name for s in loaded.weights.slots}  # and nothing but weights did
    again = load_onnx(out, num_classes=10)
    ref = again.reference_scorer(probe.numpy())
    with torch.no_grad():
        ours = loaded.module(probe).numpy()
    assert np.abs(ours - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert check_parity(again, probe)["argmax_agreement"] == 1.0


def test_preflight_writes_in_place_and_rejects_a_wrong_map(dense_files, digits):
    """The preflight proves the map on perturbed weights; a wrong transform falls back to re-exporting."""
    _, _, probe = digits
    loaded = load_onnx(dense_files["keras-dense"], num_classes=10)
    state = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    plan = export.preflight_export(loaded, probe)
    assert plan.mode == "in-place" and plan.opset == 13 and plan.batch is None
    assert plan.weights["trainable_values"] == loaded.weights.trainable_values
    assert all(torch.equal(v, loaded.module.state_dict()[k]) for k, v in state.items())  # weights restored
    loaded.weights.slots[-1] = dataclasses.replace(loaded.weights.slots[-1], scale=3.0)
    assert export.preflight_in_place(loaded, probe) is None
    assert export.preflight_export(loaded, probe).mode == "re-export"


def test_shared_matmul_weight_stays_shared(tmp_path):
    """One initializer read by two MatMuls becomes one parameter and is written back once."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.2, (64, 64)).astype(np.float32), "shared/kernel:0")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (64, 10)).astype(np.float32), "head/kernel:0")
    shape = numpy_helper.from_array(np.asarray([-1, 64], np.int64), "flatten/Const:0")
    nodes = [helper.make_node("Reshape", ["x", "flatten/Const:0"], ["f"]),
             helper.make_node("MatMul", ["f", "shared/kernel:0"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "shared/kernel:0"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "head/kernel:0"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              initializer=[w, w2, shape])
    path = tmp_path / "shared.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    loaded = load_onnx(path, num_classes=10)
    params = list(loaded.module.parameters())
    assert sorted(p.numel() for p in params) == [640, 4096]
    x = torch.rand(64, 1, 8, 8)
    _train_a_little(loaded, x, torch.randint(0, 10, (64,)), steps=2)
    written = write_back(onnx.load(str(path)), loaded.module.net, loaded.weights)
    out = tmp_path / "out.onnx"
    onnx.save(written, str(out))
    ref = load_onnx(out, num_classes=10, black_box=True).reference_scorer(x.numpy())
    with torch.no_grad():
        assert np.allclose(loaded.module(x).numpy(), ref, atol=1e-5)
    assert not np.array_equal(numpy_helper.to_array(file_tensors(written)["shared/kernel:0"]),
                              numpy_helper.to_array(w))
    assert numpy_helper.to_array(file_tensors(written)["flatten/Const:0"]).tolist() == [-1, 64]


def test_the_weight_rule_on_one_graph(tmp_path):
    """Depthwise kernel and a mid-network per-channel scale train; input Sub/Div, a Div divisor and scalars do not."""
    rng = np.random.default_rng(1)
    f32 = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)  # noqa: E731
    inits = {"prep/mean": np.full((1, 3, 1, 1), 0.4, np.float32), "prep/std": np.full((1, 3, 1, 1), 0.25, np.float32),
             "stem/W": f32(8, 3, 3, 3), "dw/W": f32(8, 1, 3, 3), "dw/scale": f32(1, 8, 1, 1) + 1,
             "mid/div": np.full((1, 8, 1, 1), 2.0, np.float32), "act/half": np.float32(0.5),
             "head/W": f32(8, 10), "head/b": f32(10)}
    nodes = [helper.make_node("Sub", ["x", "prep/mean"], ["a"]), helper.make_node("Div", ["a", "prep/std"], ["b"]),
             helper.make_node("Conv", ["b", "stem/W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c", "dw/W"], ["d"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("Mul", ["d", "dw/scale"], ["e"]), helper.make_node("Div", ["e", "mid/div"], ["f"]),
             helper.make_node("Mul", ["f", "act/half"], ["g"]), helper.make_node("Relu", ["g"], ["h"]),
             helper.make_node("GlobalAveragePool", ["h"], ["i"]), helper.make_node("Flatten", ["i"], ["j"]),
             helper.make_node("MatMul", ["j", "head/W"], ["k"]), helper.make_node("Add", ["k", "head/b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "rule.onnx"
    onnx.save(model, str(path))
    wmap = load_onnx(path, num_classes=10).weights
    assert {s.name for s in wmap.slots} == {"stem/W", "dw/W", "dw/scale", "head/W", "head/b"}
    assert {name for name, _, _ in wmap.frozen} == {"prep/mean", "prep/std", "mid/div"}  # scalars are not listed
    assert wmap.complete
