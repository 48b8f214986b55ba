"""Exactly one stderr line on refusals that used to print two: a failed dataset download and a full disk
(issue 29, item 3), through the real CLI in a subprocess.

The full disk is simulated with a Python audit hook in the child process that fails, with ENOSPC, every
open-for-writing of a file whose name contains a chosen name (what a full file system answers when a file
is created): the code under test is unchanged and no root or special mount is needed.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support import DEMO, ROOT

FULL_DISK = r"""
import errno, os, runpy, sys
sys.path.insert(0, sys.argv[1])
target = sys.argv[2]

def hook(event, args):
    if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    mode = args[1] if len(args) > 1 else None
    flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & (os.O_WRONLY | os.O_RDWR)
    if writing and target in os.path.basename(os.fsdecode(args[0])):
        raise OSError(errno.ENOSPC, "No space left on device", os.fsdecode(args[0]))

sys.addaudithook(hook)
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _one_line(proc: subprocess.CompletedProcess, needle: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("tailaudit: error:") and needle in lines[0], lines[0]
    return lines[0]


def test_a_failed_download_is_one_line(tmp_path):
    """No data and downloads on, no network (a proxy that refuses every connection)."""
    env = {**os.environ, "HOME": str(tmp_path), "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    env.pop("NO_PROXY", None), env.pop("no_proxy", None)
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "dataset", "cifar10lt"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    _one_line(proc, "could not be downloaded")
    assert proc.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["results.json", "report.pdf"])
def test_a_full_disk_is_one_line_and_keeps_nothing(tmp_path, name):
    """Before: a full disk while the report was written warned "nothing of this run was kept" and "the results
    are kept" in one line, exited 0 and kept the results without the report."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", FULL_DISK, str(ROOT), name, str(ROOT / "cli.py"), "audit", str(DEMO), "--out",
           str(out), "--n-per-class", "2", "--steps", "20", "--quiet", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = _one_line(proc, "no space left on the device")
    assert f"{out / name}:" in line and "nothing of this run was kept" in line and "kept, render" not in line
    assert not out.exists()  # created by this run, removed with it
