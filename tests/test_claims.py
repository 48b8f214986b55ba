"""Page 1, the terminal and summary.md are no more certain than their evidence (issue 28): intervals where a figure
or a ranking is claimed, black-box figures as upper bounds, no grade from blind attacks, sampled counts never stated
as the model's."""
from __future__ import annotations

import html as htmllib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import cli
from audit.exports import summary_markdown
from audit.metrics import cross_class_summary
from audit.contract.figures import wilson_interval
from audit.contract.schema import migrate
from audit.summary import format_summary
from audit.checks.verdict import compute_verdict, grade_on_load
from audit.contract.figures import points_to_separate, ranking_sentences
from report_fixtures import make_results, typed, with_computed_verdict, write_run
from tailaudit.api import report_renderer as render_report  # with the audit's grader, as tailaudit renders
from support import DEMO


def _page1(pdf: Path) -> str:
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", "-f", "1", "-l", "1", str(pdf), "-"], capture_output=True,
                         text=True, check=True)
    return " ".join(out.stdout.split())


def _twenty_per_class(robust: list[float]) -> dict:
    """A CIFAR-10 results file with 20 test images per class and these worst-case robust accuracies."""
    res = make_results(10, n_per_class=20, seed=3)
    for row, p in zip(res["per_class"], robust):
        k = round(p * 20)
        row["robust_acc"].update({"pgd": k / 20, "temp-pgd": k / 20, "worst_case": k / 20})
        row["robust_ci95"].update({n: list(wilson_interval(k, 20)) for n in ("pgd", "temp-pgd", "worst_case")})
    d = res["dataset"]
    acc = [round(p * 20) / 20 for p in robust]
    node = cross_class_summary(np.asarray(acc), round(sum(acc) * 20), 200, d["train_counts"], d["groups"])
    res["summary"]["robust"] = {n: node for n in ("pgd", "temp-pgd", "worst_case")}
    res["summary"]["head_tail_gap"]["worst_case"] = node["groups"]["head"] - node["groups"]["tail"]
    return with_computed_verdict(res)


# -- item 1: intervals where the claim is made ----------------------------------------------------------------

def test_overlapping_weakest_classes_are_grouped_with_the_sample_size_that_would_separate_them():
    res = typed(_twenty_per_class([0.6, 0.55, 0.10, 0.0, 0.05, 0.5, 0.6, 0.65, 0.7, 0.5]))
    text = " ".join(ranking_sentences(res))
    assert "“cat”, “deer” and “bird” cannot be told apart at 20 test images per class" in text
    n = points_to_separate(0.0, 0.05, start=21)
    assert n is not None and n > 20 and f"--n-per-class {n:,}" in text
    # the suggested count separates the two when the rates hold, one fewer does not
    assert wilson_interval(0, n)[1] < wilson_interval(round(0.05 * n), n)[0]
    assert not wilson_interval(0, n - 1)[1] < wilson_interval(round(0.05 * (n - 1)), n - 1)[0]
    md = summary_markdown(res)
    assert "cannot be told apart at 20 test images per class" in md and "| 95% interval |" in md
    term = format_summary(res)
    assert "note: “cat”, “deer” and “bird” cannot be told apart" in term
    assert re.search(r"worst case \d+\.\d% \(95% interval \d+\.\d–\d+\.\d%\)", term)


def test_a_weakest_class_that_stands_apart_is_not_grouped_and_equal_rates_are_never_ranked():
    apart = typed(_twenty_per_class([0.9, 0.9, 0.9, 0.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]))
    assert ranking_sentences(apart) == []
    tied = typed(_twenty_per_class([0.9, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]))
    assert "no sample size would rank them" in " ".join(ranking_sentences(tied))
    zeros = typed(_twenty_per_class([0.05, 0.6, 0.0, 0.0, 0.0, 0.6, 0.6, 0.6, 0.6, 0.6]))
    v = compute_verdict(zeros)  # five classes the intervals cannot rank: none is named "the weakest class"
    assert ("the weakest classes “bird”, “cat”, “deer” and “airplane” keep only 0.0%–5.0%"
            in v.headline), v.headline
    assert not any("the weakest class “" in r for r in v.reasons)
    assert any("“bird”, “cat”, “deer” and “airplane”" in a for a in v.actions)


def test_page1_of_a_20_per_class_audit_carries_the_headline_interval_and_the_grouping(tmp_path):
    res = _twenty_per_class([0.6, 0.55, 0.10, 0.0, 0.05, 0.5, 0.6, 0.65, 0.7, 0.5])
    files = render_report(write_run(tmp_path, res), tmp_path, formats=["pdf"])
    page1 = _page1(files["pdf"])
    wc = res["summary"]["robust"]["worst_case"]["overall"]
    lo, hi = wilson_interval(round(wc * 200), 200)
    assert f"{100 * wc:.1f}% (95% interval {100 * lo:.1f}–{100 * hi:.1f}%)" in page1
    assert "cannot be told apart at 20 test images per class" in page1 and "--n-per-class" in page1


# -- item 5: counts that are true ---------------------------------------------------------------------------------

def test_sampled_counts_are_never_the_models_and_given_counts_are(tmp_path):
    sampled = typed(with_computed_verdict(make_results(10)))  # imbalance recorded: tailaudit's sampling profile
    term = format_summary(sampled)
    assert "train*" in term and "not the model's training counts" in term and "--class-counts" in term
    assert "not the model's" in summary_markdown(sampled)
    given = make_results(10)
    given["dataset"]["imbalance"] = None  # counts given with --class-counts
    given = typed(with_computed_verdict(given))
    assert "train*" not in format_summary(given) and "not the model's" not in summary_markdown(given)


# -- item 3: black-box is an upper bound --------------------------------------------------------------------------

def _older_black_box_file() -> dict:
    """A results.json as tailaudit wrote a --black-box audit before this change: suite "quick", a plain grade."""
    res = with_computed_verdict(make_results(10))
    res["attacks"] = [dict(res["attacks"][0], kind="square", name="square", display_name="Square", queries=5000,
                           steps=None)]
    for row in res["per_class"]:
        row["robust_acc"] = {"square": row["robust_acc"]["worst_case"], "worst_case": row["robust_acc"]["worst_case"]}
        row["robust_ci95"] = {"square": row["robust_ci95"]["worst_case"],
                              "worst_case": row["robust_ci95"]["worst_case"]}
        row["broken_by"] = {"square": 1}
    s = res["summary"]["robust"]
    res["summary"]["robust"] = {"square": s["worst_case"], "worst_case": s["worst_case"]}
    res.update(suite="quick", mode_label="black-box (upper bound)", config={"black_box": True},
               suite_note="quick suite (PGD + Temperature-PGD): confirm the figures with --suite standard")
    return res


def test_older_black_box_files_are_read_as_upper_bounds(tmp_path):
    old = _older_black_box_file()
    assert old["verdict"].get("upper_bound") is None
    res = grade_on_load(migrate(old))
    assert res.suite == "black-box" and res.black_box_reason == "asked for with --black-box"
    assert res.verdict.upper_bound and res.verdict.label.startswith("At most ")
    assert res.verdict.computed_on_load and "at most" in res.verdict.headline
    assert not any("--suite standard" in a or "REAT" in a for a in res.verdict.actions)
    files = render_report(write_run(tmp_path, old), tmp_path, formats=["pdf"])
    page1 = _page1(files["pdf"])
    assert "(upper bound)" in page1 and "at most" in page1
    assert "black-box (asked for with --black-box)" in page1
    assert "could not be attacked with gradients" not in page1 and "quick suite" not in page1


# -- item 4: no grade from attacks that could not work --------------------------------------------------------------

def _rounded_demo(path: Path) -> Path:
    """The demo CNN behind 8-bit input rounding (Mul 255 -> Round -> Div 255), as quantised deployments export it."""
    m = onnx.load(str(DEMO))
    g = m.graph
    x = g.input[0].name
    for node in g.node:
        node.input[:] = ["rounded" if i == x else i for i in node.input]
    g.initializer.append(numpy_helper.from_array(np.array(255.0, np.float32), "k255"))
    nodes = [helper.make_node("Mul", [x, "k255"], ["scaled"]), helper.make_node("Round", ["scaled"], ["rnd"]),
             helper.make_node("Div", ["rnd", "k255"], ["rounded"]), *g.node]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def test_blind_gradient_attacks_give_no_grade(tmp_path, capsys):
    model = _rounded_demo(tmp_path / "rounded.onnx")
    out = tmp_path / "run"
    assert cli.main(["audit", str(model), "--dataset", "digitslt", "--n-per-class", "4", "--out", str(out),
                     "--quiet", "--no-html", "--no-pdf"]) == 0
    res = json.loads((out / "results.json").read_text())
    zero = res["sanity"]["zero_gradient"]["per_attack"]["pgd"]["points"]
    assert zero > 0.5 * res["timings"]["attacked_points"]["pgd"]  # the fixture is what it claims to be
    v = res["verdict"]
    assert v["code"] == "not-graded" and "exactly zero" in v["headline"]
    assert any("--suite standard" in a for a in v["actions"])
    assert "verdict: not-graded" in capsys.readouterr().out


def test_a_failed_large_radius_check_gives_no_grade():
    res = make_results(10)
    res["sanity"] = {"zero_gradient": {"per_attack": {}, "flagged_classes": []},
                     "square_only": {"attacks": [], "points": 0, "per_class": [0] * 10, "classes": [],
                                     "checked": False},
                     "randomised": {"points": 0, "per_class": [0] * 10, "classes": [], "max_abs_logit_diff": 0.0},
                     "large_eps": {"norm": "linf", "eps": 0.5, "n": 80, "robust_acc": 0.7, "robust_per_class": [7] * 10,
                                   "classes": ["cat"], "passed": False}, "passed": False}
    v = compute_verdict(typed(res))
    assert v.code == "not-graded" and not v.graded and "do not work on this model" in v.headline
    res["sanity"]["large_eps"]["passed"] = True
    assert compute_verdict(typed(res)).graded


# -- item 6: the smaller defects, read in the rendered report ------------------------------------------------------

def _visible(html: str) -> str:
    body = re.sub(r"<style.*?</style>|<svg.*?</svg>", " ", html, flags=re.S)
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def _defects_run() -> dict:
    """An absolute model path and data root inside the working folder, ε = 0.1, a three-attack cascade where only
    Temperature-PGD broke anything beyond PGD (one image), the quick suite's note."""
    res = make_results(10)
    res["threat_model"] = {"norm": "linf", "eps": 0.1, "eps_text": "0.1"}
    res["model"]["spec"] = str(Path.cwd() / "models" / "resnet_4b.onnx")
    res["config"] = {"data_root": str(Path.cwd() / "data" / "cifar")}
    res["attacks"].append({"name": "square", "kind": "square", "display_name": "Square", "queries": 5000})
    res["suite"], res["mode_label"] = "quick", "white-box"
    res["suite_note"] = ("quick suite (PGD + Temperature-PGD): a fast audit, not AutoAttack-level; confirm the "
                         "figures with --suite standard")
    for row in res["per_class"]:
        pgd = row["robust_acc"]["pgd"]
        worst = pgd - (1 / row["n_eval"] if row["index"] == 0 else 0)
        row["robust_acc"].update({"temp-pgd": worst, "square": worst, "worst_case": worst})
        row["robust_ci95"]["square"] = row["robust_ci95"]["temp-pgd"]
        row["broken_by"] = {"pgd": row["broken_by"]["pgd"], "temp-pgd": int(row["index"] == 0), "square": 0}
    res["summary"]["robust"]["square"] = res["summary"]["robust"]["temp-pgd"]
    return with_computed_verdict(res)


def test_smaller_defects_in_the_rendered_report(tmp_path):
    res = _defects_run()
    files = render_report(write_run(tmp_path, res), tmp_path, formats=["html"])
    html = files["html"].read_text(encoding="utf-8")
    text = _visible(html)
    assert "Temperature-PGD broke 1 test image that PGD missed" in text  # singular, and only the attack that did
    assert "Square broke" not in text and "and Square broke" not in text
    assert "too small for a person to notice" not in text  # ε = 0.1 is 10% of the brightness range
    assert "changes of up to 10% of the brightness range per pixel" in text
    assert "--suite standard. Data:" in text  # the suite note ends with a full stop
    title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
    assert title.strip() == "Robustness audit: resnet_4b.onnx" and str(Path.cwd()) not in title
    assert "resnet_4b.onnx on digitslt" in text and str(Path.cwd() / "models") in text  # the path: method page
    page1 = text[:text.index("Key figures")]
    assert "cli.py" not in page1 and "Repair it with adversarial fine-tuning" in page1  # plain words on page 1
    method = text[text.index("To repair this model"):]
    assert "python cli.py repair models/resnet_4b.onnx --dataset digitslt --data-root data/cifar" in method
    assert str(Path.cwd()) not in method.split("Model")[0]
    weakest = min(res["per_class"], key=lambda r: (r["robust_acc"]["worst_case"], r["index"]))
    line = page1[page1.index(f"“{weakest['name']}” :"):]
    line = line[:line.index(".", line.index("—"))]
    clean = f"{100 * weakest['clean_acc']:.1f}%"
    assert line.count(clean) <= 1, line  # a bullet does not repeat its own figure


# -- item 7: first use --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_pretrained_offline_is_one_line_at_once(tmp_path, monkeypatch, capsys, how):
    """No network and no cached weights: one error line within seconds, no hub retry warnings (they took a minute)."""
    import time

    from huggingface_hub import constants

    from audit.models import timm_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(timm_model, "HUB_URL", "http://127.0.0.1:9")  # a closed port: refused at once
    import timm

    start = time.perf_counter()
    with pytest.raises(Exception) as info:
        timm_model._hub_model(timm, "resnet18", 1000)
    took = time.perf_counter() - start
    assert took < 10, took
    assert "not in the local cache" in str(info.value) and "--checkpoint FILE" in str(info.value)
    err = capsys.readouterr().err
    assert "Retrying" not in err and "huggingface" not in err.lower()


def test_one_broken_image_is_singular():
    from reports.plain import _flow_text

    assert _flow_text(([1], 1, 1), ["a", "b"]) == "of its 1 broken image, attacks turn 1 into “b”"
    assert _flow_text(([1], 2, 3), ["a", "b"]) == "of its 3 broken images, attacks turn 2 into “b”"


def test_model_comparison_carries_intervals_and_never_ranks_an_upper_bound_as_a_grade():
    from reports.models_view import models_context

    white = typed(with_computed_verdict(make_results(10, seed=1)))
    black = grade_on_load(migrate(_older_black_box_file()))
    ctx = models_context([white, black], [Path("a"), Path("b")])
    n = white.dataset.n_eval
    lo, hi = wilson_interval(round(white.worst_case.headline * n), n)
    assert ctx["models"][0]["robust_ci"] == f"{100 * lo:.1f}–{100 * hi:.1f}"
    assert "95% interval" in ctx["models"][0]["worst"]
    assert ctx["models"][1]["verdict"]["label"].startswith("At most ")
    assert any("upper bounds" in s and "b" in s for s in ctx["ranking"])


def test_help_is_grouped_and_complete(capsys):
    from audit.attacks import SUITES

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    audit_help = sub.choices["audit"].format_help()
    heads = [h for h in ("model:", "data:", "threat model:", "attacks:", "outputs:", "run:")]
    assert [audit_help.index("\n" + h) for h in heads] == sorted(audit_help.index("\n" + h) for h in heads)
    for action in sub.choices["audit"]._actions:  # every option says what it does
        if action.option_strings and action.help != cli.argparse.SUPPRESS:
            assert action.help, action.option_strings
    probe = next(o for k, o in SUITES.get("standard").attacks if k == "square")["probe"]
    assert f"standard suite {probe};" in " ".join(audit_help.split())
    assert "MiSLAS" in parser.format_help() and "ResLT" in parser.format_help()
    assert "cifar10lt" in " ".join(audit_help.split()).split("--class-counts CLASS_COUNTS ")[1][:200]
    with pytest.raises(SystemExit) as info:
        cli.main(["dataset", "digitslt", "--dataset", "cifar10lt"])  # one way to name the dataset
    assert info.value.code == 2 and "--dataset" in capsys.readouterr().err
