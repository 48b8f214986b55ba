"""Publishing a run's files into a folder that holds a previous run is atomic as a set (issue 29, item 2).

SIGINT, SIGTERM or SIGKILL is delivered at every step of the switch (the ``TAILAUDIT_TEST_COMMIT_SIGNAL``
seam in audit/run/outputs.py); the folder then holds the old set or the new one, never a mixture, once the
next run has started (a killed switch is rolled back from its journal).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from audit.run.outputs import JOURNAL, STEP_ENV, recover_commit
from support import DEMO, ROOT

NAMES = ["results.json", "points.json", "examples.npz", "per_class.csv", "summary.md"]
OLD = {**{n: f"old {n}" for n in NAMES}, "report.pdf": "old report"}  # the new run writes no report: stale
NEW = {n: f"new {n}" for n in NAMES}

# One Python process forks once per (step, signal): the child publishes NEW over OLD with the signal at that
# step; the parent then starts "the next run" (RunFiles() recovers) and prints what the folder holds.
MATRIX = r"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from audit.run.outputs import RunFiles, STEP_ENV, JOURNAL
base, old, new = Path(sys.argv[1]), json.loads(sys.argv[3]), json.loads(sys.argv[4])

def publish(out, files):
    with RunFiles(out) as rf:
        for name, text in files.items():
            rf.add(name, lambda p, t=text: p.write_text(t))
        rf.commit()

def state(out):
    return {p.name: p.read_text() for p in out.iterdir() if p.is_file() and p.name != ".tailaudit-manifest.json"
            and not p.name.startswith(".tailaudit-staging")}

report = []
for sig in ("INT", "TERM", "KILL"):
    for k in range(14):
        out = base / f"{sig}-{k}"
        out.mkdir()
        publish(out, old)
        pid = os.fork()
        if pid == 0:
            os.environ[STEP_ENV] = f"{k}:{sig}"
            try:
                publish(out, new)
            except KeyboardInterrupt:
                os._exit(130)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        left = (out / JOURNAL).exists()
        RunFiles(out).discard()  # the next run into the folder
        manifest = json.loads((out / ".tailaudit-manifest.json").read_text())["files"]
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".tailaudit-staging")]
        report.append({"sig": sig, "k": k, "status": status, "journal_left": left, "files": state(out),
                       "manifest": manifest, "leftovers": leftovers})
print(json.dumps(report))
"""


def _interruptible() -> None:
    """In the child before exec: SIGINT as a terminal delivers it. A suite started in the background (``make test &``,
    some CI runners) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt, as a user's shell
    would not have it either."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_signal_at_any_step_of_the_switch_leaves_the_old_set_or_the_new_one(tmp_path):
    proc = subprocess.run([sys.executable, "-c", MATRIX, str(tmp_path), str(ROOT), json.dumps(OLD), json.dumps(NEW)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          preexec_fn=_interruptible)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cases = json.loads(proc.stdout)
    killed_mid_switch = 0
    for c in cases:
        where = f"SIG{c['sig']} at step {c['k']}"
        assert c["files"] in (OLD, NEW), where
        assert sorted(c["manifest"]) == sorted(c["files"]), where
        assert c["leftovers"] == [], where
        if c["sig"] != "KILL":  # deferred to the end of the switch: the new set is complete, nothing to recover
            assert c["files"] == NEW and not c["journal_left"], where
            expected = signal.SIGTERM if c["sig"] == "TERM" else None
            assert (os.WIFSIGNALED(c["status"]) and os.WTERMSIG(c["status"]) == expected) if expected else \
                os.WEXITSTATUS(c["status"]) == 130, where
        elif c["journal_left"]:
            killed_mid_switch += 1
            assert c["files"] == OLD, where  # rolled back by the next run
    assert killed_mid_switch == 14  # every step of the switch was reached (7 old files aside, 5 new in, manifest)


def _audit(out: Path, n: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "audit", str(DEMO), "--out", str(out),
                           "--n-per-class", n, "--steps", "1", "--quiet", "--no-html", "--no-pdf", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
                          preexec_fn=_interruptible)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".tailaudit-lock"}


def _inodes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in out.iterdir() if p.is_file() and p.name != ".tailaudit-lock"}


@pytest.mark.slow
def test_ctrl_c_and_kill_while_the_cli_publishes_over_a_previous_run(tmp_path):
    out = tmp_path / "run"
    assert _audit(out, "2").returncode == 0
    old, old_inodes = _files(out), _inodes(out)
    # Ctrl-C in the middle of the switch: the switch finishes first, then the run stops as interrupted
    proc = _audit(out, "3", {STEP_ENV: "4:INT"})
    assert proc.returncode == 130 and proc.stderr.strip().splitlines()[-1] == "tailaudit: interrupted", proc.stderr
    assert "Traceback" not in proc.stderr
    new = _files(out)
    assert new.keys() == old.keys() and new["results.json"] != old["results.json"]
    assert not set(_inodes(out).values()) & set(old_inodes.values())  # every file is the new run's
    # killed outright in the middle: the journal lets the next start put the previous set back whole
    proc = _audit(out, "2", {STEP_ENV: "6:KILL"})
    assert proc.returncode == -signal.SIGKILL and (out / JOURNAL).exists()
    assert recover_commit(out)
    assert _files(out) == new and not (out / JOURNAL).exists()
