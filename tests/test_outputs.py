"""Output folders: one run per folder (a lock a killed run does not leave stuck), other programs' files never
replaced, and a repair that fails or is interrupted leaves the finished run in its folder exactly as it was."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cli
from audit.run.outputs import _ASIDE_DONE, LOCK, PARTIAL, PREVIOUS, keep_previous_run, recover_killed_run
from support import DEMO, ROOT

FAST = ["--n-per-class", "2", "--steps", "1", "--quiet", "--no-html", "--no-pdf"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden work folders and the lock aside) with its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()
            and not any(part.startswith((PARTIAL, PREVIOUS, LOCK)) for part in p.relative_to(folder).parts)}


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from pathlib import Path\n"
            "from audit.run.outputs import folder_lock\n"
            "with folder_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(ROOT)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_one_run_per_folder_and_a_killed_run_leaves_no_stuck_lock(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        code = cli.main(["audit", str(DEMO), "--out", str(out), *FAST])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1
        assert f"is in use by another tailaudit run (process {holder.pid} on " in err and "choose another --out" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing of the refused run
    finally:
        holder.send_signal(signal.SIGKILL)  # killed outright: the kernel drops its lock
        holder.wait()
    assert cli.main(["audit", str(DEMO), "--out", str(out), *FAST]) == 0
    assert (out / "results.json").is_file() and not (out / LOCK).exists()


def test_files_tailaudit_did_not_write_are_never_replaced(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text('{"my": "own results"}')
    (out / "summary.md").write_text("my notes")
    before = snapshot(out)
    code = cli.main(["audit", str(DEMO), "--out", str(out), *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds results.json, summary.md, which tailaudit did not write" in err and "move them away" in err
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["results.json", "summary.md"]
    # a report the run will not write is no obstacle, and tailaudit's own files are re-written freely
    (out / "results.json").unlink()
    (out / "summary.md").unlink()
    (out / "report.pdf").write_bytes(b"%PDF- someone else's")
    assert cli.main(["audit", str(DEMO), "--out", str(out), *FAST]) == 0
    assert cli.main(["audit", str(DEMO), "--out", str(out), *FAST]) == 0
    assert (out / "report.pdf").read_bytes() == b"%PDF- someone else's"


NAMES = ("before", "checkpoint.pt", "repair.json")


def _finished(out: Path) -> None:
    (out / "before").mkdir(parents=True)
    (out / "before" / "results.json").write_text("finished before")
    (out / "checkpoint.pt").write_bytes(b"finished checkpoint")
    (out / "repair.json").write_text("finished summary")


def test_a_failed_run_puts_the_finished_one_back_and_parks_its_own_files(tmp_path):
    out = tmp_path / "r"
    _finished(out)
    done = snapshot(out)
    with pytest.raises(KeyboardInterrupt):
        with keep_previous_run(out, NAMES, resume=False):
            assert not (out / "repair.json").exists() and (out / PREVIOUS / "repair.json").is_file()
            (out / "before").mkdir()
            (out / "checkpoint.pt").write_bytes(b"new, unfinished")
            raise KeyboardInterrupt
    assert snapshot(out) == done  # exactly as it was
    assert (out / PARTIAL / "checkpoint.pt").read_bytes() == b"new, unfinished" and not (out / PREVIOUS).exists()
    with keep_previous_run(out, NAMES, resume=True):  # --resume continues the partial run in the finished one's place
        assert (out / "checkpoint.pt").read_bytes() == b"new, unfinished" and not (out / "repair.json").exists()
        (out / "repair.json").write_text("new summary")
    assert (out / "repair.json").read_text() == "new summary"
    assert not (out / PARTIAL).exists() and not (out / PREVIOUS).exists()


def test_a_killed_run_is_undone_by_the_next_one(tmp_path):
    out = tmp_path / "r"
    _finished(out)
    done = snapshot(out)
    # what kill -9 leaves: the finished run moved aside, the killed run's files in its place
    (out / PREVIOUS).mkdir()
    for name in NAMES:
        os.replace(out / name, out / PREVIOUS / name)
    (out / PREVIOUS / _ASIDE_DONE).touch()  # the whole finished run was aside when the new one started writing
    (out / "checkpoint.pt").write_bytes(b"killed run")
    recover_killed_run(out, NAMES)
    assert snapshot(out) == done and (out / PARTIAL / "checkpoint.pt").read_bytes() == b"killed run"


def test_a_run_killed_while_moving_the_finished_run_aside_gets_all_of_it_back(tmp_path):
    out = tmp_path / "r"
    _finished(out)
    done = snapshot(out)
    (out / PREVIOUS).mkdir()
    for name in NAMES[:2]:  # kill -9 half-way through the move aside: no marker yet
        os.replace(out / name, out / PREVIOUS / name)
    recover_killed_run(out, NAMES)
    assert snapshot(out) == done and not (out / PARTIAL).exists() and not (out / PREVIOUS).exists()


@pytest.mark.slow
def test_an_interrupted_repair_leaves_the_finished_repair_as_it_was(tmp_path):
    from test_repair import cheap_config

    from reat_finetune import RepairInterrupted, TrainHooks
    from tailaudit import run_repair

    out = tmp_path / "repair"
    run_repair(cheap_config(out))
    done = snapshot(out)
    assert "repair.json" in done and "before/results.json" in done and "checkpoint.pt" in done

    def stop(epoch: int, batches: int) -> None:
        if epoch == 2 and batches == 1:
            raise KeyboardInterrupt

    other = cheap_config(out)
    other.audit.eps = 0.05  # another run, at another budget, into the same folder
    with pytest.raises(RepairInterrupted, match="resume="):  # worded for Python (tailaudit/wording.py)
        run_repair(other, hooks=TrainHooks(on_batch_end=stop))
    time.sleep(0.01)
    assert snapshot(out) == done  # before/, checkpoint.pt, training_log.json, after/, model, report: untouched
    assert (out / PARTIAL / "checkpoint.pt").is_file() and (out / PARTIAL / "before" / "results.json").is_file()
    resumed = cheap_config(None, resume=str(out))
    resumed.audit.eps = 0.05
    run = run_repair(resumed)
    assert run.before.threat_model.eps == pytest.approx(0.05)  # the partial run's own before-audit
    assert not (out / PARTIAL).exists() and not (out / PREVIOUS).exists()


def test_files_read_back_on_resume_are_bounded(tmp_path, caplog):
    """What a folder holds is read within limits: an oversized manifest is ignored, a compressed checkpoint that
    unpacks far beyond its size is refused from the zip's directory, a damaged before-audit is audited again."""
    import zipfile

    from audit.config import AuditConfig
    from audit.phases import reusable_results
    from audit.run.outputs import MANIFEST, MAX_MANIFEST_BYTES, read_manifest
    from reat_finetune import RepairError
    from reat_finetune.checkpoint import load_checkpoint

    (tmp_path / MANIFEST).write_text('{"files": ["results.json"], "pad": "' + "x" * MAX_MANIFEST_BYTES + '"}')
    assert read_manifest(tmp_path) == []
    bomb = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data/0", b"\0" * (200 << 20))  # 200 MiB of zeros in about 200 KB
    assert bomb.stat().st_size < (1 << 20)
    with pytest.raises(RepairError, match=r"--resume: checkpoint .* unpack to 209,715,200 bytes"):
        load_checkpoint(tmp_path)
    before = tmp_path / "results.json"
    before.write_text("[" * 100000 + "]" * 100000)
    assert reusable_results(before, AuditConfig(model=str(DEMO))) is None
    assert f"not reusing the audit in {tmp_path}" in caplog.text


def test_commit_says_removed_only_for_files_it_removed(tmp_path, caplog):
    """A repair claims folders and a file it may never write (before/, after/, repaired.safetensors); publishing the
    run must not log that it removed them as an earlier run's files (it removed nothing)."""
    import logging

    from audit.run.outputs import RunFiles, claim

    (tmp_path / "before").mkdir()
    claim(tmp_path, ["before", "repaired.safetensors", "old.json"])
    (tmp_path / "old.json").write_text("{}")
    files = RunFiles(tmp_path)
    files.add_json("results.json", {"a": 1})
    with caplog.at_level(logging.INFO, logger="audit.run.outputs"):
        files.commit()
    removed = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert removed == [f"removed {tmp_path / 'old.json'}, written by an earlier run into this folder"]
    assert (tmp_path / "before").is_dir() and not (tmp_path / "old.json").exists()
