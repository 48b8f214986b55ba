"""Progress a user can follow: one line per attack, updated while it works, clean lines in logs, silent when quiet."""
from __future__ import annotations

import io
import re

import pytest
import torch
from torch import nn

from audit.attacks import BatchNoise, create_attack, make_spec
from audit.run.engine import Evaluator
from audit.run.progress import CascadeProgress, Counted
from support import DEMO, run_main


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _setup(n=40, batch=10):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(n, 1, 4, 4)
    y = net(x).argmax(1)
    y[n - batch:] = (y[n - batch:] + 1) % 3  # the last batch is all wrong
    batches = [(x[i:i + batch], y[i:i + batch], torch.arange(i, i + batch)) for i in range(0, n, batch)]
    attacks = [create_attack(make_spec("pgd", "linf", 0.05, steps=5)), create_attack(make_spec("square", "linf", 0.05,
                                                                                              queries=30))]
    return net, batches, attacks


def test_final_lines_are_the_records_figures(capsys):
    net, batches, attacks = _setup()
    rec = Evaluator(net, 3, (1, 4, 4), torch.device("cpu")).cascade(batches, attacks, n_total=40, seed=0, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err and err.endswith("\n")  # a log gets whole lines
    final = err.strip().splitlines()[-3:]
    robust = int(rec.robust_masks(False)["worst_case"].sum())
    assert final[0].startswith(f"audit: 40/40 points scored, {int(rec.clean_correct.sum())} correct, "
                               f"{robust} robust after every attack")
    alive = rec.clean_correct.copy()
    for a, line in enumerate(final[1:]):
        after = alive & (rec.step[a] < 0)
        assert f"{rec.attack_names[a]}: {int(alive.sum())} points attacked, {int(after.sum())} still robust" in line
        alive = after


def test_a_running_attack_reports_its_iterations_and_an_estimate():
    """Within the first iterations the line already says where the attack is (not only when a batch ends)."""
    net, batches, attacks = _setup()
    log = io.StringIO()
    shown = CascadeProgress(["pgd"], [attacks[0].budget], 10, enabled=True, stream=log, log_every=0.0)
    x, y, _ = batches[0]
    shown.scored_clean(10, 7)
    shown.begin(0, 7)
    counted = Counted(net, shown.forward)
    attacks[0].run(counted, x[:7], y[:7], noise=BatchNoise(torch.Generator().manual_seed(0), 7), early_stop=False)
    lines = log.getvalue().splitlines()
    iters = [int(m.group(1)) for m in (re.search(r"iteration (\d+) of at most 5", t) for t in lines) if m]
    assert iters[0] == 0 and max(iters) >= 5 and iters == sorted(iters)  # counted while it ran, in order
    assert any("at most 0:0" in t and "left" in t for t in lines)


def test_terminal_redraws_the_block_in_place():
    term = FakeTerminal()
    shown = CascadeProgress(["pgd", "square"], [5, 30], 20, enabled=True, stream=term, redraw_every=0.0,
                            units=["iteration", "query"])
    shown.scored_clean(10, 8)
    first = term.getvalue()
    assert first.count("\n") == 3 and "\x1b[" not in first.split("\x1b[2K", 1)[0]  # drawn at once, nothing to move
    shown.begin(1, 8)
    shown.forward()
    assert "\x1b[3F" in term.getvalue()  # cursor back over the three lines, then redrawn
    assert "query 1 of at most 30" in term.getvalue()
    shown.end(1, 2)
    shown.batch_done(6)
    shown.close()
    assert term.getvalue().rstrip("\n").splitlines()[-1].endswith("  square: 8 points attacked, 6 still robust · 0:00")


def test_quiet_is_silent_and_the_table_starts_on_its_own_line(tmp_path, capsys):
    code, out, err = run_main(["audit", str(DEMO), "--n-per-class", "3", "--steps", "2", "--no-html", "--no-pdf",
                               "--quiet", "--out", str(tmp_path / "q")], capsys)
    assert code == 0 and "points scored" not in err and "attacked" not in err
    code, out, err = run_main(["audit", str(DEMO), "--n-per-class", "3", "--steps", "2", "--no-html", "--no-pdf",
                               "--out", str(tmp_path / "loud")], capsys)
    assert code == 0 and "audit: 30/30 points scored" in err and "  temp-pgd: " in err
    assert out.startswith("class ") and all(line == line.lstrip("\r") for line in (out + err).splitlines())


@pytest.mark.parametrize("progress", [False])
def test_disabled_progress_writes_nothing(progress, capsys):
    net, batches, attacks = _setup()
    Evaluator(net, 3, (1, 4, 4), torch.device("cpu")).cascade(batches, attacks, n_total=40, seed=0, progress=progress)
    assert capsys.readouterr().err == ""
