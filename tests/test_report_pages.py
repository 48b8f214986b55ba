"""Reports for people who never open a terminal: page 1 in plain words, the results' own verdict (no grade
for a not-meaningful model), balanced training sets, the robustness curve, the repair's training section
after `report --compare`, and the chart defects of issue 8 (palette, value labels, fitted axes, empty charts,
threat text, footer names).

Each report is rendered once per module and checked in HTML, in pdftotext output and in headless Chromium.
"""
from __future__ import annotations

import copy
import html as htmllib
import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest

import cli
from audit.contract.figures import wilson_interval
from audit.contract.model import AuditResults
from audit.contract.schema import migrate
from audit.contract.codec import from_json
from audit.checks.verdict import compute_verdict, grade_on_load
from audit.contract.repair import Evaluation
from audit.version import __version__
from report_fixtures import (CIFAR10, make_balanced, make_curve, make_results, typed, with_computed_verdict,
                             with_verdict, write_run)
from reports import charts
from tailaudit.api import report_renderer as render_report  # with the audit's grader, as tailaudit renders
from reports.charts import _count_label
from reports.fmt import pct
from reports.plain import at_risk, resolve_verdict
from reports.render import source_names
from reports.verdict import weakest
from reports.svg import AFTER, BEFORE, CLEAN, GROUP_COLOURS, OTHER_GROUP, ROBUST
from test_reports import browser, open_in_browser, pdf_text  # noqa: F401  (browser is a fixture)

GRADES = ("Robust overall", "Partly robust", "Weakly robust", "Not robust", "Robust at 80%", "rare classes weakest")
ACTIONS = ["Repair the model: python cli.py repair examples/digits_cnn.onnx --dataset digitslt",
           "Collect more training images for “ship” and “truck”.",
           "Confirm with the standard attack suite before release."]
HEADLINE = "Partly robust: 38% of the test images survive the attack; the rare classes are the weak ones."
STATEMENT = HEADLINE[len("Partly robust: "):]  # beside the badge, the headline's grade is not repeated


def page_text(pdf: Path, first: int, last: int | None = None) -> str:
    """pdftotext of pages first..last, whitespace collapsed."""
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", "-f", str(first), "-l", str(last or first), str(pdf), "-"],
                         capture_output=True, text=True, check=True)
    return " ".join(out.stdout.split())


def visible_text(html: str) -> str:
    """The document's text without markup, style and SVG (what a reader sees, charts aside)."""
    body = re.sub(r"<style.*?</style>|<svg.*?</svg>", " ", html, flags=re.S)
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def svg_of(html: str, label: str) -> str | None:
    m = re.search(r'<svg[^>]*aria-label="' + re.escape(label) + r'".*?</svg>', html, re.S)
    return m.group(0) if m else None


def svg_texts(svg: str) -> list[str]:
    return [htmllib.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def negative_ticks(svg: str) -> list[str]:
    return [t for t in svg_texts(svg) if re.fullmatch(r"[-−]\d+(\.\d+)?%?", t)]


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """An audit with every new key: verdict, input mismatch, gate, curve."""
    folder = tmp_path_factory.mktemp("full")
    results = make_curve(make_results(10, eps_text="8/255"))
    with_verdict(results, "partly-robust", HEADLINE, reasons=["The 3 rarest classes are 31 points less robust."],
                 actions=ACTIONS)
    results["input"] = {"data_shape": [3, 32, 32], "model_shape": [1, 8, 8], "channel_conversion": "RGB to grey",
                        "resize_factor": 0.25 / 1.1}
    results["warnings"].append("input mismatch: RGB images converted to grey for a 1-channel model")
    results["gate"] = {"conditions": [{"key": "robust", "threshold": 0.5, "value": 0.384, "passed": False},
                                      {"key": "clean", "threshold": 0.7, "value": 0.844, "passed": True},
                                      {"key": "max-gap", "threshold": 0.2, "value": 0.313, "passed": False}],
                       "passed": False}
    path = write_run(folder, results)
    return {"results": results, "files": render_report(path, folder)}


@pytest.fixture(scope="module")
def chance(tmp_path_factory):
    """A chance-level model with a permuted label order: not meaningful, no grade anywhere."""
    folder = tmp_path_factory.mktemp("chance")
    results = make_results(10, clean_shift=-0.85, robust_shift=-0.5)
    classes = results["dataset"]["classes"]
    with_verdict(results, "not-meaningful",
                 "Not meaningful: clean accuracy 9.8% is not clearly above chance (10.0%); check the label order.",
                 reasons=["clean accuracy is within the 95% interval of chance"],
                 actions=["Check the model's label order (pass --labels FILE).",
                          "Check the dataset, the preprocessing (--mean/--std) and the weights."])
    results["label_check"] = {"suspected": True, "accuracy_now": 0.098, "accuracy_mapped": 0.912,
                              "mapping": [{"output": i, "class": classes[(i + 1) % 10]} for i in range(10)]}
    path = write_run(folder, results)
    return {"results": results, "files": render_report(path, folder)}


@pytest.fixture(scope="module")
def repair_folder(tmp_path_factory):
    """A repair run's folder (before/, after/, training_log.json, repair.json) re-rendered by `report --compare`."""
    folder = tmp_path_factory.mktemp("repair")
    before = make_results(10)
    after = make_results(10, seed=1, robust_shift=0.08, clean_shift=-0.03, model_spec="runs/repair/repaired.onnx",
                         sha256="cd34" * 16)
    for results in (before, after):  # one class at 0 before and after: its bars must still carry "0"
        row = results["per_class"][9]
        row["robust_acc"] = {k: 0.0 for k in row["robust_acc"]}
        row["robust_ci95"] = {k: [0.0, 0.07] for k in row["robust_ci95"]}
    write_run(folder / "before", before)
    write_run(folder / "after", after)
    counts = before["dataset"]["train_counts"]
    val = [c // 10 for c in counts]
    val[9] = 0  # the rarest class gave no validation image
    epochs = [{"epoch": 0, "loss": None, "lr": None, "val_clean_acc": 0.6, "val_robust_acc": 0.3, "time_s": 1.0}] + [
        {"epoch": e, "loss": 2.0 / e, "val_clean_acc": 0.6 + 0.02 * e, "val_robust_acc": 0.3 + 0.01 * e,
         "lr": 0.01 * 0.8 ** e, "time_s": 12.5} for e in range(1, 6)]
    log = {"method": "reat", "tail_penalty": "pairwise", "n_train": 9000, "n_val": sum(val), "best_epoch": 4,
           "selection": "best epoch by val_robust_acc (class-balanced PGD accuracy on the held-out validation split)",
           "train_counts_split": [c - v for c, v in zip(counts, val)], "epochs": epochs, "warnings": []}
    summary = {"method": "reat", "description": "RBL loss with a tail feature penalty", "tail_penalty": "pairwise",
               "best_epoch": 4, "epochs": 5,
               "config": {"method": "reat", "epochs": 5, "lr": 0.01, "batch_size": 128, "schedule": "cosine",
                          "train_steps": 10, "train_eps": None,
                          "resolved": {"train_eps": 8 / 255, "train_step_size": 2 / 255}},
               "split": {"n_train": 9000, "n_val": sum(val), "train_counts": log["train_counts_split"],
                         "val_counts": val},
               "timings": {"fine_tune_s": 62.5, "resumed": False},
               "environment": {"device": "cpu", "device_name": "cpu"}}
    (folder / "training_log.json").write_text(json.dumps(log), encoding="utf-8")
    (folder / "repair.json").write_text(json.dumps(summary), encoding="utf-8")
    assert cli.main(["report", str(folder / "before" / "results.json"), "--compare",
                     str(folder / "after" / "results.json"), "--out", str(folder)]) == 0
    return {"folder": folder, "before": before, "after": after, "log": log, "summary": summary,
            "html": folder / "report.html", "pdf": folder / "report.pdf"}


# ----------------------------------------------------------------------------------------- page 1

def test_page1_answers_in_plain_words(full):
    results, files = full["results"], full["files"]
    page1 = page_text(files["pdf"], 1)
    for needle in ["Partly robust " + STATEMENT, "What this means", "Partly robust",
                   "Repair the model: python cli.py repair", *ACTIONS[1:],
                   "What to do next",
                   "Classes at risk, and why", "The 3 rarest classes are 31 points less robust",
                   # the critical warning, on page 1
                   "Check before trusting these figures", "Input mismatch: colour channels converted", "RGB to grey",
                   "Input mismatch: images resized a lot", "shrunk 4.4×",
                   # the gate
                   "CI gate: FAILED (2 of 3 conditions)", "at least 50.0%", "38.4%", "at most 20.0 points",
                   "every pixel may change by at most 3.1%"]:
        assert needle in page1, needle
    for needle in ["Words used in this report", "Clean accuracy share of test images",
                   "Robust accuracy share of test images still", "Attack budget (ε) how much the attacker may change",
                   "Worst case a test image counts", "Head / medium / tail classes grouped", "Interval the range"]:
        assert needle in page1, needle
    weakest = sorted(results["per_class"], key=lambda r: (r["robust_acc"]["worst_case"], r["index"]))[0]
    assert f"“{weakest['name']}”: {pct(weakest['robust_acc']['worst_case'])} robust" in page1
    # the fixture's counts are tailaudit's sampling profile (no --class-counts): never stated as the model's
    assert "tail of tailaudit's sampled profile" in page1 and "--class-counts" in page1
    assert not re.search(r"\d training images?", page1) and "rare: " not in page1
    wc_ci = [round(100 * v, 1) for v in weakest["robust_ci95"]["worst_case"]]
    joined = re.sub(r"–\s+", "–", page1)  # a line may break after the dash
    assert f"(95% interval {wc_ci[0]:.1f}–{wc_ci[1]:.1f}%)" in joined  # the weakest class with its interval
    whole = page_text(files["pdf"], 1, 3)
    assert whole.index("Words used in this report") < whole.index("Key figures") < whole.index("Findings in detail")


def test_one_verdict_from_results(full, tmp_path):
    html = full["files"]["html"].read_text(encoding="utf-8")
    text = visible_text(html)
    assert text.count(STATEMENT) == 1 and text.count("Partly robust") == 1  # one grade on the page
    # the band rule of older reports would call this run "Weakly robust": the report shows the results' verdict only
    assert "Weakly robust" not in text and 'class="badge fair"' in html
    unstored = make_results(10)  # a file from before stored verdicts: graded once, on load, by audit/checks/verdict.py
    old = resolve_verdict(grade_on_load(migrate(unstored)))
    assert old["code"] == compute_verdict(AuditResults.from_json(unstored)).code
    assert old["computed_on_load"] == __version__
    assert old["actions"] and "verdict" not in unstored  # the caller's dict is not changed
    text = visible_text(render_report(unstored, tmp_path / "old", formats=["html"])["html"].read_text(encoding="utf-8"))
    assert text.count(old["headline"]) == 1 and "predates stored verdicts" in text
    robust = with_verdict(make_results(10), "robust", "Robust: most correct answers survive.", actions=["Keep it."])
    text = visible_text(render_report(robust, tmp_path, formats=["html"])["html"].read_text(encoding="utf-8"))
    assert "Robust most correct answers survive." in text and "Weakest classes, and why" in text
    assert "Classes at risk" not in text and "predates stored verdicts" not in text


def test_robustness_curve_chart_and_table(full, chance):
    html = full["files"]["html"].read_text(encoding="utf-8")
    svg = svg_of(html, "Robust accuracy against the attack budget")
    assert svg is not None
    labels = svg_texts(svg)
    for needle in ["1/255", "2/255", "4/255", "8/255", "overall", "balanced", "head", "tail"]:
        assert needle in labels, needle
    curve = full["results"]["curve"]
    text = page_text(full["files"]["pdf"], 1, 9)
    assert "Robustness against the attack budget" in text
    assert all(pct(c["overall"]) in text for c in curve)
    no_curve = chance["files"]["html"].read_text(encoding="utf-8")
    assert svg_of(no_curve, "Robust accuracy against the attack budget") is None
    assert "Robustness against the attack budget" not in no_curve


def test_threat_text_once_and_footer(full, tmp_path):
    html = full["files"]["html"].read_text(encoding="utf-8")
    text = visible_text(html)
    assert "L∞, ε = 8/255 (0.03137)" in text and "(ε =" not in text
    assert "Generated by tailaudit from results.json." in text
    plain = make_results(10)
    plain["threat_model"] = {"norm": "linf", "eps": 0.1, "eps_text": "0.1"}
    out = visible_text(render_report(plain, tmp_path, formats=["html"])["html"].read_text(encoding="utf-8"))
    assert "Threat model: L∞, ε = 0.1" in out and "ε = 0.1 (" not in out and "(ε =" not in out
    assert source_names(["/r/run/before/results.json", "/r/run/after/results.json"]) == \
        "before/results.json (before) and after/results.json (after)"
    assert source_names(["/a/x/results.json", "/b/x/results.json"]) == "a/x/results.json (before) and " \
                                                                       "b/x/results.json (after)"


# ----------------------------------------------------------------------------------------- no grade

def test_not_meaningful_shows_no_grade(chance):
    html = chance["files"]["html"].read_text(encoding="utf-8")
    text = visible_text(html)
    pdf = pdf_text(chance["files"]["pdf"])
    for where in (text, pdf):
        for grade in GRADES:
            assert grade not in where, grade
        assert "Result not meaningful" in where and "not clearly above chance" in where
        assert "No robustness grade is given for this run" in where
    assert not re.search(r'class="badge (good|fair|poor|bad)"', html)
    assert "Classes at risk" not in text  # no ranking of classes of a model that does not work
    # pages 2+: no figure that reads as a finding (gap card, group and rarity charts, findings sentences)
    assert "robustness gap" not in text and " pts" not in text and "No findings: the model does not work" in text
    assert svg_of(html, "Robust accuracy against training count") is None and "Are the rare classes" not in text
    page1 = page_text(chance["files"]["pdf"], 1)
    for needle in ["The label order looks wrong", "9.8%", "91.2%", "--labels FILE", "Check the model's label order"]:
        assert needle in page1, needle
    # the mapping: model output 0 seems to mean "automobile", not "airplane"
    assert re.search(r'<td class="num">0</td><td class="name">airplane</td>\s*<td class="name"><strong>automobile',
                     html)


# ----------------------------------------------------------------------------------------- balanced

def test_balanced_training_set_has_no_groups(tmp_path):
    results = make_balanced(make_results(10))
    with_verdict(results, "partly-robust", "Partly robust: 38% of the test images survive the attack.",
                 actions=["Repair the model."])
    html = render_report(results, tmp_path, formats=["html"])["html"].read_text(encoding="utf-8")
    text = visible_text(html)
    assert "the training set is balanced" in text
    assert not re.search(r"\b(head|medium|tail|rarest|imbalance|rho)\b", text, re.I), \
        re.search(r".{40}\b(head|medium|tail|rarest|imbalance|rho)\b.{40}", text, re.I).group(0)
    assert "ρ" not in text and "Are the rare classes the weak ones" not in text
    assert svg_of(html, "Mean clean and robust accuracy per group") is None
    assert svg_of(html, "Robust accuracy against training count") is None
    per_class = svg_of(html, "Per-class clean and robust accuracy, ordered by training count")
    assert per_class is not None and "training" not in " ".join(svg_texts(per_class))  # no count strip
    assert "None" not in text
    after = make_balanced(make_results(10, seed=1, robust_shift=0.1))
    html = render_report(results, tmp_path / "c", compare=after, formats=["html"])["html"].read_text(encoding="utf-8")
    text = visible_text(html)
    assert "The training set is balanced" in text and "None" not in text
    assert not re.search(r"\b(head|medium|tail|rarest|imbalance|rho)\b", text, re.I), \
        re.search(r".{40}\b(head|medium|tail|rarest|imbalance|rho)\b.{40}", text, re.I).group(0)
    assert svg_of(html, "Change per group") is None and "ρ" not in text


# ----------------------------------------------------------------------------------------- repair training section

def test_repair_section_survives_report_compare(repair_folder):
    html = repair_folder["html"].read_text(encoding="utf-8")
    text = visible_text(html)
    for needle in ["Training: what the repair did", "reat — RBL loss with a tail feature penalty", "5 epochs",
                   "0.01, cosine schedule", "chosen epoch", "best epoch by val_robust_acc", "1 min 2 s", "cpu",
                   "PGD, 10 steps, ε = 8/255, step 2/255", "validation images",
                   "1 class has no images in the validation split (“truck”)"]:
        assert needle in text, needle
    assert svg_of(html, "Training curves") is not None
    page1 = page_text(repair_folder["pdf"], 1)
    assert "What was done: Repaired with reat for 5 epochs at learning rate 0.01; epoch 4 was kept" in page1
    assert "fine-tuning took 1 min 2 s on cpu" in page1
    assert "Some rare classes could not be checked separately" in page1 and "“truck” had too few training" in page1
    assert "before/results.json (before) and after/results.json (after)" in pdf_text(repair_folder["pdf"])


@pytest.mark.parametrize("code,label", [("input-kept", "Not improved (input kept)"), ("improved", "Improved")])
def test_repair_outcome_is_page_ones_only_grade(repair_folder, tmp_path, code, label):
    """repair.json's outcome leads page 1 as its one grade; no advice to repair the returned file."""
    folder = tmp_path / "run"
    for sub in ("before", "after"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "results.json").write_text(
            (repair_folder["folder"] / sub / "results.json").read_text(encoding="utf-8"), encoding="utf-8")
    headline = {"input-kept": "Repair did not help, so the input model is returned unchanged: "
                              "<b>nothing</b> qualified.",
                "improved": "Improved: robust accuracy 30.0% → 38.0%."}[code]
    summary = {**repair_folder["summary"], "outcome": {
        "code": code, "headline": headline, "reasons": ["worst-case robust accuracy 30.0% → 38.0%"],
        "actions": ["Try a longer budget (--train-steps-total)"]}}
    (folder / "training_log.json").write_text(json.dumps(repair_folder["log"]), encoding="utf-8")
    (folder / "repair.json").write_text(json.dumps(summary), encoding="utf-8")
    assert cli.main(["report", str(folder / "before" / "results.json"), "--compare",
                     str(folder / "after" / "results.json"), "--out", str(folder)]) == 0
    page1 = page_text(folder / "report.pdf", 1)
    assert f"Repair: {label}" in page1 and headline.replace("<b>", "").replace("</b>", "")[:40] in page1
    html = (folder / "report.html").read_text(encoding="utf-8")
    badges = re.findall(r'<span class="badge[^"]*">([^<]*)</span>', html)
    assert badges[:1] == [f"Repair: {label}"] and not any(b.startswith(("before:", "after:")) for b in badges)
    assert "Repair it with" not in page1 and "cli.py repair" not in page1
    assert "Try a longer budget" in page1
    assert "&lt;b&gt;nothing" in (folder / "report.html").read_text(encoding="utf-8") if code == "input-kept" else True


def test_repair_section_reads_budget_and_selection(repair_folder, tmp_path):
    """The keys the reworked repair writes: budget in optimiser steps, the selection rule and its validation."""
    folder = tmp_path / "run"
    for sub in ("before", "after"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "results.json").write_text(
            (repair_folder["folder"] / sub / "results.json").read_text(encoding="utf-8"), encoding="utf-8")
    log = copy.deepcopy(repair_folder["log"])
    log["budget"] = {"steps_total": 1200, "epochs": 8, "steps_per_epoch": 150, "source": "auto"}
    log["selection"] = {"rule": "Keep the checkpoint with the highest balanced worst-case robust accuracy on the "
                                "validation split.", "metric": "val_balanced_robust_acc", "chosen_epoch": 6,
                        "validation": {"per_class_counts": [50] * 9 + [0], "missing_classes": ["truck"],
                                       "fallback": "the tail classes' training robust accuracy must not fall"}}
    (folder / "training_log.json").write_text(json.dumps(log), encoding="utf-8")
    files = render_report(folder / "before" / "results.json", folder, compare=folder / "after" / "results.json",
                          formats=["html"])
    text = visible_text(files["html"].read_text(encoding="utf-8"))
    for needle in ["1,200 optimiser steps (8 epochs, 150 steps per epoch), chosen automatically from the "
                   "training-set size", "Keep the checkpoint with the highest balanced worst-case robust accuracy",
                   "val_balanced_robust_acc", "epoch 6 was kept",
                   "fallback used: the tail classes' training robust accuracy must not fall"]:
        assert needle in text, needle


def test_no_training_section_without_repair_files(tmp_path):
    b = write_run(tmp_path / "x" / "before", make_results(10), examples=False)
    a = write_run(tmp_path / "y" / "after", make_results(10, seed=1), examples=False)
    html = render_report(b, tmp_path, compare=a, formats=["html"])["html"].read_text(encoding="utf-8")
    assert "Training: what the repair did" not in html and "What was done" not in html


# ----------------------------------------------------------------------------------------- chart defects

def _distance(a: str, b: str) -> float:
    ra, rb = (tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in (a, b))
    return sum((x - y) ** 2 for x, y in zip(ra, rb)) ** 0.5


def test_palette_series_are_distinct():
    """Every pair of colours that can share a chart differs clearly (no two near-identical blues)."""
    together = sorted({CLEAN, ROBUST, BEFORE, AFTER, OTHER_GROUP, *GROUP_COLOURS.values()})
    for a, b in itertools.combinations(together, 2):
        assert _distance(a, b) > 90, (a, b)
    assert _distance("#08519c", "#0072B2") < 90  # the old robust/head pair this test would have caught


def test_before_after_bars_carry_values_including_zero(repair_folder):
    html = repair_folder["html"].read_text(encoding="utf-8")
    before, after = repair_folder["before"], repair_folder["after"]
    svg = svg_of(html, "Per-class robust accuracy before and after")
    labels = svg_texts(svg)
    expected = [f"{r['robust_acc']['worst_case'] * 100:.0f}" for r in before["per_class"] + after["per_class"]]
    value_labels = [t for t in labels if re.fullmatch(r"\d+", t)]
    train_counts = before["dataset"]["train_counts"]
    for tick in {_count_label(min(train_counts)), _count_label(max(train_counts))}:
        if re.fullmatch(r"\d+", tick):
            value_labels.remove(tick)  # the training-count strip's axis
    assert sorted(value_labels) == sorted(expected)  # one label per bar, matching its height
    assert value_labels.count("0") >= 2  # "truck" 0 -> 0 is labelled, not an empty slot
    delta = svg_texts(svg_of(html, "Per-class change in robust and clean accuracy, ordered by training count"))
    assert sum(1 for t in delta if re.fullmatch(r"[+-]\d+\.\d|0", t)) >= 2 * len(before["per_class"])


def test_stronger_attack_labels_match_bar_heights(full):
    html = full["files"]["html"].read_text(encoding="utf-8")
    results = full["results"]
    svg = svg_of(html, "Extra points the later attacks broke, per class")
    labels = [t for t in svg_texts(svg) if re.fullmatch(r"\d+(\.\d)?", t)]
    extra = [round((r["robust_acc"]["pgd"] - r["robust_acc"]["worst_case"]) * r["n_eval"])
             for r in results["per_class"]]
    heights = sorted(f"{e / r['n_eval'] * 100:.1f}" if e else "0" for e, r in zip(extra, results["per_class"]))
    ticks = [t for t in labels if t not in heights]
    assert sorted(t for t in labels if t in heights) == heights, (labels, heights)
    assert all(re.fullmatch(r"\d+", t) for t in ticks)  # the rest are axis ticks


def test_change_axis_fits_the_data():
    up = charts.group_bars("g", ["head (3)", "tail (3)"],
                           [("robust", [2.7, 9.3], ROBUST), ("clean", [1.0, 0.0], CLEAN)],
                           label="up", percent=False)
    assert negative_ticks(str(up)) == [] and "0" in svg_texts(str(up))
    bars = charts.class_bars("b", ["a", "b", "c"], ["head", "medium", "tail"], [500, 50, 5],
                             [("change", [4.0, 0.0, 12.0], ROBUST)], label="bars", percent=False, value_labels="all")
    assert negative_ticks(str(bars)) == [] and {"+4.0", "0", "+12.0"} <= set(svg_texts(str(bars)))
    down = charts.group_bars("d", ["head (3)"], [("robust", [-6.0], ROBUST)], label="down", percent=False)
    assert negative_ticks(str(down))  # negative values do get a negative range


def test_empty_charts_are_not_drawn(tmp_path):
    results = make_results(12)
    for row in results["per_class"]:  # the second attack found nothing
        row["robust_acc"]["worst_case"] = row["robust_acc"]["temp-pgd"] = row["robust_acc"]["pgd"]
    html = render_report(results, tmp_path, formats=["html"])["html"].read_text(encoding="utf-8")
    assert "found no adversarial example that PGD missed" in html
    assert svg_of(html, "Extra points the later attacks broke, per class") is None
    assert "What the stronger attack found" not in html
    figures = re.findall(r"<figure.*?</figure>", html, re.S)
    assert figures and all("<svg" in f for f in figures)
    assert charts.group_bars("e", [], [("x", [], ROBUST)], label="e") is None
    assert charts.class_bars("e", [], [], None, [("x", [], ROBUST)], label="e") is None
    assert charts.training_curves("e", [], label="e") is None
    assert charts.eps_curve("e", ["8/255"], [("overall", [0.3], "#000000", "-")], [], label="e") is None


# ----------------------------------------------------------------------------------------- browser

def test_new_sections_in_chromium(full, repair_folder, chance, browser):  # noqa: F811
    for html, shot, needles in (
            (full["files"]["html"], "report-page1.png",
             ["What to do next", "Classes at risk, and why", "Words used in this report", "CI gate: FAILED",
              "Check before trusting these figures", "Robustness against the attack budget"]),
            (repair_folder["html"], "compare-repair.png",
             ["What was done", "Training: what the repair did", "Classes still at risk, and why"]),
            (chance["files"]["html"], "report-not-meaningful.png",
             ["Result not meaningful", "The label order looks wrong"])):
        info = open_in_browser(browser, html, shot)
        assert info["errors"] == [] and info["requests"] == [] and info["dialogs"] == []
        assert all(w > 50 and h > 50 for w, h in info["boxes"]), info["boxes"]
        for needle in needles:
            assert needle in info["text"], needle
        if shot == "report-not-meaningful.png":
            assert not any(g in info["text"] for g in GRADES)


def test_compare_with_not_meaningful_after_and_escaping(tmp_path):
    """A compare whose after run is not meaningful grades only the before run; every new user string is escaped."""
    xss = "<img src=x onerror=alert(1)>"
    before = with_verdict(make_results(10), "partly-robust", "Partly robust before.", actions=["Repair it."])
    after = make_results(10, seed=2, clean_shift=-0.85, robust_shift=-0.5)
    with_verdict(after, "not-meaningful", f"Not meaningful {xss}", reasons=[f"reason {xss}"], actions=[f"act {xss}"])
    after["label_check"] = {"suspected": True, "accuracy_now": 0.1, "accuracy_mapped": 0.9,
                            "mapping": [{"output": 0, "class": xss}]}
    after["gate"] = {"conditions": [{"key": xss, "threshold": 0.5, "value": 0.1, "passed": False}], "passed": False}
    html = render_report(before, tmp_path, compare=after, formats=["html"],
                         training_log={"method": xss, "selection": {"rule": xss, "chosen_epoch": 1}, "epochs": []},
                         repair={"description": xss})["html"].read_text(encoding="utf-8")
    assert xss not in html and "onerror=alert(1)>" not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 7
    text = visible_text(html)
    assert "before: Partly robust" in text and "after: Result not meaningful" in text
    assert "What changed:" not in text and "Classes still at risk" not in text
    assert "No robustness grade is given for this run" in text
    for grade in ("Robust overall", "Weakly robust", "Not robust"):
        assert grade not in text, grade


def test_suite_sentence_and_gradient_masking_rows():
    from reports.plain import sanity_rows, suite_sentence

    assert "--suite standard" in suite_sentence(typed({**make_results(10), "suite": "quick",
                                                       "suite_note": "Confirm with --suite standard."}))
    black = suite_sentence(typed({**make_results(10), "suite": "custom", "mode_label": "black-box (upper bound)"}))
    assert black.startswith("Attack suite: black-box (") and "upper bound" in black  # migrated: what ran
    assert "could not be attacked with gradients" not in black
    sanity = {"zero_gradient": {"per_attack": {}, "flagged_classes": ["cat"]},
              "square_only": {"attacks": ["square"], "checked": True, "points": 2, "per_class": [], "classes": ["dog"]},
              "randomised": {"points": 0, "per_class": [], "classes": [], "max_abs_logit_diff": 0.0},
              "large_eps": {"norm": "linf", "eps": 0.5, "n": 40, "robust_acc": 0.3, "robust_per_class": [],
                            "passed": False, "classes": ["ship"]}, "passed": False}

    def rows_of(section: dict | None) -> list[dict]:
        return sanity_rows(typed({**make_results(10), "sanity": copy.deepcopy(section)}))

    rows = rows_of(sanity)
    assert [r["ok"] for r in rows] == [False, False, True, False]
    for row, name in zip(rows, ["cat", "dog", None, "ship"]):
        assert name is None or name in row["outcome"]
    assert rows_of(None) == [] and sanity_rows(typed(make_results(10))) == []
    # Square's probe: how many points got the full budget, and where
    sanity["square_only"]["probe"] = {"attack": "square", "probe_queries": 1000, "full_queries": 5000, "attacked": 47,
                                      "full_budget_points": 3, "per_class": [], "classes": ["frog"]}
    probe = [r for r in rows_of(sanity) if "5,000 queries" in r["check"]]
    assert len(probe) == 1 and probe[0]["ok"]
    assert "3 of 47 points" in probe[0]["outcome"] and "frog" in probe[0]["outcome"] and "1,000" in probe[0]["outcome"]
    assert not [r for r in rows_of(sanity) if "rerun" in r["check"]]
    # its reruns on the points the gradients were blind on (zero gradients everywhere)
    sanity["square_only"]["probe"].update(reruns=2, rerun_points=4, rerun_per_class=[], rerun_classes=["cat"])
    rerun = [r for r in rows_of(sanity) if "rerun" in r["check"]]
    assert len(rerun) == 1 and "2 independent" in rerun[0]["check"] and "4 point" in rerun[0]["outcome"]
    assert "cat" in rerun[0]["outcome"]


def test_label_order_box_says_what_the_run_assumed_each_output_meant():
    """After --labels the run took output o to mean the --labels class, not the dataset's class o."""
    from reports.plain import critical_warnings

    results = make_results(3, class_names=["cat", "dog", "frog"])
    results["label_check"] = {
        "suspected": True, "accuracy_now": 0.1, "accuracy_mapped": 0.9,
        "mapping": [{"output": 0, "class": "dog", "assumed": "frog"}, {"output": 1, "class": "frog", "assumed": "cat"},
                    {"output": 2, "class": "cat", "assumed": "cat"}]}
    box = [w for w in critical_warnings(typed(results)) if "label order" in w["title"]][0]
    assert box["mapping"] == [{"output": "0", "class": "dog", "assumed": "frog"},
                              {"output": "1", "class": "frog", "assumed": "cat"}]  # output 2 already meant "cat"
    # results written before "assumed" existed: the dataset order
    for m in results["label_check"]["mapping"]:
        del m["assumed"]
    box = [w for w in critical_warnings(typed(results)) if "label order" in w["title"]][0]
    assert [m["assumed"] for m in box["mapping"]] == ["cat", "dog", "frog"]


def test_attack_labels_name_budgets_and_squares_probe():
    from audit.contract.model import AttackEntry
    from reports.fmt import attack_label

    def label(**entry: object) -> str:
        return attack_label(from_json(AttackEntry, entry))

    assert label(name="pgd", kind="pgd", display_name="PGD", steps=20) == "PGD-20"
    sq = {"name": "square", "kind": "square", "display_name": "Square", "queries": 5000}
    assert label(**sq) == "Square-5000" == label(**sq, probe=0) == label(**sq, probe=5000)
    assert label(**sq, probe=1000) == "Square-5000 (probe 1000)"


# ----------------------------------------------------------------------------------------- page layout

CIFAR100_LIKE = ["aquarium_fish", "sweet_pepper", "willow_tree", "lawn_mower", "pickup_truck", "maple_tree",
                 "oak_tree", "palm_tree", "pine_tree", "streetcar", "sunflower", "telephone", "television",
                 "motorcycle", "mushroom", "caterpillar", "chimpanzee", "cockroach", "crocodile", "dinosaur"]


def as_standard_suite(results: dict) -> dict:
    """The fixture's two attacks replaced by the standard suite's four (APGD-CE → APGD-T → T-PGD → Square), with
    per-class figures that fall monotonically to the worst case, as a cascade's do."""
    from audit.config import AuditConfig

    specs = [s.to_dict() for s in AuditConfig(model="m.onnx", suite="standard").attack_specs()]
    names = [a["name"] for a in specs]
    for r in results["per_class"]:
        n = r["n_eval"]
        clean, worst = round(r["clean_acc"] * n), round(r["robust_acc"]["worst_case"] * n)
        ks = [clean - (clean - worst) * (i + 1) // len(names) for i in range(len(names))]
        r["robust_acc"] = {**{a: k / n for a, k in zip(names, ks)}, "worst_case": worst / n}
        r["robust_ci95"] = {**{a: list(wilson_interval(k, n)) for a, k in zip(names, ks)},
                            "worst_case": list(wilson_interval(worst, n))}
        r["broken_by"] = {a: prev - k for a, prev, k in zip(names, [clean] + ks, ks)}
    s = results["summary"]["robust"]
    results["summary"]["robust"] = {**{a: dict(s["worst_case"]) for a in names}, "worst_case": s["worst_case"]}
    results["attacks"], results["suite"] = specs, "standard"
    return results


def table_overflow(html: str) -> tuple[list[str], int]:
    """WeasyPrint's own layout: tables whose right edge passes the page's content box, and on how many pages the
    per-class table is laid out (a long table continues on the next page)."""
    import weasyprint

    from reports.fetcher import LocalOnlyFetcher
    from reports.render import TEMPLATES

    doc = weasyprint.HTML(string=html, base_url=str(TEMPLATES), url_fetcher=LocalOnlyFetcher(TEMPLATES)).render()

    def boxes(box):
        yield box
        for child in getattr(box, "children", None) or []:
            yield from boxes(child)

    over, pages = [], 0
    for number, page in enumerate(doc.pages, 1):
        root = page._page_box
        right = root.content_box_x() + root.width
        for box in boxes(root):
            if type(box).__name__ == "TableBox":
                if "classes" in (box.element.get("class") or ""):
                    pages += 1
                if box.position_x + box.margin_width() > right + 0.5:
                    over.append(f"page {number}: table.{box.element.get('class')}")
    return over, pages


@pytest.mark.parametrize("n_classes", [10, 100])
def test_per_class_table_fits_the_page_with_the_standard_suite(tmp_path, n_classes):
    names = CIFAR10 if n_classes == 10 else [f"{CIFAR100_LIKE[i % 20]}_{i}" for i in range(n_classes)]
    results = with_computed_verdict(as_standard_suite(make_results(n_classes, class_names=names)))
    html = render_report(results, tmp_path, formats=["html"])["html"].read_text(encoding="utf-8")
    assert "weight norm" in html and "broken by Square" in html  # every column is there ...
    over, pages = table_overflow(html)
    assert over == []  # ... and inside the page
    assert pages >= (3 if n_classes == 100 else 1)  # 100 rows continue over pages, header repeated


def test_attack_budgets_and_key_figure_captions_name_what_ran(tmp_path):
    results = with_computed_verdict(as_standard_suite(make_results(10)))
    text = visible_text(render_report(results, tmp_path, formats=["html"])["html"].read_text(encoding="utf-8"))
    assert "None" not in text
    assert "5,000 queries" in text and "100 steps × 3 targets (MALT-ranked)" in text and "20 steps" in text
    assert "first attack" in text and "after APGD-CE → APGD-T" in text  # never "first attack" for the second


def test_flow_counts_are_true_and_ties_are_named():
    results = make_results(10)
    m = [[0] * 10 for _ in range(10)]
    weak = weakest(typed(results), 1)[0].index
    m[weak][3], m[weak][5], m[weak][7] = 3, 3, 1  # 7 broken images: 3 into "3", 3 into "5"
    results["summary"]["confusion"] = {"matrix": m, "top_flows": []}
    why = at_risk(typed(results), 1)[0]["why"]
    names = results["dataset"]["classes"]
    assert f"of its 7 broken images, attacks turn 3 into “{names[3]}” and 3 into “{names[5]}”" in why
    assert "mostly" not in why


def test_scatter_needs_spread_and_axes_label_their_ticks(tmp_path):
    results = make_results(10)
    for r in results["per_class"]:
        r["robust_acc"]["worst_case"] = 0.0
    html = render_report(results, tmp_path, formats=["html"])["html"].read_text(encoding="utf-8")
    assert svg_of(html, "Robust accuracy against training count") is None
    assert "Are the rare classes the weak ones?" not in html
    up = charts.group_bars("g", ["head (3)", "tail (3)"], [("robust", [2.7, 7.3], ROBUST)], label="up", percent=False)
    ticks = [t for t in svg_texts(str(up)) if t not in ("+2.7", "+7.3")]
    assert {"+2", "+4", "+6"} <= set(ticks) or {"+2.5", "+5", "+7.5"} <= set(ticks)
    assert "+8" not in ticks or "+6" in ticks  # labels are the ticks' own values, never rounded ones
    flat = charts.training_curves("t", [Evaluation({"epoch": e, "loss": 1.0, "val_clean_acc": 1.0,
                                                    "val_robust_acc": 1.0, "lr": 0.1}) for e in (1, 2, 3)], label="t")
    percents = [t for t in svg_texts(str(flat)) if t.endswith("%")]
    assert percents and max(float(t[:-1]) for t in percents) <= 100  # a flat 100% line: no axis past 100%


def test_commands_do_not_wrap_at_dashes_and_no_page_repeats_the_glossary(full):
    html = full["files"]["html"].read_text(encoding="utf-8")
    assert '<span class="nw">--dataset</span>' in html
    raw = subprocess.run(["pdftotext", "-enc", "UTF-8", "-layout", "-f", "1", "-l", "1",
                          str(full["files"]["pdf"]), "-"], capture_output=True, text=True, check=True).stdout
    assert not re.search(r"-\s*\n\s*-?dataset", raw)
    assert "How to read the figures" not in html
    n_pages = len(re.findall(r"\f", subprocess.run(["pdftotext", str(full["files"]["pdf"]), "-"], capture_output=True,
                                                    text=True, check=True).stdout))
    last = page_text(full["files"]["pdf"], n_pages)
    assert "Words used in this report" not in last or n_pages == 1


# ----------------------------------------------------------------------------------------- model comparison

def _model_run(folder: Path, spec: str, shift: float, seed: int) -> Path:
    results = make_results(10, model_spec=spec, robust_shift=shift, seed=seed, sha256=f"{seed:x}" * 64)
    write_run(folder, with_computed_verdict(results))
    return folder / "results.json"


def test_different_models_are_compared_side_by_side_never_before_and_after(tmp_path, capsys):
    a = _model_run(tmp_path / "a", "resnet_a.onnx", 0.0, 1)
    b = _model_run(tmp_path / "b", "wide_b.onnx", 0.08, 2)
    c = _model_run(tmp_path / "c", "tiny_c.onnx", -0.1, 3)
    out = tmp_path / "cmp"
    assert cli.main(["report", str(a), "--compare", str(b), str(c), "--out", str(out), "--format", "html,pdf"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    text = visible_text(html)
    for where in (text, page_text(out / "report.pdf", 1, 3)):
        assert "Model comparison: 3 models" in where
        for words in ("before and after", "Before", "After", "(before)", "(after)", "before:", "after:",
                      "usual price", "Repair", "went from", "now keeps"):
            assert words not in where, words
        for name in ("resnet_a.onnx", "wide_b.onnx", "tiny_c.onnx"):
            assert name in where
    runs = [json.loads(p.read_text()) for p in (a, b, c)]
    robust = [r["summary"]["robust"]["worst_case"]["overall"] for r in runs]
    best = ["resnet_a.onnx", "wide_b.onnx", "tiny_c.onnx"][robust.index(max(robust))]
    assert f"{best} keeps the most test images correct: {pct(max(robust))}" in text
    assert text.count("Weakly robust") + text.count("Partly robust") + text.count("Not robust") >= 3  # one per model
    # a per-class table with one robust column per model, and the models' own verdicts
    assert re.search(r"<th class=\"num\">resnet_a.onnx</th><th class=\"num\">wide_b.onnx</th>"
                     r"<th class=\"num\">tiny_c.onnx</th>", html)
    assert svg_of(html, "Per-class robust accuracy of each model") is not None
    assert "resnet_a.onnx (a)" not in text  # names are unique already: no folder suffix


def test_model_comparison_refuses_different_points_naming_the_models(tmp_path, capsys):
    a = _model_run(tmp_path / "a", "resnet_a.onnx", 0.0, 1)
    other = make_results(10, model_spec="wide_b.onnx", seed=2)
    other["threat_model"] = {"norm": "linf", "eps": 2 / 255, "eps_text": "2/255"}
    write_run(tmp_path / "b", other)
    assert cli.main(["report", str(a), "--compare", str(tmp_path / "b" / "results.json"), "--out",
                     str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "threat model (resnet_a.onnx linf eps 8/255, wide_b.onnx linf eps 2/255)" in err
    assert not (tmp_path / "o" / "report.html").exists()


def test_the_same_model_file_audited_twice_stays_a_before_and_after(tmp_path):
    b = _model_run(tmp_path / "b", "model.onnx", 0.0, 1)
    a = _model_run(tmp_path / "a", "model.onnx", 0.1, 2)  # changed in place, audited again
    html = render_report(b, tmp_path / "o", compare=a, formats=["html"])["html"].read_text(encoding="utf-8")
    assert "Robustness before and after" in html and "Model comparison" not in visible_text(html)


def test_page1_says_where_the_training_counts_come_from(tmp_path):
    sampled = make_results(10)
    sampled["dataset"]["imbalance"] = 0.01  # the tool's own long-tailed sampling
    text = visible_text(render_report(sampled, tmp_path / "s", formats=["html"])["html"].read_text(encoding="utf-8"))
    assert "training counts from tailaudit's own long-tailed sampling, imbalance factor 0.01" in text
    assert "not necessarily the data this model was trained on" in text and "--class-counts FILE" in text
    given = make_results(10)
    given["dataset"]["imbalance"] = None
    given["dataset"]["info"] = {"profile": "given", "counts_source": "cifar_counts.json"}
    text = visible_text(render_report(given, tmp_path / "g", formats=["html"])["html"].read_text(encoding="utf-8"))
    assert "training counts as given (cifar_counts.json)" in text and "own long-tailed sampling" not in text
