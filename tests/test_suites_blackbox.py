"""Suites, attack flags and their bounds, black-box mode on an ONNX model onnx2torch cannot convert."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cli
from audit.attacks import ATTACKS, SUITES
from audit.config import AuditConfig
from audit.errors import ConfigError
from support import DEMO



def _main(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's own errors (unknown choice, not a number)
        return int(exc.code)


def test_suites_expand_from_the_registry():
    quick = AuditConfig(model="m.onnx").attack_specs()
    assert [s.name for s in quick] == ["pgd", "temp-pgd"] and quick[0].params.steps == 20
    std = AuditConfig(model="m.onnx", suite="standard").attack_specs()
    assert [s.kind for s in std] == ["apgd-ce", "apgd-t", "temp-pgd", "square"]
    assert std[0].params.steps == 100 and std[3].params.queries == 5000
    assert (std[1].params.ranking, std[1].params.targets, std[3].params.probe) == ("malt", 3, 500)  # measured
    assert std[3].params.reruns == 2  # measured: Square's reruns where every gradient was zero
    thorough = AuditConfig(model="m.onnx", suite="thorough").attack_specs()
    assert [s.name for s in thorough if s.kind == "temp-pgd"] == [f"temp-pgd@T={t}" for t in ("0.1", "0.5", "2", "5")]
    assert thorough[0].params.restarts == 5 and thorough[-1].params.queries == 20000
    assert thorough[-1].params.reruns == 0
    # a flag sets only the parameters an attack declares
    specs = AuditConfig(model="m.onnx", suite="standard", steps=7, queries=30).attack_specs()
    assert [getattr(s.params, "steps", None) for s in specs] == [7, 7, 7, None]
    assert specs[3].params.queries == 30
    custom = AuditConfig(model="m.onnx", attacks=("apgd-dlr", "square"))
    assert custom.suite_name == "custom" and [s.kind for s in custom.attack_specs()] == ["apgd-dlr", "square"]
    # results record every parameter and the registry's display name
    d = std[1].to_dict()
    assert d["display_name"] == "APGD-T" and d["targets"] == 3 and d["steps"] == 100 and not d["gradient_free"]
    # AutoAttack's own rule is one flag away, and a flag overrides the suite
    aa_rule = AuditConfig(model="m.onnx", suite="standard", target_ranking="logit", targets=9).attack_specs()[1]
    assert (aa_rule.params.ranking, aa_rule.params.targets) == ("logit", 9)
    assert set(SUITES.names()) == {"quick", "standard", "thorough"}
    assert {"pgd", "temp-pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square"} <= set(ATTACKS.names())


@pytest.mark.parametrize("argv,needle", [
    (["--suite", "fast"], "quick"),
    (["--attacks", "apgd-ce,fab"], "apgd-t"),  # the error lists what exists
    (["--suite", "standard", "--queries", "200000"], "100000"),
    (["--steps", "20000"], "10000"),
    (["--suite", "thorough", "--restarts", "101"], "--restarts"),
    (["--temperature", "-1"], "temperature"),
], ids=["unknown suite", "unknown attack", "queries bound", "steps bound", "restarts bound", "temperature"])
def test_bad_names_and_budgets_one_line_exit_2(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    rc = _main(["audit", str(DEMO), "--dataset", "digitslt", "--out", str(out), "--quiet", "--no-html",
                   "--no-pdf", *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (out / "results.json").exists()


def test_black_box_refused_for_timm_and_with_gradient_attacks(capsys):
    assert _main(["audit", "timm:test_resnet", "--black-box", "--quiet", "--no-html", "--no-pdf"]) == 2
    assert "--black-box" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="score-based"):
        AuditConfig(model="m.onnx", attacks=("pgd", "square"), black_box=True).attack_specs()
    assert [s.kind for s in AuditConfig(model="m.onnx", black_box=True).attack_specs()] == ["square"]


def _unconvertible_onnx(path: Path) -> Path:
    """A least-squares linear digits classifier ending in Shrink (onnxruntime runs it, onnx2torch lacks it)."""
    from audit.data import load_dataset

    data = load_dataset("digitslt")
    x = np.stack([data.test[i][0].numpy().ravel() for i in range(len(data.test_labels))])
    onehot = np.eye(10)[np.asarray(data.test_labels)]
    coef = np.linalg.lstsq(np.c_[x, np.ones(len(x))], onehot * 10, rcond=None)[0].astype(np.float32)
    w = numpy_helper.from_array(np.ascontiguousarray(coef[:64]), "w")
    b = numpy_helper.from_array(np.ascontiguousarray(coef[64]), "b")
    shape = numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["z"]),
             helper.make_node("Shrink", ["z"], ["logits"], lambd=0.0, bias=0.0)]
    graph = helper.make_graph(nodes, "shrinky", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], [w, b, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _audit(tmp_path, model, *extra) -> dict:
    out = tmp_path / "run"
    rc = cli.main(["audit", str(model), "--dataset", "digitslt", "--n-per-class", "3", "--eps", "0.05",
                   "--queries", "60", "--out", str(out), "--quiet", "--no-html", "--no-pdf", *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def test_unconvertible_onnx_is_audited_black_box_with_square_on_onnxruntime(tmp_path, capsys):
    res = _audit(tmp_path, _unconvertible_onnx(tmp_path / "shrink.onnx"), "--suite", "standard")
    assert res["mode_label"] == "black-box (upper bound)" and res["model"]["gradient_access"] is False
    assert [a["kind"] for a in res["attacks"]] == ["square"] and res["attacks"][0]["queries"] == 60
    assert res["suite"] == "black-box" and res["verdict_runtime"] == "onnxruntime"  # what ran, not what was asked
    assert "cannot be converted" in res["black_box_reason"] and res["verdict"]["upper_bound"] is True
    assert any("black-box" in w for w in res["warnings"])
    assert res["model"]["parity"] is None  # nothing was converted, nothing to compare
    assert 0 < res["summary"]["robust"]["worst_case"]["overall"] < res["summary"]["clean"]["overall"]
    assert res["sanity"]["square_only"]["checked"] is False  # no gradient attack to compare with


def test_black_box_flag_on_a_convertible_model_and_the_quick_suite_note(tmp_path):
    res = _audit(tmp_path, DEMO, "--black-box")
    assert res["mode_label"] == "black-box (upper bound)" and [a["kind"] for a in res["attacks"]] == ["square"]
    assert res["suite"] == "black-box" and "--suite standard" not in res["suite_note"]  # not "quick": Square ran
    assert res["black_box_reason"] == "asked for with --black-box" and "Square" in res["suite_note"]
    v = res["verdict"]
    assert v["upper_bound"] is True and "at most" in v["headline"]
    assert not any("--suite standard" in a or "REAT" in a or "ONNX export that converts" in a for a in v["actions"])
    assert any("without --black-box" in a for a in v["actions"])


def test_compare_refuses_runs_whose_suite_or_attack_parameters_differ():
    from report_fixtures import make_results

    from audit.errors import ResultsError
    from reports import check_comparable

    before = make_results()
    check_comparable(before, make_results())  # identical settings compare fine
    cases = {
        "attack suite": dict(before, suite="standard"),
        "gradient access": dict(before, mode_label="black-box (upper bound)"),
        "attack settings": dict(before, attacks=[dict(before["attacks"][0], steps=50), before["attacks"][1]]),
    }
    for needle, after in cases.items():
        with pytest.raises(ResultsError, match=needle):
            check_comparable(before, after)
    square = [dict(before["attacks"][1], kind="square", display_name="Square", queries=q) for q in (5000, 1000)]
    with pytest.raises(ResultsError, match="queries=5000"):
        check_comparable(dict(before, attacks=[before["attacks"][0], square[0]]),
                         dict(before, attacks=[before["attacks"][0], square[1]]))
