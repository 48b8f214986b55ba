"""Repair end to end on ONNX files shaped like real exporters' (tests/exporter_fixtures.py): the export
preflight, names/layout/batch/opset kept, onnxruntime parity, resume, the input model returned
when fine-tuning collapses, and dense layers exported as MatMul (+ Add) trained and written back in place."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from audit.config import AuditConfig
from audit.data import load_dataset
from reat_finetune import RepairConfig, RepairError, RepairInterrupted, TrainHooks
from tailaudit import run_repair
from reat_finetune.export import OnnxSignature

from audit.models.onnx_model import check_parity, load_onnx
from audit.models.onnx_weights import file_tensors
from exporter_fixtures import CASES, DENSE_CASES, ExporterCase, build

pytestmark = pytest.mark.slow  # the end-to-end tier (conftest.py)

IDS = [c.name for c in CASES]
RESUME_CASES = [c for c in CASES if c.kind == "torch" or c.name == "keras-dense"]  # resume costs two more repairs


@pytest.fixture(scope="module")
def fixture_files(tmp_path_factory) -> dict[str, Path]:
    """Every exporter case, trained on the digitslt training split and written once for the module."""
    d = load_dataset("digitslt", imbalance=0.01)
    x = torch.stack([d.train[i][0] for i in range(len(d.train))]).float()
    y = torch.as_tensor(np.asarray(d.train_labels))
    folder = tmp_path_factory.mktemp("exporters")
    return {c.name: build(c, folder, x, y) for c in CASES}


def gentle(case: ExporterCase, model: Path, out: Path | None, **kw) -> RepairConfig:
    """A short, gentle repair (small lr and radius): fine-tuned checkpoints stay eligible, so the export runs."""
    audit = AuditConfig(model=str(model), dataset="digitslt", eps=0.1, attacks=("pgd",), steps=3,
                        n_per_class=5, quiet=True, device="cpu", **case.audit_norm)
    kw = {"steps_total": 6, "evaluations": 2, "batch_size": 64, "lr": 0.005, "train_eps": 0.03, **kw}
    return RepairConfig(audit=audit, formats=(), quiet=True, out=str(out) if out else None, **kw)


@pytest.fixture(scope="module")
def repaired(fixture_files, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """One uninterrupted gentle repair per case (shared by the signature and resume tests)."""
    root = tmp_path_factory.mktemp("repaired")
    return {c.name: (root / c.name, run_repair(gentle(c, fixture_files[c.name], root / c.name))) for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_repaired_file_keeps_the_exporters_signature(case, fixture_files, repaired):
    out, run = repaired[case.name]
    src, dst = OnnxSignature.of(fixture_files[case.name]), OnnxSignature.of(run.model_path)
    assert run.summary["selection"]["chosen_step"] > 0 and run.summary["outcome"]["code"] != "input-kept"
    assert (dst.input, dst.output) == (src.input, src.output)  # numeric, punctuated and odd names alike
    assert dst.dims == src.dims and dst.opset == src.opset == case.opset  # batch 1 or symbolic, NHWC, opset 9-13
    model = run.summary["model"]
    assert model["export"]["opset"] == case.opset and model["export"]["layout"] == case.layout
    for parity in (model["export"]["parity"], model["parity"]):  # preflight, and the repaired file
        assert parity["argmax_agreement"] == 1.0 and parity["max_rel_logit_diff"] < 1e-3
        assert parity["conversion"]["argmax_agreement"] == 1.0
    assert run.after.model.spec == str(run.model_path)  # the after-audit scored the written file
    parity = run.after.model.parity
    assert parity is None or parity.argmax_agreement == 1.0
    assert onnx.load(str(run.model_path)).graph.input[0].name == src.input


@pytest.mark.parametrize("case", DENSE_CASES, ids=[c.name for c in DENSE_CASES])
def test_dense_weights_change_and_go_back_in_place(case, fixture_files, repaired):
    """The repaired file is the input file with trained values: MatMul weights changed, graph and names kept."""
    _, run = repaired[case.name]
    src, dst = onnx.load(str(fixture_files[case.name])), onnx.load(str(run.model_path))
    assert run.summary["model"]["export"]["mode"] == "in-place" and run.summary["model"]["parity"]["mode"] == "in-place"
    weights = run.summary["model"]["export"]["weights"]
    assert weights["trainable_values"] > weights["converter_values"] and not weights["unbound"]
    assert list(dst.graph.node) == list(src.graph.node) and dst.opset_import == src.opset_import
    before, after = file_tensors(src), file_tensors(dst)
    assert list(before) == list(after)
    assert all(list(before[n].dims) == list(after[n].dims) and before[n].data_type == after[n].data_type
               for n in before)
    changed = {n for n in before if not np.array_equal(onnx.numpy_helper.to_array(before[n]),
                                                        onnx.numpy_helper.to_array(after[n]))}
    inits = {i.name for i in src.graph.initializer}
    matmul = {i for n in src.graph.node if n.op_type == "MatMul" for i in n.input if i in inits}
    assert matmul and matmul <= changed  # the dense layers were trained
    assert "sequential/normalization/sub/y:0" not in changed  # preprocessing stays (keras-dense)
    again = load_onnx(run.model_path, num_classes=10)  # loads in onnxruntime; its conversion matches it
    d = load_dataset("digitslt", imbalance=0.01)
    probe = torch.stack([d.test[i][0] for i in range(32)]).float()
    assert check_parity(again, probe)["argmax_agreement"] == 1.0


@pytest.mark.parametrize("case", RESUME_CASES, ids=[c.name for c in RESUME_CASES])
def test_resume_of_a_killed_run_ends_identical(case, fixture_files, repaired, tmp_path):
    full_out, full_run = repaired[case.name]

    def stop(epoch, done):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(RepairInterrupted):
        run_repair(gentle(case, fixture_files[case.name], tmp_path), hooks=TrainHooks(on_batch_end=stop))
    run = run_repair(gentle(case, fixture_files[case.name], None, resume=str(tmp_path)))
    assert run.best_epoch == full_run.best_epoch
    assert run.model_path.read_bytes() == full_run.model_path.read_bytes()


def test_collapsing_budget_returns_the_input_model(fixture_files, tmp_path):
    """The collapse of issue 15 (Keras NHWC CNN, full radius at lr 0.05): the input comes back, said plainly."""
    case = next(c for c in CASES if c.name == "keras-nhwc")
    src = fixture_files[case.name]
    run = run_repair(gentle(case, src, tmp_path, steps_total=10, evaluations=2, lr=0.05, train_eps=0.1))
    log = run.training_log
    assert run.summary["selection"]["chosen_step"] == 0 and log["input_kept"]
    tried, input_score = log["epochs"][1:], log["epochs"][0]["val_robust_acc"]
    assert any(any("collapse" in why for why in e["ineligible_because"]) for e in tried)  # the collapse is caught
    # and no checkpoint was kept: each was ineligible, or eligible but less robust on validation than the input
    assert all((not e["eligible"] and e["ineligible_because"]) or e["val_robust_acc"] < input_score for e in tried)
    assert run.model_path.read_bytes() == src.read_bytes()
    outcome = run.summary["outcome"]
    assert outcome["code"] == "input-kept" and "input model is returned unchanged" in outcome["headline"]
    assert run.summary["after"]["robust_worst_case"] == run.summary["before"]["robust_worst_case"]


def test_unexportable_model_is_refused_before_any_audit(fixture_files, tmp_path, monkeypatch):
    """A model the exporter cannot write is refused in the preflight: no before-audit, no training.

    The in-place write-back is switched off, as for a model whose weights are not all in its file
    (then torch.onnx.export re-exports it)."""
    case = CASES[0]

    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::foo' to ONNX opset version 9 is not supported")

    monkeypatch.setattr(torch.onnx, "export", broken)
    monkeypatch.setattr("reat_finetune.export.preflight_in_place", lambda *a, **k: None)
    with pytest.raises(RepairError, match="cannot be written back as ONNX") as err:
        run_repair(gentle(case, fixture_files[case.name], tmp_path / "o"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "o" / "before").exists() and not (tmp_path / "o" / "checkpoint.pt").exists()


def test_black_box_model_is_refused_up_front(fixture_files, tmp_path):
    case = CASES[1]
    cfg = gentle(case, fixture_files[case.name], tmp_path / "bb")
    cfg.audit.black_box = True
    with pytest.raises(RepairError, match="black.box"):  # the API names black_box=, the CLI --black-box
        run_repair(cfg)
    assert not (tmp_path / "bb" / "before").exists()
