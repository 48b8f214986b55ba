"""repair.json, training_log.json and the folder manifest are typed (audit/contract/repair.py, issue 30 item 2): the
files a repair writes read back as the dataclasses and write out byte for byte, older files load through the one
migration point, and the reports read attributes, never string keys of a document."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from audit.contract.repair import Manifest, RepairDocument, TrainingLog, upgrade
from audit.contract.files import json_text
from audit.contract.schema import load_repair_file
from audit.contract.codec import from_json, to_json

ROOT = Path(__file__).resolve().parents[1]
OLDER = sorted(p for p in (ROOT / "tests" / "data" / "older_results").glob("repair-*") if p.is_dir())

# the keys reports/ modules still read with .get("..."), with the reason: maps keyed by data, not sections of a
# document (the results, repair and training documents are typed; the corruption figures too)
ALLOWED = {
    "audit_view.py": ("robust_ci95 is keyed by attack name (and worst_case)", {"worst_case"}),
    "compare_view.py": ("robust_ci95 is keyed by attack name (and worst_case)", {"worst_case"}),
    "examples.py": ("results.files names the side files by kind", {"examples"}),
}


def _get_keys(path: Path) -> set[str]:
    """The string keys read with ``.get("...")``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "get" and n.args and isinstance(n.args[0], ast.Constant)
            and isinstance(n.args[0].value, str)}


def test_reports_read_no_string_keys_of_documents():
    found = {p.name: _get_keys(p) for p in sorted((ROOT / "reports").glob("*.py"))}
    offending = {name: sorted(keys - ALLOWED.get(name, ("", set()))[1]) for name, keys in found.items()}
    offending = {name: keys for name, keys in offending.items() if keys}
    assert not offending, f"string-key reads of results/repair/training documents in reports/: {offending}"
    assert found["repair_view.py"] == set() and found["charts.py"] == set()
    stale = {name: sorted(keys - found.get(name, set())) for name, (_, keys) in ALLOWED.items()}
    assert not any(stale.values()), f"allowed keys no longer read (drop them): {stale}"


@pytest.mark.parametrize("folder", OLDER, ids=[p.name for p in OLDER])
def test_older_repair_files_load_typed(folder):
    repair, log = load_repair_file(folder / "repair.json"), load_repair_file(folder / "training_log.json")
    assert isinstance(repair, RepairDocument) and isinstance(log, TrainingLog)
    raw = json.loads((folder / "repair.json").read_text())
    assert repair.outcome.code == raw["outcome"]["code"] and repair.outcome.label == raw["outcome"]["label"]
    assert repair.outcome.tests is None and repair.split.n_audit is None  # written before the paired tests
    assert [e.step for e in log.epochs] == [e["step"] for e in json.loads((folder / "training_log.json").read_text())
                                           ["epochs"]]


def test_a_sentence_selection_and_null_lists_are_upgraded():
    """Before budgets were recorded the selection was a sentence; the schema lets lists be null."""
    older = {"method": "reat", "selection": "highest robust accuracy", "epochs": None, "divergences": None,
             "best_epoch": 3}
    log = TrainingLog.from_json(older)
    assert log.selection.rule == "highest robust accuracy" and log.epochs == [] and log.divergences == []
    assert older["selection"] == "highest robust accuracy"  # the caller's object is not changed
    assert upgrade({"selection": "x"}, "repair")["selection"] == {"rule": "x"}


def test_a_written_document_round_trips_byte_for_byte():
    """Fields are declared in the order the writer has always used: read and written again, the same text."""
    folder = OLDER[-1]
    for name, model in (("repair.json", RepairDocument), ("training_log.json", TrainingLog)):
        doc = model.from_json(json.loads((folder / name).read_text()))
        again = model.from_json(doc.to_json())
        assert json_text(again.to_json()) == json_text(doc.to_json())
    current = {"tool": {"name": "tailaudit"}, "method": "reat", "budget": {"steps_total": 2, "steps_per_epoch": 1,
               "source": "auto", "rule": "r", "eval_steps": [1, 2], "search_steps": 0, "epochs": 2,
               "epochs_exact": 2.0, "later": 1}, "outcome": {"code": "no-change", "headline": "h", "reasons": [],
               "actions": [], "clean_kept": 1.0, "worst_case_change": 0.0, "tail_change": None, "clean_change": 0.0,
               "tests": None, "significance": "s", "label": "No measurable change"}}
    text = json_text(current)
    doc = RepairDocument.from_json(json.loads(text))
    assert doc.budget.extra == {"later": 1}  # a newer key is kept, written back in place
    written = doc.to_json()
    assert json_text({k: written[k] for k in current}) == text


def test_unknown_outcome_code_is_refused_with_the_file_named(tmp_path):
    from audit.errors import ResultsError

    path = tmp_path / "repair.json"
    path.write_text(json.dumps({"outcome": {"code": "great", "headline": "h"}}))
    with pytest.raises(ResultsError, match="repair.json.*great"):
        load_repair_file(path)


def test_manifest_is_typed():
    m = from_json(Manifest, {"tool": "tailaudit", "files": ["a.json"], "newer": True})
    assert m.files == ["a.json"] and to_json(m) == {"tool": "tailaudit", "files": ["a.json"], "newer": True}
