"""Repair (REAT fine-tuning): losses, RBL under sign steps, features, the digits demo, resume, bad inputs."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audit.attacks import create_attack
from audit.config import AttackSpec, AuditConfig
from audit.data import assign_groups, longtail_counts
from audit.models import load_model
from reat_finetune import RepairConfig, RepairError, RepairInterrupted, TrainHooks, run_repair
from reat_finetune import checkpoint as ckpt_mod
from reat_finetune.checkpoint import load_checkpoint
from reat_finetune.features import build_feature_model
from reat_finetune.losses import (RBLWeightedPGD, balanced_softmax_loss, effective_number, log_prior, rbl_weights,
                                  tail_class_weights, tail_penalty_pairwise, tail_penalty_reference)
from reat_finetune.train import lr_at, perturb, split_train_val

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.onnx"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def cheap_config(out: Path | None, model: Path = DEMO, imbalance: float = 0.01, **kw) -> RepairConfig:
    """A repair of the demo model with a tiny audit (5 points per class, 3 PGD steps); ``out`` None: the --resume folder."""
    audit = AuditConfig(model=str(model), dataset="digitslt", eps=0.1, eps_text="0.1", attacks=("pgd",), steps=3,
                        n_per_class=5, quiet=True, device="cpu", imbalance=imbalance)
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 64)
    return RepairConfig(audit=audit, formats=(), quiet=True, out=str(out) if out else None, **kw)


def _export(net: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def no_linear_onnx(tmp_path_factory) -> Path:
    """A digits classifier without a linear layer: conv to 10 maps, global average pool."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return _export(net, tmp_path_factory.mktemp("nolin") / "nolinear.onnx")


# --------------------------------------------------------------------------- losses


def test_effective_number_and_rbl_weights_by_hand():
    N, n = [4, 2, 1], [2, 3, 1]
    # E = (1 - beta^n) / (1 - beta), beta = (N - 1) / N
    want_E = [(1 - 0.75 ** 2) / 0.25, (1 - 0.5 ** 3) / 0.5, 1.0]
    assert effective_number(N, n).tolist() == pytest.approx(want_E)
    w = rbl_weights(N, n)
    raw = [1 / (e + 1e-5) for e in want_E]
    assert w.tolist() == pytest.approx([r / sum(raw) * 3 for r in raw], rel=1e-6)
    assert float(w.sum()) == pytest.approx(3.0)
    # first epoch (n = N) on the CIFAR-10-LT profile: sums to C, rarer classes weigh more
    counts = longtail_counts(5000, 10, 0.01)
    w0 = rbl_weights(counts, counts)
    assert float(w0.sum()) == pytest.approx(10.0, rel=1e-6)
    assert torch.all(w0[1:] > w0[:-1])
    # a class nothing was predicted as gets by far the largest weight (E = 0), still finite
    w1 = rbl_weights([10, 10], [5, 0])
    assert torch.isfinite(w1).all() and w1[1] > 1e4 * w1[0]


def test_balanced_softmax_is_ce_of_shifted_logits():
    logits = torch.zeros(1, 2)
    N = [1.0, float(np.e)]
    # logits + log N = [0, 1]; label 0: -log(1 / (1 + e))
    assert float(balanced_softmax_loss(logits, torch.tensor([0]), log_prior(N))) == pytest.approx(np.log(1 + np.e))
    torch.manual_seed(0)
    z, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    counts = [100, 40, 10, 3, 0]
    got = balanced_softmax_loss(z, y, log_prior(counts))
    want = F.cross_entropy(z + torch.log(torch.tensor([100, 40, 10, 3, 1], dtype=torch.float)), y)
    assert torch.allclose(got, want)


def _slow_pairwise(f, y, tail, v, margin):
    """Loop over anchors and pairs with F.kl_div: the definition in docs/repair.md."""
    B = len(y)
    total, anchors = 0.0, 0
    for a in range(B):
        if not tail[y[a]]:
            continue
        anchors += 1
        q = F.softmax(f[a], 0).detach()
        s = 0.0
        for j in range(B):
            if j == a:
                continue
            kl = F.kl_div(F.log_softmax(f[j], 0), q, reduction="sum")
            w = v[y[a]] + v[y[j]]
            s = s + w * (kl if y[a] == y[j] else F.relu(margin - kl))
        total = total + s / (B - 1)
    return total / anchors


def _slow_reference(f, y, tail_classes, v):
    """The reference implementation's loop, with its legacy ``size_average`` KL (mean over B x D)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kl = nn.KLDivLoss(size_average="none")  # legacy argument: truthy -> reduction "mean"
        acc, count = 0.0, 0.0
        B = y.size(0)
        for i in range(B):
            if y[i].item() not in tail_classes:
                continue
            sign = torch.tensor([-1.0 if y[i] == y[j] else 1.0 for j in range(B)])
            W = torch.tensor([float(v[y[i]] + v[y[j]]) for j in range(B)])
            target = F.softmax(f[i].detach().view(1, -1).expand(B, -1), 1)
            acc = acc + kl(F.log_softmax(f, 1), target) * sign * W
            count += 1
        return acc.mean() / count


@pytest.fixture
def feature_batch():
    torch.manual_seed(3)
    counts = longtail_counts(500, 10, 0.01)
    tail = torch.tensor([g == "tail" for g in assign_groups(counts)])
    y = torch.tensor([0, 7, 7, 8, 1, 9, 2, 9, 3, 4, 7, 5, 6, 0])
    f = torch.randn(len(y), 6, requires_grad=True)
    return f, y, tail, tail_class_weights(counts), counts


@pytest.mark.parametrize("margin", [0.0, 0.1, 1.0, 5.0])
def test_pairwise_penalty_matches_slow_loop(feature_batch, margin):
    f, y, tail, v, _ = feature_batch
    fast = tail_penalty_pairwise(f, y, tail, v, margin)
    slow = _slow_pairwise(f, y, tail, v, margin)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6)
    (g_fast,) = torch.autograd.grad(fast, f)
    (g_slow,) = torch.autograd.grad(slow, f)
    assert torch.allclose(g_fast, g_slow, rtol=1e-4, atol=1e-6)


def test_penalties_are_zero_without_tail_points(feature_batch):
    f, _, tail, v, _ = feature_batch
    y = torch.zeros(len(f), dtype=torch.long)
    assert tail_penalty_pairwise(f, y, tail, v, 1.0).item() == 0.0
    assert tail_penalty_reference(f, y, tail, v).item() == 0.0


def test_reference_penalty_reproduces_reference_code(feature_batch):
    f, y, tail, v, _ = feature_batch
    tail_classes = [c for c in range(10) if tail[c]]
    fast = tail_penalty_reference(f, y, tail, v)
    slow = _slow_reference(f, y, tail_classes, v)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-7)
    (g_fast,) = torch.autograd.grad(fast, f)
    (g_slow,) = torch.autograd.grad(slow, f)
    assert torch.allclose(g_fast, g_slow, rtol=1e-4, atol=1e-8)


def test_reference_collapse_pushes_same_class_apart_pairwise_pulls_together():
    """One class only (all tail): the reference's sign makes descent *increase* their KL; ours decreases it."""
    torch.manual_seed(0)
    counts = longtail_counts(500, 10, 0.01)
    tail = torch.tensor([g == "tail" for g in assign_groups(counts)])
    v = tail_class_weights(counts)
    y = torch.full((8,), 9)
    f0 = torch.randn(8, 6)

    def mean_kl(f):
        lp = F.log_softmax(f, 1)
        q = lp.exp()
        return float(((q * lp).sum(1, keepdim=True) - q @ lp.t()).mean())

    moved = {}
    for mode in ("pairwise", "reference"):
        f = f0.clone().requires_grad_(True)
        loss = tail_penalty_pairwise(f, y, tail, v, 0.1) if mode == "pairwise" else tail_penalty_reference(f, y, tail, v)
        (g,) = torch.autograd.grad(loss, f)
        moved[mode] = mean_kl(f0 - 0.05 * g / g.norm()) - mean_kl(f0)
    assert moved["pairwise"] < 0 < moved["reference"]


# --------------------------------------------------------------------------- RBL under sign steps


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes))

    def forward(self, x):
        return self.f(x)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_rbl_weighting_leaves_pgd_examples_unchanged(norm, eps):
    """Sign steps (L-inf) and per-sample normalised steps (L2) are invariant to a positive per-sample weight.

    L-inf: sign(w * g) = sign(g) for w > 0, so the iterates are bit-identical. L2: w g / ||w g|| = g / ||g||
    mathematically; in floating point bit-identical for power-of-two weights (exact scaling) and equal up
    to rounding otherwise.
    """
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(40, 3, 12, 12)
    y = torch.arange(40) % 10
    counts = longtail_counts(5000, 10, 0.01)
    adv_counts = [6000, 2500, 1500, 900, 500, 300, 150, 60, 20, 0]
    w = rbl_weights(counts, adv_counts)
    assert float(w.max() / w.min()) > 1e6  # weights spanning many orders of magnitude
    spec = AttackSpec("pgd", "pgd", norm, eps, 10, eps / 4, True)
    plain = create_attack(spec)

    def adv(attack):
        return perturb(attack, model, x, y, torch.Generator().manual_seed(7))

    ref = adv(plain)
    pow2 = RBLWeightedPGD(spec, torch.exp2(torch.round(torch.log2(w))))
    assert torch.equal(adv(pow2), ref)
    rbl = RBLWeightedPGD(spec, w)
    if norm == "linf":
        assert torch.equal(adv(rbl), ref)
        # the audit engine's loop gives the same outcome too
        a = plain.run(model, x, y, generator=torch.Generator().manual_seed(1), early_stop=False)
        b = rbl.run(model, x, y, generator=torch.Generator().manual_seed(1), early_stop=False)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.step, b.step)
    else:
        assert torch.allclose(adv(rbl), ref, atol=1e-5)
    # a non-uniform weighting is not a no-op for the loss itself
    logits = model(x)
    assert not torch.allclose(rbl.loss(logits, y), plain.loss(logits, y))


# --------------------------------------------------------------------------- features, split, schedule


def test_features_of_timm_and_converted_onnx():
    torch.manual_seed(0)
    timm_model = load_model("timm:test_resnet", num_classes=10, input_size=32)
    x = torch.rand(4, 3, 32, 32)
    fm, warn = build_feature_model(timm_model, x, explicit_penalty="pairwise", need_features=True)
    assert fm.source == "timm-pre-logits" and not warn
    f, logits = fm(x)
    net = timm_model.module.net
    assert f.shape == (4, net.num_features)
    assert torch.allclose(logits, timm_model.module(x), atol=1e-5)

    onnx_model = load_model(str(DEMO), num_classes=10)
    x = torch.rand(5, 1, 8, 8)
    fm, warn = build_feature_model(onnx_model, x, explicit_penalty=None, need_features=True)
    assert fm.source == "final-linear-input" and not warn
    f, logits = fm(x)
    assert f.shape == (5, 128)  # 32 channels x 2 x 2 before the Gemm
    linear = onnx_model.module.net.get_submodule("fc/Gemm")
    assert torch.allclose(linear(f), logits, atol=1e-6)
    assert torch.allclose(logits, onnx_model.module(x))


def test_no_linear_layer_falls_back_to_logits_or_refuses(no_linear_onnx):
    m = load_model(str(no_linear_onnx), num_classes=10)
    x = torch.rand(3, 1, 8, 8)
    fm, warn = build_feature_model(m, x, explicit_penalty=None, need_features=True)
    assert fm.source == "logits" and warn and "logits" in warn[0]
    f, logits = fm(x)
    assert torch.equal(f, logits)
    for mode in ("pairwise", "reference"):
        with pytest.raises(RepairError, match="penultimate"):
            build_feature_model(m, x, explicit_penalty=mode, need_features=True)


def test_attack_forwards_leave_batchnorm_statistics_alone():
    torch.manual_seed(0)
    m = load_model("timm:test_resnet", num_classes=10, input_size=32).module
    before = {k: v.clone() for k, v in m.state_dict().items()}
    attack = create_attack(AttackSpec("pgd", "pgd", "linf", 8 / 255, 3, 2 / 255, True))
    m.eval()
    perturb(attack, m, torch.rand(6, 3, 32, 32), torch.arange(6), torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_validation_split_is_stratified_seeded_disjoint():
    labels = np.repeat(np.arange(5), [50, 20, 10, 9, 1])
    tr, va = split_train_val(labels, 0.1, 0)
    assert np.bincount(labels[va], minlength=5).tolist() == [5, 2, 1, 0, 0]
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    tr2, va2 = split_train_val(labels, 0.1, 0)
    assert np.array_equal(va, va2) and not np.array_equal(va, split_train_val(labels, 0.1, 1)[1])


def test_learning_rate_schedules():
    assert lr_at(0, 100, 0.1, "cosine", 10) == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "cosine", 10) == pytest.approx(0.05)
    assert lr_at(100, 100, 0.1, "cosine", 10) == pytest.approx(0.0, abs=1e-12)
    assert [round(lr_at(i * 10, 100, 0.1, "step", 10), 6) for i in (0, 6, 7, 9)] == [0.1, 0.1, 0.01, 0.001]


# --------------------------------------------------------------------------- the demo repair


def test_repair_on_digits_raises_tail_robustness(tmp_path):
    """REAT on the demo model (fixed seed, small budget) raises the tail group's worst-case robust accuracy."""
    audit = AuditConfig(model=str(DEMO), dataset="digitslt", eps=0.1, eps_text="0.1", quiet=True, device="cpu")
    cfg = RepairConfig(audit=audit, method="reat", epochs=10, lr=0.05, batch_size=32, out=str(tmp_path / "r"),
                       formats=("html",), quiet=True)
    run = run_repair(cfg)
    out = run.out_dir
    before, after = run.before, run.after
    tail_b = before["summary"]["robust"]["worst_case"]["groups"]["tail"]
    tail_a = after["summary"]["robust"]["worst_case"]["groups"]["tail"]
    assert tail_a - tail_b >= 0.05, (tail_b, tail_a)
    assert after["summary"]["robust"]["worst_case"]["overall"] > before["summary"]["robust"]["worst_case"]["overall"]
    # same threat model, attacks and evaluation points before and after
    for key in ("threat_model", "attacks", "mode"):
        assert before[key] == after[key]
    assert before["dataset"]["eval_indices_sha256"] == after["dataset"]["eval_indices_sha256"]
    # the after-audit scored the exported ONNX file with onnxruntime
    assert run.model_path == out / "repaired.onnx" and run.model_path.is_file()
    assert after["model"]["format"] == "onnx" and after["model"]["path"].endswith("repaired.onnx")
    assert after["model"]["parity"]["argmax_agreement"] == 1.0
    parity = run.summary["model"]["parity"]
    assert parity["argmax_agreement"] == 1.0 and parity["max_rel_logit_diff"] <= 1e-3
    # outputs on disk
    for name in ("before/results.json", "after/results.json", "training_log.json", "repair.json", "checkpoint.pt",
                 "report.html"):
        assert (out / name).is_file(), name
    log = json.loads((out / "training_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == list(range(0, 11))
    assert log["best_epoch"] == run.best_epoch and 1 <= run.best_epoch <= 10
    assert log["feature_source"] == "final-linear-input" and log["tail_penalty"] == "pairwise"
    for e in log["epochs"][1:]:
        assert {"loss", "val_clean_acc", "val_robust_acc", "adv_pred_counts", "lr", "time_s", "rbl_weights"} <= set(e)
        assert sum(e["adv_pred_counts"]) == log["n_train"]
        assert sum(e["rbl_weights"]) == pytest.approx(10, rel=1e-5)
    best = max((e for e in log["epochs"][1:]), key=lambda e: (e["val_robust_acc"], e["epoch"]))
    assert best["epoch"] == run.best_epoch  # picked on validation, never on the test set
    assert not list(out.glob(".*.tmp*"))


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "full"
    run = run_repair(cheap_config(out))
    return out, run


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("where", ["epoch", "batch"])
def test_resume_after_interrupt_is_bit_identical(uninterrupted, tmp_path, where):
    full_out, full_run = uninterrupted
    out = tmp_path / "cut"

    def stop_epoch(epoch, entry):
        if epoch == 1:
            raise KeyboardInterrupt

    def stop_batch(epoch, done):
        if epoch == 2 and done == 2:
            raise KeyboardInterrupt

    hooks = TrainHooks(on_epoch_end=stop_epoch) if where == "epoch" else TrainHooks(on_batch_end=stop_batch)
    with pytest.raises(RepairInterrupted, match="--resume"):
        run_repair(cheap_config(out), hooks=hooks)
    state = load_checkpoint(out)
    assert (state["next_epoch"], state["pos"]) == ((2, 0) if where == "epoch" else (2, 2))
    assert not (out / "after").exists()
    run = run_repair(cheap_config(None, resume=str(out)))
    a, b = load_checkpoint(full_out), load_checkpoint(out)
    assert _same_state(a["model"], b["model"]) and _same_state(a["best"]["model"], b["best"]["model"])
    assert a["counts_prev"] == b["counts_prev"]
    assert [e["loss"] for e in a["log"]] == [e["loss"] for e in b["log"]]
    assert run.best_epoch == full_run.best_epoch
    assert (out / "repaired.onnx").read_bytes() == (full_out / "repaired.onnx").read_bytes()


def test_disk_full_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ckpt_mod._serialise

    def flaky(obj, fh):
        calls["n"] += 1
        if calls["n"] >= 2:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, fh)

    monkeypatch.setattr(ckpt_mod, "_serialise", flaky)
    out = tmp_path / "full-disk"
    with pytest.raises(RepairError, match="disk full.*intact"):
        run_repair(cheap_config(out))
    state = load_checkpoint(out)
    assert state["next_epoch"] == 2 and len(state["log"]) == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- bad input


def test_api_rejects_nonsense_learning_rate_and_epochs(tmp_path):
    for kw, needle in (({"lr": 0.0}, "--lr"), ({"lr": -1.0}, "--lr"), ({"lr": float("nan")}, "--lr"),
                       ({"epochs": 0}, "--epochs"), ({"val_fraction": 0.9}, "--val-fraction"),
                       ({"method": "pgd-at", "tail_penalty": "pairwise"}, "reat")):
        with pytest.raises(RepairError, match=needle):
            run_repair(cheap_config(tmp_path / "x", **kw))
    assert not (tmp_path / "x").exists()


def _one_line_exit_2(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    err = [l for l in lines if l.startswith("tailaudit: error:")]
    assert len(err) == 1 and needle in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


CHEAP = ["--dataset", "digitslt", "--eps", "0.1", "--attacks", "pgd", "--steps", "2", "--n-per-class", "5",
         "--epochs", "1", "--no-html", "--no-pdf", "--quiet", "--device", "cpu"]


def test_cli_bad_inputs_exit_2_one_line(tmp_path, uninterrupted, no_linear_onnx):
    full_out, _ = uninterrupted
    # imagefolder with an evaluation folder and counts but no training images
    from PIL import Image

    root = tmp_path / "evalonly"
    for c in range(10):
        (root / "test" / f"c{c}").mkdir(parents=True)
        Image.fromarray((np.random.default_rng(c).random((8, 8)) * 255).astype(np.uint8)).convert("RGB").save(
            root / "test" / f"c{c}" / "a.png")
    (tmp_path / "counts.json").write_text(json.dumps([100, 80, 60, 40, 30, 20, 10, 5, 3, 1]))
    cases = [
        (["repair", str(DEMO), "--dataset", "imagefolder", "--data-root", str(root), "--class-counts",
          str(tmp_path / "counts.json"), "--out", str(tmp_path / "o1"), "--quiet"], "no training images"),
        (["repair", str(no_linear_onnx), *CHEAP, "--tail-penalty", "off", "--resume", str(full_out), "--out",
          str(tmp_path / "o2")], "different model"),
        (["repair", str(DEMO), *CHEAP, "--lr", "0", "--out", str(tmp_path / "o3")], "--lr"),
        (["repair", str(DEMO), *CHEAP, "--epochs", "0", "--out", str(tmp_path / "o4")], "--epochs"),
        (["repair", str(no_linear_onnx), *CHEAP, "--tail-penalty", "pairwise", "--out", str(tmp_path / "o5")],
         "penultimate"),
        (["repair", str(DEMO), *CHEAP, "--resume", str(tmp_path / "nothing")], "no checkpoint"),
    ]
    for args, needle in cases:
        _one_line_exit_2(run_cli(*args), needle)
    # the foreign --resume left the other run's checkpoint alone
    assert load_checkpoint(full_out)["next_epoch"] == 3


def test_resume_with_other_training_settings_is_refused(uninterrupted, tmp_path):
    full_out, _ = uninterrupted
    with pytest.raises(RepairError, match="other settings.*lr"):
        run_repair(cheap_config(tmp_path / "o", resume=str(full_out), lr=0.2))


def test_resume_on_another_dataset_is_refused(uninterrupted, tmp_path):
    full_out, _ = uninterrupted
    with pytest.raises(RepairError, match="different dataset.*train_counts"):
        run_repair(cheap_config(tmp_path / "o", resume=str(full_out), imbalance=0.1))
