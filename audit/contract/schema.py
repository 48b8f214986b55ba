"""The results file's contract: its JSON Schema (``audit/contract/results.schema.json``, package data),
the structural checks a report relies on, and the migration of files older tailaudit wrote.

Torch-free and free of the verdict rules: a file written before verdicts were stored loads here with
``verdict`` None (:func:`needs_grading` says so) and is graded on the audit side
(``audit.checks.verdict.grade_on_load``), which the application layer applies when it loads results.

Every ``results.json`` is checked here twice: when a run writes it (:func:`check_written`, so
a tailaudit bug can never ship a file its own reports refuse) and when anything reads it
(:func:`load_results`). Field meanings: docs/results_schema.md.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ResultsError
from .codec import DocumentError
from .files import expand_confusions
from .jsonfile import read_json_file
from .model import APGDT_CANDIDATES, AuditResults
from .repair import RepairDocument, TrainingLog

LOG = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # the results.json layout this tailaudit writes and reads

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
    ("summary", "robust"),
)
_PER_CLASS_REQUIRED = ("name", "train_count", "group", "n_eval", "clean_acc", "robust_acc")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _where(source: str | Path | None) -> str:
    return str(source) if source is not None else "the results"


SCHEMA_FILE = Path(__file__).resolve().parent / "results.schema.json"  # package data: ships in the wheel
# repair.json and training_log.json of a repair folder (package data too): one definition each in $defs
REPAIR_FILES_SCHEMA = Path(__file__).resolve().parent / "repair_files.schema.json"
_RESULTS_FILE = ("a tailaudit results file", "re-run the audit")


@functools.lru_cache(maxsize=4)
def _validator(file: Path = SCHEMA_FILE, definition: str | None = None) -> Any:
    import jsonschema

    schema = json.loads(file.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    defs = schema.get("$defs", {})
    return jsonschema.Draft202012Validator(_inline_refs(defs[definition] if definition else schema, defs))


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


def check_against(data: Any, validator: Any, where: str, kind: str, fix: str) -> None:
    """:class:`ResultsError` naming the first field of ``data`` that ``validator`` refuses, as a JSON path;
    ``kind`` says what the file should be ("a tailaudit results file"), ``fix`` what to do."""
    import jsonschema

    errors = list(validator.iter_errors(data))
    first = min(errors, key=lambda e: tuple(f"{p:012d}" if isinstance(p, int) else str(p) for p in e.absolute_path),
                default=None)  # the first bad field in path order (items in order), then its most specific cause
    error = jsonschema.exceptions.best_match([first]) if first is not None else None
    if error is not None and error.validator == "required" and isinstance(error.instance, Mapping):
        missing = next((k for k in error.validator_value if k not in error.instance), "?")
        raise ResultsError(f"{where} lacks {_json_path([*error.absolute_path, missing])}; it is incomplete or "
                           f"not {kind}, {fix}")
    if error is not None:
        message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
        raise ResultsError(f"{where}: {_json_path(error.absolute_path)} is invalid ({message}); it is damaged or "
                           f"not {kind}, {fix}")


def check_schema(results: Any, source: str | Path | None = None) -> None:
    """Validate against audit/contract/results.schema.json; :class:`ResultsError` naming the first bad field."""
    where = _where(source)
    bad = _first_non_finite(results)
    if bad is not None:
        raise ResultsError(f"{where}: {bad} is NaN or infinite; the file is damaged, re-run the audit")
    check_against(results, _validator(), where, *_RESULTS_FILE)


def _check_attacks(results: Mapping[str, Any], where: str) -> bool:
    """Whether the file is a corruption-only audit (``--attacks none``: suite "none", no attacks, no robust
    figures, corruption figures); any other file must list its attacks and carry the worst case."""
    if not isinstance(results["attacks"], list):
        raise ResultsError(f"{where}: attacks is not a list; re-run the audit")
    if results["attacks"]:
        if "worst_case" not in results["summary"]["robust"]:
            raise ResultsError(f"{where} lacks 'summary.robust.worst_case'; it is incomplete, re-run the audit")
        return False
    if results.get("suite") != "none" or not results["summary"].get("corruptions"):
        raise ResultsError(f"{where} lists no attacks; re-run the audit")
    robust = [i for i, row in enumerate(results["per_class"]) if isinstance(row, Mapping) and row.get("robust_acc")]
    if results["summary"]["robust"] or robust:
        raise ResultsError(f"{where} ran no attack (--attacks none) but carries robust figures; the file is "
                           "inconsistent, re-run the audit")
    return True


def validate_results(results: Mapping[str, Any], source: str | Path | None = None) -> None:
    """Raise :class:`ResultsError` unless ``results`` is a schema-1 results dict a report can render."""
    where = _where(source)
    if not isinstance(results, Mapping):
        raise ResultsError(f"{where} is not a JSON object; point at a results.json written by `cli.py audit`")
    version = results.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ResultsError(f"{where} has schema_version {version}, written by a newer tailaudit; this one reads "
                           f"versions up to {SCHEMA_VERSION}: upgrade tailaudit (pip install -U tailaudit)")
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
    attack_free = _check_attacks(results, where)
    names = [a.get("name") for a in results["attacks"]] + ([] if attack_free else ["worst_case"])
    for i, row in enumerate(per_class):
        missing = [k for k in _PER_CLASS_REQUIRED if k not in row]
        if missing:
            raise ResultsError(f"{where}: per_class[{i}] lacks {', '.join(missing)}; re-run the audit")
        absent = [n for n in names if n not in row["robust_acc"]]
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
    confusion = results["summary"].get("confusion") or {}
    for name, matrix in (("summary.confusion.matrix", confusion.get("matrix")),
                         ("summary.confusion.sparse", confusion.get("sparse")),
                         ("summary.clean_confusion", results["summary"].get("clean_confusion"))):
        if matrix is not None and not _counts_fit(matrix, n):
            raise ResultsError(f"{where}: {name} is not a {n} x {n} table of counts; the file is damaged, re-run "
                               "the audit")
    groups = results["dataset"].get("groups") or {}
    for name, members in groups.items():
        if isinstance(members, list) and any(isinstance(c, int) and c >= n for c in members):
            raise ResultsError(f"{where}: dataset.groups.{name} names a class index >= {n}; the file is "
                               "inconsistent, re-run the audit")


def _counts_fit(matrix: Any, n: int) -> bool:
    """A dense ``n`` x ``n`` list of count rows, or a sparse_counts object of ``n`` classes with cells inside."""
    if isinstance(matrix, Mapping):  # the schema checked the types of its entries
        cells = np.asarray(matrix.get("entries") or [], dtype=np.int64).reshape(-1, 3)
        return matrix.get("classes") == n and bool(((cells[:, :2] >= 0) & (cells[:, :2] < n)).all())
    if not (isinstance(matrix, list) and len(matrix) == n and all(isinstance(r, list) and len(r) == n for r in matrix)):
        return False
    return all(type(v) is int and 0 <= v <= 10**12 for row in matrix for v in row)


def load_results(path: str | Path) -> AuditResults:
    """Read, validate and migrate a results.json; :class:`ResultsError` when missing, invalid or of another schema."""
    path = Path(path)
    results = read_json_file(path, ResultsError, what="results file", fix="the file is damaged, re-run the audit",
                             missing="not found; check the path or run `cli.py audit` first")
    typed = read_results(results, path)
    LOG.debug("loaded %s (%d classes)", path, len(typed.per_class))
    return typed


def read_results(document: Any, source: str | Path | None = None) -> AuditResults:
    """A parsed results.json, checked against the schema (``source`` names it in the error) and migrated:
    what :func:`load_results` does after reading the file, for a document already in memory."""
    validate_results(document, source)
    return migrate(document, source)


def migrate(results: Mapping[str, Any], source: str | Path | None = None) -> AuditResults:
    """Validated ``results`` (a parsed results.json) as this version's typed results: older files are upgraded,
    not refused.

    Files written before APGD-T recorded its target ranking get AutoAttack's rule (the only one
    there was), so they compare with newer runs. Schema-1 files written before verdicts were stored
    (tailaudit 0.1 before its verdict rules) keep ``verdict`` None here (:func:`needs_grading`); the audit
    side grades them (``audit.checks.verdict.grade_on_load``: ``verdict.computed_on_load`` names the version that
    computed it, and reports say so), so a report shows one verdict from one source.
    The caller's object is never changed.
    """
    out = copy.deepcopy(dict(results))
    expand_confusions(out)  # sparse matrices (more than 100 classes) are dense in the typed results
    for attack in out.get("attacks") or []:  # APGD-T's target ranking, recorded since it has a choice
        if isinstance(attack, dict) and attack.get("kind") == "apgd-t" and "ranking" not in attack:
            attack.update(ranking="logit", candidates=APGDT_CANDIDATES)
    _record_black_box(out)
    try:
        typed = AuditResults.from_json(out)
    except DocumentError as exc:  # the schema leaves some sections open; the typed results do not
        raise ResultsError(f"{_where(source)}: {exc}; the file is damaged or incomplete, re-run the audit") from None
    return typed


def needs_grading(results: AuditResults) -> bool:
    """Whether loaded results lack a verdict the rules would stand by: a file written before verdicts were stored
    (none), or a black-box file graded before black-box grades said "at most" (graded again, and said so)."""
    v = results.verdict
    return v is None or (results.suite == "black-box" and not v.upper_bound and v.graded)


def _record_black_box(out: dict[str, Any]) -> None:
    """Files written before black-box runs were recorded as such stored the suite asked for ("quick"): record what
    ran ("black-box") and why, from the stored config or the loader's warning."""
    if not str(out.get("mode_label") or "white-box").startswith("black-box") or out.get("suite") == "black-box":
        return
    out["suite"] = "black-box"
    if out.get("black_box_reason"):
        return
    if (out.get("config") or {}).get("black_box"):
        out["black_box_reason"] = "asked for with --black-box"
        return
    warned = next((w for w in out.get("warnings") or [] if isinstance(w, str) and "black-box mode" in w), None)
    out["black_box_reason"] = warned.split(";")[0] if warned else "the model could not be converted for gradients"


def check_written(results: AuditResults | Mapping[str, Any]) -> None:
    """Refuse to write a results file this tailaudit could not read back: a bug, caught before any file exists."""
    document = results.to_json() if isinstance(results, AuditResults) else results
    try:
        validate_results(document, "the results being written")
    except ResultsError as exc:
        raise ResultsError(f"{exc} (this is a tailaudit bug: please report it with the command line)") from None


# what each file of a repair folder is for, and what to do when it is damaged (docs/bad_input.md)
REPAIR_FILES = {
    "repair.json": ("repair", "re-run the repair, or remove the file to compare the two results without the "
                              "repair's training section"),
    "training_log.json": ("training_log", "re-run the repair, or remove the file to render the repair without "
                                          "its per-epoch chart"),
}


def load_repair_file(path: str | Path) -> RepairDocument | TrainingLog | None:
    """``repair.json`` or ``training_log.json`` of a repair folder, read within audit/contract/jsonfile.py's caps,
    checked against audit/contract/repair_files.schema.json and typed (:mod:`audit.contract.repair`, older files
    upgraded); None when absent. A file that is there but damaged (unreadable, too large or deep, a field of the
    wrong type) is a :class:`ResultsError` naming the file and the field: both are optional, so the message says to
    remove it to render without it."""
    path = Path(path)
    _, fix = REPAIR_FILES[path.name]
    if not os.path.lexists(path):
        return None
    data = read_json_file(path, ResultsError, what="repair file", fix=fix)
    return read_repair_document(data, path.name, path)


def read_repair_document(document: Any, name: str, source: str | Path | None = None) -> RepairDocument | TrainingLog:
    """A parsed ``repair.json`` or ``training_log.json`` (``name``), checked against its schema and typed: what
    :func:`load_repair_file` does after reading the file, for a document already in memory."""
    definition, fix = REPAIR_FILES[name]
    where = str(source) if source is not None else name
    check_against(document, _validator(REPAIR_FILES_SCHEMA, definition), where, f"tailaudit's {name}", fix)
    model = RepairDocument if definition == "repair" else TrainingLog
    try:
        return model.from_json(document)
    except DocumentError as exc:  # the schema leaves sections open; the typed documents do not
        raise ResultsError(f"{where}: {exc}; {fix}") from None
