"""Gradient-masking checks per class, and every verdict on the deployed runtime (survivors included)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from audit.attacks import create_attack, make_spec
from audit.run.engine import Evaluator
from audit.checks.sanity import run_large_eps, sanity_section

CLASSES = [f"c{i}" for i in range(10)]


def _data(model, n=40, seed=0):
    torch.manual_seed(seed)
    x = torch.rand(n, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def _cascade(model, x, y, specs, **kw):
    """``kw``: the Evaluator's own settings (amp, reference_scorer)."""
    evaluator = Evaluator(model, 10, x.shape[1:], torch.device("cpu"), **kw)
    return evaluator.cascade([(x, y, torch.arange(len(y)))], [create_attack(s) for s in specs], n_total=len(y), seed=0)


class Quantised(nn.Module):
    """A linear model on 8-level quantised pixels: zero input gradient everywhere, yet not robust."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(192, 10)

    def forward(self, x):
        return self.lin(torch.round(x * 8).flatten(1) / 8)


def test_masked_gradients_are_named_per_class():
    model = Quantised().eval()
    x, y = _data(model)
    specs = [make_spec("apgd-ce", "linf", 0.1, steps=5), make_spec("square", "linf", 0.1, queries=100)]
    rec = _cascade(model, x, y, specs)
    sanity, warnings = sanity_section(rec, specs, CLASSES)
    zg = sanity["zero_gradient"]
    assert zg["per_attack"]["apgd-ce"]["points"] == len(y)  # every attacked point had a zero gradient
    assert set(zg["flagged_classes"]) == {CLASSES[c] for c in set(y.tolist())}
    sq = sanity["square_only"]
    assert sq["checked"] and sq["points"] > 0 and sq["points"] == int(rec.broken()[1].sum())
    assert sq["classes"] == [CLASSES[c] for c in range(10) if sq["per_class"][c]]
    assert not sanity["passed"] and any("zero input gradients" in w for w in warnings)
    assert any("Square broke" in w for w in warnings)


def test_randomised_model_is_flagged_and_a_plain_one_passes():
    torch.manual_seed(2)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
    noisy = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(192, 10)).train()  # dropout left on
    x, y = _data(plain)
    specs = [make_spec("pgd", "linf", 0.01, steps=3)]
    ok, ok_w = sanity_section(_cascade(plain, x, y, specs), specs, CLASSES)
    assert ok["randomised"]["points"] == 0 and ok["zero_gradient"]["flagged_classes"] == [] and ok_w == []
    assert ok["passed"] and ok["large_eps"] is None
    bad, bad_w = sanity_section(_cascade(noisy, x, y, specs), specs, CLASSES)
    assert bad["randomised"]["points"] == len(y) and bad["randomised"]["max_abs_logit_diff"] > 0
    assert any("randomised" in w for w in bad_w)


def test_large_eps_check_breaks_everything_on_an_honest_model():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
    x, y = _data(model, n=30)
    specs = [make_spec("pgd", "linf", 8 / 255)]
    res = run_large_eps(Evaluator(model, 10, (3, 8, 8), torch.device("cpu")), [(x, y, torch.arange(30))], specs,
                        CLASSES, norm="linf", seed=0)
    assert res["passed"] and res["robust_acc"] <= 0.05 and res["n"] == 30 and res["eps"] == 0.5
    assert res["attack"]["kind"] == "apgd-ce"
    failed = dict(res, passed=False, robust_acc=0.5, classes=["c3"])
    rec = _cascade(model, x, y, specs)
    _, warnings = sanity_section(rec, specs, CLASSES, failed)
    assert any("huge radius" in w and "c3" in w for w in warnings)


def test_survivors_are_rechecked_on_the_reference_runtime():
    """A point the attack leaves robust on the attacked model but the deployed runtime misclassifies is broken."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(80, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    shift = torch.zeros(10)
    shift[0] = 0.05  # the "deployed" runtime slightly favours class 0

    def reference(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (model(torch.from_numpy(pixels)) + shift).numpy()

    spec = make_spec("pgd", "linf", 0.004, steps=3)
    rec = _cascade(model, x, y, [spec], reference_scorer=reference)
    assert rec.verified_by == "onnxruntime" and rec.survivors_broken[0] > 0
    plain = _cascade(model, x, y, [spec])  # the same attack judged on the attacked model only
    only_there = rec.clean_correct & plain.clean_correct & rec.broken()[0] & ~plain.broken()[0]
    assert int(only_there.sum()) == rec.survivors_broken[0]
    assert (rec.pred[0][only_there] == 0).all() and (rec.step[0][only_there] == create_attack(spec).budget).all()
    # bf16 attack: every verdict re-checked in fp32
    rec16 = _cascade(model, x, y, [spec], amp="bf16")
    assert rec16.verified_by == "fp32"
    broken = rec16.broken()[0]
    assert (rec16.pred[0][broken] != rec16.label[broken]).all()
