"""Settings that adapt (issue 27 item 2): the learning-rate search within the budget, and divergence caught,
recorded and recovered from (an injected learning rate of 10 on the real demo model)."""
from __future__ import annotations

import json
import math

import pytest

from reat_finetune.adapt import (DEFAULT_LR, LOWER, SearchPlan, Watch, collapsed, plan_search, run_search,
                                 trial_key)
from reat_finetune.budget import resolve_budget
from tailaudit import run_repair
from test_repair import cheap_config


def test_search_plan_fits_the_budget():
    """8r steps, at most 15% of the budget; none when --lr is given or the budget is too small."""
    p = plan_search(None, 300)
    assert p.round1_steps == 5 and p.steps == 40 <= 0.15 * 300 and DEFAULT_LR in p.grid and len(p.grid) == 4
    assert plan_search(0.01, 300).steps == 0 and "--lr 0.01 given" in plan_search(0.01, 300).reason
    assert plan_search(None, 100).steps == 0 and "too small" in plan_search(None, 100).reason
    b = resolve_budget(304, 128, epochs=None, steps_total=None).after_search(p.steps)
    assert b.steps_total == 260 and b.search_steps == 40 and b.eval_steps[-1] == 260 and "search" in b.rule


def test_successive_halving_keeps_the_better_half_and_skips_diverged_rates():
    """Round 1 ranks four rates; the best two train twice as long; a diverged rate is never chosen."""
    scores = {0.2: 0.9, 0.05: 0.6, 0.0125: 0.7, 0.003125: 0.5}
    calls, current = [], {}

    def train(lr, steps, state):
        calls.append((lr, steps, None if state is None else state["lr"]))
        current["lr"] = lr
        return {"lr": lr}, ("the loss became nan" if lr == 0.2 else None)

    def score():
        return {"val_robust_acc": scores[current["lr"]], "val_clean_acc": 0.8, "eligible": True}

    rec = run_search(SearchPlan((0.2, 0.05, 0.0125, 0.003125), 3, "test"), train, score, lambda s: None,
                     lambda: {"lr": None})
    assert [c[:2] for c in calls[:4]] == [(0.2, 3), (0.05, 3), (0.0125, 3), (0.003125, 3)]
    assert sorted(c[0] for c in calls[4:]) == [0.0125, 0.05] and all(c[1] == 6 and c[2] == c[0] for c in calls[4:])
    assert rec["chosen_lr"] == 0.0125 and rec["rounds"][0]["trials"][0]["diverged"] == "the loss became nan"
    # ties (a small selection split) go to the rate nearest the default, then the smaller one
    tie = [{"lr": lr, "val_robust_acc": 0.5, "val_clean_acc": 0.9, "eligible": True} for lr in (0.2, 0.0125, 0.05)]
    assert max(tie, key=trial_key)["lr"] == 0.05


def test_a_diverged_rate_never_goes_on_and_an_ineligible_choice_says_so():
    """Three rates diverge and one trains but misses the clean floor (the zoo's Keras-style net with LBGAT's
    learnable guide): only the healthy rate trains on, and the record says none was eligible."""
    calls = []

    def train(lr, steps, state):
        calls.append((lr, steps))
        return {"lr": lr}, (None if lr == 0.0125 else "the loss spiked")

    rec = run_search(SearchPlan((0.2, 0.05, 0.0125, 0.003125), 3, "test"), train,
                     lambda: {"val_robust_acc": 0.05, "val_clean_acc": 0.1, "eligible": False}, lambda s: None,
                     lambda: {"lr": None})
    assert calls[4:] == [(0.0125, 6)] and rec["chosen_lr"] == 0.0125
    assert rec["chosen_because"].startswith("no rate kept the clean floor")
    everything_diverged = run_search(SearchPlan((0.2, 0.05), 3, "test"), lambda lr, n, s: ({}, "nan"),
                                     lambda: {}, lambda s: None, lambda: {})
    assert everything_diverged["chosen_lr"] == 0.05 and "every rate diverged" in everything_diverged["chosen_because"]


def test_watch_spikes_non_finite_and_collapse():
    w = Watch()
    assert w.check(2.0) is None and w.check(2.2) is None
    assert "spiked" in w.check(40.0) and "nan" in w.check(math.nan)
    small = Watch()
    assert all(small.check(x) is None for x in (0.01, 0.008, 0.09))  # tiny losses moving is not a divergence
    assert collapsed({"val_collapse": "100% of all clean predictions are class 0", "val_clean_acc": 0.1}, 0.19)
    assert collapsed({"val_collapse": "70% ...", "val_clean_acc": 0.6}, 0.19) is None  # still learning


def test_injected_divergence_is_caught_recorded_and_recovered(tmp_path):
    """--lr 10 on the demo model: the blow-up is caught, the last good state restored at a lower rate (one line
    each, in training_log.json), and training goes on to healthy, finite checkpoints."""
    run = run_repair(cheap_config(tmp_path / "r", epochs=None, steps_total=20, evaluations=4, lr=10.0))
    log = json.loads((run.out_dir / "training_log.json").read_text())
    events = log["divergences"]
    assert events and events[0]["restored_step"] == 0
    assert events[0]["lr_to"] == pytest.approx(LOWER * events[0]["lr_from"])
    assert all(e["sentence"].startswith("training diverged at step") for e in events)
    assert [e["sentence"] for e in events] == [w for w in log["warnings"] if w.startswith("training diverged")]
    last = log["epochs"][-1]
    assert math.isfinite(last["loss"]) and last["lr"] < 10 * LOWER and not collapsed(last, 0.19)
    assert log["lr"] == 10.0 and log["lr_search"] is None  # --lr given: no search
    assert run.summary["divergences"] == events


@pytest.mark.slow
def test_learning_rate_search_runs_within_the_budget(tmp_path):
    """No --lr: a recorded successive-halving search spends its steps inside --train-steps-total."""
    run = run_repair(cheap_config(tmp_path / "r", epochs=None, steps_total=160, evaluations=2))
    log = run.training_log
    rec = log["lr_search"]
    assert rec["steps"] == 24 and log["budget"]["steps_total"] + rec["steps"] == 160
    assert [len(r["trials"]) for r in rec["rounds"]] == [4, 2] and rec["chosen_lr"] in rec["grid"]
    assert log["lr"] == rec["chosen_lr"] == run.summary["lr"]
    assert log["epochs"][-1]["step"] == 136


def _log(robust, clean, divergences=()):
    """A training log: step 0 (the input) then one evaluation per (robust, clean) pair."""
    entries = [{"step": 10 * i, "val_robust_acc": r, "val_clean_acc": c} for i, (r, c) in enumerate(zip(robust, clean))]
    return {"epochs": entries, "divergences": list(divergences)}


@pytest.mark.parametrize("robust,clean,counts,divergences,needle,absent", [
    # clean fell as training went on: a lower rate or a shorter budget, never a longer one
    ((0.2, 0.25, 0.24, 0.22), (0.7, 0.6, 0.5, 0.45), [20] * 3, (), "(--lr 0.0125) or shorten the budget", "longer"),
    # robustness never rose: a stronger method or the other radius schedule
    ((0.3, 0.3, 0.28, 0.29), (0.7, 0.7, 0.7, 0.7), [20] * 3, (), "--eps-schedule constant", "longer"),
    # still rising at the end with clean accuracy kept: only then a longer budget
    ((0.3, 0.32, 0.35, 0.40), (0.7, 0.7, 0.7, 0.7), [20] * 3, (), "--train-steps-total 600", "--lr"),
    # too few selection images: --val-root
    ((0.3, 0.32, 0.31, 0.31), (0.7, 0.7, 0.7, 0.7), [3, 20, 20], (), "--val-root DIR", "longer"),
    # a divergence: start lower
    ((0.3, 0.32, 0.31, 0.31), (0.7, 0.7, 0.7, 0.7), [20] * 3,
     ({"lr_to": 0.0125, "why": "the loss became nan"},), "--lr 0.0125", "longer"),
])
def test_advice_follows_from_what_happened(robust, clean, counts, divergences, needle, absent):
    from reat_finetune.advice import next_steps

    advice = next_steps(_log(robust, clean, divergences), method="reat", lr=0.05, steps=300, selection_counts=counts,
                        source="evaluation", floor=0.8 * clean[0])
    text = " ".join(advice)
    assert needle in text and absent not in text, advice


def test_grad_clip_must_be_a_positive_norm(tmp_path):
    from reat_finetune.errors import RepairError

    with pytest.raises(RepairError, match=r"--grad-clip must be in \(0, "):
        cheap_config(tmp_path, grad_clip=-1.0).validate()
    cheap_config(tmp_path, grad_clip=1.0).validate()
