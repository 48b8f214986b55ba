"""The typed results (audit/contract/model.py): results.json is their serialisation, read back without loss."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from support import ROOT

from audit.errors import ResultsError
from audit.contract.model import AuditResults, ClassResult, Verdict
from audit.contract.schema import check_written, load_results, migrate
from audit.contract.codec import DocumentError
from audit.checks.verdict import grade_on_load, load_graded

OLDER = sorted((ROOT / "tests" / "data" / "older_results").rglob("*.json"))
OLDER_RESULTS = [p for p in OLDER if p.name.startswith("audit-") or p.name == "results.json"]


def _missing(small, big, where="$") -> list[str]:
    """Where ``big`` lacks a value ``small`` holds (a null in ``small`` may be absent in ``big`` and vice versa)."""
    if isinstance(small, dict) and isinstance(big, dict):
        return [m for k, v in small.items() if v is not None
                for m in (_missing(v, big[k], f"{where}.{k}") if k in big else [f"{where}.{k}"])]
    if isinstance(small, list) and isinstance(big, list) and len(small) == len(big):
        return [m for i, (a, b) in enumerate(zip(small, big)) for m in _missing(a, b, f"{where}[{i}]")]
    return [] if small == big else [where]


def test_an_audit_reads_back_exactly(tiny_audit):
    """What the audit wrote is what the typed results give back: the same keys, in the same order."""
    folder, _ = tiny_audit
    document = json.loads((folder / "results.json").read_text())
    typed = AuditResults.from_json(document)
    assert isinstance(typed.per_class[0], ClassResult) and isinstance(typed.verdict, Verdict)
    assert typed.to_json() == document
    assert json.dumps(typed.to_json()) == json.dumps(document)  # key order too
    assert load_results(folder / "results.json") == typed


@pytest.mark.parametrize("path", OLDER_RESULTS, ids=lambda p: str(p.relative_to(ROOT / "tests" / "data")))
def test_older_files_read_back_without_loss(path: Path):
    """Every kept older file: typed after migration (a verdict computed for a file without one), written back as a
    valid file that holds every figure it had."""
    stored = json.loads(path.read_text())
    typed = load_graded(path)
    assert typed == grade_on_load(migrate(stored)) and typed.verdict is not None
    written = typed.to_json()
    check_written(written)
    (stored.get("verdict") or {}).pop("label", None)  # derived from the code, no longer stored
    assert _missing(stored, written) == []
    assert AuditResults.from_json(written) == typed


def test_keys_of_a_newer_version_are_kept(tiny_audit):
    folder, document = tiny_audit
    newer = copy.deepcopy(document)
    newer["from_a_newer_tailaudit"] = {"figure": 0.5}
    newer["per_class"][0]["extra_metric"] = [1, 2]
    newer["summary"]["clean"]["median"] = 0.25
    typed = AuditResults.from_json(newer)
    assert typed.per_class[0].extra == {"extra_metric": [1, 2]}
    assert typed.to_json() == newer


def test_typed_access_matches_the_document(tiny_audit):
    _, document = tiny_audit
    typed = AuditResults.from_json(document)
    wc = document["summary"]["robust"]["worst_case"]
    assert typed.worst_case.overall == wc["overall"] and typed.worst_case.headline == wc["overall"]
    assert typed.summary.clean.group("tail") == document["summary"]["clean"]["groups"]["tail"]
    assert [c.worst_case for c in typed.per_class] == [r["robust_acc"]["worst_case"] for r in document["per_class"]]
    assert typed.class_names == document["dataset"]["classes"]
    assert typed.eps_text == document["threat_model"]["eps_text"]
    assert typed.attacks[0].param("steps") == document["attacks"][0]["steps"]


def test_a_document_missing_a_required_section_is_refused(tiny_audit, tmp_path):
    _, document = tiny_audit
    broken = copy.deepcopy(document)
    del broken["per_class"][0]["robust_acc"]
    with pytest.raises(DocumentError, match=r"\$\.per_class\[0\] lacks 'robust_acc'"):
        AuditResults.from_json(broken)
    (tmp_path / "results.json").write_text(json.dumps(broken))
    with pytest.raises(ResultsError):  # the schema check on read names it first
        load_results(tmp_path / "results.json")


@pytest.mark.parametrize("edit,where", [
    (lambda d: d["sanity"].__setitem__("large_eps", {"norm": "linf", "eps": 0.5}), r"\$\.sanity\.large_eps lacks 'n'"),
    (lambda d: d["model"]["preprocessing"].pop("input_size"), r"\$\.model\.preprocessing lacks 'input_size'"),
    (lambda d: d["sanity"]["zero_gradient"]["per_attack"].__setitem__("pgd", {}),
     r"\$\.sanity\.zero_gradient\.per_attack\.pgd lacks 'points'"),
], ids=["large-eps", "preprocessing", "zero-gradient"])
def test_a_section_the_schema_leaves_open_is_one_clear_line(tiny_audit, tmp_path, capsys, edit, where):
    """A file the schema lets through but the typed results cannot hold: the report command says where, exit 2."""
    import cli

    _, document = tiny_audit
    damaged = copy.deepcopy(document)
    edit(damaged)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(damaged))
    with pytest.raises(ResultsError, match=where):
        load_results(path)
    capsys.readouterr()
    assert cli.main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "re-run the audit" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()
