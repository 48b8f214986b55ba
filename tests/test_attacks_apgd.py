"""APGD-CE, APGD-DLR and APGD-T: known optimum on a linear model, ball constraints, torchattacks parity."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from audit.attacks import PointNoise, create_attack, make_spec
from audit.attacks.apgd import checkpoints, dlr_loss


def _linear_problem(seed: int, classes: int = 4, d: int = 20):
    torch.manual_seed(seed)
    lin = nn.Linear(d, classes)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = 0.3 + 0.4 * torch.rand(160, 1, 4, d // 4)  # interior: the pixel box never binds at these radii
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, lin, x, y


def _worst_margin(lin, x, y, eps, norm):
    """Exact worst case of a linear model over the ball: min_j (z_y - z_j) - eps * ||w_y - w_j||_dual."""
    W, b = lin.weight.detach(), lin.bias.detach()
    z = x.flatten(1) @ W.T + b
    out = torch.full((len(y),), float("inf"))
    for j in range(W.shape[0]):
        diff = W[y] - W[j]
        dual = diff.abs().sum(1) if norm == "linf" else diff.norm(dim=1)
        m = z.gather(1, y[:, None]).squeeze(1) - z[:, j] - eps * dual
        out = torch.where(y == j, out, torch.minimum(out, m))
    return out


def _run(kind, model, x, y, norm, eps, **params):
    attack = create_attack(make_spec(kind, norm, eps, **params))
    return attack.run(model, x, y, noise=PointNoise.for_points(0, kind, range(len(x))), early_stop=True)


@pytest.mark.parametrize("kind,classes,norm,eps", [
    ("apgd-ce", 3, "linf", 0.03), ("apgd-dlr", 3, "linf", 0.03), ("apgd-ce", 2, "l2", 1.0),
    ("apgd-t", 4, "linf", 0.03), ("apgd-t", 4, "l2", 0.25)])
def test_linear_model_breaks_exactly_the_breakable_points(kind, classes, norm, eps):
    """A linear model's worst case is known in closed form; APGD must find every breakable point.

    (CE and untargeted DLR are not margin losses, so with many classes they may settle on the
    wrong competitor; APGD-T over all C-1 targets is exact there.)
    """
    model, lin, x, y = _linear_problem(1, classes)
    worst = _worst_margin(lin, x, y, eps, norm)
    out = _run(kind, model, x, y, norm, eps, steps=50)
    clear = worst.abs() > 2e-3  # away from the decision boundary
    assert bool((worst < 0).any()) and bool((worst > 0).any())  # informative
    assert torch.equal((out.step >= 0)[clear], (worst < 0)[clear])
    d = (out.x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(model(out.x_adv).argmax(1), out.pred)
    assert torch.all(out.pred[out.step >= 0] != y[out.step >= 0])


def test_checkpoint_schedule_and_dlr_scale_invariance():
    # p_j: 0.22, 0.41 (+0.19), 0.57 (+0.16), 0.70 (+0.13), 0.80 (+0.10), 0.87, 0.93, 0.99 (+0.06 floor)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    z = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    assert torch.allclose(dlr_loss(z, y), dlr_loss(3 * z + 7, y), atol=1e-5)


def _mlp(seed=5):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(120, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("norm,eps", [("linf", 2 / 255), ("l2", 0.15)])
def test_at_least_as_strong_as_torchattacks_apgd_on_same_points(norm, eps):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = _mlp()
    N = "Linf" if norm == "linf" else "L2"
    refs = {
        "apgd-ce": torchattacks.APGD(model, norm=N, eps=eps, steps=20, n_restarts=1, loss="ce", seed=0),
        "apgd-t": torchattacks.APGDT(model, norm=N, eps=eps, steps=20, n_restarts=1, n_classes=10, seed=0),
    }
    for kind, ta in refs.items():
        with torch.no_grad():
            ta_rob = (model(ta(x, y)).argmax(1) == y).float().mean().item()
        ours = (_run(kind, model, x, y, norm, eps, steps=20).step < 0).float().mean().item()
        assert 0.3 < ta_rob < 0.98, ta_rob  # the comparison is informative
        assert ours <= ta_rob + 0.01, (kind, ours, ta_rob)


def test_restarts_and_targets_only_add_breaks_and_follow_the_budget():
    model, x, y = _mlp(6)
    eps = 2 / 255
    one = _run("apgd-ce", model, x, y, "linf", eps, steps=10, restarts=1)
    three = _run("apgd-ce", model, x, y, "linf", eps, steps=10, restarts=3)
    assert bool(((one.step >= 0) <= (three.step >= 0)).all())  # the first run is the same: restarts only add
    assert int(three.step.max()) <= create_attack(make_spec("apgd-ce", "linf", eps, steps=10, restarts=3)).budget
    t1 = _run("apgd-t", model, x, y, "linf", eps, steps=10, targets=1)
    t9 = _run("apgd-t", model, x, y, "linf", eps, steps=10, targets=9)
    assert bool(((t1.step >= 0) <= (t9.step >= 0)).all())
    assert t9.forwards > t1.forwards


def test_perturb_is_the_public_training_interface():
    model, x, y = _mlp(7)
    attack = create_attack(make_spec("apgd-ce", "linf", 4 / 255, steps=5))
    xa = attack.perturb(model, x[:16], y[:16], noise=PointNoise.for_points(0, "t", range(16)))
    assert xa.shape == x[:16].shape and float((xa - x[:16]).abs().max()) <= 4 / 255 + 1e-6


def _malt_problem():
    """A linear 5-class model and one point of class 0 where the class with the second-highest logit (1) is
    out of reach at eps while a lower-logit class (2) is close: its logit gap is larger but its weights
    are much steeper, in directions orthogonal to class 1's (so pushing towards 1 never reaches 2)."""
    d = 64
    s1 = torch.ones(d)
    s2 = torch.tensor([1.0, -1.0] * (d // 2))  # s1 . s2 = 0
    w = torch.zeros(5, d)
    w[1], w[2] = 100 / d * s1, 1000 / d * s2  # ||w_0 - w_1||_1 = 100, ||w_0 - w_2||_1 = 1000
    w[3], w[4] = 5 / d * s1, -5 / d * s1
    x = torch.full((1, 1, 8, 8), 0.5)
    flat = x.flatten(1)
    b = torch.zeros(5)
    for c, gap in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0)):  # z_0 - z_c at x
        b[c] = -(w[c] @ flat[0]) - gap
    lin = nn.Linear(d, 5)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin).eval(), x, torch.tensor([0])


@pytest.mark.parametrize("ranking,broken", [("logit", False), ("malt", True)])
def test_malt_finds_the_near_boundary_that_the_top_logit_misses(ranking, broken):
    """Linearised distances: class 1 at 1/100 = 0.01, class 2 at 2/1000 = 0.002; eps 0.005 reaches class 2 only.
    With one target, AutoAttack's rule (highest logit) picks class 1 and fails; MALT picks class 2 and breaks it."""
    model, x, y = _malt_problem()
    with torch.no_grad():
        assert model(x).argsort(descending=True)[0, :3].tolist() == [0, 1, 2]
    attack = create_attack(make_spec("apgd-t", "linf", 0.005, steps=20, targets=1, ranking=ranking, candidates=4))
    out = attack.run(model, x, y, noise=PointNoise.for_points(0, "apgd-t", torch.tensor([0]), "cpu"))
    assert bool(out.step[0] >= 0) is broken
    if broken:
        assert int(out.pred[0]) == 2


def test_malt_ranking_is_counted_and_validated():
    from audit.config import AuditConfig
    from audit.errors import ConfigError

    model, x, y = _malt_problem()
    calls = []

    class Counting(nn.Module):
        def forward(self, z):
            calls.append(len(z))
            return model(z)

    for ranking, extra in (("logit", 1), ("malt", 1 + 4)):  # MALT: one more forward per ranked candidate
        calls.clear()
        attack = create_attack(make_spec("apgd-t", "linf", 0.001, steps=3, targets=1, ranking=ranking, candidates=4))
        attack.run(Counting(), x, y, noise=PointNoise.for_points(0, "apgd-t", torch.tensor([0]), "cpu"),
                   early_stop=False)
        assert len(calls) == extra + 4  # + the target's run: start and 3 steps
    specs = AuditConfig(model="m.onnx", suite="standard", target_ranking="malt", rank_candidates=20).attack_specs()
    t = next(s for s in specs if s.kind == "apgd-t")
    assert t.params.ranking == "malt" and t.params.candidates == 20
    assert next(s for s in specs if s.kind == "apgd-ce").params.field_names().isdisjoint({"ranking"})
    with pytest.raises(ConfigError, match="--target-ranking"):
        AuditConfig(model="m.onnx", suite="standard", target_ranking="random").validate()
