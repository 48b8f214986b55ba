"""results.json grows with the points and classes, not with C squared (issue 29, item 7).

A 3 000-class audit used to write a 220 MB results.json (two dense confusion matrices, pretty-printed)
that `report` then refused as above its 64 MiB limit. Above DENSE_CLASSES_MAX classes the matrices are
sparse and the text compact; the writer refuses what its reader would refuse (one limit, MAX_JSON_BYTES).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from audit.bounds import MAX_JSON_BYTES
from audit.errors import ResultsError
from audit.contract.files import DENSE_CLASSES_MAX, compact_confusions, write_json
from audit.contract.schema import check_written, load_results, read_results
from report_fixtures import make_results
from support import ROOT


def test_sparse_matrices_read_back_as_the_dense_ones(tmp_path):
    doc = make_results(DENSE_CLASSES_MAX + 20)
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 3, (DENSE_CLASSES_MAX + 20,) * 2) * (rng.random((DENSE_CLASSES_MAX + 20,) * 2) < 0.05)
    doc["summary"]["clean_confusion"] = clean.tolist()
    dense = json.loads(json.dumps(doc))
    assert compact_confusions(doc)
    assert "matrix" not in doc["summary"]["confusion"] and doc["summary"]["confusion"]["sparse"]["entries"]
    check_written(doc)  # the writer's own check accepts the sparse form
    write_json(tmp_path / "results.json", doc, indent=None, max_bytes=MAX_JSON_BYTES)
    typed = load_results(tmp_path / "results.json")
    assert typed.summary.confusion.matrix == dense["summary"]["confusion"]["matrix"]
    assert typed.summary.clean_confusion == clean.tolist()
    # a cell outside the classes is damage, named as such
    doc["summary"]["confusion"]["sparse"]["entries"].append([0, DENSE_CLASSES_MAX + 20, 1])
    with pytest.raises(ResultsError, match="summary.confusion.sparse is not a"):
        read_results(doc)


def test_small_audits_keep_dense_matrices(tmp_path):
    doc = make_results(10)
    assert not compact_confusions(doc) and isinstance(doc["summary"]["confusion"]["matrix"], list)


def test_the_writer_refuses_what_the_reader_would_refuse(tmp_path):
    with pytest.raises(ResultsError, match=r"above the 1,000 bytes tailaudit reads back.*nothing of this run"):
        write_json(tmp_path / "results.json", make_results(10), max_bytes=1_000)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_a_3000_class_audit_renders(tmp_path):
    """A real audit of 3 000 classes (a linear model on 3x4x4 images, one point per class) through the Python
    API, then `report` through the CLI reads back what it wrote."""
    import tailaudit
    from audit.data import from_torch

    C = 3000
    torch.manual_seed(0)
    x, y = torch.rand(C, 3, 4, 4), torch.arange(C)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, C))
    with torch.no_grad():  # class i's image gets class i's largest logit
        net[1].weight.copy_(x.flatten(1) * 50 - 25)
        net[1].bias.zero_()
    counts = [max(1, int(1000 * 0.01 ** (i / (C - 1)))) for i in range(C)]
    data = from_torch(TensorDataset(x, y), classes=[f"c{i}" for i in range(C)], train_counts=counts)
    out = tmp_path / "run"
    config = tailaudit.AuditConfig(model=net, dataset=data, eps=1 / 255, steps=1, n_per_class=1, out=str(out),
                                   quiet=True, device="cpu", calibration_steps=0, threads=1)
    tailaudit.run_audit(config, formats=[])
    size = (out / "results.json").stat().st_size
    assert size < 10 * 2**20, size  # it was 220 MB; the reader's limit is 64 MiB
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert doc["summary"]["confusion"]["sparse"]["classes"] == C and isinstance(doc["summary"]["clean_confusion"], dict)
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "report", str(out / "results.json"), "--format",
                           "html"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "3000 classes" in (out / "report.html").read_text(encoding="utf-8")
