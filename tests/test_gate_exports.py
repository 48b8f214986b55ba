"""CI gate, per_class.csv / summary.md, --labels and the permutation check, balanced sets, the eps curve."""
from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from audit.contract.figures import wilson_interval
from PIL import Image

import cli
from audit.errors import ConfigError
from audit.checks.gate import evaluate_gate, parse_fail_under
from audit.contract.model import AuditResults
from audit.inputs import input_info, input_warnings
from audit.contract.model import LABELS
from support import DEMO

FAST = ["--steps", "3", "--eps", "0.1", "--quiet", "--no-html", "--no-pdf"]


def audit(out: Path, *extra: str, model: Path = DEMO, n: str = "10") -> int:
    return cli.main(["audit", str(model), "--n-per-class", n, "--out", str(out), *FAST, *extra])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate") / "run"
    assert audit(out) == 0
    return out, json.loads((out / "results.json").read_text())


# -- gate -------------------------------------------------------------------------------------------

def test_fail_under_parsing_fractions_and_percent():
    conds = parse_fail_under("robust=0.3, tail=25%,max-gap=40%")
    assert [(c.key, c.threshold) for c in conds] == [("robust", 0.3), ("tail", 0.25), ("max-gap", 0.4)]
    for bad, needle in (("robust=50", "ambiguous"), ("robust=1", "ambiguous"), ("speed=0.5", "not a condition"),
                        ("robust", "not a condition"), ("robust=abc", "not a number"),
                        ("robust=0.2,robust=0.3", "twice"),
                        ("robust=150%", "between"), ("", "empty"), ("robust=nan", "finite")):
        with pytest.raises(ConfigError, match=needle):
            parse_fail_under(bad)


def test_gate_exit_codes_and_section(demo, tmp_path, capsys):
    _, res = demo
    wc = res["summary"]["robust"]["worst_case"]
    capsys.readouterr()
    out = tmp_path / "fail"
    rc = audit(out, "--fail-under", f"clean=0.05,robust={min(0.99, wc['overall'] + 0.05):.3f},max-gap=0.01")
    err = capsys.readouterr().err
    assert rc == 3
    gate = json.loads((out / "results.json").read_text())["gate"]
    assert gate["passed"] is False
    assert ([(c["key"], c["passed"]) for c in gate["conditions"]]
            == [("clean", True), ("robust", False), ("max-gap", False)])
    assert gate["conditions"][1]["value"] == pytest.approx(wc["overall"])
    failing = [ln for ln in err.splitlines() if ln.startswith("tailaudit: gate failed")]
    assert len(failing) == 2 and "robust" in failing[0] and "max-gap" in failing[1] and "at most" in failing[1]
    out = tmp_path / "pass"
    assert audit(out, "--fail-under", f"robust={max(0.0, wc['overall'] - 0.05) * 100:.1f}%,worst-class=0") == 0
    assert json.loads((out / "results.json").read_text())["gate"]["passed"] is True
    assert "Gate: **passed**" in (out / "summary.md").read_text()


def test_gate_bad_input_is_exit_2_before_any_output(tmp_path, capsys):
    out = tmp_path / "bad"
    assert audit(out, "--fail-under", "robust=40") == 2
    assert "ambiguous" in capsys.readouterr().err and not out.exists()


def test_gate_value_is_measured_as_documented(demo):
    _, res = demo
    g = evaluate_gate(parse_fail_under("balanced=0,worst-class=0,tail=0,max-gap=100%"), AuditResults.from_json(res))
    wc = res["summary"]["robust"]["worst_case"]
    assert [c.value for c in g.conditions] == [wc["mean"], wc["worst"], wc["groups"]["tail"],
                                               res["summary"]["head_tail_gap"]["worst_case"]]
    assert g.passed


# -- exports ------------------------------------------------------------------------------------------

def test_per_class_csv_matches_results(demo):
    out, res = demo
    rows = list(csv.DictReader((out / "per_class.csv").open(encoding="utf-8")))
    assert len(rows) == 10
    assert list(rows[0])[:8] == ["class", "index", "train_count", "group", "n_eval", "clean_acc", "clean_ci95_low",
                                 "clean_ci95_high"]
    for row, pc in zip(rows, res["per_class"]):
        assert row["class"] == pc["name"] and int(row["index"]) == pc["index"]
        assert int(row["train_count"]) == pc["train_count"] and row["group"] == pc["group"]
        assert int(row["n_eval"]) == pc["n_eval"] == 10
        assert float(row["clean_acc"]) == pytest.approx(pc["clean_acc"], abs=1e-5)
        for name in ("pgd", "temp-pgd", "worst_case"):
            assert float(row[f"robust_{name}"]) == pytest.approx(pc["robust_acc"][name], abs=1e-5)
            assert float(row[f"robust_{name}_ci95_low"]) == pytest.approx(pc["robust_ci95"][name][0], abs=1e-5)
            assert float(row[f"robust_{name}_ci95_high"]) == pytest.approx(pc["robust_ci95"][name][1], abs=1e-5)
    assert res["files"]["per_class_csv"] == "per_class.csv" and res["files"]["summary_md"] == "summary.md"


def test_per_class_csv_neutralises_formulas_in_class_names(demo):
    """Class names are user strings: one a spreadsheet would execute is written as text (leading ')."""
    from audit.exports import per_class_csv

    _, res = demo
    hostile = copy.deepcopy(res)
    names = ["=HYPERLINK(\"http://x\",\"y\")", "+1", "-e", "@SUM(A1)", "\tcmd", "plain", "a,b", "say \"hi\"",
             "ünïcode", "9"]
    for row, name in zip(hostile["per_class"], names):
        row["name"] = name
    rows = list(csv.DictReader(io.StringIO(per_class_csv(AuditResults.from_json(hostile)))))
    written = [r["class"] for r in rows]
    assert written[:5] == ["'" + n for n in names[:5]] and written[5:] == names[5:]


def test_summary_markdown_has_verdict_figures_and_weakest_classes(demo):
    out, res = demo
    md = (out / "summary.md").read_text(encoding="utf-8")
    v = res["verdict"]
    assert f"(`{v['code']}`)" in md and LABELS[v['code']] in md  # the label is derived from the code
    wc = res["summary"]["robust"]["worst_case"]
    n = res["dataset"]["n_eval"]
    lo, hi = wilson_interval(round(wc["overall"] * n), n)
    assert (f"| worst-case robust accuracy | {100 * wc['overall']:.1f}% "
            f"(95% interval {100 * lo:.1f}–{100 * hi:.1f}%) |") in md
    assert f"| clean accuracy | {100 * res['summary']['clean']['overall']:.1f}% |" in md
    weakest = sorted(res["per_class"], key=lambda r: (r["robust_acc"]["worst_case"], r["index"]))[0]
    assert f"| {weakest['name']} | {weakest['train_count']} | {weakest['group']} |" in md
    assert "What to do next:" in md


def test_markdown_escapes_user_strings():
    from audit.exports import _md

    assert _md("a|b`c\nd<script>") == "a\\|b\\`c d\\<script\\>"


# -- label order --------------------------------------------------------------------------------------

PERM = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]  # output j of the permuted model is digit PERM[j]


def _permuted_demo(path: Path) -> Path:
    """The demo CNN as if trained with another class order: rows of its final Gemm permuted."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(DEMO))
    for init in m.graph.initializer:
        if init.name in ("fc.weight", "fc.bias"):
            arr = numpy_helper.to_array(init)[PERM]
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), init.name))
    onnx.save(m, str(path))
    return path


def test_permuted_label_order_is_detected_and_labels_fixes_it(demo, tmp_path, capsys):
    model = _permuted_demo(tmp_path / "perm.onnx")
    out = tmp_path / "perm"
    capsys.readouterr()
    assert audit(out, model=model) == 4  # stopped by the clean check, before any attack, nothing written
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not out.exists()
    assert "Most likely cause: the label order" in err and "--labels FILE" in err
    assert "(3, 7, 0, 9, 1, 5, 2, 8, 6, 4)" in err
    assert audit(out, "--force", model=model) == 0  # --force: the attacks run, and the verdict still gives no grade
    res = json.loads((out / "results.json").read_text())
    lc = res["label_check"]
    assert lc["suspected"] and lc["accuracy_now"] < 0.3 and lc["accuracy_mapped"] > 0.7
    assert lc["mapping"] == [{"output": j, "class": str(PERM[j]), "assumed": str(j)} for j in range(10)]
    assert res["verdict"]["code"] == "not-meaningful" and "label order" in res["verdict"]["headline"]
    assert any("--labels" in w and "3,7,0,9,1,5,2,8,6,4" in w for w in res["warnings"])
    # the suggested file, one name per line, restores the original model's figures exactly
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(m["class"] for m in lc["mapping"]) + "\n")
    fixed = tmp_path / "fixed"
    assert audit(fixed, "--labels", str(labels), model=model) == 0
    got = json.loads((fixed / "results.json").read_text())
    _, ref = demo
    assert "label_check" not in got and got["verdict"]["code"] != "not-meaningful"
    assert got["model"]["info"]["output_order"] == [PERM.index(c) for c in range(10)]
    assert got["model"]["parity"]["argmax_agreement"] == 1.0  # onnxruntime permuted alike
    for a, b in zip(got["per_class"], ref["per_class"]):
        assert a["clean_acc"] == b["clean_acc"] and a["robust_acc"] == b["robust_acc"]
    # a JSON list works too
    labels.write_text(json.dumps([m["class"] for m in lc["mapping"]]))
    assert audit(tmp_path / "json", "--labels", str(labels), model=model) == 0


@pytest.mark.parametrize("content,needle", [("0\n1\n2\n", "missing: 3"), ("\n".join(["0"] * 10), "repeated: 0"),
                                            (json.dumps(["a"] * 10), "not in the dataset: a"), ("[1, 2", "JSON")])
def test_labels_file_that_does_not_match_is_one_line_exit_2(tmp_path, capsys, content, needle):
    f = tmp_path / "labels.txt"
    f.write_text(content)
    out = tmp_path / "out"
    assert audit(out, "--labels", str(f)) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and needle in err[0] and "--labels" in err[0]
    assert not (out / "results.json").exists()


# -- balanced image folder, input mismatch ----------------------------------------------------------------

def _balanced_folder(root: Path, per_class: int = 3, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(10):
            d = root / split / str(c)
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_balanced_folder_has_no_groups_and_warns_about_input_mismatch(tmp_path, capsys):
    root = _balanced_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = ["audit", str(DEMO), "--dataset", "imagefolder", "--data-root", str(root), "--out", str(out),
            "--fail-under", "clean=0", *FAST]
    assert cli.main(args) == 4 and not out.exists()  # random colour images for a grey digits model: stopped early
    err = capsys.readouterr().err
    assert "Most likely cause: the images were converted (RGB to grey) to fit the model" in err and "--dataset" in err
    rc = cli.main(args + ["--force"])
    printed = capsys.readouterr().out
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    ds = res["dataset"]
    assert ds["balanced"] is True and ds["groups"] == {} and ds["imbalance"] is None
    assert all(pc["group"] is None for pc in res["per_class"])
    assert res["summary"]["head_tail_gap"] == {"clean": None, "worst_case": None}
    assert res["summary"]["robust"]["worst_case"]["groups"] == {}
    assert res["input"] == {"data_shape": [3, 40, 40], "model_shape": [1, 8, 8], "channel_conversion": "RGB to grey",
                            "resize_factor": 0.2}
    assert sum(w.startswith("input mismatch") for w in res["warnings"]) == 2
    assert any("converted (RGB to grey)" in r for r in res["verdict"]["reasons"])
    assert "balanced training set" in printed and "rho" not in printed and "tail" not in printed
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert {r["group"] for r in rows} == {""}
    # a gate on the tail of a balanced set is refused before any work
    out2 = tmp_path / "tail"
    rc = cli.main(["audit", str(DEMO), "--dataset", "imagefolder", "--data-root", str(root), "--out", str(out2),
                   "--fail-under", "tail=0.2", *FAST])
    assert rc == 2 and "balanced" in capsys.readouterr().err and not out2.exists()


def test_input_info_thresholds():
    assert input_warnings(input_info([3, 32, 32], [3, 128, 128])) == []  # 4x exactly is fine
    assert len(input_warnings(input_info([3, 32, 32], [3, 224, 224]))) == 1
    assert input_info([1, 28, 28], [3, 28, 28]).channel_conversion == "grey to RGB"


def test_digits_results_keep_groups_and_rho(demo):
    _, res = demo
    assert res["dataset"]["balanced"] is False and res["dataset"]["imbalance"] == 0.01
    assert res["input"]["channel_conversion"] is None and res["input"]["resize_factor"] == 1.0
    assert [g for g in ("head", "medium", "tail") if res["dataset"]["groups"].get(g)] == ["head", "medium", "tail"]


# -- robustness curve -----------------------------------------------------------------------------------------

def test_eps_curve_is_monotone_and_matches_single_budget_runs(tmp_path):
    args = ["--steps", "5", "--quiet", "--no-html", "--no-pdf"]
    base = ["audit", str(DEMO), "--n-per-class", "20", *args]
    assert cli.main([*base, "--eps", "0.1,0.03,0.05", "--out", str(tmp_path / "curve")]) == 0
    curve_res = json.loads((tmp_path / "curve" / "results.json").read_text())
    curve = curve_res["curve"]
    assert [c["eps_text"] for c in curve] == ["0.03", "0.05", "0.1"]
    assert curve_res["threat_model"]["eps"] == 0.1 and curve_res["config"]["eps_curve"] == ["0.03", "0.05", "0.1"]
    for a, b in zip(curve, curve[1:]):
        assert b["overall"] <= a["overall"] and b["balanced"] <= a["balanced"]
        assert all(y <= x for x, y in zip(a["per_class"], b["per_class"]))
        assert b["points_run"] < a["points_run"]  # broken points are not attacked again
    last = curve[-1]
    wc = curve_res["summary"]["robust"]["worst_case"]
    assert last["overall"] == wc["overall"] and last["balanced"] == wc["mean"]
    assert last["per_class"] == [pc["robust_acc"]["worst_case"] for pc in curve_res["per_class"]]
    assert set(last["groups"]) == {"head", "medium", "tail"}
    singles = {}
    for eps in ("0.03", "0.1"):
        assert cli.main([*base, "--eps", eps, "--out", str(tmp_path / eps)]) == 0
        singles[eps] = json.loads((tmp_path / eps / "results.json").read_text())
    # the smallest budget runs on every point with the same batches and seeds: identical
    assert curve[0]["per_class"] == [pc["robust_acc"]["worst_case"] for pc in singles["0.03"]["per_class"]]
    # per-point seeding: a point attacked at the largest budget gets the same random start as in a single run,
    # so the curve can only differ where a smaller budget broke a point that a fresh attack would miss
    def robust(folder: Path) -> np.ndarray:
        pts = json.loads((folder / "points.json").read_text())
        ok = np.array(pts["clean_pred"]) == np.array(pts["label"])
        for a in pts["attacks"].values():
            ok &= np.array(a["step"]) < 0
        return ok

    assert not (robust(tmp_path / "curve") & ~robust(tmp_path / "0.1")).any()  # never more optimistic
    assert last["per_class"] == [pc["robust_acc"]["worst_case"] for pc in singles["0.1"]["per_class"]]
    assert curve_res["summary"]["clean"] == singles["0.1"]["summary"]["clean"]
    assert curve_res["summary"]["robust"]["worst_case"] == singles["0.1"]["summary"]["robust"]["worst_case"]
    assert "curve" not in singles["0.1"]
    md = (tmp_path / "curve" / "summary.md").read_text()
    assert "| 0.03 |" in md and "Robustness curve" in md
    from audit.contract.schema import validate_results

    validate_results(curve_res)  # curve, verdict and input are in audit/contract/results.schema.json
    bad = json.loads(json.dumps(curve_res))
    bad["curve"][0]["per_class"][0] = 1.5
    with pytest.raises(Exception, match="curve"):
        validate_results(bad)


def test_eps_list_refuses_duplicates(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # refused by the parser, before anything runs
        audit(tmp_path / "d", "--eps", "0.1,1/10")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "twice" in err and err.count("\n") == 1, err
    assert not (tmp_path / "d").exists()


# -- repair: the gate judges the after-audit; --labels survives fine-tuning and export ---------------------

def test_repair_with_labels_and_gate_on_the_after_audit(tmp_path, capsys):
    model = _permuted_demo(tmp_path / "perm.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(p) for p in PERM) + "\n")
    out = tmp_path / "repair"
    rc = cli.main(["repair", str(model), "--labels", str(labels), "--epochs", "1", "--batch-size-train", "32",
                   "--n-per-class", "10", "--steps", "3", "--eps", "0.1", "--fail-under", "clean=0.5,robust=99%",
                   "--out", str(out), "--quiet", "--no-html", "--no-pdf"])
    err = capsys.readouterr().err
    assert rc == 3
    lines = [ln for ln in err.splitlines() if ln.startswith("tailaudit: gate failed")]
    assert len(lines) == 1 and "robust" in lines[0]
    before = json.loads((out / "before" / "results.json").read_text())
    after = json.loads((out / "after" / "results.json").read_text())
    assert "gate" not in before and after["gate"]["passed"] is False
    assert [c["passed"] for c in after["gate"]["conditions"]] == [True, False]
    # the labels apply before and after: no permutation suspected, accuracy of the working model
    for res in (before, after):
        assert "label_check" not in res and res["summary"]["clean"]["overall"] > 0.6
        assert res["verdict"]["code"] != "not-meaningful"
    assert (out / "repaired.onnx").exists() and (out / "after" / "per_class.csv").exists()


def test_weight_norms_follow_the_labels_order(tmp_path):
    """The classifier's weight rows are in the model's output order; results list them by dataset class."""
    from audit.config import AuditConfig
    from tailaudit import run_audit

    model = _permuted_demo(tmp_path / "perm.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(p) for p in PERM) + "\n")
    common = dict(dataset="digitslt", n_per_class=2, steps=1, eps=0.1, quiet=True)
    plain = run_audit(AuditConfig(model=str(DEMO), out=str(tmp_path / "a"), **common)).results
    fixed = run_audit(AuditConfig(model=str(model), labels=str(labels), out=str(tmp_path / "b"), **common)).results
    norms = [r.weight_norm for r in plain.per_class]
    assert None not in norms and len(set(norms)) == 10
    assert [r.weight_norm for r in fixed.per_class] == pytest.approx(norms, rel=1e-6)


def test_label_check_names_real_outputs_when_a_wrong_labels_order_was_applied():
    from audit.checks.labels import check_label_order

    names = [str(c) for c in range(10)]
    wrong = [(c + 3) % 10 for c in range(10)]  # a --labels order that is not the model's: column c = output wrong[c]
    conf = np.zeros((10, 10), dtype=np.int64)
    for t in range(10):
        column = wrong.index(PERM.index(t))  # the model answers class t with output PERM.index(t)
        conf[t, column] = 45
        conf[t, (column + 1) % 10] = 5
    lc = check_label_order(conf, names, wrong)
    assert lc.accuracy_mapped == pytest.approx(0.9)
    # output o was taken to mean the class the wrong --labels order gave it, not names[o]
    assert [(m.output, m.class_name, m.assumed) for m in lc.mapping] == [(o, str(PERM[o]), names[wrong.index(o)])
                                                                          for o in range(10)]
    # a chance-level model on few points is not flagged by luck
    rng = np.random.default_rng(0)
    noise = np.zeros((10, 10), dtype=np.int64)
    np.add.at(noise, (rng.integers(0, 10, 50), rng.integers(0, 10, 50)), 1)
    assert check_label_order(noise, names) is None
