"""Shared fixtures and the test tiers.

Tiers (markers registered in pyproject.toml): unmarked tests are unit and contract tests that run
in seconds; ``slow`` marks the end-to-end tier (whole repairs, torchrun subprocesses, the wheel).
``make test`` runs both and prints the slowest; ``make test-fast`` runs ``-m "not slow"``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import cli
from support import DEMO, TINY_AUDIT


@pytest.fixture(scope="session")
def tiny_audit(tmp_path_factory) -> tuple[Path, dict]:
    """One real audit of the bundled digits CNN (2 points per class), made once per session: (folder, results).

    Read-only for the tests that share it: copy the folder before changing anything in it.
    """
    out = tmp_path_factory.mktemp("tiny-audit") / "run"
    assert cli.main(["audit", str(DEMO), "--out", str(out), *TINY_AUDIT]) == 0
    return out, json.loads((out / "results.json").read_text())
