"""Attack engine: geometry, known optimum on a linear model, cascade bookkeeping, torchattacks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.attacks import PointNoise, create_attack, make_spec
from audit.config import AuditConfig
from audit.run.engine import Evaluator
from audit.errors import ConfigError


def _spec(kind="pgd", norm="linf", eps=8 / 255, steps=10, alpha=None, t=None, random_start=True):
    params = {"steps": steps, "step_size": alpha if alpha is not None else eps / 4, "random_start": random_start}
    if t is not None:
        params["temperature"] = t
    return make_spec(kind, norm, eps, **params)


class SmallCNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes))

    def forward(self, x):
        return self.f(x)


@pytest.fixture(scope="module")
def cnn_and_data():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(48, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)  # all clean-correct
    return model, x, y


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("kind,t", [("pgd", None), ("temp-pgd", 0.5), ("temp-pgd", 5.0)])
def test_adversarial_points_stay_in_ball_and_pixel_range(cnn_and_data, norm, eps, kind, t):
    model, x, y = cnn_and_data
    attack = create_attack(_spec(kind, norm, eps, steps=5, t=t))
    out = attack.run(model, x, y, noise=PointNoise.for_points(0, "test", range(len(x))), early_stop=False)
    d = (out.x_adv - x).flatten(1)
    if norm == "linf":
        assert d.abs().max() <= eps + 1e-6
    else:
        assert d.norm(dim=1).max() <= eps + 1e-5
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert out.step.min() >= -1 and out.step.max() <= 5
    # the recorded prediction is the model's prediction on the recorded point
    with torch.no_grad():
        assert torch.equal(model(out.x_adv).argmax(1), out.pred)
    broken = out.step >= 0
    assert torch.all(out.pred[broken] != y[broken])


def test_linear_model_linf_reaches_known_optimum():
    """Two-class linear model: the worst case in the L-inf ball is x - eps*sign(w1 - w0) (for label 1)."""
    torch.manual_seed(1)
    d = 20
    lin = nn.Linear(d, 2)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.25 + 0.5 * torch.rand(200, 1, 4, 5)  # interior: clipping never binds at eps 0.15
    eps = 0.15
    w = (lin.weight[1] - lin.weight[0]).detach()
    b = float((lin.bias[1] - lin.bias[0]).detach())
    with torch.no_grad():
        y = model(x).argmax(1)
        sgn = torch.where(y == 1, 1.0, -1.0)  # margin of the true class = sgn * (w.x + b)
        margin = sgn * (x.flatten(1) @ w + b)
        worst_margin = margin - eps * w.abs().sum()
    out = create_attack(_spec("pgd", "linf", eps, steps=10, alpha=eps / 4)).run(
        model, x, y, noise=PointNoise.for_points(0, "test", range(len(x))), early_stop=False)
    expected_broken = worst_margin < 0
    assert torch.equal(out.step >= 0, expected_broken)
    # robust points end exactly on the optimal vertex
    keep = ~expected_broken
    vertex = x.flatten(1) - eps * sgn[:, None] * w.sign()[None, :]
    assert torch.allclose(out.x_adv.flatten(1)[keep], vertex[keep], atol=1e-6)
    assert expected_broken.any() and keep.any()


def test_linear_model_l2_reaches_known_optimum():
    torch.manual_seed(2)
    lin = nn.Linear(10, 2)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.4 + 0.2 * torch.rand(100, 1, 2, 5)
    eps = 0.1
    w = (lin.weight[1] - lin.weight[0]).detach()
    with torch.no_grad():
        y = model(x).argmax(1)
        sgn = torch.where(y == 1, 1.0, -1.0)
        worst_margin = sgn * (x.flatten(1) @ w + float((lin.bias[1] - lin.bias[0]).detach())) - eps * w.norm()
    out = create_attack(_spec("pgd", "l2", eps, steps=50, alpha=eps / 4)).run(
        model, x, y, noise=PointNoise.for_points(0, "test", range(len(x))), early_stop=False)
    keep = worst_margin > 1e-3
    target = x.flatten(1) - eps * sgn[:, None] * (w / w.norm())[None, :]
    assert torch.allclose(out.x_adv.flatten(1)[keep], target[keep], atol=2e-3)
    assert torch.equal((out.step >= 0)[worst_margin.abs() > 1e-3], (worst_margin < 0)[worst_margin.abs() > 1e-3])


def _robust_acc(model, x, y, eps, kinds=("pgd",), seed=0, independent=False):
    attacks = [create_attack(_spec(k, "linf", eps, steps=10, t=0.5 if k == "temp-pgd" else None)) for k in kinds]
    rec = Evaluator(model, 10, x.shape[1:], torch.device("cpu")).cascade(
        [(x, y, torch.arange(len(y)))], attacks, n_total=len(y), seed=seed, independent=independent)
    return rec


def test_robust_accuracy_bounded_by_clean_and_monotone_in_eps():
    torch.manual_seed(3)
    model = SmallCNN().eval()
    x = torch.rand(64, 3, 12, 12)
    y = torch.randint(0, 10, (64,))
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    y[:40] = model(x[:40]).argmax(1)  # make most points clean-correct
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    accs = []
    for eps in [0.0, 1 / 255, 4 / 255, 16 / 255, 64 / 255]:
        rec = _robust_acc(model, x, y, eps, kinds=("pgd", "temp-pgd"))
        rob = (rec.clean_correct & ~rec.broken().any(0)).mean()
        assert rob <= clean + 1e-9
        accs.append(rob)
    assert accs[0] == pytest.approx(clean)  # eps 0: nothing can be broken
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert accs[-1] < accs[0]


def test_cascade_attacks_only_still_robust_points():
    torch.manual_seed(4)
    model = SmallCNN().eval()
    x = torch.rand(64, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:8] = (y[:8] + 1) % 10  # 8 clean-misclassified points
    rec = _robust_acc(model, x, y, 2 / 255, kinds=("pgd", "temp-pgd"))
    broken = rec.broken()
    assert rec.attacked[0] == 56  # clean-misclassified points are never attacked
    assert rec.attacked[1] == 56 - int(broken[0].sum())
    assert not (broken[0] & broken[1]).any()  # a point is broken once
    assert (rec.step[:, :8] == -1).all()
    ind = _robust_acc(model, x, y, 2 / 255, kinds=("pgd", "temp-pgd"), independent=True)
    assert ind.attacked == [56, 56]
    # the same seed gives the same records
    again = _robust_acc(model, x, y, 2 / 255, kinds=("pgd", "temp-pgd"))
    assert np.array_equal(again.step, rec.step) and np.array_equal(again.pred, rec.pred)


def test_matches_or_beats_torchattacks_on_same_points():
    torchattacks = pytest.importorskip("torchattacks")
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(432, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.rand(256, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    for eps in (1 / 255, 4 / 255):
        ta = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=True)
        torch.manual_seed(0)
        x_ta = ta(x, y)
        with torch.no_grad():
            ta_rob = (model(x_ta).argmax(1) == y).float().mean().item()
        rec = _robust_acc(model, x, y, eps)
        ours = (rec.clean_correct & ~rec.broken().any(0)).mean()
        assert 0.3 < ta_rob < 0.99  # the comparison is informative
        assert ours <= ta_rob + 0.01


def test_temperature_pgd_needs_temperature_and_config_names():
    with pytest.raises(ConfigError, match="--temperature"):
        create_attack(_spec("temp-pgd", t=-1.0))
    with pytest.raises(ConfigError, match="unknown attack"):
        create_attack(_spec("fgsm"))
    cfg = AuditConfig(model="m.onnx", temperatures=(0.1, 2.0))
    assert [s.name for s in cfg.attack_specs()] == ["pgd", "temp-pgd@T=0.1", "temp-pgd@T=2"]


def _cascade_in_batches(model, x, y, ids, batch, seed=0, eps=0.01):
    attacks = [create_attack(_spec("pgd", "linf", eps, steps=5)),
               create_attack(_spec("temp-pgd", "linf", eps, steps=5, t=0.5))]
    batches = [(x[i:i + batch], y[i:i + batch], ids[i:i + batch]) for i in range(0, len(y), batch)]
    return Evaluator(model, 10, x.shape[1:], torch.device("cpu")).cascade(batches, attacks, n_total=len(y), seed=seed)


def test_results_do_not_depend_on_batch_size_order_or_sharding():
    """A point's random start depends only on (seed, attack, test-set index)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 10)).eval()
    x = torch.rand(40, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 1) % 10  # a few clean mistakes
    ids = torch.arange(100, 140)
    ref = _cascade_in_batches(model, x, y, ids, batch=40)
    assert 0 < int(ref.broken().any(0).sum()) < 40  # informative: some broken, some robust
    for batch in (1, 7, 16):
        rec = _cascade_in_batches(model, x, y, ids, batch=batch)
        assert np.array_equal(rec.step, ref.step) and np.array_equal(rec.pred, ref.pred)
    # two shards run separately, concatenated, and the points in reverse order
    a = _cascade_in_batches(model, x[:13], y[:13], ids[:13], batch=5)
    b = _cascade_in_batches(model, x[13:], y[13:], ids[13:], batch=9)
    assert np.array_equal(np.concatenate([a.step, b.step], 1), ref.step)
    r = torch.arange(39, -1, -1)
    rev = _cascade_in_batches(model, x[r], y[r], ids[r], batch=11)
    assert np.array_equal(rev.step[:, ::-1], ref.step)
    # the streams: same (seed, attack, index) -> same draws; another seed, attack or index -> others
    draw = lambda seed, attack, idx: PointNoise.for_points(seed, attack, idx).rand((3, 4))  # noqa: E731
    assert torch.equal(draw(0, "pgd", [5, 9])[1], draw(0, "pgd", [9])[0])
    assert torch.equal(draw(0, "pgd", [5, 9]).flip(0), draw(0, "pgd", [9, 5]))
    for other in (draw(1, "pgd", [5]), draw(0, "temp-pgd", [5]), draw(0, "pgd", [6])):
        assert not torch.equal(other[0], draw(0, "pgd", [5])[0])


_SMALL = {"pgd": {"steps": 5}, "temp-pgd": {"steps": 5, "temperature": 0.5}, "apgd-ce": {"steps": 8, "restarts": 2},
          "apgd-dlr": {"steps": 8}, "apgd-t": {"steps": 5, "targets": 3}, "square": {"queries": 40}}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("kind", sorted(__import__("audit.attacks", fromlist=["ATTACKS"]).ATTACKS.names()))
def test_every_attack_is_invariant_to_batch_size_and_sharding(kind, norm):
    """Random starts, restarts and Square's draws depend only on (seed, attack, test-set index)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(30, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::7] = (y[::7] + 1) % 10
    ids = torch.arange(200, 230)
    eps = (0.03 if kind == "square" else 0.01) if norm == "linf" else 0.25
    attack = create_attack(make_spec(kind, norm, eps, **_SMALL[kind]))

    def run(xs, ys, ii, batch):
        batches = [(xs[i:i + batch], ys[i:i + batch], ii[i:i + batch]) for i in range(0, len(ys), batch)]
        evaluator = Evaluator(model, 10, x.shape[1:], torch.device("cpu"))
        return evaluator.cascade(batches, [attack], n_total=len(ys), seed=3)

    ref = run(x, y, ids, 30)
    assert 0 < int(ref.broken().sum()) < int(ref.clean_correct.sum())  # informative
    for batch in (1, 7):
        rec = run(x, y, ids, batch)
        assert np.array_equal(rec.step, ref.step) and np.array_equal(rec.pred, ref.pred)
    a, b = run(x[:11], y[:11], ids[:11], 4), run(x[11:], y[11:], ids[11:], 6)
    assert np.array_equal(np.concatenate([a.step, b.step], 1), ref.step)
    assert np.array_equal(np.concatenate([a.zero_grad_points, b.zero_grad_points], 1), ref.zero_grad_points)
