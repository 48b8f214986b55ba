"""A built wheel works on its own: installed into an empty folder and run from another directory, it audits,
re-renders a report and repairs (templates and the results schema are package data)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support import ROOT

pytestmark = pytest.mark.slow  # the end-to-end tier (conftest.py)

PACKAGED = ("pyproject.toml", "README.md", "cli.py", "audit", "reports", "reat_finetune", "tailaudit")


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """The wheel built from a copy of the sources (the checkout stays clean), installed with --target."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in PACKAGED:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:setuptools"}
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                  str(src)], tmp, env)
    assert "BuildBackendWarning" not in build.stderr and "deprecated" not in build.stderr.lower()
    wheel = next((tmp / "dist").glob("tailaudit-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"audit/contract/results.schema.json", "audit/contract/repair_files.schema.json",
            "reports/templates/report.css", "cli.py"} <= names
    target = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)], tmp, os.environ)
    return target, {**os.environ, "PYTHONPATH": str(target)}


def test_wheel_audits_reports_and_repairs_from_another_folder(installed, tmp_path):
    target, env = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    model = work / "model.onnx"
    shutil.copy(ROOT / "examples" / "digits_cnn.onnx", model)
    script = ("import cli, audit, reports, reat_finetune, tailaudit, audit.contract.schema; "
              "print(cli.__file__, audit.__file__, reports.__file__, reat_finetune.__file__, tailaudit.__file__, "
              "audit.contract.schema.SCHEMA_FILE)")
    where = _run([sys.executable, "-c", script], work, env)
    assert all(Path(p).resolve().is_relative_to(target.resolve()) for p in where.stdout.split())
    cheap = ["--dataset", "digitslt", "--n-per-class", "3", "--attacks", "pgd", "--steps", "2", "--no-pdf", "--quiet"]
    _run([sys.executable, "-m", "cli", "audit", str(model), *cheap, "--out", "a"], work, env)
    assert (work / "a" / "report.html").is_file()
    _run([sys.executable, "-m", "cli", "report", "a/results.json", "--format", "html", "--out", "r"], work, env)
    assert (work / "r" / "report.html").is_file()
    _run([sys.executable, "-m", "cli", "repair", str(model), *cheap, "--train-steps-total", "2", "--evaluations", "1",
          "--out", "rep"], work, env)
    assert (work / "rep" / "repaired.onnx").is_file() and (work / "rep" / "report.html").is_file()
