"""The one verdict: every code on small fixtures, and a chance-level model that is never graded."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
from torch import nn

import cli
from audit.data import class_groups, groups_to_indices
from audit.metrics import cross_class_summary
from audit.contract.figures import wilson_interval
from audit.contract.model import CODES, LABELS, AuditResults, Verdict
from audit.checks.verdict import BANDS, band, compute_verdict as _compute_verdict, prediction_collapse
from audit.contract.figures import repair_command

GRADES = [LABELS[c] for c in CODES if c != "not-meaningful"]  # "Robust", "Partly robust", ...


def fixture(clean: Sequence[float], robust: Sequence[float], counts: Sequence[int] | None = None, n: int = 100,
            confusion: list[list[int]] | None = None) -> dict:
    """A minimal results dict with per-class clean/robust accuracy (n test points per class)."""
    C = len(clean)
    counts = list(counts) if counts is not None else [int(1000 * 0.01 ** (i / (C - 1))) for i in range(C)]
    group_of = class_groups(counts)
    groups = groups_to_indices(group_of)
    ck = [round(a * n) for a in clean]
    rk = [round(a * n) for a in robust]
    ca, ra = np.array(ck) / n, np.array(rk) / n
    summary = {"clean": cross_class_summary(ca, sum(ck), C * n, counts, groups),
               "robust": {"worst_case": cross_class_summary(ra, sum(rk), C * n, counts, groups)}}

    def gap(s: dict):
        g = s.get("groups") or {}
        return g["head"] - g["tail"] if g.get("head") is not None and g.get("tail") is not None else None

    summary["head_tail_gap"] = {"clean": gap(summary["clean"]), "worst_case": gap(summary["robust"]["worst_case"])}
    if confusion is None:  # correct answers on the diagonal, the rest spread evenly
        confusion = [[ck[t] if p == t
                      else (n - ck[t]) // (C - 1) + (1 if p == (t + 1) % C and (n - ck[t]) % (C - 1) else 0)
                      for p in range(C)] for t in range(C)]
    summary["clean_confusion"] = confusion
    per_class = [{"index": i, "name": f"c{i}", "train_count": counts[i], "group": group_of[i], "n_eval": n,
                  "clean_acc": ca[i], "clean_ci95": list(wilson_interval(ck[i], n)),
                  "robust_acc": {"worst_case": ra[i]}, "robust_ci95": {"worst_case": list(wilson_interval(rk[i], n))}}
                 for i in range(C)]
    return {"schema_version": 1, "model": {"spec": "m.onnx"}, "config": {}, "mode": "cascade", "attacks": [],
            "dataset": {"name": "digitslt", "classes": [f"c{i}" for i in range(C)], "n_eval": C * n,
                        "groups": groups, "train_counts": counts},
            "threat_model": {"norm": "linf", "eps": 8 / 255, "eps_text": "8/255"},
            "summary": summary, "per_class": per_class, "warnings": []}


def compute_verdict(document: dict) -> Verdict:
    """The verdict of a fixture document, read as the typed results an audit holds."""
    return _compute_verdict(AuditResults.from_json(document))


@pytest.mark.parametrize("robust,code", [(0.85, "robust"), (0.6, "partly-robust"), (0.3, "weakly-robust"),
                                         (0.1, "not-robust")])
def test_each_band(robust, code):
    v = compute_verdict(fixture([0.95] * 9, [robust] * 9))
    assert v.code == code and v.band == code and v.qualifier is None
    assert v.headline.startswith(LABELS[code] + ":")
    assert v.reasons and v.actions
    assert any("--suite standard" in a for a in v.actions)
    standard = fixture([0.95] * 9, [robust] * 9)
    standard["suite"] = "standard"  # already the strong suite: no advice to run it
    assert not any("--suite standard" in a for a in compute_verdict(standard).actions)
    assert (code == "robust") != any(a.startswith("Repair it") for a in v.actions)
    assert not any("cli.py" in a for a in v.actions)  # plain words: the command is on the method page
    assert repair_command(AuditResults.from_json(fixture([0.95] * 9, [robust] * 9))) == \
        "python cli.py repair m.onnx --dataset digitslt --eps 8/255"


def test_band_thresholds_are_the_documented_shares():
    assert [t for t, _ in BANDS] == [0.8, 0.5, 0.2, 0.0]
    assert band(0.8, 1.0) == "robust" and band(0.7999, 1.0) == "partly-robust"
    assert band(0.5, 1.0) == "partly-robust" and band(0.2, 1.0) == "weakly-robust" and band(0.19, 1.0) == "not-robust"


def test_rare_classes_lagging_downgrade_robust_to_partly_and_name_classes_to_collect():
    robust = [0.95, 0.95, 0.95, 0.85, 0.85, 0.85, 0.72, 0.70, 0.66]  # ~85% of clean overall, tail 20 points down
    v = compute_verdict(fixture([1.0] * 9, robust))
    assert v.band == "robust" and v.code == "partly-robust" and v.qualifier == "rare classes"
    assert v.headline.startswith("Partly robust: 83.1% (95% interval 80.5–85.4%) of the test images stay correct "
                                 "under attack")
    assert "graded one step down because the rare classes are much weaker (tail 69.3% vs head 95.0%)" in v.headline
    assert any("tail" in r and "points below" in r for r in v.reasons)
    assert any(a.startswith("Collect more training images for “c8” and “c7”") for a in v.actions)


def test_chance_level_accuracy_is_not_meaningful_and_says_what_to_check():
    v = compute_verdict(fixture([0.12] * 10, [0.12] * 10))
    assert v.code == "not-meaningful" and v.band is None
    assert "not clearly above chance" in v.headline and "10.0% for 10 classes" in v.headline
    for what in ("label order", "dataset", "preprocessing", "weights"):
        assert what in v.headline
    assert not any(g in v.headline for g in GRADES)
    assert any("--labels" in a for a in v.actions)


def test_clearly_above_chance_is_graded():
    # 10 classes: the interval must start above 10% + 0.1 * 90% = 19%
    assert compute_verdict(fixture([0.25] * 10, [0.15] * 10)).code == "partly-robust"  # starts at 22.4%
    assert compute_verdict(fixture([0.2] * 10, [0.15] * 10)).code == "not-meaningful"  # starts at 17.6%
    # two classes: the floor is 55%
    assert compute_verdict(fixture([0.6] * 2, [0.5] * 2, counts=[100, 10], n=500)).code == "robust"
    assert compute_verdict(fixture([0.56] * 2, [0.5] * 2, counts=[100, 10], n=500)).code == "not-meaningful"


def test_collapse_onto_one_class_is_not_meaningful():
    C = 10
    conf = [[0] * C for _ in range(C)]
    for t in range(C):  # 60% of every class predicted as class 3, the rest right
        conf[t][3] += 60
        conf[t][t] += 40
    v = compute_verdict(fixture([0.4] * C, [0.3] * C, confusion=conf))
    assert v.code == "not-meaningful" and "collapse" in v.headline and "“c3”" in v.headline
    assert prediction_collapse(conf) is not None


def test_collapse_onto_a_few_classes_and_a_healthy_spread():
    C = 12
    few = [[0] * C for _ in range(C)]
    for t in range(C):
        few[t][t % 3] = 50  # everything lands in classes 0-2
    assert "3 of the 12 classes" in prediction_collapse(few)
    healthy = [[40 if p == t else (10 if p == (t + 1) % C else 0) for p in range(C)] for t in range(C)]
    assert prediction_collapse(healthy) is None


def test_label_check_makes_it_not_meaningful_with_the_mapping():
    res = fixture([0.6] * 10, [0.3] * 10)
    res["label_check"] = {"suspected": True, "accuracy_now": 0.6, "accuracy_mapped": 0.9,
                          "mapping": [{"output": i, "class": f"c{(i + 1) % 10}"} for i in range(10)]}
    v = compute_verdict(res)
    assert v.code == "not-meaningful" and v.headline.startswith("No robustness grade: the label order looks permuted")
    assert any("c1, c2, c3" in a for a in v.actions)


def test_input_mismatch_is_a_reason():
    res = fixture([0.9] * 9, [0.8] * 9)
    res["input"] = {"data_shape": [3, 32, 32], "model_shape": [1, 8, 8], "channel_conversion": "RGB to grey",
                    "resize_factor": 0.25}
    v = compute_verdict(res)
    assert any("converted (RGB to grey)" in r for r in v.reasons)
    res["input"]["resize_factor"] = 0.2
    assert any("resized by a factor 0.2" in r for r in compute_verdict(res).reasons)


def test_balanced_training_set_has_no_rare_class_qualifier():
    res = fixture([1.0] * 9, [0.95, 0.95, 0.95, 0.85, 0.85, 0.85, 0.72, 0.70, 0.66], counts=[500] * 9)
    assert res["dataset"]["groups"] == {} and res["summary"]["head_tail_gap"]["worst_case"] is None
    v = compute_verdict(res)
    assert v.code == "robust" and not any("tail" in r for r in v.reasons)


# -- end to end: a constant model is never graded -------------------------------------------------

def _constant_onnx(path: Path) -> Path:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([3.0] + [0.0] * 9))
    torch.onnx.export(net.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})
    return path


def test_constant_model_is_not_meaningful_and_the_cli_gives_no_grade(tmp_path, capsys):
    model = _constant_onnx(tmp_path / "const.onnx")
    out = tmp_path / "run"
    args = ["audit", str(model), "--n-per-class", "20", "--steps", "2", "--eps", "0.1", "--out", str(out), "--quiet",
            "--no-html", "--no-pdf"]
    assert cli.main(args) == 4 and not out.exists()  # the clean check stops it before any attack
    err = capsys.readouterr().err
    assert "cannot be graded" in err and "100% of all clean predictions" in err and "--force" in err
    rc = cli.main(args + ["--force"])
    printed = capsys.readouterr().out
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    v = Verdict.from_json(res["verdict"])
    assert v.code == "not-meaningful"
    assert res["summary"]["clean"]["overall"] == pytest.approx(0.1)
    assert any("collapse" in r and "100% of all clean predictions" in r for r in v.reasons)
    assert "verdict: not-meaningful: No robustness grade" in printed
    for grade in GRADES:
        assert grade not in printed, grade
        assert grade not in (out / "summary.md").read_text(), grade


def test_verdict_is_a_typed_value_with_one_json_form():


    v = compute_verdict(fixture([1.0] * 9, [0.9] * 8 + [0.2]))
    assert isinstance(v, Verdict) and Verdict.from_json(v.to_json()) == v
    assert "label" not in v.to_json() and v.label == LABELS[v.code]  # the label is derived, not stored twice
    old_style = {**v.to_json(), "label": "anything an older file wrote"}
    assert Verdict.from_json(old_style) == v
    with pytest.raises(ValueError, match="not one of"):
        Verdict(code="excellent", headline="h")


@pytest.mark.parametrize("clean,robust", [
    ([1.0] * 9, [0.95, 0.95, 0.95, 0.85, 0.85, 0.85, 0.72, 0.70, 0.66]),  # robust band, lowered for rare classes
    ([0.9] * 9, [0.5] * 9),  # partly, no qualifier
    ([0.9] * 9, [0.6, 0.6, 0.6, 0.3, 0.3, 0.3, 0.05, 0.05, 0.05]),  # weakly, rare classes weakest
    ([0.9] * 9, [0.1] * 9),  # not robust
])
def test_headline_has_one_grade_and_leads_with_robust_accuracy(clean, robust):
    """Badge and headline are one statement: the headline starts with the code's own label, then the robust
    accuracy itself (not the share kept), and names no other grade."""
    v = compute_verdict(fixture(clean, robust))
    wc = AuditResults.from_json(fixture(clean, robust)).worst_case.headline
    lo, hi = wilson_interval(round(wc * 900), 900)
    assert v.headline.startswith(f"{v.label}: {100 * wc:.1f}% (95% interval {100 * lo:.1f}–{100 * hi:.1f}%) of the "
                                 "test images stay correct under attack")
    others = [label for code, label in LABELS.items() if code != v.code and label not in v.label]
    assert not any(o in v.headline for o in others), v.headline
    assert v.statement == v.headline[len(v.label) + 2:] and not v.statement.startswith(v.label)
    assert v.headline.index("stay correct") < v.headline.index("of its correct answers")
