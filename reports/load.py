"""Load and validate ``results.json`` files, and check that two runs can be compared."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from audit.errors import ResultsError
from audit.contract.model import AttackEntry, AuditResults, ThreatModel
from audit.contract.schema import load_results, needs_grading, read_results
from audit.contract.codec import to_json

LOG = logging.getLogger(__name__)

__all__ = ["check_comparable", "coerce_results", "load_results", "resolve_inside"]

Results = AuditResults | Mapping[str, Any]  # typed results, or a parsed results.json (checked, then migrated)
# fills the verdict of a file written before verdicts were stored: the verdict rules live on the audit side
# (audit.checks.verdict.grade_on_load), so the application layer hands them in, as the engines are handed the renderer
Grader = Callable[[AuditResults], AuditResults]


def typed_results(results: Results, what: str | None = None) -> AuditResults:
    """``results`` as :class:`AuditResults`: a parsed results.json is checked against the schema (``what`` names it
    in the error) and migrated, never changed; typed results are returned as they are (reports only read them)."""
    return results if isinstance(results, AuditResults) else read_results(results, what)


def _graded(typed: AuditResults, where: str, grade: Optional[Grader]) -> AuditResults:
    """A migrated file's results with the verdict its figures get when the file predates stored verdicts."""
    if not needs_grading(typed):
        return typed
    if grade is None:
        raise ResultsError(f"{where} was written before verdicts were stored and must be graded when read: render "
                           "it with `cli.py report` or tailaudit.render, which grade it")
    return grade(typed)


def coerce_results(results: str | Path | Results, default_dir: Path,
                   grade: Optional[Grader] = None) -> tuple[AuditResults, Path]:
    """Return (typed results, folder its side files live in) for a path, typed results or a parsed results.json.

    Results in memory have no folder of their own: their side files are looked up in ``default_dir``
    (the output folder). A file or parsed document that predates stored verdicts is graded by ``grade``
    (the application layer's ``audit.checks.verdict.grade_on_load``); without one it is refused. Typed results are
    taken as they are.
    """
    if isinstance(results, (str, Path)):
        path = Path(results)
        return _graded(load_results(path), str(path), grade), path.resolve().parent
    if isinstance(results, AuditResults):
        return results, Path(default_dir).resolve()
    return _graded(typed_results(results), "the results", grade), Path(default_dir).resolve()


_NOT_SETTINGS = ("name", "display_name")


def _attack_settings(results: AuditResults) -> list[dict[str, Any]]:
    """Every recorded attack parameter (kind, budgets, step sizes, temperature, ...), in cascade order."""
    return [{k: v for k, v in to_json(a).items() if k not in _NOT_SETTINGS} for a in results.attacks]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _settings_equal(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _params(attack: AttackEntry) -> str:
    """'steps=20, step_size=0.007843': an attack's parameters as they were recorded."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in attack.extra.items())


def _describe_attacks(results: AuditResults) -> str:
    return " then ".join(f"{a.kind}({_params(a)})" for a in results.attacks)


def _threat(side: str, t: ThreatModel) -> str:
    return f"{side} {t.norm} eps {t.eps_text or t.eps}"


def _differences(before: AuditResults, after: AuditResults, b: str, a: str) -> list[str]:
    """What keeps two runs from being compared fairly, in words (empty: nothing)."""
    diffs: list[str] = []
    tb, ta = before.threat_model, after.threat_model
    if tb.norm != ta.norm or not _close(tb.eps, ta.eps):
        diffs.append(f"threat model ({_threat(b, tb)}, {_threat(a, ta)})")
    if not _settings_equal(_attack_settings(before), _attack_settings(after)):
        diffs.append(f"attack settings ({b} {_describe_attacks(before)}, {a} {_describe_attacks(after)})")
    sb, sa = before.suite or "quick", after.suite or "quick"
    if sb != sa:
        diffs.append(f"attack suite ({b} {sb}, {a} {sa})")
    gb, ga = before.mode_label or "white-box", after.mode_label or "white-box"
    if gb != ga:
        diffs.append(f"gradient access ({b} {gb}, {a} {ga})")
    if before.mode != after.mode:
        diffs.append(f"attack mode ({b} {before.mode}, {a} {after.mode})")
    return diffs + _data_differences(before, after, b, a)


def _data_differences(before: AuditResults, after: AuditResults, b: str, a: str) -> list[str]:
    """Where the two runs' evaluation data differ: dataset, classes, evaluated points."""
    diffs: list[str] = []
    db, da = before.dataset, after.dataset
    if db.name != da.name:
        diffs.append(f"dataset ({b} {db.name}, {a} {da.name})")
    if list(db.classes) != list(da.classes):
        diffs.append(f"classes ({b} {len(db.classes)}, {a} {len(da.classes)}, or renamed)")
    if db.n_eval != da.n_eval:
        diffs.append(f"evaluation size ({b} {db.n_eval} points, {a} {da.n_eval})")
    if db.eval_indices_sha256 != da.eval_indices_sha256:
        diffs.append("evaluated test points (eval_indices_sha256 differs)")
    return diffs


def check_comparable(before: Results, after: Results, sides: tuple[str, str] = ("before", "after")) -> None:
    """Raise :class:`ResultsError` naming what differs when two runs cannot be compared fairly.

    Compared: threat model, attack settings and order, cascade/independent mode, dataset name,
    class list, evaluated points (count and fingerprint). ``sides`` names the two runs in the message
    (a repair's "before"/"after", or two models' names). A parsed results.json is checked against the
    schema first.
    """
    b, a = sides
    diffs = _differences(typed_results(before, f"the '{b}' results"), typed_results(after, f"the '{a}' results"), b, a)
    if diffs:
        raise ResultsError(
            "cannot compare these runs, they differ in " + "; ".join(diffs)
            + ": re-run both audits with the same threat model, attacks and evaluation set"
        )


def resolve_inside(folder: Path, relative: str | None) -> Path | None:
    """Resolve ``relative`` inside ``folder``; None when empty or when it escapes the folder."""
    if not relative:
        return None
    base = folder.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        LOG.warning("refusing to read %s: it lies outside the results folder %s", relative, base)
        return None
    return target
