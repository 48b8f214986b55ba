"""Square's probe (``--suite standard``): a point stops after ``probe`` queries unless Square is
doing better on it than the gradient attacks did; the others continue the same run to the full
budget, so where it matters the result is exactly the full Square's."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from audit.attacks import PointNoise, create_attack, make_spec
from audit.run.engine import Evaluator
from audit.checks.sanity import sanity_section

CLASSES = [f"c{i}" for i in range(10)]


class Linear(nn.Module):
    """A linear classifier on 3x8x8 images; with ``mislead`` its input gradient points the wrong way."""

    def __init__(self, mislead: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(192, 10)
        self.mislead = mislead
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mislead:
            x = (2 * x).detach() - x  # the value of x, the gradient of -x
        return self.lin(x.flatten(1))


def _data(model: nn.Module, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.rand(n, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def _square(probe: int, queries: int = 300, eps: float = 0.03):
    return create_attack(make_spec("square", "linf", eps, queries=queries, probe=probe))


def _noise(n: int):
    return PointNoise.for_points(0, "square", range(n))


def test_nothing_to_beat_is_exactly_the_full_run():
    model = Linear().eval()
    x, y = _data(model)
    full = _square(0).run(model, x, y, noise=_noise(len(y)))
    probed = _square(50).run(model, x, y, noise=_noise(len(y)), margin_to_beat=torch.full((len(y),), float("inf")))
    assert full.carried_on is None
    assert torch.equal(full.x_adv, probed.x_adv) and torch.equal(full.step, probed.step)
    assert torch.equal(full.pred, probed.pred) and full.forwards == probed.forwards
    # every point still querying at the probe carried on
    assert torch.equal(probed.carried_on, (full.step < 0) | (full.step > 50))


def test_points_the_gradient_attacks_did_better_on_stop_at_the_probe():
    model = Linear().eval()
    x, y = _data(model)
    full = _square(0).run(model, x, y, noise=_noise(len(y)))
    stopped = _square(50).run(model, x, y, noise=_noise(len(y)), margin_to_beat=torch.full((len(y),), -float("inf")))
    assert not bool(stopped.carried_on.any())
    early = (full.step >= 0) & (full.step <= 50)
    assert bool(early.any()) and bool((full.step > 50).any())  # informative: some break later than the probe
    assert torch.equal(stopped.step[early], full.step[early])  # the same run up to the probe
    assert bool((stopped.step[~early] == -1).all())
    assert stopped.forwards <= len(y) * 51 < full.forwards


def _cascade(model, x, y, probe, batch, ids=None, middle=()):
    specs = [make_spec("apgd-ce", "linf", 0.03, steps=10), *middle,
             make_spec("square", "linf", 0.03, queries=300, probe=probe)]
    ids = torch.arange(len(y)) if ids is None else ids
    batches = [(x[i:i + batch], y[i:i + batch], ids[i:i + batch]) for i in range(0, len(y), batch)]
    evaluator = Evaluator(model, 10, x.shape[1:], torch.device("cpu"))
    rec = evaluator.cascade(batches, [create_attack(s) for s in specs], n_total=len(y), seed=0)
    return rec, specs


def test_misleading_gradients_give_square_its_full_budget_where_it_does_better():
    """Gradients that point away from the boundary: APGD breaks next to nothing, Square carries on and
    breaks exactly what the full Square breaks; batch size and sharding change nothing."""
    model = Linear(mislead=True).eval()
    x, y = _data(model)
    full, _ = _cascade(model, x, y, 0, 40)
    probed, specs = _cascade(model, x, y, 50, 40)
    assert int(full.broken()[1].sum()) > 2 * int(full.broken()[0].sum())  # APGD gets almost nothing
    assert np.array_equal(probed.step, full.step) and np.array_equal(probed.pred, full.pred)
    carried = probed.carried_points[1]
    assert carried.sum() > 0 and not carried[~probed.clean_correct].any()
    for batch in (1, 7):
        again, _ = _cascade(model, x, y, 50, batch)
        assert np.array_equal(again.step, probed.step) and np.array_equal(again.carried_points, probed.carried_points)
    a, _ = _cascade(model, x[:13], y[:13], 50, 5)
    b, _ = _cascade(model, x[13:], y[13:], 50, 9, ids=torch.arange(13, len(y)))
    assert np.array_equal(np.concatenate([a.carried_points, b.carried_points], 1), probed.carried_points)
    sanity, _ = sanity_section(probed, specs, CLASSES)
    pr = sanity["square_only"]["probe"]
    assert pr["full_budget_points"] == int(carried.sum()) and pr["probe_queries"] == 50 and pr["full_queries"] == 300
    assert sum(pr["per_class"]) == int(carried.sum())


def test_honest_gradients_let_square_stop_at_the_probe():
    """On a linear model APGD reaches the optimum: Square never does better, so it stops at the
    probe everywhere and finds nothing the full Square would (nothing is left to find)."""
    model = Linear().eval()
    x, y = _data(model)
    full, _ = _cascade(model, x, y, 0, 40)
    probed, _ = _cascade(model, x, y, 50, 40)
    assert int(full.broken()[0].sum()) > 0 and int(full.broken()[1].sum()) == 0
    assert probed.carried_points[1].sum() == 0
    assert np.array_equal(probed.step, full.step)
    # an attack whose own loss saturates (T-PGD at a tiny T: exactly zero gradients) adds no information,
    # but does not erase what APGD-CE found: Square still stops at the probe
    tpgd = make_spec("temp-pgd", "linf", 0.03, steps=3, temperature=1e-3)
    again, _ = _cascade(model, x, y, 50, 40, middle=(tpgd,))
    assert again.zero_grad_points[1].sum() > 0 and again.carried_points[2].sum() == 0


class Rounded(Linear):
    """The linear model behind 4-level input rounding: exactly zero input gradients everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.round(x * 3) / 3)


def test_zero_gradients_give_every_point_squares_full_budget():
    model = Rounded().eval()
    x, y = _data(model)
    full, _ = _cascade(model, x, y, 0, 40)
    probed, specs = _cascade(model, x, y, 50, 40)
    assert probed.zero_grad_points[0][probed.clean_correct].all()
    assert np.array_equal(probed.step, full.step)
    # every point Square attacked and had not broken by the probe went on to the full budget
    attacked = probed.clean_correct & ~probed.broken()[0]
    expected = attacked & ~((probed.step[1] >= 0) & (probed.step[1] <= 50))
    assert expected.sum() > 0 and np.array_equal(probed.carried_points[1], expected)
    sanity, _ = sanity_section(probed, specs, CLASSES)
    assert sanity["square_only"]["probe"]["full_budget_points"] == int(expected.sum())


def _square_cascade(model, x, y, batch, reruns, queries=40, ids=None):
    specs = [make_spec("apgd-ce", "linf", 0.03, steps=10),
             make_spec("square", "linf", 0.03, queries=queries, probe=10, reruns=reruns)]
    ids = torch.arange(len(y)) if ids is None else ids
    batches = [(x[i:i + batch], y[i:i + batch], ids[i:i + batch]) for i in range(0, len(y), batch)]
    evaluator = Evaluator(model, 10, x.shape[1:], torch.device("cpu"))
    return evaluator.cascade(batches, [create_attack(s) for s in specs], n_total=len(y), seed=0), specs


def test_zero_gradients_give_square_an_independent_rerun_on_the_points_it_left_robust():
    """Behind input rounding every gradient is zero: the points Square's first run leaves robust get a
    second, independently seeded run of the full budget; what it breaks is recorded after the first
    run's queries, and batch size, sharding and batch order change nothing."""
    model = Rounded().eval()
    x, y = _data(model, 60)
    once, _ = _square_cascade(model, x, y, 60, 0)
    twice, specs = _square_cascade(model, x, y, 60, 1)
    attacked = twice.clean_correct & ~twice.broken()[0]
    assert twice.zero_grad_points[0][twice.clean_correct].all()
    # the first run is the same run: what it broke, it broke at the same query
    first = once.broken()[1]
    assert np.array_equal(twice.step[1][first], once.step[1][first])
    # the rerun ran exactly on the attacked points the first run left robust ...
    left = attacked & ~first
    assert left.sum() > 0 and np.array_equal(twice.rerun_points[1], left)
    assert once.rerun_points[1].sum() == 0
    # ... and broke some of them, recorded after the first run's start and 40 queries
    extra = twice.broken()[1] & ~first
    assert extra.sum() > 0 and (twice.step[1][extra] >= 41).all() and (twice.step[1][extra] <= 81).all()
    for batch in (1, 7):
        again, _ = _square_cascade(model, x, y, batch, 1)
        assert np.array_equal(again.step, twice.step) and np.array_equal(again.rerun_points, twice.rerun_points)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    shuffled, _ = _square_cascade(model, x[order], y[order], 11, 1, ids=order)
    assert np.array_equal(shuffled.step[:, order.argsort().numpy()], twice.step)
    a, _ = _square_cascade(model, x[:23], y[:23], 5, 1)
    b, _ = _square_cascade(model, x[23:], y[23:], 9, 1, ids=torch.arange(23, len(y)))
    assert np.array_equal(np.concatenate([a.step, b.step], 1), twice.step)
    sanity, _ = sanity_section(twice, specs, CLASSES)
    pr = sanity["square_only"]["probe"]
    assert pr["reruns"] == 1 and pr["rerun_points"] == int(left.sum()) and sum(pr["rerun_per_class"]) == int(left.sum())


def test_the_rerun_counts_its_queries_and_skips_points_the_gradients_informed():
    """On one Square call: only points whose margin to beat is +inf are rerun, every query is counted,
    and a finite margin (an informative gradient attack) keeps the single run."""
    model = Rounded().eval()
    x, y = _data(model, 40)
    sq = _square(10, queries=40)
    rerun = create_attack(make_spec("square", "linf", 0.03, queries=40, probe=10, reruns=1))
    blind = torch.full((len(y),), float("inf"))
    blind[::2] = -float("inf")  # even points: the gradient attacks "did better", so they stop at the probe
    one = sq.run(model, x, y, noise=_noise(len(y)), margin_to_beat=blind)
    two = rerun.run(model, x, y, noise=_noise(len(y)), margin_to_beat=blind)
    assert rerun.budget == 81 and sq.budget == 40
    left = (one.step < 0) & torch.isinf(blind) & (blind > 0)
    assert bool(left.any()) and torch.equal(two.reran, left) and one.reran is None
    assert torch.equal(two.step[~left], one.step[~left])
    # the rerun's own forwards: one start each plus a query per point per step until broken
    extra = two.step[left]
    queries = torch.where(extra >= 0, extra - 41, torch.full_like(extra, 40))
    assert two.forwards == one.forwards + int(left.sum()) + int(queries.sum())
    with torch.no_grad():
        assert torch.equal(model(two.x_adv).argmax(1), two.pred)
    assert float((two.x_adv - x).abs().max()) <= 0.03 + 1e-6
