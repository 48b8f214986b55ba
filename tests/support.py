"""Constants and helpers the test modules share (fixtures live in conftest.py)."""
from __future__ import annotations

from pathlib import Path

import cli

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.onnx"  # the bundled digits CNN (ONNX), the smallest real model
OLDER_RESULTS = ROOT / "tests" / "data" / "older_results"
# the cheapest audit that still runs every phase: 2 points per class, one attack step, no reports
TINY_AUDIT = ["--n-per-class", "2", "--steps", "1", "--quiet", "--no-html", "--no-pdf"]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:  # noqa: ANN001 (pytest's capsys)
    """cli.main in-process; argparse's exit (SystemExit) counts as the exit code."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
