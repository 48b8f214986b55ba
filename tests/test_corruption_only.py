"""The corruption-only audit (``--attacks none``, docs/corruptions.md): no attack runs, results.json carries no
robust figure, the verdict is not an attack-robustness grade, and every output says attack robustness was not
measured. Real CLI runs on the digits demo (ONNX on onnxruntime), real PDFs read back with pdftotext."""
from __future__ import annotations

import copy
import json
import subprocess

import pytest

from audit.errors import ConfigError, ResultsError
from audit.contract.schema import validate_results
from support import DEMO, run_main

pytest.importorskip("imagecorruptions")

ONLY = ["--dataset", "digitslt", "--n-per-class", "2", "--corruptions", "fog", "--severity", "1", "--attacks", "none",
        "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One corruption-only audit through cli.main, with both reports and a clean-accuracy gate."""
    import cli

    out = tmp_path_factory.mktemp("only") / "run"
    import io
    from contextlib import redirect_stdout

    printed = io.StringIO()
    with redirect_stdout(printed):
        code = cli.main(["audit", str(DEMO), *ONLY, "--fail-under", "clean=10%", "--out", str(out)])
    return code, printed.getvalue(), out


def test_results_carry_no_robust_figure_and_no_grade(run):
    code, printed, out = run
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    validate_results(doc)
    assert doc["attacks"] == [] and doc["suite"] == "none"
    assert all(row["robust_acc"] == {} and row["robust_ci95"] == {} and row["broken_by"] == {}
               for row in doc["per_class"])
    assert doc["summary"]["robust"] == {} and "worst_case" not in (doc["summary"]["head_tail_gap"] or {})
    assert doc["summary"]["confusion"] is None  # no adversarial confusion: nothing was attacked
    assert doc["timings"]["attacks_s"] == {}
    proc = doc["summary"]["calibration"]["procedure"]
    assert proc["attacked"] is False and "--attacks none" in proc["not_attacked_because"]
    v = doc["verdict"]
    assert v["code"] == "not-graded" and "attack robustness was not measured" in v["headline"]
    assert "natural corruptions only" in v["headline"]
    assert any("worst corruption is fog" in r for r in v["reasons"])
    assert doc["gate"]["passed"] and [c["key"] for c in doc["gate"]["conditions"]] == ["clean"]
    corr = doc["summary"]["corruptions"]
    assert corr["names"] == ["fog"] and corr["differs"] is False and "not measured" in corr["note"]


def test_exports_and_terminal_show_no_attack_figure(run):
    _, printed, out = run
    assert "attack robustness was not measured" in printed and "verdict: not-graded" in printed
    assert "worst case" not in printed and "robust accuracy" not in printed
    header = (out / "per_class.csv").read_text().splitlines()[0]
    assert "robust" not in header and header.endswith("corruption_fog")
    md = (out / "summary.md").read_text()
    assert "attack robustness was not measured" in md and "robust accuracy" not in md
    assert "under attack" not in md and "| fog |" in md


def test_report_page_one_leads_with_the_corruption_findings(run):
    _, _, out = run
    page1 = subprocess.run(["pdftotext", "-enc", "UTF-8", "-f", "1", "-l", "1", str(out / "report.pdf"), "-"],
                           capture_output=True, text=True, check=True).stdout
    flat = " ".join(page1.split())
    assert "attack robustness was not measured" in flat and "Not graded" in flat
    assert "Corruption findings" in flat and "WORST CORRUPTION" in flat.upper() and "fog" in flat
    assert "95% interval" in flat  # the weakest class there, with its interval
    whole = subprocess.run(["pdftotext", "-enc", "UTF-8", str(out / "report.pdf"), "-"],
                           capture_output=True, text=True, check=True).stdout
    for absent in ("Attack budget", "robust (worst case)", "Where the broken points go", "under attack",
                   "Gradient-masking"):
        assert absent not in whole, absent
    html = (out / "report.html").read_text()
    assert "natural corruptions only" in html and "Robustness against the attack budget" not in html


def test_schema_refuses_an_empty_attack_list_elsewhere_and_robust_figures_here(run):
    doc = json.loads((run[2] / "results.json").read_text())
    other = copy.deepcopy(doc)
    other["suite"] = "quick"
    with pytest.raises(ResultsError, match="lists no attacks"):
        validate_results(other)
    faked = copy.deepcopy(doc)
    faked["summary"]["robust"] = {"worst_case": doc["summary"]["clean"]}
    with pytest.raises(ResultsError, match="carries robust figures"):
        validate_results(faked)


def test_a_comparison_with_a_corruption_only_audit_is_refused(run, tmp_path):
    from tailaudit.api import report_renderer as render_report  # with the audit's grader, as tailaudit renders

    res = run[2] / "results.json"
    with pytest.raises(ResultsError, match="--attacks none"):
        render_report(res, tmp_path / "c", formats=("html",), compare=res)


@pytest.mark.parametrize("extra, needle", [
    ([], "--attacks none needs --corruptions"),
    (["--corruptions", "fog", "--fail-under", "robust=0.5"], "--attacks none measures no robust accuracy"),
    (["--corruptions", "fog", "--fail-under", "clean=0.5,tail=20%"], "--fail-under tail"),
    (["--corruptions", "fog", "--sanity"], "--sanity has nothing to act on"),
])
def test_refusals_are_one_line_exit_2_before_any_work(capsys, tmp_path, extra, needle):
    out = tmp_path / "r"
    code, _, err = run_main(["audit", str(DEMO), "--dataset", "digitslt", "--attacks", "none", *extra, "--quiet",
                             "--out", str(out)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_python_rule_is_attacks_none_in_a_list():
    from tailaudit import AuditConfig

    cfg = AuditConfig(model=str(DEMO), attacks=["none"], corruptions="fog")
    cfg.validate()
    assert cfg.attack_free and cfg.attack_specs() == [] and cfg.suite_name == "none"
    with pytest.raises(ConfigError, match="do not list other attacks"):
        AuditConfig(model=str(DEMO), attacks=["none", "pgd"], corruptions="fog").validate()
