"""The long-tail pieces every method can use: ε schedules, class-wise radii, label-aware smoothing, LBGAT."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from audit.attacks import BatchNoise, make_spec
from audit.registry import METHODS
from reat_finetune.methods import LBGAT, LossContext, ScheduledPGD, get_method, label_loss
from reat_finetune.schedules import WARMUP_SHARE, class_eps_factors, eps_scale
from reat_finetune.smoothing import label_aware_eps, smoothed_cross_entropy


COUNTS = [500, 300, 180, 100, 60, 36, 20, 12, 7, 5]


def test_warmup_ramps_to_the_full_radius_and_constant_stays():
    total = 100
    ramp = math.ceil(WARMUP_SHARE * total)
    scales = [eps_scale("warmup", s, total) for s in range(total)]
    assert scales[0] == pytest.approx(1 / ramp) and scales[ramp - 1] == 1.0 and min(scales[ramp:]) == 1.0
    assert all(a <= b for a, b in zip(scales, scales[1:]))
    assert {eps_scale("constant", s, total) for s in range(total)} == {1.0}


def test_class_wise_radii_have_the_budget_as_their_image_weighted_mean():
    f = class_eps_factors(COUNTS)
    n = torch.tensor(COUNTS, dtype=torch.float32)
    assert float((f * n).sum() / n.sum()) == pytest.approx(1.0, abs=1e-6)
    assert all(a <= b for a, b in zip(f.tolist(), f.tolist()[1:]))  # rarer classes get larger radii
    assert f[0] == pytest.approx(0.7)  # the largest class keeps (1 - a) of eps
    assert torch.equal(class_eps_factors([50] * 4), torch.ones(4))  # balanced: no change


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_scheduled_attack_stays_in_each_images_own_ball(norm, eps):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 5, 7, 8, 9])
    attack = ScheduledPGD(make_spec("pgd", norm, eps, steps=5, step_size=eps / 4))
    attack.scale, attack.class_factors = 0.5, class_eps_factors(COUNTS)
    x_adv = attack.perturb(model, x, y, noise=BatchNoise(torch.Generator().manual_seed(1), 6))
    radius = 0.5 * eps * attack.class_factors[y]
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert bool((size <= radius + 1e-5).all()) and bool((size > 0.5 * radius).all())
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_label_aware_smoothing_profile_and_loss():
    e = label_aware_eps(COUNTS, head=0.3, tail=0.0)
    assert e[0] == pytest.approx(0.3) and e[-1] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(e.tolist(), e.tolist()[1:]))  # head classes smoothed most
    lin = label_aware_eps(COUNTS, 0.3, 0.0, "linear")
    assert bool((e >= lin - 1e-6).all())  # concave lies above linear
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert float(smoothed_cross_entropy(logits, y, torch.zeros(10))) == pytest.approx(float(F.cross_entropy(logits, y)))
    logp = F.log_softmax(logits, 1)
    k = e[y]
    want = ((1 - k) * -logp.gather(1, y[:, None]).squeeze(1) + k * -logp.mean(1)).mean()
    assert float(smoothed_cross_entropy(logits, y, e)) == pytest.approx(float(want))


def _ctx(smoothing=None) -> LossContext:
    log_n = torch.log(torch.tensor(COUNTS, dtype=torch.float32))
    return LossContext(log_n, torch.zeros(10, dtype=torch.bool), torch.ones(10), "off", 1.0, 0.1, smoothing=smoothing)


def test_label_loss_is_balanced_softmax_or_ce_and_smooths_both():
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    ctx = _ctx()
    assert float(label_loss(logits, y, ctx, balanced=True)) == pytest.approx(
        float(F.cross_entropy(logits + ctx.log_n, y)))
    smooth = label_aware_eps(COUNTS, 0.3, 0.0)
    assert float(label_loss(logits, y, _ctx(smooth), balanced=True)) == pytest.approx(
        float(smoothed_cross_entropy(logits + ctx.log_n, y, smooth)))


def test_lbgat_loss_is_scale_free_and_zero_at_the_guide():
    class Cfg:
        guide, lbgat_beta, eps_schedule, eps_per_class = "frozen", 0.0, "constant", False

    m = get_method("lbgat")
    assert isinstance(m, LBGAT) and "lbgat" in METHODS.names()
    m.configure(Cfg(), COUNTS)
    g, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    adv = g + 0.3 * torch.randn(8, 10)
    loss, _ = m.loss(adv, None, y, _ctx(), clean_logits=g, guide_logits=g)
    loss10, _ = m.loss(10 * adv, None, y, _ctx(), clean_logits=10 * g, guide_logits=10 * g)
    assert float(loss10) == pytest.approx(float(loss), rel=1e-4)  # the logit scale does not change the weight
    zero, _ = m.loss(g, None, y, _ctx(), clean_logits=g, guide_logits=g)
    assert float(zero) == pytest.approx(0.0, abs=1e-7)
    guide = m.make_guide(torch.nn.Linear(3, 10))
    assert not guide.training and not any(p.requires_grad for p in guide.parameters())


@pytest.mark.slow
def test_every_hook_at_once_resumes_bit_identical(tmp_path):
    """LBGAT with a learnable guide (second optimiser group, guide in the checkpoint), ε warm-up, class-wise
    radii and label-aware smoothing: a run killed mid-epoch and resumed ends with the same file."""
    from reat_finetune import RepairInterrupted, TrainHooks
    from tailaudit import run_repair
    from reat_finetune.checkpoint import load_checkpoint
    from test_repair import cheap_config

    kw = dict(method="lbgat", guide="learnable", eps_schedule="warmup", eps_per_class=True, smoothing="label-aware",
              epochs=None, steps_total=8, evaluations=2)
    full = run_repair(cheap_config(tmp_path / "full", **kw))

    def stop(epoch, done):
        if epoch == 2 and done == 1:
            raise KeyboardInterrupt

    with pytest.raises(RepairInterrupted):
        run_repair(cheap_config(tmp_path / "cut", **kw), hooks=TrainHooks(on_batch_end=stop))
    assert "guide" in load_checkpoint(tmp_path / "cut")
    run = run_repair(cheap_config(None, resume=str(tmp_path / "cut"), **kw))
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert all(torch.equal(a["guide"][k], b["guide"][k]) for k in a["guide"])
    assert run.model_path.read_bytes() == full.model_path.read_bytes()
    cfg = run.summary["config"]
    assert (cfg["eps_schedule"], cfg["eps_per_class"], cfg["smoothing"], cfg["guide"]) == (
        "warmup", True, "label-aware", "learnable")


def test_reslt_and_scaled_heads_fold_exactly_into_one_linear():
    from reat_finetune.heads import ResLTHead, ScaledLinear, fold_head, swap_head

    torch.manual_seed(0)
    f = torch.randn(32, 6)
    net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(6, 4))
    original = net(f).detach()
    head = swap_head(net, net[1], lambda lin: ResLTHead(lin, (f.mean(0), f.var(0, unbiased=False))), "reslt")
    net.eval()
    assert torch.allclose(net(f), original, atol=1e-5)  # starts as the input model
    with torch.no_grad():  # as if trained: every branch different
        for bn in head.branches:
            bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    branched = net(f).detach()
    lin = fold_head(head)
    assert isinstance(net[1], torch.nn.Linear) and net[1] is lin
    assert torch.allclose(net(f), branched, atol=1e-5)
    scaled = swap_head(net, net[1], ScaledLinear, "mislas")
    with torch.no_grad():
        scaled.scale.uniform_(0.5, 2)
    before = net(f).detach()
    fold_head(scaled)
    assert torch.allclose(net(f), before, atol=1e-5)


def test_head_methods_refuse_a_model_without_a_final_linear(tmp_path):
    from reat_finetune import RepairError
    from tailaudit import run_repair
    from test_repair import _export, cheap_config

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 10, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model = _export(net, tmp_path / "nolinear.onnx")
    for method in ("mislas", "reslt"):
        with pytest.raises(RepairError, match="final linear layer"):
            run_repair(cheap_config(tmp_path / method, model=model, method=method))
        assert not (tmp_path / method / "before").exists()


@pytest.mark.slow
def test_mislas_trains_the_head_only(tmp_path):
    """The backbone's weights come back unchanged; only the classifier (with the scale folded in) moves."""
    import onnx
    from onnx import numpy_helper

    from tailaudit import run_repair
    from support import DEMO
    from test_repair import cheap_config

    run = run_repair(cheap_config(tmp_path, method="mislas", epochs=None, steps_total=6, evaluations=1))
    assert run.summary["sampler"] == "class-balanced" and run.summary["selection"]["chosen_step"] > 0  # fine-tuned

    def weights(path, op):
        m = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        return [inits[n.input[1]] for n in m.graph.node if n.op_type == op]

    for a, b in zip(weights(DEMO, "Conv"), weights(run.model_path, "Conv")):
        assert a.shape == b.shape and abs(a - b).max() < 1e-6
    assert abs(weights(DEMO, "Gemm")[0] - weights(run.model_path, "Gemm")[0]).max() > 1e-4


def _paired(n, before, gained, lost):
    """Before/after bool masks over ``n`` points: ``before`` hits, then ``gained`` new ones and ``lost`` old ones."""
    import numpy as np

    b = np.zeros(n, bool)
    b[:before] = True
    a = b.copy()
    a[before:before + gained] = True
    a[:lost] = False
    return b, a


def _tests(wc, tail, clean, n=200):
    """significance.paired_tests-shaped dict from (before, gained, lost) triples (tail on n // 4 points)."""
    from reat_finetune.significance import mcnemar

    return {"test": "mcnemar", "alpha": 0.05, "n_points": n,
            "worst_case": mcnemar(*_paired(n, *wc)).to_dict(), "clean": mcnemar(*_paired(n, *clean)).to_dict(),
            "tail": mcnemar(*_paired(n // 4, *tail)).to_dict() if tail else None}


@pytest.mark.parametrize("after,kept,meaningful,tests,code", [
    ((0.85, 0.78, 0.50), False, True, ((138, 20, 2), (14, 12, 0), (162, 10, 4)), "improved"),
    ((0.85, 0.78, 0.28), False, True, ((138, 20, 2), (14, 0, 0), (162, 10, 4)), "improved"),  # tail unchanged
    ((0.85, 0.78, 0.20), False, True, ((138, 20, 2), (14, 0, 12), (162, 10, 4)), "partly-improved"),  # tail fell
    ((0.60, 0.78, 0.50), False, True, ((138, 20, 2), (14, 12, 0), (162, 0, 42)), "partly-improved"),  # 74% kept
    # issue 27/28: +10 of 200 images with overlapping intervals is not a gain, whatever the point estimate
    ((0.80, 0.74, 0.35), False, True, ((138, 16, 6), (14, 3, 1), (162, 4, 6)), "no-change"),
    ((0.80, 0.60, 0.28), False, True, ((138, 2, 20), (14, 0, 0), (162, 4, 6)), "not-improved"),  # significant loss
    ((0.10, 0.10, 0.10), False, False, ((138, 20, 2), (14, 12, 0), (162, 10, 4)), "not-improved"),  # collapsed
    ((0.81, 0.69, 0.28), True, True, ((138, 0, 0), (14, 0, 0), (162, 0, 0)), "input-kept"),
])
def test_repair_outcome_codes(after, kept, meaningful, tests, code):
    """Only significant changes count (McNemar's exact test on the paired points); the headline says so."""
    from reat_finetune.outcome import decide

    head = lambda c, r, t: {"clean": c, "robust_worst_case": r, "robust_groups": {"tail": t}}  # noqa: E731
    o = decide(head(0.81, 0.69, 0.28), head(*after), input_kept=kept, after_meaningful=meaningful, min_clean_kept=0.8,
               tests=_tests(*tests))
    assert o.code == code
    assert o.headline.startswith("Repair did not help" if kept else o.label)
    assert ("Repair" not in " ".join(o.actions)) and o.actions
    assert "McNemar" in o.significance and o.tests.worst_case.n == 200
    if code == "no-change":
        assert o.tests.worst_case.gained - o.tests.worst_case.lost == 10
        assert not o.tests.worst_case.significant and "chance" in o.significance
        assert "Use " not in " ".join(o.actions)


def test_repair_outcome_names_a_large_clean_loss_and_untested_changes():
    """A clean loss above 5 points is in the headline with the classes that lost most; no tests: no gain claimed."""
    from reat_finetune.outcome import decide

    head = lambda c, r, t: {"clean": c, "robust_worst_case": r, "robust_groups": {"tail": t}}  # noqa: E731
    o = decide(head(0.81, 0.60, 0.28), head(0.705, 0.70, 0.40), input_kept=False, after_meaningful=True,
               min_clean_kept=0.8, tests=_tests((120, 25, 5), (14, 10, 0), (162, 5, 26)),
               class_clean_changes=[("cat", -0.35), ("dog", -0.2), ("ship", 0.05)])
    assert o.code == "improved"  # 87% of the clean accuracy kept: above the floor
    assert "clean accuracy fell 10.5 points" in o.headline and "“cat” (-35 points)" in o.headline
    assert "“ship”" not in o.headline
    untested = decide(head(0.81, 0.60, 0.28), head(0.85, 0.70, 0.40), input_kept=False, after_meaningful=True,
                      min_clean_kept=0.8, tests=None)
    assert untested.code == "no-change" and "not tested" in untested.significance
