"""Repair (REAT fine-tuning): losses, RBL under sign steps, features, the digits demo, resume, bad inputs."""
from __future__ import annotations

import errno
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audit.attacks import PointNoise, create_attack, make_spec
from audit.config import AuditConfig
from audit.data import assign_groups, longtail_counts
from audit.models import load_model
from audit.contract.files import json_text
from audit.contract.schema import load_repair_file
from reat_finetune import RepairConfig, RepairError, RepairInterrupted, TrainHooks
from tailaudit import run_repair
from reat_finetune import checkpoint as ckpt_mod
from reat_finetune.checkpoint import load_checkpoint
from reat_finetune.features import build_feature_model
from reat_finetune.losses import (RBLWeightedPGD, balanced_softmax_loss, effective_number, log_prior, rbl_weights,
                                  tail_class_weights, tail_penalty_pairwise, tail_penalty_reference)
from audit.registry import METHODS
from reat_finetune.budget import AUTO_FLOOR_STEPS, eval_points, resolve_budget
from reat_finetune.losses import KLAttack
from reat_finetune.methods import LossContext, get_method
from reat_finetune.selection import Floors, better, ineligible_because, plan
from reat_finetune.train import CB_MIN_CLASS, epoch_order, lr_at, perturb, resolve_sampler
from reat_finetune.selection import carve_selection
from support import DEMO, ROOT




def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def cheap_config(out: Path | None, model: Path = DEMO, imbalance: float = 0.01, **kw) -> RepairConfig:
    """A repair of the demo model with a tiny audit (5 points per class, 3 PGD steps); ``out`` None: the --resume
    folder."""
    audit = AuditConfig(model=str(model), dataset="digitslt", eps=0.1, attacks=("pgd",), steps=3,
                        n_per_class=5, quiet=True, device="cpu", imbalance=imbalance)
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 64)
    kw.setdefault("evaluations", 2)
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
        loss = (tail_penalty_pairwise(f, y, tail, v, 0.1) if mode == "pairwise"
                else tail_penalty_reference(f, y, tail, v))
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
    spec = make_spec("pgd", norm, eps, steps=10, step_size=eps / 4)
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
        a = plain.run(model, x, y, noise=PointNoise.for_points(1, "test", range(len(x))), early_stop=False)
        b = rbl.run(model, x, y, noise=PointNoise.for_points(1, "test", range(len(x))), early_stop=False)
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
    attack = create_attack(make_spec("pgd", "linf", 8 / 255, steps=3, step_size=2 / 255))
    m.eval()
    perturb(attack, m, torch.rand(6, 3, 32, 32), torch.arange(6), torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_selection_split_is_stratified_seeded_disjoint():
    """Carved from the evaluation points: a share of each class, one point at least left to the audit."""
    labels = np.repeat(np.arange(7), [50, 20, 10, 9, 3, 2, 1])
    every = np.arange(len(labels))
    audit, sel = carve_selection(labels, every, 0.2, 0)
    assert np.bincount(labels[sel], minlength=7).tolist() == [10, 4, 2, 1, 1, 1, 0]  # the 1-point class gives none
    assert len(np.intersect1d(audit, sel)) == 0 and len(audit) + len(sel) == len(labels)
    assert np.array_equal(sel, carve_selection(labels, every, 0.2, 0)[1])
    assert not np.array_equal(sel, carve_selection(labels, every, 0.2, 1)[1])
    sub = every[::2]  # an --n-per-class subset: carved from it, never from points outside it
    a2, s2 = carve_selection(labels, sub, 0.2, 0)
    assert set(a2) | set(s2) == set(sub) and not set(a2) & set(s2)
    vp = plan(labels, sel, [f"c{i}" for i in range(7)])
    assert vp.missing == [6] and vp.fallback and "guard" in vp.rule() and "not trained on" in vp.rule()
    d = vp.to_dict(chosen_epoch=3, chosen_step=30)
    assert d["validation"] == {"source": "evaluation", "per_class_counts": [10, 4, 2, 1, 1, 1, 0],
                               "missing_classes": ["c6"], "missing_class_indices": [6], "fallback": vp.fallback}
    assert plan(labels[:50], np.arange(5), ["a"] * 7).fallback is not None  # classes absent entirely are missing too


def test_budget_in_steps_auto_floor_and_evaluation_points():
    # 300 images at batch 128: 3 steps an epoch (the last batch of 44 kept); auto = the floor
    b = resolve_budget(300, 128, epochs=None, steps_total=None)
    assert (b.steps_per_epoch, b.steps_total, b.source, b.epochs) == (3, AUTO_FLOOR_STEPS, "auto", 100)
    assert b.eval_steps == list(range(30, 301, 30))  # 10 evaluations at epoch ends
    # a large split: ten epochs beat the floor
    b = resolve_budget(11165, 128, epochs=None, steps_total=None)
    assert (b.steps_per_epoch, b.steps_total) == (88, 880) and b.eval_steps[-1] == 880
    assert all(s % 88 == 0 for s in b.eval_steps) and len(b.eval_steps) == 10
    # flags; a last batch of one image is dropped; evaluations closer than an epoch fall mid-epoch
    b = resolve_budget(129, 128, epochs=4, steps_total=None)
    assert (b.steps_per_epoch, b.steps_total, b.source) == (1, 4, "flag")
    b = resolve_budget(1000, 10, epochs=None, steps_total=25)
    assert b.steps_total == 25 and b.eval_steps == eval_points(25, 100) == [2, 5, 8, 10, 12, 15, 18, 20, 22, 25]
    assert b.to_dict()["epochs"] == 1 and b.epoch_of(25) == 0.25
    assert eval_points(3, 100) == [1, 2, 3]


def test_selection_rule_floors_guard_and_ties():
    """A checkpoint must keep the input's clean accuracy (x min_clean_kept), not collapse, and keep the guard."""
    e = lambda score, guard=None, clean=0.8, **kw: {"val_robust_acc": score, "guard_robust_acc": guard,  # noqa: E731
                                                    "val_clean_acc": clean, **kw}
    floors = Floors.of_input(e(0.2, 0.3, clean=0.9), num_classes=10, min_clean_kept=0.8)
    assert floors.clean == pytest.approx(0.72) and floors.guard == 0.3 and floors.chance == pytest.approx(0.19)
    assert not ineligible_because(e(0.5, 0.3, clean=0.72), floors)
    assert "below the floor 72.0% (80% of the input model's 90.0% on the selection images)" in \
        ineligible_because(e(0.5, 0.3, clean=0.71), floors)[0]  # the collapse of issue 15
    # the selection images are unseen by the input model: the floor is a share of its figure there, no test figure
    assert (floors.reference, floors.reference_source) == (0.9, "selection")
    assert "training images" in ineligible_because(e(0.9, 0.2), floors)[0]  # the tail guard
    assert "collapse" in ineligible_because(e(0.9, 0.3, val_collapse="60% of all clean predictions"), floors)[0]
    low = Floors.of_input(e(0.0, clean=0.15), num_classes=10, min_clean_kept=0.8)
    assert low.chance is None  # an input at chance is not held to the chance floor
    assert ineligible_because(e(0.5, clean=0.1), None) == []
    kept = {"step": 0, "score": 0.5}
    assert better(e(0.5), kept) and better(e(0.5), {"step": 4, "score": 0.5})  # ties go to the later checkpoint
    assert not better(e(0.4), kept) and not better(e(0.4), {"step": 4, "score": 0.5})
    assert better(e(0.1), None)


def test_class_balanced_order_and_trades_pieces():
    y = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    o = epoch_order(y, "class-balanced", torch.Generator().manual_seed(0))
    assert len(o) == 100 and torch.equal(o, epoch_order(y, "class-balanced", torch.Generator().manual_seed(0)))
    frac = torch.bincount(y[o], minlength=3).float() / 100
    assert torch.all((frac - 1 / 3).abs() < 0.12), frac
    assert sorted(epoch_order(y, "shuffle", torch.Generator().manual_seed(0)).tolist()) == list(range(100))
    # auto: class-balanced only when the smallest class has CB_MIN_CLASS images or more
    assert resolve_sampler("auto", [90, 9, 1])[0] == "shuffle"
    assert resolve_sampler("auto", [5000, CB_MIN_CLASS])[0] == "class-balanced"
    assert resolve_sampler("shuffle", [5000, 500])[0] == "shuffle"
    # TRADES' attack ascends KL(clean || adversarial): zero at the clean logits, positive elsewhere
    spec = make_spec("pgd", "linf", 0.1, name="kl", steps=3, step_size=0.025)
    att = KLAttack(spec)
    z = torch.randn(4, 5)
    att.reference = F.softmax(z, 1)
    assert torch.allclose(att.loss(z, torch.zeros(4, dtype=torch.long)), torch.zeros(4), atol=1e-6)
    assert (att.loss(z.flip(1), torch.zeros(4, dtype=torch.long)) > 0).all()
    # TRADES-BSL loss = BSL(clean) + beta * batch-mean KL(p_clean || p_adv), by hand; beta is the method's
    # Params field, read from the config's trades_beta (default 6)
    counts = torch.tensor([50.0, 5.0, 1.0, 1.0, 1.0])
    ctx = LossContext(log_n=counts.log(), is_tail=torch.zeros(5, dtype=torch.bool), v=torch.ones(5), penalty="off",
                      tail_lambda=0.0, margin=0.1)
    adv, y4 = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    pc = F.softmax(z, 1)
    kl = (pc * (pc.log() - F.log_softmax(adv, 1))).sum(1).mean()
    for beta, method in ((6.0, get_method("trades-bsl")), (2.5, get_method("trades-bsl", RepairConfig(
            audit=AuditConfig(model="m.onnx", dataset="digitslt"), method="trades-bsl", trades_beta=2.5)))):
        assert method.params.beta == beta
        loss, _ = method.loss(adv, None, y4, ctx, clean_logits=z)
        want = F.cross_entropy(z + counts.log(), y4) + beta * kl
        assert float(loss) == pytest.approx(float(want), rel=1e-5)


def test_learning_rate_schedules():
    assert lr_at(0, 100, 0.1, "cosine", 10) == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "cosine", 10) == pytest.approx(0.05)
    assert lr_at(100, 100, 0.1, "cosine", 10) == pytest.approx(0.0, abs=1e-12)
    assert [round(lr_at(i * 10, 100, 0.1, "step", 10), 6) for i in (0, 6, 7, 9)] == [0.1, 0.1, 0.01, 0.001]


# --------------------------------------------------------------------------- the demo repair


@pytest.mark.slow
def test_repair_on_digits_raises_tail_robustness(tmp_path):
    """The README's command with every repair default (seed 0): the tail gains 5+ points, the head/tail gap narrows."""
    audit = AuditConfig(model=str(DEMO), dataset="digitslt", quiet=True, device="cpu")  # eps 8/255, PGD-20 + T-PGD
    cfg = RepairConfig(audit=audit, out=str(tmp_path / "r"), formats=("html",), quiet=True)
    run = run_repair(cfg)
    out = run.out_dir
    before, after = run.before, run.after
    gb, ga = before.worst_case.groups, after.worst_case.groups
    assert ga["tail"] - gb["tail"] >= 0.05, (gb, ga)
    assert ga["head"] - ga["tail"] < gb["head"] - gb["tail"], (gb, ga)
    assert after.worst_case.overall > before.worst_case.overall
    # the outcome is a test: the demo's gain is significant on the paired test points (issue 27 item 4)
    tests = run.outcome.tests  # typed (audit/contract/repair.py), as run.results.verdict is
    assert run.improved and run.outcome.code == "improved" and run.outcome.clean_kept >= 0.8
    assert tests.worst_case.significant and tests.worst_case.p_value < 0.001 and tests.worst_case.direction == "up"
    assert "McNemar" in run.outcome.significance and run.summary["outcome"]["code"] == run.outcome.code
    # same threat model, attacks and evaluation points before and after
    assert (before.threat_model, before.attacks, before.mode) == (after.threat_model, after.attacks, after.mode)
    assert before.dataset.eval_indices_sha256 == after.dataset.eval_indices_sha256
    # the after-audit scored the exported ONNX file with onnxruntime
    assert run.model_path == out / "repaired.onnx" and run.model_path.is_file()
    assert after.model.format == "onnx" and after.model.path.endswith("repaired.onnx")
    assert after.model.parity.argmax_agreement == 1.0
    parity = run.summary["model"]["parity"]
    assert parity["argmax_agreement"] == 1.0 and parity["max_rel_logit_diff"] <= 1e-3
    # outputs on disk
    for name in ("before/results.json", "after/results.json", "training_log.json", "repair.json", "checkpoint.pt",
                 "report.html"):
        assert (out / name).is_file(), name
    log = json.loads((out / "training_log.json").read_text())
    summary = json.loads((out / "repair.json").read_text())
    # the typed documents are the files (audit/contract/repair.py): read back and written again, the same text
    for name in ("training_log.json", "repair.json"):
        assert json_text(load_repair_file(out / name).to_json()) + "\n" == (out / name).read_text(), name
    assert load_repair_file(out / "repair.json").outcome == run.outcome
    # the automatic budget: all 304 training images at batch 128 = 3 steps an epoch, floor 300 steps, 10 evaluations
    # 40 of the 300 steps go to the learning-rate search (successive halving, 5 + 10 steps), 260 to the main run
    want_budget = {"steps_total": 260, "search_steps": 40, "steps_per_epoch": 3, "epochs": 87, "source": "auto"}
    for d in (log["budget"], summary["budget"]):
        assert {k: d[k] for k in want_budget} == want_budget
    assert [e["step"] for e in log["epochs"]] == [0] + log["budget"]["eval_steps"] and len(log["epochs"]) == 11
    assert all(e["epoch"] == pytest.approx(e["step"] / 3, abs=0.01) for e in log["epochs"])
    assert log["lr_search"]["steps"] == 40 and log["lr"] == log["lr_search"]["chosen_lr"] == summary["lr"]
    # selection on unseen images: 10 of each class's 50 evaluation points, the audits report the other 400
    for d in (log["selection"], summary["selection"]):
        v = d["validation"]
        assert v["per_class_counts"] == [10] * 10 and v["missing_classes"] == [] and v["source"] == "evaluation"
        assert d["metric"] == "val_robust_acc" and d["rule"].endswith(".") and d["chosen_epoch"] == run.best_epoch
    assert summary["split"]["n_val"] == 100 and summary["split"]["n_audit"] == 400 == len(before.per_class) * 40
    assert log["n_val"] == sum(log["selection"]["validation"]["per_class_counts"])
    # the floor is a share of the input's clean accuracy on the same unseen images (no test-figure floor)
    floors, val0 = log["selection"]["floors"], log["epochs"][0]["val_clean_acc"]
    assert floors["reference_source"] == "selection" and floors["reference"] == val0
    assert floors["clean"] == pytest.approx(0.8 * val0)
    assert log["feature_source"] == "final-linear-input" and log["tail_penalty"] == "pairwise"
    for e in log["epochs"][1:]:
        assert {"loss", "val_clean_acc", "val_robust_acc", "adv_pred_counts", "lr", "time_s",
                "rbl_weights", "eligible"} <= set(e)
        assert sum(e["rbl_weights"]) == pytest.approx(10, rel=1e-5)
    assert log["n_train"] == 304 and sum(sum(e["adv_pred_counts"]) for e in log["epochs"][1:]) == 86 * 304 + 2 * 128
    ok = [e for e in log["epochs"][1:] if e["eligible"]]
    best = max(ok, key=lambda e: (e["val_robust_acc"], e["step"]))
    assert (best["step"], best["epoch"]) == (run.summary["best_step"], run.best_epoch)  # selection, never the audit
    assert summary["epochs"] == 87 and "fine_tune_s" in summary["timings"]
    assert summary["sampler"] == log["sampler"] == "shuffle" and "auto" in summary["sampler_rule"]  # 1-image classes
    assert not list(out.glob(".*.tmp*"))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_and_sampler_repairs(tmp_path, method):
    """Each registered method (and class-balanced sampling) runs end to end and logs its budget and selection."""
    sampler = "class-balanced" if method == "pgd-at" else "shuffle"
    run = run_repair(cheap_config(tmp_path / method, method=method, epochs=None, steps_total=4, evaluations=2,
                                  sampler=sampler))
    log = run.training_log
    assert log["budget"]["steps_total"] == 4 and log["budget"]["source"] == "flag"
    assert [e["step"] for e in log["epochs"]] == [0, 2, 4] and log["sampler"] == sampler
    assert all(math.isfinite(e["loss"]) for e in log["epochs"][1:])
    chosen = run.summary["selection"]["chosen_step"]
    assert run.summary["method"] == method and chosen in (0, 2, 4)
    ops = lambda p: sorted(n.op_type.replace("Flatten", "Reshape") for n in onnx.load(str(p)).graph.node)  # noqa: E731
    assert ops(run.model_path) == ops(DEMO)  # heads folded back: no new BatchNormalization, Add or Gemm
    kept = log["epochs"][[e["step"] for e in log["epochs"]].index(chosen)]
    assert kept["eligible"] and not kept["ineligible_because"]
    if chosen == 0:  # nothing qualified: the input comes back byte for byte, and the outcome says so
        assert run.summary["outcome"]["code"] == "input-kept" and run.model_path.read_bytes() == DEMO.read_bytes()
    else:
        assert run.summary["outcome"]["code"] != "input-kept"


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "full"
    run = run_repair(cheap_config(out))
    return out, run


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
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
    with pytest.raises(RepairInterrupted, match="the same call plus resume="):  # worded for Python
        run_repair(cheap_config(out), hooks=hooks)
    state = load_checkpoint(out)["state"]
    assert (state["next_epoch"], state["pos"]) == ((2, 0) if where == "epoch" else (2, 2))
    assert not (out / "after").exists()
    run = run_repair(cheap_config(None, resume=str(out)))
    a, b = load_checkpoint(full_out), load_checkpoint(out)
    sa, sb = a["state"], b["state"]
    assert _same_state(a["model"], b["model"]) and _same_state(sa["kept"]["model"], sb["kept"]["model"])
    assert sa["counts_prev"] == sb["counts_prev"] and sa["kept"]["step"] == sb["kept"]["step"]
    assert [e["loss"] for e in sa["log"]] == [e["loss"] for e in sb["log"]]
    assert run.best_epoch == full_run.best_epoch
    assert (out / "repaired.onnx").read_bytes() == (full_out / "repaired.onnx").read_bytes()


@pytest.mark.slow
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
    state = load_checkpoint(out)["state"]
    assert state["next_epoch"] == 2 and len(state["log"]) == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- bad input


def test_api_rejects_nonsense_learning_rate_and_epochs(tmp_path):
    for kw, needle in (({"lr": 0.0}, "lr="), ({"lr": -1.0}, "lr="), ({"lr": float("nan")}, "lr="),  # API names
                       ({"epochs": 0}, "epochs="), ({"val_fraction": 0.9}, "val_fraction="),
                       ({"steps_total": 0, "epochs": None}, "steps_total="),
                       ({"steps_total": 10, "epochs": 3}, "give one"), ({"sampler": "odd"}, "sampler="),
                       ({"method": "nope"}, "trades-bsl"),
                       ({"method": "pgd-at", "tail_penalty": "pairwise"}, "reat")):
        with pytest.raises(RepairError, match=needle):
            run_repair(cheap_config(tmp_path / "x", **kw))
    assert not (tmp_path / "x").exists()


def _one_line_exit_2(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    err = [ln for ln in lines if ln.startswith("tailaudit: error:")]
    assert len(err) == 1 and needle in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


CHEAP = ["--dataset", "digitslt", "--eps", "0.1", "--attacks", "pgd", "--steps", "2", "--n-per-class", "5",
         "--epochs", "1", "--no-html", "--no-pdf", "--quiet", "--device", "cpu"]


@pytest.mark.slow
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
    assert load_checkpoint(full_out)["state"]["next_epoch"] == 3


def test_cli_budget_flags_are_exclusive(tmp_path, capsys):
    """--epochs and --train-steps-total together: one line, exit 2, nothing written (in-process)."""
    import cli

    code = cli.main(["repair", str(DEMO), *CHEAP, "--train-steps-total", "9", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("tailaudit: error:") and "give one" in err[0], err
    assert not (tmp_path / "o").exists()


def test_resume_with_other_training_settings_is_refused(uninterrupted, tmp_path):
    full_out, _ = uninterrupted
    with pytest.raises(RepairError, match="other settings.*lr"):
        run_repair(cheap_config(tmp_path / "o", resume=str(full_out), lr=0.2))


def test_resume_on_another_dataset_is_refused(uninterrupted, tmp_path):
    full_out, _ = uninterrupted
    with pytest.raises(RepairError, match="different dataset.*train_counts"):
        run_repair(cheap_config(tmp_path / "o", resume=str(full_out), imbalance=0.1))


def test_terminal_comparison_has_no_group_rows_on_a_balanced_set():
    from types import SimpleNamespace

    from audit.contract.repair import RepairDocument
    from reat_finetune import format_comparison

    def side(groups):
        return {"clean": 0.8, "robust_worst_case": 0.4, "robust_groups": groups, "worst_class_robust": 0.2}

    summary = {"method": "reat", "tail_penalty": "pairwise", "sampler": "shuffle", "lr": 0.05, "best_step": 30,
               "best_epoch": 2, "budget": {"steps_total": 300, "source": "automatic", "epochs": 10},
               "timings": {"fine_tune_s": 1.0, "total_s": 2.0}, "selection": {"validation": {"missing_classes": []}}}
    balanced = format_comparison(SimpleNamespace(repair=RepairDocument.from_json(dict(summary, before=side(None),
                                                                                      after=side({})))))
    assert "worst-case robust" in balanced and "n/a" not in balanced
    assert not any(f"{g} robust" in balanced for g in ("head", "medium", "tail"))
    lt = format_comparison(SimpleNamespace(repair=RepairDocument.from_json(dict(
        summary, before=side({"head": 0.9, "medium": 0.5, "tail": 0.1}),
        after=side({"head": 0.85, "medium": 0.5, "tail": 0.3})))))
    assert "  tail robust" in lt and "+20.0" in lt and "head robust" in lt
