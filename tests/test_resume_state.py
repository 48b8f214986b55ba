"""--resume with a tampered checkpoint: one line, exit 2, and the --out folder exactly as it was (issue 29, item 1).

Each case edits one field of a real checkpoint (a one-epoch repair of the demo model) the way a
hostile or damaged file would, then resumes through the real CLI in a subprocess.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from audit.config import AuditConfig
from reat_finetune import run_repair
from reat_finetune.config import RepairConfig
from support import DEMO, ROOT

CHEAP = ["--dataset", "digitslt", "--eps", "0.1", "--attacks", "pgd", "--steps", "2", "--n-per-class", "3",
         "--epochs", "1", "--batch-size-train", "64", "--evaluations", "1", "--no-html", "--no-pdf", "--quiet",
         "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch repair (the same settings as CHEAP), whose checkpoint the cases tamper with."""
    out = tmp_path_factory.mktemp("resume-state") / "run"
    audit = AuditConfig(model=str(DEMO), dataset="digitslt", eps=0.1, attacks=("pgd",), steps=2, n_per_class=3,
                        quiet=True, device="cpu", threads=1)
    run_repair(RepairConfig(audit=audit, formats=(), quiet=True, out=str(out), epochs=1, batch_size=64,
                            evaluations=1))
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def _optimizer_types(ck: dict) -> None:
    pid = next(iter(ck["optimizer"]["state"]))
    ck["optimizer"]["state"][pid]["momentum_buffer"] = "fast"


def _weights_shape(ck: dict) -> None:
    name = next(k for k, v in ck["model"].items() if v.dim() == 4)
    ck["model"][name] = torch.zeros(3, 3)


CASES: dict[str, tuple[Callable[[dict], None], str]] = {
    "fingerprint-list": (lambda ck: ck.__setitem__("fingerprint", [1, 2, 3]),
                         "checkpoint.fingerprint should be a mapping"),
    "world-size-text": (lambda ck: ck.__setitem__("world_size", "two"), "checkpoint.world_size should be an int"),
    "rng-size": (lambda ck: ck["rng"].__setitem__("torch", torch.zeros(100, dtype=torch.uint8)),
                 "checkpoint.rng.torch should hold 5056 values"),
    "weights-shape": (_weights_shape, "has shape (3, 3)"),
    "optimizer-types": (_optimizer_types, "momentum_buffer should be a tensor or a number"),
    "missing-key": (lambda ck: ck.pop("schedule"), "checkpoint lacks schedule"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_checkpoint_is_one_line_and_leaves_out_as_it_was(finished, tmp_path, case):
    tamper, needle = CASES[case]
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "before")  # so a resume that got past the checks would write a fresh before-audit
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    tamper(ck)
    torch.save(ck, out / "checkpoint.pt")
    before = _snapshot(out)
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "repair", str(DEMO), *CHEAP, "--resume", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("tailaudit: error: --resume") and needle in lines[0], lines[0]
    assert _snapshot(out) == before
