"""The in-memory API, as a notebook uses it: an ``nn.Module`` built in Python and a torch ``Dataset``.

The same network saved to ONNX (the old exporter's numeric names, as users' files come) and
audited from the command line must give the same figures on the same points.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import cli
import tailaudit
from audit.data import from_torch, load_dataset
from audit.errors import DatasetError, ModelLoadError
from audit.contract.model import AuditResults
from audit.contract.schema import load_results
from support import DEMO as DEMO_ONNX


class SmallNet(nn.Module):
    """A digits classifier as someone would write it in a notebook (normalisation outside: mean/std given)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(8 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


MEAN, STD = (0.3,), (0.4,)


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """A trained SmallNet, the digitslt evaluation points as a TensorDataset, and the net as an ONNX file."""
    data = load_dataset("digitslt")
    torch.manual_seed(0)
    net = SmallNet()
    xs = torch.stack([data.train[i][0] for i in range(len(data.train))])
    ys = torch.as_tensor(data.train_labels)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net((xs - MEAN[0]) / STD[0]), ys).backward()
        opt.step()
    net.eval()
    test = TensorDataset(torch.stack([data.test[i][0] for i in range(len(data.test))]),
                         torch.as_tensor(data.test_labels))
    onnx_path = tmp_path_factory.mktemp("onnx") / "smallnet.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(onnx_path), opset_version=13, dynamo=False,
                      dynamic_axes={"input.1": {0: "n"}}, input_names=["input.1"])
    return net, data, test, onnx_path


def _figures(results: AuditResults) -> dict:
    summary = dataclasses.replace(results.summary, calibration=None)  # confidences: see _confidences
    return {"per_class": [(r.name, r.train_count, r.clean_acc, r.robust_acc) for r in results.per_class],
            "summary": summary, "groups": results.dataset.groups, "verdict": results.verdict.code,
            "n_eval": results.dataset.n_eval}


def _confidences(results: AuditResults) -> list[float]:
    """The calibration figures that are softmax values: equal across runtimes up to float rounding, not bit for bit."""
    cal = results.summary.calibration
    return [getattr(getattr(cal, side), key) for side in ("clean", "attacked")
            for key in ("ece", "mean_confidence", "over_confidence")]


def test_module_and_dataset_audit_like_the_same_model_from_onnx_on_the_cli(notebook, tmp_path, capsys):
    net, data, test, onnx_path = notebook
    before = {k: v.clone() for k, v in net.state_dict().items()}
    config = tailaudit.AuditConfig(
        model=net, mean=MEAN, std=STD, seed=0, steps=5, eps=0.1, quiet=True, out=str(tmp_path / "py"),
        dataset=from_torch(DataLoader(test, batch_size=7, shuffle=True), classes=data.class_names,
                           train_counts=data.train_counts, name="digitslt"))
    run = tailaudit.run_audit(config, formats=["html"])
    assert run.results.model.spec == "python:SmallNet" and run.results.model.format == "torch"
    assert run.results.config["model"] == "python:SmallNet" and (run.out_dir / "report.html").is_file()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and not net.training  # untouched
    assert all(p.requires_grad for p in net.parameters())

    code = cli.main(["audit", str(onnx_path), "--dataset", "digitslt", "--mean", "0.3", "--std", "0.4", "--steps", "5",
                     "--eps", "0.1", "--seed", "0", "--quiet", "--no-html", "--no-pdf", "--out", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    from_cli = load_results(tmp_path / "cli" / "results.json")
    ours = _figures(run.results)
    assert ours["summary"].clean.overall > 0.6 and ours["verdict"] != "not-meaningful"  # a working model
    assert ours == _figures(from_cli)
    assert _confidences(run.results) == pytest.approx(_confidences(from_cli), abs=1e-4)
    assert np.array_equal(np.load(run.out_dir / "examples.npz")["index"],
                          np.load(tmp_path / "cli" / "examples.npz")["index"])


def test_plain_dataset_defaults_and_clear_refusals(notebook, tmp_path, caplog):
    net, data, test, _ = notebook
    wrapped = from_torch(test)
    assert wrapped.class_names == [str(c) for c in range(10)] and len(set(wrapped.train_counts)) == 1
    assert "taken as balanced" in caplog.text
    run = tailaudit.run_audit(tailaudit.AuditConfig(model=net, dataset=test, mean=MEAN, std=STD, n_per_class=2,
                                                    steps=1, quiet=True, out=str(tmp_path / "plain")))
    assert run.results.dataset.balanced and run.results.dataset.name == "TensorDataset"
    hwc = TensorDataset(torch.rand(4, 8, 8, 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DatasetError, match="C x H x W"):
        from_torch(hwc)
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        from_torch(TensorDataset(torch.full((4, 1, 8, 8), 3.0), torch.zeros(4, dtype=torch.long)))
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(64, 7))  # 7 outputs for 10 classes
    with pytest.raises(ModelLoadError, match="7 outputs"):
        tailaudit.run_audit(tailaudit.AuditConfig(model=wrong, dataset=test, quiet=True, out=str(tmp_path / "w")))
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_module_repair_returns_the_repaired_module_and_its_weights(notebook, tmp_path):
    net, data, test, _ = notebook
    train = TensorDataset(torch.stack([data.train[i][0] for i in range(len(data.train))]),
                          torch.as_tensor(data.train_labels))
    dataset = from_torch(test, classes=data.class_names, train=train, name="digitslt")
    assert dataset.train_counts == list(data.train_counts)  # counted from the training set
    audit = tailaudit.AuditConfig(model=net, dataset=dataset, mean=MEAN, std=STD, n_per_class=3, steps=2, quiet=True)
    run = tailaudit.run_repair(tailaudit.RepairConfig(audit=audit, steps_total=4, evaluations=1, batch_size=64,
                                                      out=str(tmp_path / "rep"), formats=()))
    assert run.model_path.name == "repaired.safetensors" and isinstance(run.module, SmallNet)
    from safetensors.torch import load_file

    again = SmallNet()
    again.load_state_dict(load_file(run.model_path))  # what a notebook does with the file
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(again.eval()((x - MEAN[0]) / STD[0]), run.module.eval()((x - MEAN[0]) / STD[0]), atol=1e-6)
    assert run.before.model.spec == run.after.model.spec == "python:SmallNet"
    assert run.before.model.sha256 != run.after.model.sha256 or run.summary["model"]["input_kept"]


def test_eps_from_the_api_is_what_every_page_says(tmp_path):
    """ε has one source: the API at 2/255 records, prints and suggests 2/255 (never the 8/255 default)."""
    import subprocess

    config = tailaudit.AuditConfig(model=str(DEMO_ONNX), eps=2 / 255, n_per_class=2, steps=1, quiet=True,
                                   out=str(tmp_path / "run"))
    run = tailaudit.run_audit(config, formats=["html", "pdf"])
    res = run.results
    assert res.threat_model.eps_text == res.config["eps_text"] == "2/255"
    from audit.contract.figures import repair_command

    assert "--eps 2/255" in repair_command(res)  # the suggested command (terminal, method page)
    html = (run.out_dir / "report.html").read_text(encoding="utf-8")
    pdf = subprocess.run(["pdftotext", str(run.out_dir / "report.pdf"), "-"], capture_output=True, text=True).stdout
    md = (run.out_dir / "summary.md").read_text(encoding="utf-8")
    for text in (html, pdf, md):
        assert "2/255" in text and "8/255" not in text


def test_numbers_that_cannot_be_represented_are_handled_where_they_arise(tmp_path):
    """A classifier row of 3e38 weights on an always-zero pixel: finite logits, an overflowing weight norm.
    The audit finishes and stores null with a warning (it used to fail at write time); integer outputs are
    refused before any attack."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        net[1].weight[0].zero_()
        net[1].weight[0, 0] = 3e38  # pixel (0, 0) of every digit is 0
    data = load_dataset("digitslt")
    run = tailaudit.run_audit(tailaudit.AuditConfig(model=net, dataset=data, n_per_class=2, steps=1, quiet=True,
                                                    force=True, out=str(tmp_path / "big")))  # untrained: --force
    res = json.loads((run.out_dir / "results.json").read_text())
    assert res["per_class"][0]["weight_norm"] is None and res["per_class"][1]["weight_norm"] > 0
    assert any("weight norm overflows for 1 class(es) (e.g. 0)" in w for w in res["warnings"])

    class Rounded(nn.Module):
        def forward(self, x):
            return net(x).round().long()

    with pytest.raises(ModelLoadError, match="int64 outputs, not float logits"):
        tailaudit.run_audit(tailaudit.AuditConfig(model=Rounded(), dataset=data, quiet=True, out=str(tmp_path / "i")))
    assert not (tmp_path / "i").exists()


def test_nan_logits_under_attack_are_named_not_counted_silently(tmp_path):
    """A model finite on the (k/16) digits but NaN on any perturbed pixel: the points it 'loses' that way are
    named per class in a warning."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, x):
            off_grid = ((x * 16 - (x * 16).round()).abs().flatten(1).amax(1) > 1e-3)[:, None]
            z = self.base(x)
            return torch.where(off_grid, z * float("nan"), z)

    data = load_dataset("digitslt")
    run = tailaudit.run_audit(tailaudit.AuditConfig(model=Fragile(), dataset=data, n_per_class=3, steps=2,
                                                    quiet=True, force=True, out=str(tmp_path / "nan")))
    said = [w for w in run.results.warnings if "NaN or infinite logits at the perturbed image" in w]
    assert said and "points count as broken only because" in said[0] and "class " in said[0]


def test_api_and_cli_give_the_same_pages_for_the_same_run(tmp_path, capsys):
    """The same audit through the Python API and the command line: page 1, the key figures and the per-class
    table read the same, word for word (only times, paths and the command line may differ)."""
    import re

    from test_report_pages import visible_text

    args = dict(eps=2 / 255, n_per_class=4, steps=2, seed=3)
    api = tailaudit.run_audit(tailaudit.AuditConfig(model=str(DEMO_ONNX), quiet=True, out=str(tmp_path / "api"),
                                                    **args), formats=["html"])
    assert cli.main(["audit", str(DEMO_ONNX), "--eps", "2/255", "--n-per-class", "4", "--steps", "2", "--seed", "3",
                     "--quiet", "--no-pdf", "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()

    def pages(folder: Path) -> list[str]:
        html = (folder / "report.html").read_text(encoding="utf-8")
        parts = [re.search(r'<section class="summary page1">.*?</section>', html, re.S),
                 re.search(r'<section class="key-figures">.*?</section>', html, re.S),
                 re.search(r'<table class="classes">.*?</table>', html, re.S)]
        assert all(parts)
        return [visible_text(p.group(0)) for p in parts]  # type: ignore[union-attr]

    assert pages(api.out_dir) == pages(tmp_path / "cli")


def test_every_exported_name_exists():
    """``from tailaudit import *`` gives every name the package lists, the typed results among them."""
    assert [n for n in tailaudit.__all__ if not hasattr(tailaudit, n)] == []
    assert tailaudit.AuditResults is AuditResults
