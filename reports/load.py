"""Load and validate ``results.json`` files, and check that two runs can be compared."""
from __future__ import annotations

import copy
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from audit.errors import ResultsError
from audit.jsonfile import read_json

LOG = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Keys a report needs; anything else in results.json is optional.
_REQUIRED: tuple[tuple[str, ...], ...] = (
    ("model", "spec"),
    ("dataset", "name"),
    ("dataset", "classes"),
    ("dataset", "n_eval"),
    ("threat_model", "norm"),
    ("threat_model", "eps"),
    ("attacks",),
    ("per_class",),
    ("summary", "clean"),
    ("summary", "robust", "worst_case"),
)
_PER_CLASS_REQUIRED = ("name", "train_count", "group", "n_eval", "clean_acc", "robust_acc")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _where(source: str | Path | None) -> str:
    return str(source) if source is not None else "the results"


SCHEMA_FILE = Path(__file__).resolve().parent / "results.schema.json"  # package data: ships in the wheel


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(_inline_refs(schema, schema.get("$defs", {})))


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    """The schema with its local ``#/$defs/...`` references substituted (same meaning, ~8x faster to check)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.split("/")[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _json_path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _first_non_finite(node: Any) -> str | None:
    """JSON path of the first NaN/infinite float in an in-memory dict (a parsed file cannot hold one)."""
    stack: list[tuple[Any, tuple]] = [(node, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return _json_path(path)
        if isinstance(value, Mapping):
            stack.extend((v, (*path, k)) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, (*path, i)) for i, v in reversed(list(enumerate(value))))
    return None


def check_schema(results: Any, source: str | Path | None = None) -> None:
    """Validate against reports/results.schema.json; :class:`ResultsError` naming the first bad field."""
    import jsonschema

    where = _where(source)
    bad = _first_non_finite(results)
    if bad is not None:
        raise ResultsError(f"{where}: {bad} is NaN or infinite; the file is damaged, re-run the audit")
    errors = list(_validator().iter_errors(results))
    first = min(errors, key=lambda e: tuple(f"{p:012d}" if isinstance(p, int) else str(p) for p in e.absolute_path),
                default=None)  # the first bad field in path order (items in order), then its most specific cause
    error = jsonschema.exceptions.best_match([first]) if first is not None else None
    if error is not None and error.validator == "required" and isinstance(error.instance, Mapping):
        missing = next((k for k in error.validator_value if k not in error.instance), "?")
        raise ResultsError(f"{where} lacks {_json_path([*error.absolute_path, missing])}; it is incomplete or "
                           "not a tailaudit results file, re-run the audit")
    if error is not None:
        message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
        raise ResultsError(f"{where}: {_json_path(error.absolute_path)} is invalid ({message}); it is damaged or "
                           "not a tailaudit results file, re-run the audit")


def validate_results(results: Mapping[str, Any], source: str | Path | None = None) -> None:
    """Raise :class:`ResultsError` unless ``results`` is a schema-1 results dict a report can render."""
    where = _where(source)
    if not isinstance(results, Mapping):
        raise ResultsError(f"{where} is not a JSON object; point at a results.json written by `cli.py audit`")
    version = results.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{where} has schema_version {_short(version)}, this tailaudit reads version {SCHEMA_VERSION}; "
            "re-run the audit with this version of tailaudit"
        )
    check_schema(results, source)
    for path in _REQUIRED:
        node: Any = results
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                raise ResultsError(
                    f"{where} lacks '{'.'.join(path)}'; it is incomplete or not a tailaudit results file, "
                    "re-run the audit"
                )
            node = node[key]
    per_class = results["per_class"]
    classes = results["dataset"]["classes"]
    if not isinstance(per_class, list) or not per_class:
        raise ResultsError(f"{where} has no per-class results; re-run the audit")
    if len(per_class) != len(classes):
        raise ResultsError(
            f"{where} has {len(per_class)} per-class entries for {len(classes)} classes; "
            "the file is inconsistent, re-run the audit"
        )
    if not isinstance(results["attacks"], list) or not results["attacks"]:
        raise ResultsError(f"{where} lists no attacks; re-run the audit")
    names = [a.get("name") for a in results["attacks"]]
    for i, row in enumerate(per_class):
        missing = [k for k in _PER_CLASS_REQUIRED if k not in row]
        if missing:
            raise ResultsError(f"{where}: per_class[{i}] lacks {', '.join(missing)}; re-run the audit")
        absent = [n for n in [*names, "worst_case"] if n not in row["robust_acc"]]
        if absent:
            raise ResultsError(
                f"{where}: per_class[{i}] has no robust accuracy for {', '.join(map(str, absent))}; re-run the audit"
            )
    n = len(per_class)
    for key in ("clean", *results["summary"]["robust"]):
        node = results["summary"]["clean"] if key == "clean" else results["summary"]["robust"][key]
        for field in ("worst_class", "best_class"):
            if node.get(field) is not None and node[field] >= n:
                raise ResultsError(f"{where}: summary {key} {field} is {node[field]} but there are {n} classes; "
                                   "the file is inconsistent, re-run the audit")
    matrix = (results["summary"].get("confusion") or {}).get("matrix")
    if matrix is not None:
        ok = len(matrix) == n and all(isinstance(r, list) and len(r) == n for r in matrix)
        if ok:
            arr = np.asarray(matrix, dtype=object)
            ok = all(type(v) is int and 0 <= v <= 10**12 for v in arr.ravel())
        if not ok:
            raise ResultsError(f"{where}: summary.confusion.matrix is not a {n} x {n} table of counts; the file "
                               "is damaged, re-run the audit")
    groups = results["dataset"].get("groups") or {}
    for name, members in groups.items():
        if isinstance(members, list) and any(isinstance(c, int) and c >= n for c in members):
            raise ResultsError(f"{where}: dataset.groups.{name} names a class index >= {n}; the file is "
                               "inconsistent, re-run the audit")


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results.json; :class:`ResultsError` when missing, invalid or of another schema."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"results file not found: {path}; check the path or run `cli.py audit` first")
    try:
        results = read_json(path)
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from None
    except ValueError as exc:
        raise ResultsError(f"{path} cannot be used: {exc}; the file is damaged, re-run the audit") from None
    validate_results(results, path)
    LOG.debug("loaded %s (%d classes)", path, len(results["per_class"]))
    return results


def coerce_results(results: str | Path | Mapping[str, Any], default_dir: Path) -> tuple[dict[str, Any], Path]:
    """Return (results dict, folder its side files live in) for a path or an in-memory dict.

    A dict is deep-copied (the caller's object is never changed); its side files are looked up
    in ``default_dir`` (the output folder), since it has no folder of its own.
    """
    if isinstance(results, (str, Path)):
        path = Path(results)
        return load_results(path), path.resolve().parent
    validate_results(results)
    return copy.deepcopy(dict(results)), Path(default_dir).resolve()


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


def check_comparable(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Raise :class:`ResultsError` naming what differs when two runs cannot be compared fairly.

    Compared: threat model, attack settings and order, cascade/independent mode, dataset name,
    class list, evaluated points (count and fingerprint).
    """
    validate_results(before, "the 'before' results")
    validate_results(after, "the 'after' results")
    diffs: list[str] = []
    tb, ta = before["threat_model"], after["threat_model"]
    if tb.get("norm") != ta.get("norm") or not _close(tb.get("eps"), ta.get("eps")):
        diffs.append(
            f"threat model (before {tb.get('norm')} eps {tb.get('eps_text') or tb.get('eps')}, "
            f"after {ta.get('norm')} eps {ta.get('eps_text') or ta.get('eps')})"
        )
    if not _settings_equal(_attack_settings(before), _attack_settings(after)):
        diffs.append(f"attack settings (before {_describe_attacks(before)}, after {_describe_attacks(after)})")
    if before.get("suite", "quick") != after.get("suite", "quick"):
        diffs.append(f"attack suite (before {before.get('suite', 'quick')}, after {after.get('suite', 'quick')})")
    if before.get("mode_label", "white-box") != after.get("mode_label", "white-box"):
        diffs.append(f"gradient access (before {before.get('mode_label', 'white-box')}, "
                     f"after {after.get('mode_label', 'white-box')})")
    if before.get("mode") != after.get("mode"):
        diffs.append(f"attack mode (before {before.get('mode')}, after {after.get('mode')})")
    db, da = before["dataset"], after["dataset"]
    if db.get("name") != da.get("name"):
        diffs.append(f"dataset (before {db.get('name')}, after {da.get('name')})")
    if list(db.get("classes", [])) != list(da.get("classes", [])):
        diffs.append(f"classes (before {len(db.get('classes', []))}, after {len(da.get('classes', []))}, or renamed)")
    if db.get("n_eval") != da.get("n_eval"):
        diffs.append(f"evaluation size (before {db.get('n_eval')} points, after {da.get('n_eval')})")
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
