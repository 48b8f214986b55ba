"""Output folders: probed before any work, and a run's files written as one set.

:func:`audit.contract.files.prepare_out_dir` creates ``--out`` and writes and removes a probe file, so a folder
that is a file, lies under a file, is read-only or full fails in a second, not after the
compute. :class:`RunFiles` stages every file of a run in a hidden folder inside ``--out``
(same filesystem, so renames are atomic), then moves them into place together; on any
failure nothing of the new run is left. A manifest (``.tailaudit-manifest.json``) records
which files tailaudit wrote, so a re-run into the same folder removes the files an earlier
run wrote and this one does not (a stale ``report.pdf`` after ``--no-pdf``), and never
touches a file tailaudit did not write.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from ..contract.files import OutputError, atomic_write, output_error, write_json, write_npz
from ..contract.jsonfile import parse_json, read_text
from ..contract.codec import from_json, to_json
from ..contract.repair import Manifest

log = logging.getLogger(__name__)

MANIFEST = ".tailaudit-manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest lists a few file names; a larger one is not tailaudit's
_STAGING_PREFIX = ".tailaudit-staging-"


def read_manifest(out_dir: Path) -> list[str]:
    """Files an earlier run recorded as its own (relative names); [] when none or unreadable."""
    try:
        data = parse_json(read_text(Path(out_dir) / MANIFEST, max_bytes=MAX_MANIFEST_BYTES))
        manifest = from_json(Manifest, data, MANIFEST)
        return [f for f in manifest.files or [] if isinstance(f, str) and _is_plain_name(f)]
    except (OSError, ValueError, RecursionError):  # DocumentError is a ValueError: not tailaudit's manifest
        return []


def _staging_prefix(pid: Optional[int] = None) -> str:
    """Staging folders are named after the host and process that own them."""
    return f"{_STAGING_PREFIX}{_host()}.{os.getpid() if pid is None else pid}."


def _host() -> str:
    """This machine's name, reduced to characters safe in a file name and a one-line message."""
    return "".join(ch for ch in socket.gethostname() if ch.isalnum() or ch in "-_")[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours (PermissionError), or the check is not supported
        return True
    return True


def sweep_dead_staging(out_dir: Path) -> None:
    """Remove staging folders left by a killed run of this host (its process is gone).

    A run killed with SIGKILL cannot clean up; the next run into the same folder does. Folders of
    another host, of a live process, or named otherwise are left alone.
    """
    mine = _staging_prefix(0)[: -len("0.")]
    try:
        entries = list(out_dir.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not name.startswith(mine) or not entry.is_dir() or entry.is_symlink():
            continue
        pid_text = name[len(mine):].split(".", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            log.info("removing %s, left by a run that was killed", name)
            shutil.rmtree(entry, ignore_errors=True)


def _is_plain_name(name: str) -> bool:
    """A bare file name: no folders (so a tampered manifest cannot reach outside --out), not the manifest."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (MANIFEST, ".", "..")


JOURNAL = ".tailaudit-journal.json"  # present only while a run's files are being switched into place
_OLD = ".old."  # the previous run's files, moved into the staging folder during the switch
STEP_ENV = "TAILAUDIT_TEST_COMMIT_SIGNAL"  # "K:SIG" (e.g. "3:INT"): send SIG to this process at step K of a commit


def _step(k: int) -> None:
    """A test seam: with ``TAILAUDIT_TEST_COMMIT_SIGNAL=K:SIG`` the process signals itself at step K of a commit
    (KILL included), so a test can interrupt the switch at every step through the real CLI."""
    spec = os.environ.get(STEP_ENV, "")
    if spec and spec.partition(":")[0] == str(k):
        os.kill(os.getpid(), getattr(signal, "SIG" + spec.partition(":")[2]))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_journal(out: Path, entry: dict[str, Any]) -> None:
    tmp = out / f"{JOURNAL}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"tool": "tailaudit", **entry}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / JOURNAL)
    _fsync_dir(out)


def _read_journal(out: Path) -> Optional[tuple[Path, list[str], list[str]]]:
    """(staging folder, new names, old names) of an unfinished switch, or None (none, or not one tailaudit wrote)."""
    try:
        entry = parse_json(read_text(out / JOURNAL, max_bytes=MAX_MANIFEST_BYTES))
        stage = out / str(entry["staging"])
        new, old = [str(n) for n in entry["new"]], [str(n) for n in entry["old"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    plain = all(_is_plain_name(n) or n == MANIFEST for n in new + old)
    ours = plain and _is_plain_name(stage.name) and stage.name.startswith(_STAGING_PREFIX)
    return (stage, new, old) if ours else None


def recover_commit(out_dir: Path, *, killed: bool = True) -> bool:
    """Roll back a switch that stopped before its commit point (a killed run, a failed rename): the new files
    leave, the old ones (moved into the staging folder) come back, the journal goes. True when there was one.
    Called with the folder locked, before staging folders of dead runs are swept."""
    out = Path(out_dir)
    (out / f"{JOURNAL}.tmp").unlink(missing_ok=True)
    if not (out / JOURNAL).is_file():
        return False
    found = _read_journal(out)
    if found is None:
        log.warning("ignoring an unreadable %s in %s", JOURNAL, out)
        (out / JOURNAL).unlink(missing_ok=True)
        return False
    stage, new, old = found
    if killed:  # (a failure in this process says so in its own error line)
        log.warning("a run into %s was stopped while publishing its files; the earlier run's files were put back", out)
    for name in [*new, MANIFEST]:  # the new files that reached the folder go back to the (discarded) staging folder
        if name not in old or (stage / f"{_OLD}{name}").exists():
            with contextlib.suppress(FileNotFoundError):
                os.replace(out / name, stage / name)
    for name in old:
        with contextlib.suppress(FileNotFoundError):
            os.replace(stage / f"{_OLD}{name}", out / name)
    (out / JOURNAL).unlink()
    _fsync_dir(out)
    shutil.rmtree(stage, ignore_errors=True)
    return True


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM received inside wait until the block is over, then act as they would have (the journal
    covers what no handler can: SIGKILL, a power cut). Outside the main thread nothing is deferred."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s in sigs:
            signal.signal(s, previous[s])
        for s in dict.fromkeys(got):
            os.kill(os.getpid(), s)  # delivered now as it would have been (KeyboardInterrupt, or the process ends)


class RunFiles:
    """A run's output files, staged together and committed as a set.

    Use ``add_json`` / ``add_npz`` / ``add`` (any writer taking a path) while the run
    produces outputs, ``own`` for files written in place by other means (a checkpoint),
    then ``commit()``. Used as a context manager, an exception before ``commit`` removes
    everything staged; OSErrors become :class:`OutputError` (exit code 2).
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        recover_commit(self.out_dir)  # a killed run's half switch, before its staging folder is swept
        sweep_dead_staging(self.out_dir)
        self.staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(), dir=self.out_dir))
        self.names: list[str] = []
        self.owned: list[str] = []
        self.committed = False

    # -- staging ----------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Where ``name`` is staged (writers may also read staged files back from here)."""
        if not _is_plain_name(name):
            raise ValueError(f"output names are plain file names, got {name!r}")
        return self.staging / name

    def add(self, name: str, write: Callable[[Path], Any]) -> Path:
        """Stage ``name`` by calling ``write(staged_path)``."""
        target = self.path(name)
        try:
            write(target)
        except OSError as exc:
            raise output_error(exc, self.out_dir / name) from None
        if name not in self.names:
            self.names.append(name)
        return target

    def add_json(self, name: str, data: Any, *, indent: Optional[int] = 2,
                 check: Optional[Callable[[Any], None]] = None, max_bytes: Optional[int] = None) -> Path:
        """``data`` as JSON; ``check`` sees the parsed text first, ``max_bytes`` is its reader's limit (a refusal
        stages nothing)."""
        return self.add(name, lambda p: write_json(p, data, indent=indent, check=check, max_bytes=max_bytes))

    def add_npz(self, name: str, **arrays: Any) -> Path:
        return self.add(name, lambda p: write_npz(p, **arrays))

    def adopt(self, name: str) -> None:
        """Record a file already written into the staging folder by other code (e.g. a renderer)."""
        if not self.path(name).is_file():
            raise FileNotFoundError(self.path(name))
        if name not in self.names:
            self.names.append(name)

    def own(self, names: Iterable[str]) -> None:
        """Files in ``out_dir`` written in place by this run (kept and recorded, not moved)."""
        self.owned.extend(n for n in names if n not in self.owned)

    # -- commit -------------------------------------------------------------------------------
    def commit(self) -> list[Path]:
        """Publish every staged file into ``out_dir`` as one set, with the earlier run's stale files dropped.

        A journal (:data:`JOURNAL`) is written first and removed last, which is the commit point: the old
        files (and the old manifest) are moved into the staging folder, the new ones into place, and a run
        that stops before the journal is gone, even killed outright, is rolled back to the old set by
        :func:`recover_commit` on the next start. SIGINT and SIGTERM wait until the switch is over.
        """
        previous = read_manifest(self.out_dir)
        current = self.names + [n for n in self.owned if n not in self.names]
        stale = [n for n in previous if n not in current]
        removed = _files_among(self.out_dir, stale)  # what the switch really drops (a claim may name folders)
        with _signals_deferred():
            try:
                self._switch(current, stale)
            except OSError as exc:
                recover_commit(self.out_dir, killed=False)
                raise output_error(exc, self.out_dir) from None
        self.committed = True
        self._drop_staging()
        for name in removed:
            log.info("removed %s, written by an earlier run into this folder", self.out_dir / name)
        return [self.out_dir / n for n in self.names]

    def _switch(self, current: list[str], stale: list[str]) -> None:
        """The steps of :meth:`commit` (numbered for the interruption test, :func:`_step`)."""
        out, stage = self.out_dir, self.staging
        olds = _files_among(out, [*self.names, *stale, MANIFEST])
        _write_journal(out, {"staging": stage.name, "new": self.names, "old": olds})
        _step(0)
        for k, name in enumerate(olds, 1):  # old files aside, so a roll-back can put them back
            os.replace(out / name, stage / f"{_OLD}{name}")
            _step(k)
        for k, name in enumerate(self.names, len(olds) + 1):
            os.replace(stage / name, out / name)
            _step(k)
        self._write_manifest(current)
        _step(len(olds) + len(self.names) + 1)
        os.unlink(out / JOURNAL)  # the commit point
        _fsync_dir(out)

    def _write_manifest(self, names: list[str]) -> None:
        text = json.dumps(to_json(Manifest(files=list(names))), indent=2) + "\n"
        tmp = self.staging / MANIFEST
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.out_dir / MANIFEST)

    def discard(self) -> None:
        """Remove everything staged (nothing of this run is left)."""
        self._drop_staging()

    def _drop_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "RunFiles":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._drop_staging()  # after commit it is empty; after a failure it holds the only copies


# -- one run per folder, and never another program's files -----------------------------------------

LOCK = ".tailaudit-lock"
AUDIT_FILES = ("results.json", "points.json", "examples.npz", "per_class.csv", "summary.md")


def with_reports(names: Sequence[str], formats: Iterable[str]) -> tuple[str, ...]:
    """``names`` and the report files of ``formats`` (report.html, report.pdf)."""
    return tuple(names) + tuple(f"report.{f}" for f in formats)


def _lock_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:200]
    except OSError:
        return "another process"
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    who = f"process {fields.get('pid', '?')} on {fields.get('host', '?')}"
    return f"{who}, started {fields['started']}" if fields.get("started") else who


@contextlib.contextmanager
def folder_lock(out_dir: Path, flag: str = "--out") -> Iterator[None]:
    """Hold ``out_dir/.tailaudit-lock`` (an advisory ``flock``) for the run: a second run into the same folder
    stops with one line naming the first. The kernel releases the lock when a process dies, so a killed run
    leaves nothing stuck; the lock file is removed when the run ends."""
    import fcntl
    from datetime import datetime, timezone

    path = Path(out_dir) / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise output_error(exc, path, "create the lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{flag} {out_dir} is in use by another tailaudit run ({_lock_holder(path)}); wait for "
                              f"it to finish or choose another {flag}") from None
        except OSError:  # a file system without flock (some network mounts): no lock, as before
            log.debug("no file lock on %s", out_dir)
            break
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # the holder before us may have removed the file
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    os.write(fd, f"pid={os.getpid()} host={_host()} started={started}\n".encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiting run re-checks the inode and retries
        os.close(fd)


def foreign_files(out_dir: Path, names: Iterable[str]) -> list[str]:
    """Which of ``names`` exist in ``out_dir`` without tailaudit having written them (not in its manifest; a
    folder counts as tailaudit's when it holds a manifest)."""
    ours = set(read_manifest(out_dir))
    found = []
    for name in names:
        path = Path(out_dir) / name
        if not (path.exists() or path.is_symlink()) or name in ours:
            continue
        if path.is_dir() and not path.is_symlink() and (path / MANIFEST).is_file():
            continue
        found.append(name)
    return found


def refuse_foreign_files(out_dir: Path, names: Iterable[str], flag: str = "--out") -> None:
    """OutputError (one line) when the run would replace files that tailaudit did not write."""
    found = foreign_files(out_dir, names)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise OutputError(f"{flag} {out_dir} holds {shown}, which tailaudit did not write, and this run would "
                          f"replace them; move them away or choose another {flag}")


PREVIOUS = ".tailaudit-previous"  # a finished run, moved aside while a new run writes in its place
_ASIDE_DONE = ".aside-done"  # in PREVIOUS once the whole finished run is there
PARTIAL = ".tailaudit-partial"  # what a failed or interrupted run had written (its checkpoint, for --resume)


def _move_entries(src: Path, dst: Path, names: Iterable[str]) -> None:
    """Move ``names`` (files or folders) from ``src`` to ``dst`` with renames on one file system."""
    dst.mkdir(exist_ok=True)
    for name in names:
        source, target = src / name, dst / name
        if not (source.exists() or source.is_symlink()):
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(source, target)


def _files_among(folder: Path, names: Sequence[str]) -> list[str]:
    """The ``names`` that are files (or links) in ``folder``: what a switch moves; folders stay where they are."""
    return [n for n in names if ((folder / n).is_file() or (folder / n).is_symlink()) and not (folder / n).is_dir()]


def _present(folder: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if (folder / n).exists() or (folder / n).is_symlink()]


def _park(out: Path, names: Sequence[str]) -> None:
    """The entries a failed run wrote go to PARTIAL (replacing an older partial run), so --resume finds them."""
    written = _present(out, names)
    if written:
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        _move_entries(out, out / PARTIAL, written)


def _restore(out: Path, names: Sequence[str]) -> None:
    """Put the finished run moved aside back in its place."""
    aside = out / PREVIOUS
    if aside.is_dir():
        _move_entries(aside, out, _present(aside, names))
        shutil.rmtree(aside, ignore_errors=True)


def recover_killed_run(out: Path, names: Sequence[str]) -> None:
    """After a run killed outright (no chance to clean up): its files become the partial run and the finished
    run it had moved aside is put back. Called with the folder locked, so no live run owns PREVIOUS."""
    if (out / PREVIOUS).is_dir():
        log.warning("restoring the finished run in %s that a killed run had moved aside", out)
        if (out / PREVIOUS / _ASIDE_DONE).is_file():  # the killed run had started writing: its files are partial
            _park(out, names)
        _restore(out, names)  # else it was killed while moving the finished run aside: all of it comes back


@contextlib.contextmanager
def keep_previous_run(out: Path, names: Sequence[str], *, resume: bool) -> Iterator[None]:
    """A run of many files (a repair) as a transaction users can rely on: a finished run in ``out`` is moved aside
    while the new one writes in its place, deleted when the new one finishes, and put back exactly as it was when
    the new one fails or is interrupted (whose files then wait in ``PARTIAL`` for ``--resume``; without a finished
    run to protect they stay in place). With ``resume``, a partial run is continued in place of the finished
    one; without a partial run, ``resume`` continues the files in ``out`` as they are. ``names`` are claimed in
    the folder's manifest first, so the run's own unfinished files are never taken for someone else's."""
    recover_killed_run(out, names)
    manifest = out / MANIFEST
    saved = manifest.read_bytes() if manifest.is_file() else None  # put back byte for byte on failure
    claim(out, names)
    with _signals_deferred():  # Ctrl-C waits until the finished run is wholly aside
        if resume and (out / PARTIAL).is_dir():
            _move_entries(out, out / PREVIOUS, _present(out, names))
            _move_entries(out / PARTIAL, out, _present(out / PARTIAL, names))
            shutil.rmtree(out / PARTIAL, ignore_errors=True)
        elif not resume and _present(out, names):
            _move_entries(out, out / PREVIOUS, _present(out, names))
        if (out / PREVIOUS).is_dir():
            (out / PREVIOUS / _ASIDE_DONE).touch()  # recover_killed_run: what is in ``out`` now is the new run's
    untouched = _stamp(out, names)
    try:
        yield
    except BaseException:
        if not (out / PREVIOUS).is_dir() and _present(out, names):
            if _stamp(out, names) == untouched and saved is not None:  # refused before writing: no trace either
                atomic_write(manifest, lambda fh: fh.write(saved))
            raise  # nothing finished was moved aside: the partial run stays in place (claimed) for --resume
        try:
            with _signals_deferred():  # a second Ctrl-C waits until the finished run is back
                _park(out, names)
                _restore(out, names)
            if saved is None:  # a refusal before anything was written leaves no trace
                manifest.unlink(missing_ok=True)
            else:
                atomic_write(manifest, lambda fh: fh.write(saved))
        except OSError as exc:  # best effort: say where the files are
            log.warning("could not put the earlier run in %s back (%s); its files are in %s", out, exc, out / PREVIOUS)
        raise
    shutil.rmtree(out / PREVIOUS, ignore_errors=True)
    shutil.rmtree(out / PARTIAL, ignore_errors=True)


def _stamp(out: Path, names: Sequence[str]) -> list[tuple[str, int, int]]:
    """(name, inode, mtime) of the ``names`` present: equal stamps mean the run has not written any of them."""
    stamps = []
    for n in _present(out, names):
        st = os.lstat(out / n)
        stamps.append((n, st.st_ino, st.st_mtime_ns))
    return stamps


def claim(out: Path, names: Sequence[str]) -> None:
    """Record ``names`` in the folder's manifest before the run writes them in place (a checkpoint, a before-audit),
    so a later run knows them as tailaudit's even when this one never finishes."""
    current = read_manifest(out)
    missing = [n for n in names if n not in current and _is_plain_name(n)]
    if not missing:
        return
    write_json(out / MANIFEST, {"tool": "tailaudit", "files": current + missing})
