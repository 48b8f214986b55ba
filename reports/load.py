"""Load and validate ``results.json`` files, and check that two runs can be compared."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping


from audit.errors import ResultsError
from audit.schema import load_results, migrate, validate_results

LOG = logging.getLogger(__name__)

__all__ = ["check_comparable", "coerce_results", "load_results", "resolve_inside"]


def coerce_results(results: str | Path | Mapping[str, Any], default_dir: Path) -> tuple[dict[str, Any], Path]:
    """Return (results dict, folder its side files live in) for a path or an in-memory dict.

    A dict is deep-copied (the caller's object is never changed); its side files are looked up
    in ``default_dir`` (the output folder), since it has no folder of its own.
    """
    if isinstance(results, (str, Path)):
        path = Path(results)
        return load_results(path), path.resolve().parent
    results = migrate(results)  # a copy: the caller's object is never changed
    validate_results(results)
    return results, Path(default_dir).resolve()


_NOT_SETTINGS = ("name", "display_name")


def _attack_settings(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every recorded attack parameter (kind, budgets, step sizes, temperature, ...), in cascade order."""
    return [{k: v for k, v in a.items() if k not in _NOT_SETTINGS} for a in results["attacks"]]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _settings_equal(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _describe_attacks(results: Mapping[str, Any]) -> str:
    parts = []
    for a in results["attacks"]:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in a.items() if k not in _NOT_SETTINGS + ("kind", "gradient_free"))
        parts.append(f"{a.get('kind')}({params})")
    return " then ".join(parts)


def check_comparable(before: Mapping[str, Any], after: Mapping[str, Any],
                     sides: tuple[str, str] = ("before", "after")) -> None:
    """Raise :class:`ResultsError` naming what differs when two runs cannot be compared fairly.

    Compared: threat model, attack settings and order, cascade/independent mode, dataset name,
    class list, evaluated points (count and fingerprint). ``sides`` names the two runs in the message
    (a repair's "before"/"after", or two models' names).
    """
    validate_results(before, f"the '{sides[0]}' results")
    validate_results(after, f"the '{sides[1]}' results")
    b, a = sides
    diffs: list[str] = []
    tb, ta = before["threat_model"], after["threat_model"]
    if tb.get("norm") != ta.get("norm") or not _close(tb.get("eps"), ta.get("eps")):
        diffs.append(
            f"threat model ({b} {tb.get('norm')} eps {tb.get('eps_text') or tb.get('eps')}, "
            f"{a} {ta.get('norm')} eps {ta.get('eps_text') or ta.get('eps')})"
        )
    if not _settings_equal(_attack_settings(before), _attack_settings(after)):
        diffs.append(f"attack settings ({b} {_describe_attacks(before)}, {a} {_describe_attacks(after)})")
    if before.get("suite", "quick") != after.get("suite", "quick"):
        diffs.append(f"attack suite ({b} {before.get('suite', 'quick')}, {a} {after.get('suite', 'quick')})")
    if before.get("mode_label", "white-box") != after.get("mode_label", "white-box"):
        diffs.append(f"gradient access ({b} {before.get('mode_label', 'white-box')}, "
                     f"{a} {after.get('mode_label', 'white-box')})")
    if before.get("mode") != after.get("mode"):
        diffs.append(f"attack mode ({b} {before.get('mode')}, {a} {after.get('mode')})")
    db, da = before["dataset"], after["dataset"]
    if db.get("name") != da.get("name"):
        diffs.append(f"dataset ({b} {db.get('name')}, {a} {da.get('name')})")
    if list(db.get("classes", [])) != list(da.get("classes", [])):
        diffs.append(f"classes ({b} {len(db.get('classes', []))}, {a} {len(da.get('classes', []))}, or renamed)")
    if db.get("n_eval") != da.get("n_eval"):
        diffs.append(f"evaluation size ({b} {db.get('n_eval')} points, {a} {da.get('n_eval')})")
    if db.get("eval_indices_sha256") != da.get("eval_indices_sha256"):
        diffs.append("evaluated test points (eval_indices_sha256 differs)")
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
