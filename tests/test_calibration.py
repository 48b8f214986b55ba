"""Class-wise calibration, clean and under attack (audit/calibration.py, docs/method.md "Calibration").

The figures in results.json are re-computed here independently from points.json; ECE is checked on
hand-made inputs; the attacked-confidence procedure is deterministic and independent of batch size,
order and sharding; reports show reliability diagrams for a real audit and a 100-class fixture, and
results written before calibration existed still render without the section.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import cli
from audit import calibration as cal
from audit.attacks import create_attack, make_spec
from audit.run.engine import Evaluator
from audit.errors import ConfigError, ResultsError
from audit.exports import per_class_csv, summary_markdown
from audit.run.merge import concat_records
from audit.contract.figures import wilson_interval
from audit.contract.schema import load_results, migrate, validate_results
from audit.checks.verdict import compute_verdict, grade_on_load
from report_fixtures import make_results, write_run
from tailaudit.api import report_renderer as render_report  # with the audit's grader, as tailaudit renders
from support import DEMO, OLDER_RESULTS
from test_report_pages import visible_text

RELIABILITY = 'aria-label="Reliability diagrams, clean and under attack"'


# ------------------------------------------------------------------ an independent re-computation

def _ece_by_hand(conf: list[float], correct: list[bool], bins: int = 15) -> float | None:
    """MiSLAS's loop: bins (lower, upper] over linspace(0, 1, bins + 1), a confidence of 0 in the first bin."""
    if not conf:
        return None
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for b in range(bins):
        inside = [i for i, c in enumerate(conf) if (edges[b] < c <= edges[b + 1]) or (b == 0 and c == 0)]
        if inside:
            acc = sum(correct[i] for i in inside) / len(inside)
            mean = sum(conf[i] for i in inside) / len(inside)
            total += len(inside) / len(conf) * abs(acc - mean)
    return total


def _figures_by_hand(conf: list[float], correct: list[bool]) -> dict:
    n = len(conf)
    wrong = [c for c, ok in zip(conf, correct) if not ok]
    out = {"n": n, "ece": _ece_by_hand(conf, correct),
           "accuracy": sum(correct) / n if n else None, "mean_confidence": sum(conf) / n if n else None,
           "over_confidence": sum(wrong) / len(wrong) if wrong else None, "n_wrong": len(wrong)}
    for t in (0.5, 0.9):
        k = sum(1 for c, ok in zip(conf, correct) if not ok and c > t)
        out[f"confident_error_{round(100 * t)}"] = {"k": k, "rate": k / n if n else None,
                                                    "ci95": list(wilson_interval(k, n))}
    return out


def _close(a, b, path="") -> None:
    if isinstance(b, dict):
        for key, value in b.items():
            _close(a[key], value, f"{path}.{key}")
    elif isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif b is None or a is None:
        assert a is None and b is None, path
    else:
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)


def test_every_figure_matches_a_recomputation_from_points_json(tiny_audit):
    out, results = tiny_audit
    points = json.loads((out / "points.json").read_text())
    c = points["calibration"]
    labels, clean_pred = points["label"], points["clean_pred"]
    # the attacked prediction is the cascade's: the first attack that broke the point, else the clean prediction
    expected = []
    for i in range(len(labels)):
        broke = [a["pred"][i] for a in points["attacks"].values() if a["step"][i] >= 0]
        expected.append(broke[0] if broke else clean_pred[i])
    assert c["attacked_pred"] == expected
    proc = results["summary"]["calibration"]["procedure"]
    assert proc["steps"] == 20 and proc["bins"] == 15 and proc["attacked"] and proc["random_start"] is False
    assert proc["step_size"] == pytest.approx(2.5 * results["threat_model"]["eps"] / 20)
    for side, pred, conf in (("clean", clean_pred, c["clean_conf"]),
                             ("attacked", c["attacked_pred"], c["attacked_conf"])):
        assert all(0.0 <= v <= 1.0 for v in conf)
        ok = [p == y for p, y in zip(pred, labels)]
        summary = results["summary"]["calibration"][side]
        _close(summary, _figures_by_hand(conf, ok), side)
        for row in results["per_class"]:
            k = row["index"]
            mine = [i for i, y in enumerate(labels) if y == k]
            said = [i for i, p in enumerate(pred) if p == k]
            want = _figures_by_hand([conf[i] for i in mine], [ok[i] for i in mine])
            want["ece_by_pred"] = _ece_by_hand([conf[i] for i in said], [ok[i] for i in said])
            want["n_pred"] = len(said)
            _close(row["calibration"][side], want, f"{side}[{k}]")
        for g, members in results["dataset"]["groups"].items():
            inside = [i for i, y in enumerate(labels) if y in members]
            _close(summary["groups"][g], _figures_by_hand([conf[i] for i in inside], [ok[i] for i in inside]), g)
            rel = summary["reliability"]["groups"][g]
            assert sum(rel["count"]) == len(inside) and len(rel["count"]) == 15
    # the cascade-missed count is the flipped points, all of which the cascade left robust
    flipped = [i for i, f in enumerate(c["flipped"]) if f]
    assert results["summary"]["calibration"]["cascade_missed"] == len(flipped)
    assert all(expected[i] == labels[i] == clean_pred[i] for i in flipped)
    assert results["timings"]["calibration_s"] >= 0


# ------------------------------------------------------------------ ECE on hand-made inputs

def test_ece_of_perfectly_calibrated_and_known_inputs():
    # perfectly calibrated: in each bin the accuracy equals the confidence
    conf = np.array([0.8] * 10 + [0.3] * 10)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 3 + [0] * 7, bool)
    assert cal.ece(conf, correct) == pytest.approx(0.0, abs=1e-12)
    # always sure, right 70% of the time: the gap is 0.3
    assert cal.ece(np.ones(10), np.arange(10) < 7) == pytest.approx(0.3)
    # two bins: 4 points at 0.95 (3 right) and 6 at 0.55 (all wrong) -> 0.4 * 0.2 + 0.6 * 0.55
    conf = np.array([0.95] * 4 + [0.55] * 6)
    correct = np.array([1, 1, 1, 0] + [0] * 6, bool)
    assert cal.ece(conf, correct) == pytest.approx(0.4 * 0.2 + 0.6 * 0.55)
    assert cal.ece(np.array([]), np.array([], bool)) is None
    # bins are (b/15, (b+1)/15]: an edge value belongs to the lower bin, 0 to the first
    assert cal.bin_index(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 0.5, 1.0])).tolist() == [0, 0, 1, 7, 14]
    rel = cal.reliability(conf, correct)
    assert rel["count"][14] == 4 and rel["accuracy"][14] == pytest.approx(0.75) and rel["accuracy"][0] is None
    rng = np.random.default_rng(0)
    c, ok = rng.uniform(0, 1, 300), rng.uniform(0, 1, 300) < 0.6
    assert cal.ece(c, ok) == pytest.approx(_ece_by_hand(c.tolist(), ok.tolist()))


def test_confident_errors_and_their_intervals():
    conf = np.array([0.95, 0.95, 0.6, 0.4, 0.99])
    correct = np.array([False, True, False, False, True])
    b = cal.block(conf, correct)
    assert b["n_wrong"] == 3 and b["over_confidence"] == pytest.approx((0.95 + 0.6 + 0.4) / 3)
    assert b["confident_error_50"]["k"] == 2 and b["confident_error_50"]["rate"] == pytest.approx(0.4)
    assert b["confident_error_90"]["k"] == 1 and b["confident_error_90"]["ci95"] == list(wilson_interval(1, 5))
    empty = cal.block(np.array([]), np.array([], bool))
    assert empty["ece"] is None and empty["over_confidence"] is None and empty["confident_error_90"]["rate"] is None


# ------------------------------------------------------------------ the procedure under attack

def _setup(n=40, seed=5):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(n, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 1) % 10  # clean mistakes
    return model, x, y, torch.arange(300, 300 + n)


def _run(model, x, y, ids, batch, *, steps=10, eps=0.01, cascade_steps=2):
    ev = Evaluator(model, 10, x.shape[1:], torch.device("cpu"))
    batches = lambda: [(x[i:i + batch], y[i:i + batch], ids[i:i + batch]) for i in range(0, len(y), batch)]  # noqa
    attack = create_attack(make_spec("pgd", "linf", eps, steps=cascade_steps, step_size=eps / 4))
    records = ev.cascade(batches(), [attack], n_total=len(y), seed=0)
    return cal.confidence_pass(ev, batches(), records, steps=steps, norm="linf", eps=eps)


def test_procedure_is_deterministic_and_independent_of_batch_size_order_and_sharding():
    model, x, y, ids = _setup()
    ref = _run(model, x, y, ids, 40)
    again = _run(model, x, y, ids, 40)
    assert np.array_equal(ref.cal_attacked_conf, again.cal_attacked_conf)  # no randomness at all
    broken = ref.broken().any(0)
    assert 0 < int(broken.sum()) < int(ref.clean_correct.sum())  # informative: broken and robust points
    for batch in (1, 7):
        rec = _run(model, x, y, ids, batch)
        assert np.allclose(rec.cal_attacked_conf, ref.cal_attacked_conf, atol=1e-6)
        assert np.allclose(rec.cal_clean_conf, ref.cal_clean_conf, atol=1e-6)
        for f in ("cal_attacked_pred", "cal_flipped", "cal_unreached"):
            assert np.array_equal(getattr(rec, f), getattr(ref, f)), f
    a, b = _run(model, x[:13], y[:13], ids[:13], 5), _run(model, x[13:], y[13:], ids[13:], 9)
    joined = concat_records([a, b], examples_per_class=2)  # how torchrun's shards are joined (audit/run/merge.py)
    assert np.allclose(joined.cal_attacked_conf, ref.cal_attacked_conf, atol=1e-6)
    assert np.array_equal(joined.cal_attacked_pred, ref.cal_attacked_pred)
    r = torch.arange(len(y) - 1, -1, -1)
    rev = _run(model, x[r], y[r], ids[r], 11)
    assert np.allclose(rev.cal_attacked_conf[::-1], ref.cal_attacked_conf, atol=1e-6)
    # what each kind of point gets: robust points only lose confidence (the clean image is a candidate), clean
    # mistakes only gain it, broken points are pushed to the cascade's class
    robust = ref.clean_correct & ~broken
    assert np.all(ref.cal_attacked_conf[robust] <= ref.cal_clean_conf[robust] + 1e-6)
    assert np.all(ref.cal_attacked_pred[robust] == ref.label[robust])
    mistakes = ~ref.clean_correct
    assert np.all(ref.cal_attacked_conf[mistakes] >= ref.cal_clean_conf[mistakes] - 1e-6)
    assert np.all(ref.cal_attacked_pred[broken] != ref.label[broken])
    assert not ref.cal_flipped[~robust].any() and not ref.cal_unreached[robust].any()
    # with the model's own logits: a reached broken point's confidence is its max softmax somewhere in the ball
    reached = broken & ~ref.cal_unreached
    assert np.all(ref.cal_attacked_conf[reached] > 1.0 / 10 - 1e-6)


def test_steps_zero_measures_clean_calibration_only():
    model, x, y, ids = _setup(n=12)
    rec = _run(model, x, y, ids, 12, steps=0)
    assert rec.cal_attacked_conf is None and rec.cal_attacked_pred is None
    with torch.no_grad():
        want = torch.softmax(model(x), 1).amax(1).numpy()
    assert np.allclose(rec.cal_clean_conf, want, atol=1e-6)
    per_class, summary, warnings = cal.calibration_results(rec, 10, {}, cal.procedure(0, "linf", 0.01, False, "x"))
    assert summary["attacked"] is None and all(r["attacked"] is None for r in per_class) and not warnings


def test_points_the_cascade_missed_are_counted_and_named():
    model, x, y, ids = _setup(n=40)
    rec = _run(model, x, y, ids, 40, steps=40, eps=0.03, cascade_steps=1)  # a 1-step cascade misses points
    assert rec.cal_flipped.any()
    names = [f"c{i}" for i in range(10)]
    _, summary, warnings = cal.calibration_results(rec, 10, {}, cal.procedure(40, "linf", 0.03, True), names)
    assert summary["cascade_missed"] == int(rec.cal_flipped.sum())
    assert len(warnings) == 1 and "the cascade missed them" in warnings[0] and "“c" in warnings[0]


def test_calibration_steps_flag_is_bounded(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["audit", str(DEMO), "--calibration-steps", "-1"])
    args = cli.build_parser().parse_args(["audit", str(DEMO), "--calibration-steps", "0"])
    assert cli._audit_config(args).calibration_steps == 0
    from audit.config import AuditConfig

    with pytest.raises(ConfigError, match="--calibration-steps"):
        AuditConfig(model=str(DEMO), calibration_steps=-3).validate()


# ------------------------------------------------------------------ synthetic results with calibration

def with_calibration(results: dict, seed: int = 0, shift: float = 0.0) -> dict:
    """Add per-class and summary calibration computed by the audit's own code from synthetic points that
    agree with the fixture's accuracies (tail classes over-confident under attack)."""
    rng = np.random.default_rng(seed)
    C = len(results["per_class"])
    label, clean_pred, att_pred, clean_conf, att_conf = [], [], [], [], []
    for r in results["per_class"]:
        n, c = r["n_eval"], r["index"]
        k_clean, k_rob = round(r["clean_acc"] * n), round(r["robust_acc"]["worst_case"] * n)
        rare = c / max(1, C - 1)
        for i in range(n):
            label.append(c)
            clean_pred.append(c if i < k_clean else (c + 1) % C)
            att_pred.append(c if i < k_rob else (c + 1) % C)
            clean_conf.append(float(np.clip(rng.normal(0.8 if i < k_clean else 0.55, 0.1), 0.11, 1.0)))
            att_conf.append(float(np.clip(rng.normal(0.6 if i < k_rob else 0.7 + 0.25 * rare - shift, 0.08),
                                          0.11, 1.0)))
    rec = SimpleNamespace(label=np.array(label), clean_pred=np.array(clean_pred),
                          cal_clean_conf=np.array(clean_conf), cal_attacked_pred=np.array(att_pred),
                          cal_attacked_conf=np.array(att_conf), cal_flipped=np.zeros(len(label), bool),
                          cal_unreached=np.zeros(len(label), bool))
    proc = cal.procedure(20, "linf", results["threat_model"]["eps"], True)
    per_class, summary, _ = cal.calibration_results(rec, C, results["dataset"]["groups"], proc,
                                                    results["dataset"]["classes"])
    for row, entry in zip(results["per_class"], per_class):
        row["calibration"] = json.loads(json.dumps(entry))
    results["summary"]["calibration"] = json.loads(json.dumps(summary))
    return results


def test_schema_accepts_calibration_and_refuses_a_damaged_figure():
    results = with_calibration(make_results(10))
    validate_results(results)
    bad = copy.deepcopy(results)
    bad["per_class"][3]["calibration"]["attacked"]["ece"] = 1.5
    with pytest.raises(ResultsError, match=r"per_class\[3\]\.calibration"):
        validate_results(bad)
    bad = copy.deepcopy(results)
    bad["summary"]["calibration"]["clean"]["reliability"]["overall"]["count"][0] = -1
    with pytest.raises(ResultsError, match="summary.calibration"):
        validate_results(bad)


def test_verdict_names_rare_classes_confidently_wrong_under_attack():
    results = with_calibration(make_results(10))
    att = results["summary"]["calibration"]["attacked"]["groups"]
    assert att["tail"]["confident_error_90"]["rate"] >= cal.RARE_CONFIDENT > att["head"]["confident_error_90"]["rate"]
    v = compute_verdict(migrate(results))
    assert any("tail-class test images are wrong with a confidence above 0.9" in r for r in v.reasons)
    assert any("--smoothing label-aware" in a for a in v.actions)
    calm = with_calibration(make_results(10), shift=0.6)  # nobody confidently wrong: no reason, no action
    assert cal.rare_confidently_wrong(migrate(calm)) is None
    assert not any("confidence above 0.9" in r for r in compute_verdict(migrate(calm)).reasons)
    assert compute_verdict(migrate(calm)).code == v.code  # it never changes the grade
    old = make_results(10)
    assert cal.rare_confidently_wrong(migrate(old)) is None


def test_exports_carry_calibration_only_when_measured():
    results = with_calibration(make_results(10))
    csv_text = per_class_csv(migrate(results))
    head = csv_text.splitlines()[0].split(",")
    assert "attacked_confident_error_90" in head and "clean_ece" in head
    row = dict(zip(head, csv_text.splitlines()[1].split(",")))
    assert float(row["attacked_ece"]) == pytest.approx(results["per_class"][0]["calibration"]["attacked"]["ece"],
                                                       rel=1e-5)
    md = summary_markdown(grade_on_load(migrate(results)))
    assert "Calibration" in md and "tail classes wrong with confidence \\> 0.9" in md and "lower bound" in md
    plain = make_results(10)
    assert "clean_ece" not in per_class_csv(migrate(plain))
    assert "Calibration" not in summary_markdown(grade_on_load(migrate(plain)))


# ------------------------------------------------------------------ reports

def test_reports_show_reliability_diagrams(tiny_audit, tmp_path):
    out, results = tiny_audit
    folder = tmp_path / "demo"
    shutil.copytree(out, folder)
    files = render_report(folder / "results.json", folder, formats=("html", "pdf"))
    html = files["html"].read_text(encoding="utf-8")
    assert RELIABILITY in html
    text = visible_text(html)
    assert "Calibration: how much the confidence can be trusted" in text
    assert "of the tail-class test images are wrong with a confidence above 0.9" in text
    assert "lower bound" in text
    from test_reports import pdf_text

    pdf = pdf_text(files["pdf"])
    assert "Calibration: how much the confidence can be trusted" in pdf and "wrong under attack with confidence" in pdf
    # 100 classes, names escaped in the per-class calibration table
    big = with_calibration(make_results(100, class_names=[f"<b>c{i}</b>" for i in range(100)]))
    path = write_run(tmp_path / "big", big)
    html = render_report(path, tmp_path / "big", formats=("html",))["html"].read_text(encoding="utf-8")
    assert RELIABILITY in html and "<b>c7</b>" not in html and "&lt;b&gt;c7&lt;/b&gt;" in html
    assert visible_text(html).count("Per class") >= 1


def test_results_without_calibration_still_render(tmp_path):
    older = sorted(OLDER_RESULTS.glob("audit-*.json"))[-1]
    raw = json.loads(older.read_text())
    assert "calibration" not in raw["summary"]
    files = render_report(older, tmp_path / "old", formats=("html",))
    html = files["html"].read_text(encoding="utf-8")
    assert "Reliability diagrams" not in html and "Calibration:" not in visible_text(html)
    # a repair report whose before run predates calibration: the after run's figures, n/a before
    before = load_results(older).to_json()  # the file as this version writes it
    after = with_calibration(copy.deepcopy(before))
    pb, pa = write_run(tmp_path / "r" / "before", before, examples=False), write_run(tmp_path / "r" / "after", after,
                                                                                        examples=False)
    (tmp_path / "r" / "repair.json").write_text(json.dumps({"method": "reat"}))  # a repair run's folder
    html = render_report(pb, tmp_path / "r", formats=("html",), compare=pa)["html"].read_text(encoding="utf-8")
    text = visible_text(html)
    assert "Calibration before and after" in text and "The before run has no calibration figures" in text
    assert 'aria-label="Reliability diagrams before and after"' in html


def test_repair_report_compares_calibration(tmp_path):
    before = with_calibration(make_results(10), seed=1)
    after = with_calibration(make_results(10, robust_shift=0.1), seed=2, shift=0.3)
    pb, pa = write_run(tmp_path / "before", before), write_run(tmp_path / "after", after)
    (tmp_path / "repair.json").write_text(json.dumps({"method": "reat"}))  # a repair run's folder
    html = render_report(pb, tmp_path, formats=("html",), compare=pa)["html"].read_text(encoding="utf-8")
    text = visible_text(html)
    g = before["summary"]["calibration"]["attacked"]["groups"]["tail"]["confident_error_90"]["rate"]
    g2 = after["summary"]["calibration"]["attacked"]["groups"]["tail"]["confident_error_90"]["rate"]
    assert f"Tail classes wrong with confidence > 0.9, under attack {100 * g:.1f}% {100 * g2:.1f}%" in text
