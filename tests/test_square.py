"""Square Attack: known optimum on a linear model, ball constraints, torchattacks parity, scorer input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.attacks import PointNoise, create_attack, make_spec
from audit.attacks.square import window_share
from audit.models.wrapper import ScorerClassifier

from test_attacks_apgd import _linear_problem, _worst_margin


def _run(model, x, y, norm, eps, queries, seed=0):
    attack = create_attack(make_spec("square", norm, eps, queries=queries))
    return attack.run(model, x, y, noise=PointNoise.for_points(seed, "square", range(len(x))))


def test_linf_linear_model_breaks_exactly_the_breakable_points():
    model, lin, x, y = _linear_problem(1, classes=4)
    eps = 0.03
    worst = _worst_margin(lin, x, y, eps, "linf")
    out = _run(model, x, y, "linf", eps, 1000)
    clear = worst.abs() > 2e-3
    assert bool((worst < 0).any()) and bool((worst > 0).any())
    assert torch.equal((out.step >= 0)[clear], (worst < 0)[clear])
    assert float((out.x_adv - x).abs().max()) <= eps + 1e-6
    assert out.step.max() <= 1000 and out.zero_grad == 0


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.3)])
def test_stays_in_ball_records_first_fool_and_model_agrees(norm, eps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10)).eval()
    x = torch.rand(40, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = _run(model, x, y, norm, eps, 200)
    d = (out.x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5 and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(model(out.x_adv).argmax(1), out.pred)
    broken = out.step >= 0
    assert 0 < int(broken.sum()) < len(y)
    assert torch.all(out.pred[broken] != y[broken])
    # early stop: a broken point costs its own step count of queries, robust ones the whole budget
    assert out.forwards == len(y) + int(torch.where(broken, out.step, torch.full_like(out.step, 200)).sum())


def test_runs_on_a_numpy_scorer_with_the_same_result():
    """Score-based: the engine hands it onnxruntime; any pixels -> logits function gives the same points."""
    model, _, x, y = _linear_problem(2, classes=4)

    def scorer(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(pixels)).numpy()

    a = _run(model, x, y, "linf", 0.03, 300)
    b = _run(ScorerClassifier(scorer), x, y, "linf", 0.03, 300)
    assert torch.equal(a.step, b.step) and torch.equal(a.x_adv, b.x_adv)


@pytest.mark.parametrize("norm,eps", [("linf", 1 / 255), ("l2", 0.1)])
def test_at_least_as_strong_as_torchattacks_square(norm, eps):
    torchattacks = pytest.importorskip("torchattacks")
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16 * 16, 10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(48, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    ta = torchattacks.Square(model, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=200, seed=0)
    with torch.no_grad():
        ta_rob = (model(ta(x, y)).argmax(1) == y).float().mean().item()
    ours = (_run(model, x, y, norm, eps, 200).step < 0).float().mean().item()
    assert 0.3 < ta_rob < 0.98, ta_rob
    assert ours <= ta_rob + 0.05, (ours, ta_rob)  # random search: within noise of 48 points


def test_window_schedule_shrinks_with_the_query_budget():
    assert window_share(0.8, 0, 5000) == 0.8
    assert window_share(0.8, 5000 // 2, 5000) == pytest.approx(0.8 / 128)  # 5000 of the 10000-query schedule
    assert window_share(0.8, 9999, 10000) == pytest.approx(0.8 / 512)
