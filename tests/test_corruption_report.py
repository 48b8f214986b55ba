"""The corruption section of the reports: heatmap for 10 and 100 classes on one A4 page, the weakest class per
corruption, the page-1 sentence when corruption tells another story than the attacks, the before/after table,
and older results without corruptions unchanged (docs/corruptions.md)."""
from __future__ import annotations

import copy
import json
import subprocess

import numpy as np
import pytest

from audit.corruptions.evaluate import CorruptionRecords, class_figures, summary_figures
from audit.corruptions.story import compare
from audit.contract.codec import from_json, to_json
from audit.contract.model import AuditResults, ClassCorruption, CorruptionSummary
from report_fixtures import make_results, with_computed_verdict, write_run
from tailaudit.api import report_renderer as render_report  # with the audit's grader, as tailaudit renders

NAMES = ["gaussian_noise", "glass_blur", "fog", "jpeg_compression"]


def with_corruptions(results: dict, *, tail_hit: float, seed: int = 0) -> dict:
    """Add the corruption figures the audit would compute for made-up per-point answers: every class keeps
    about 70% under corruption, the tail classes lose ``tail_hit`` more."""
    rng = np.random.default_rng(seed)
    typed = AuditResults.from_json(results)
    n_classes = len(typed.per_class)
    label = np.repeat(np.arange(n_classes), 10)
    tail = set(typed.dataset.groups.get("tail", []))
    jobs = [(n, s) for n in NAMES for s in (1, 3)]
    keep = np.array([0.7 - (tail_hit if c in tail else 0.0) for c in label])
    right = rng.random((len(jobs), len(label))) < keep
    pred = np.where(right, label, (label + 1) % n_classes)
    rec = CorruptionRecords(jobs, np.arange(len(label)), pred, rng.random(pred.shape).astype(np.float32))
    clean = rng.random(len(label)) < 0.9
    groups = {g: list(v) for g, v in typed.dataset.groups.items()}
    for row, cells in zip(results["per_class"], class_figures(rec, label, clean, n_classes)):
        row["corruptions"] = cells
    summary = summary_figures(rec, label, clean, n_classes, groups)
    summary.update({"source": "generated", "library": "imagecorruptions-imaug 1.1.5", "parameters": "ImageNet-C",
                    "names": NAMES, "severities": [1, 3], "seed": 0, "input_side": [32, 32],
                    "generated_side": [32, 32], "images": int(pred.size), "seconds": 1.0})
    summary["note"], summary["differs"] = compare(AuditResults.from_json(results),
                                                  from_json(CorruptionSummary, summary))
    results["summary"]["corruptions"] = summary
    return results


def _pages(pdf) -> list[str]:
    n = int(next(line.split()[-1] for line in subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True,
                                                                check=True).stdout.splitlines()
                  if line.startswith("Pages:")))
    return [subprocess.run(["pdftotext", "-enc", "UTF-8", "-f", str(i), "-l", str(i), str(pdf), "-"],
                           capture_output=True, text=True, check=True).stdout for i in range(1, n + 1)]


@pytest.mark.parametrize("n_classes", [10, pytest.param(100, marks=pytest.mark.slow)])
def test_heatmap_fits_one_a4_page_and_page1_says_when_the_story_differs(tmp_path, n_classes):
    results = with_computed_verdict(make_results(n_classes))
    if n_classes == 10:  # under attack the tail loses less than 1.5x what the head loses; under corruption far more
        s = AuditResults.from_json(results).summary
        att_tail, att_head = (s.clean.groups[g] - s.worst_case.groups[g] for g in ("tail", "head"))
        assert att_tail < 1.5 * att_head
    results = with_corruptions(results, tail_hit=0.5 if n_classes == 10 else 0.0)
    c = results["summary"]["corruptions"]
    if n_classes == 10:
        assert c["group_drop"]["tail"] > 1.5 * c["group_drop"]["head"] and c["differs"] is True
    files = render_report(write_run(tmp_path, results), tmp_path, formats=["pdf"])
    pages = _pages(files["pdf"])
    info = subprocess.run(["pdfinfo", str(files["pdf"])], capture_output=True, text=True, check=True).stdout
    assert "595.276 x 841.89" in info  # A4
    first, last = results["per_class"][0]["name"], results["per_class"][-1]["name"]
    caption = [p for p in pages if "Accuracy (%) of each class" in p]
    assert len(caption) == 1
    page = caption[0]
    assert first[:16] in page and last[:16] in page  # every class row on the caption's page
    assert "accuracy under corruption (%)" in page  # the colour bar (the slanted column names split in pdftotext)
    section = next(p for p in pages if "Weakest class per corruption" in p)
    worst = c["per_corruption"]["fog"]["worst_class"]
    assert results["per_class"][worst]["name"] in section
    # page 1 carries the sentence exactly when the audit said corruption tells another story
    page1 = " ".join(pages[0].split())
    assert c["differs"] == ("Natural corruptions: Under corruption the rare (tail) classes lose" in page1)


def test_before_after_shows_corruptions_only_when_both_runs_have_them(tmp_path):
    before = with_corruptions(with_computed_verdict(make_results(10)), tail_hit=0.3)
    after = with_corruptions(with_computed_verdict(make_results(10, robust_shift=0.1)), tail_hit=0.1, seed=1)
    b, a = write_run(tmp_path / "b", before), write_run(tmp_path / "a", after)
    html = render_report(b, tmp_path / "a", formats=["html"], compare=a)["html"].read_text()
    assert "Natural corruptions before and after" in html and "does not optimise these figures" in html
    plain = copy.deepcopy(after)
    del plain["summary"]["corruptions"]
    for row in plain["per_class"]:
        del row["corruptions"]
    p = write_run(tmp_path / "p", plain)
    html = render_report(b, tmp_path / "p", formats=["html"], compare=p)["html"].read_text()
    assert "Natural corruptions" not in html
    html = render_report(p, tmp_path / "p", formats=["html"])["html"].read_text()  # a run without: no section
    assert "Natural corruptions" not in html


def test_corruption_figures_read_as_dataclasses_and_keep_unknown_keys():
    """summary.corruptions and each class's corruptions are typed (audit/contract/model.py): attributes, not keys;
    keys a newer tailaudit adds are kept and written back after the declared ones, in the same order."""
    results = with_corruptions(with_computed_verdict(make_results(10)), tail_hit=0.3)
    raw = results["summary"]["corruptions"]
    raw["per_corruption"]["fog"]["newer"] = [1, 2]
    raw["newer_key"] = {"x": 1}
    results["per_class"][0]["corruptions"]["fog"]["newer"] = "kept"
    typed = AuditResults.from_json(copy.deepcopy(results))
    c = typed.summary.corruptions
    assert isinstance(c, CorruptionSummary) and c.names == NAMES and c.severities == [1, 3] and c.source == "generated"
    fog = c.per_corruption["fog"]
    assert fog.family == "weather" and fog.mean_accuracy == raw["per_corruption"]["fog"]["mean_accuracy"]
    assert fog.group("tail") == raw["per_corruption"]["fog"]["groups"]["tail"] and fog.extra == {"newer": [1, 2]}
    assert c.lost("tail") == raw["group_drop"]["tail"] and c.extra == {"newer_key": {"x": 1}}
    row = typed.per_class[0].corruptions["fog"]
    assert isinstance(row, ClassCorruption) and sorted(row.severities) == ["1", "3"] and row.extra == {"newer": "kept"}
    assert row.mean == results["per_class"][0]["corruptions"]["fog"]["mean"]
    assert row.severities["3"].accuracy == results["per_class"][0]["corruptions"]["fog"]["3"]["accuracy"]
    assert json.dumps(typed.to_json()["summary"]["corruptions"]) == json.dumps(raw)
    assert json.dumps([to_json(r.corruptions) for r in typed.per_class]) == \
        json.dumps([r["corruptions"] for r in results["per_class"]])
