"""Results files written by earlier tailaudit versions still load, migrate and re-render.

``tests/data/older_results`` holds real files: the bundled digits CNN audited (and repaired) by
the code at the commit each name ends with, dated by that commit. The oldest predates stored
verdicts, so it is graded once, when loaded (``audit.checks.verdict.grade_on_load``; the contract's loader leaves
the verdict out and says the file needs grading).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import cli
from audit.contract.model import CODES, Verdict
from audit.contract.schema import load_results, needs_grading, validate_results
from audit.errors import ResultsError
from audit.checks.verdict import compute_verdict, load_graded
from audit.version import __version__
from reports import render_report
from reports.fmt import pct
from test_report_pages import visible_text

OLDER = Path(__file__).resolve().parent / "data" / "older_results"
AUDITS = sorted(OLDER.glob("audit-*.json"))
REPAIRS = sorted(p for p in OLDER.glob("repair-*") if p.is_dir())


def test_the_kept_files_cover_both_shapes():
    stored = [("verdict" in json.loads(p.read_text())) for p in AUDITS]
    assert len(AUDITS) >= 4 and REPAIRS
    assert not all(stored) and any(stored)  # files from before and after stored verdicts


@pytest.mark.parametrize("path", AUDITS, ids=[p.stem for p in AUDITS])
def test_older_audit_loads_and_re_renders(path, tmp_path, capsys):
    raw = json.loads(path.read_text())
    contract = load_results(path)  # the torch-free loader: checked and migrated, not graded
    assert needs_grading(contract) == ("verdict" not in raw) and (contract.verdict is None) == ("verdict" not in raw)
    results = load_graded(path)  # the audit side's loader: graded by the verdict rules when the file has no verdict
    validate_results(results.to_json())  # the migrated form is valid for this version too
    verdict = results.verdict
    assert verdict is not None and verdict.code in CODES
    if "verdict" in raw:  # a stored verdict is kept as written: one verdict, never re-graded
        assert verdict == Verdict.from_json(raw["verdict"]) and verdict.computed_on_load is None
    else:
        assert verdict.computed_on_load == __version__
        assert verdict.code == compute_verdict(results).code
    code = cli.main(["report", str(path), "--format", "html", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    text = visible_text((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert verdict.statement in text and raw["model"]["spec"] in text  # beside the badge
    assert ("predates stored verdicts" in text) == ("verdict" not in raw)


@pytest.mark.parametrize("folder", REPAIRS, ids=[p.name for p in REPAIRS])
def test_older_repair_re_renders_as_a_comparison(folder, tmp_path, capsys):
    before, after = folder / "before" / "results.json", folder / "after" / "results.json"
    code = cli.main(["report", str(before), "--compare", str(after), "--format", "html", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    text = visible_text((tmp_path / "report.html").read_text(encoding="utf-8"))
    rb, ra = (load_results(run).worst_case.headline for run in (before, after))
    assert f"robust accuracy under attack went from {pct(rb)} to {pct(ra)}" in text
    assert "Repair:" in text and "What was done: Repaired with" in text  # repair.json / training_log.json read


def test_the_reports_alone_refuse_an_ungraded_file_in_one_line(tmp_path):
    """The reports hold no verdict rules: given a file from before stored verdicts and no grader, they say how to
    render it (the application layer hands them audit.checks.verdict.grade_on_load) and write nothing."""
    unstored = next(p for p in AUDITS if "verdict" not in json.loads(p.read_text()))
    with pytest.raises(ResultsError, match=r"before verdicts were stored.*cli\.py report") as info:
        render_report(unstored, tmp_path / "out", formats=["html"])
    assert "\n" not in str(info.value) and not (tmp_path / "out" / "report.html").exists()
