"""The clean check before any attack (audit/checks/precheck.py): a model that cannot be graded stops early, with its
likely cause, exit code 4 and nothing written; timm architectures without weights are refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cli
from audit.config import AuditConfig
from audit.errors import ConfigError, ModelLoadError, UngradableModel
from audit.models import load_model
from audit.checks.precheck import sample_points
from support import DEMO
from tailaudit import run_audit

MNIST = (0.1307, 0.3081)


class ExpectsNormalised(nn.Module):
    """The demo CNN as a model trained on normalised pixels: it undoes (x - mean) / std itself."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.net = load_model(str(DEMO), num_classes=10).module.net.eval()
        self.mean, self.std = mean, std

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.net(z * self.std + self.mean)


def test_missing_normalisation_stops_before_any_attack_and_names_the_fix(tmp_path):
    out = tmp_path / "run"
    model = ExpectsNormalised(*MNIST)
    with pytest.raises(UngradableModel) as err:
        run_audit(AuditConfig(model=model, dataset="digitslt", out=str(out), quiet=True), formats=[])
    msg = str(err.value)
    assert err.value.exit_code == 4 and not out.exists()
    assert "not clearly above chance" in msg and "(on 500 clean test images)" in msg
    assert "Most likely cause: the model expects normalised input" in msg  # worded for Python (tailaudit/wording.py)
    assert "mean=(0.1307,) std=(0.3081,)" in msg and "No attack was run" in msg and "force=True" in msg
    assert "--" not in msg
    # the fix the message names makes the model gradable: the audit then runs
    fixed = run_audit(AuditConfig(model=model, dataset="digitslt", mean=(MNIST[0],), std=(MNIST[1],), steps=2,
                                  n_per_class=10, out=str(tmp_path / "fixed"), quiet=True), formats=[])
    assert fixed.results.verdict.code != "not-meaningful" and fixed.results.summary.clean.overall > 0.7


def test_a_wrong_normalisation_given_is_named_and_force_runs_the_attacks(tmp_path):
    model = ExpectsNormalised(0.0, 1.0)  # takes [0, 1] pixels
    cfg = AuditConfig(model=model, dataset="digitslt", mean=(0.5,), std=(0.05,), steps=2, n_per_class=20,
                      out=str(tmp_path / "run"), quiet=True)
    with pytest.raises(UngradableModel, match="without them; drop mean= and std="):
        run_audit(cfg, formats=[])
    cfg.force = True
    forced = run_audit(cfg, formats=[])  # --force: the attacks run, and the verdict still gives no grade
    assert forced.results.verdict.code == "not-meaningful" and forced.results.attacks


def test_repair_of_an_ungradable_model_stops_before_training(tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    perm = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]
    m = onnx.load(str(DEMO))
    for init in m.graph.initializer:
        if init.name in ("fc.weight", "fc.bias"):
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(init)[perm]), init.name))
    path = tmp_path / "perm.onnx"
    onnx.save(m, str(path))
    out = tmp_path / "repair"
    rc = cli.main(["repair", str(path), "--steps", "2", "--out", str(out), "--quiet", "--no-html", "--no-pdf"])
    err = capsys.readouterr().err.strip()
    assert rc == 4 and not out.exists() and len(err.splitlines()) == 1
    assert "Most likely cause: the label order" in err and "--labels FILE" in err


def test_sample_points_are_stratified_in_evaluation_order():
    labels = np.repeat(np.arange(4), 1000)
    idx = np.arange(4000)[::-1].copy()  # evaluation order is kept, the first of each class taken
    got = sample_points(idx, labels, 4, limit=40)
    assert len(got) == 40 and np.bincount(labels[got], minlength=4).tolist() == [10] * 4
    assert set(got) == {i for c in range(4) for i in range(1000 * c + 990, 1000 * c + 1000)}
    assert len(sample_points(idx[:30], labels, 4)) == 30  # fewer than the limit: all


def test_timm_architecture_needs_weights(tmp_path, capsys):
    for extra, needle in (([], "has no trained weights without --checkpoint"),
                          (["--pretrained", "--checkpoint", "w.pt"], "exclude each other")):
        assert cli.main(["audit", "timm:resnet18", "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="go with timm:ARCH"):
        AuditConfig(model=str(DEMO), weights="random").validate()
    AuditConfig(model="timm:resnet18", weights="random").validate()  # asked for on purpose


def test_pretrained_weights_are_checked_before_any_download(monkeypatch):
    import timm

    def no_network(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise ConnectionError("Failed to establish a new connection: [Errno 101] Network is unreachable")
        return real(*args, **kwargs)

    from audit.models import timm_model

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", no_network)
    monkeypatch.setattr(timm_model, "_hub_reachable", lambda: True)  # the hub answers, the download then fails
    with pytest.raises(ModelLoadError, match="has 1000 classes but the dataset has 10"):
        load_model("timm:resnet18", num_classes=10, pretrained=True)  # refused before anything is fetched
    with pytest.raises(ModelLoadError, match="could not fetch timm's pretrained weights for 'resnet18' "
                                             r"\(ConnectionError: .*check the network"):
        load_model("timm:resnet18", num_classes=1000, pretrained=True)
