"""The repair composes the audit through its public surface (docs/architecture.md, "The audit's public surface").

``reat_finetune`` imports from ``audit`` only the phases (:mod:`audit.phases`), the package faces of
the attacks and the models, the audit's settings, the run's process group and the results
contract; the application layer and the benches reach the run's phases through :mod:`audit.phases`
too. Every ``import`` counts, those inside functions included. The phases themselves are checked on
a real model: :func:`audit.phases.score_points` is the engine's cascade, figure for figure.
"""
from __future__ import annotations

import ast

import numpy as np
import pytest
import torch
from support import ROOT

# what reat_finetune may import of the audit package, each with why
SURFACE = {
    "audit.phases": "the run's phases: start, prepare, evaluate (audit or score points), assemble, write",
    "audit.attacks": "the attacks' package face: the training attacks build on its PGD, noise and projections",
    "audit.models": "the models' package face: the wrapped model, its last layer, the formats the export writes",
    "audit.config": "AuditConfig: the settings of the before and after audits that a RepairConfig holds",
    "audit.options": "the option declarations the repair's own options extend (one table for both commands)",
    "audit.run.distributed": "the run's torchrun process group, shared by the audit's shards and the repair's DDP",
}
# the results contract at the bottom (audit/contract/) and the value types under it
CONTRACT = {
    "audit.errors": "the error types every layer raises",
    "audit.values": "AttackSpec and the typed field check of a config",
    "audit.version": "the version stamped into repair.json",
    "audit.registry": "the registries that name attacks and repair methods",
    "audit.contract.model": "the typed results the repair compares before and after",
    "audit.contract.files": "the JSON writer of the training log",
    "audit.contract.repair": "the typed repair.json and training_log.json the repair writes",
    "audit.contract.codec": "the codec that turns those documents into JSON and back",
}
# the run's modules under the surface: callers above the engine go through audit.phases instead (the run's and the
# checks' sub-packages whole, but for the process group the repair's DDP shares, and the models' own modules)
RUN_INTERNALS = ("audit.pipeline", "audit.assemble", "audit.metrics", "audit.data.core")
RUN_PACKAGES = ("audit.run.", "audit.checks.", "audit.models.")


def _audit_imports(source: str) -> set[str]:
    """The audit modules a file imports (absolute imports; a name is a module when its file exists)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and not _is_module(name):
                name = name.rpartition(".")[0]
            if name == "audit" or name.startswith("audit."):
                found.add(name)
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports_of(*places: str) -> dict[str, set[str]]:
    """{file: audit modules it imports} for the files of ``places`` (folders or files under the root)."""
    out = {}
    for place in places:
        p = ROOT / place
        for f in sorted(p.rglob("*.py") if p.is_dir() else [p]):
            out[str(f.relative_to(ROOT))] = _audit_imports(f.read_text(encoding="utf-8"))
    return out


def test_the_collector_sees_imports_inside_functions() -> None:
    src = ("from audit.models import LoadedModel\ndef f():\n    from audit.pipeline import run_audit\n"
           "    import audit.attacks.pgd\n    from audit.run import distributed\n")
    assert _audit_imports(src) == {"audit.models", "audit.pipeline", "audit.attacks.pgd", "audit.run.distributed"}


def test_the_allow_list_names_modules_that_exist() -> None:
    assert not set(SURFACE) & set(CONTRACT)
    assert all(_is_module(m) for m in [*SURFACE, *CONTRACT]), [m for m in [*SURFACE, *CONTRACT] if not _is_module(m)]


def test_the_repair_imports_only_the_surface_and_the_contract() -> None:
    allowed = set(SURFACE) | set(CONTRACT)
    reached = {f: sorted(mods - allowed) for f, mods in _imports_of("reat_finetune").items() if mods - allowed}
    assert reached == {}, reached
    used = set().union(*_imports_of("reat_finetune").values())
    assert "audit.phases" in used and len(used) <= len(allowed)


def test_the_api_and_the_benches_reach_the_run_through_the_phases() -> None:
    reached = {f: sorted(m for m in mods if (m in RUN_INTERNALS or m.startswith(RUN_PACKAGES)) and m not in SURFACE)
               for f, mods in _imports_of("tailaudit", "bench", "reat_finetune").items()}
    assert {f: m for f, m in reached.items() if m} == {}


def test_score_points_is_the_engines_cascade_per_class() -> None:
    """A real model: the per-class figures are the points' verdicts averaged per class, robust implies clean,
    and an attack at a large radius leaves fewer robust points than a tiny one."""
    from audit.attacks import make_spec
    from audit.phases import score_points

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.rand(40, 3, 8, 8)
    y = net(x).argmax(1)  # every point clean-correct ...
    y[::5] = (y[::5] + 1) % 4  # ... but every fifth

    def scores(eps: float):  # noqa: ANN202
        batches = [(x[i:i + 16], y[i:i + 16], torch.arange(i, min(40, i + 16))) for i in range(0, 40, 16)]
        return score_points(net.train(), iter(batches), [make_spec("pgd", "linf", eps, steps=5)], n_total=40,
                            num_classes=4, input_size=(3, 8, 8), device=torch.device("cpu"), seed=0)

    small, large = scores(1e-4), scores(0.5)
    assert not net.training  # scored in eval mode
    assert small.clean.tolist() == [i % 5 != 0 for i in range(40)]
    labels = y.numpy()
    for got in (small, large):
        for c in range(4):
            if (labels == c).any():
                assert got.clean_by_class[c] == pytest.approx(got.clean[labels == c].mean())
                assert got.robust_by_class[c] == pytest.approx(got.robust[labels == c].mean())
            else:
                assert np.isnan(got.clean_by_class[c])
    assert not (large.robust & ~large.clean).any()
    assert large.robust.sum() < small.robust.sum()


def test_score_points_says_when_the_predictions_collapse() -> None:
    from audit.attacks import make_spec
    from audit.phases import score_points

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))  # class 0 whatever the image
    x, y = torch.rand(20, 3, 8, 8), torch.arange(20) % 4
    got = score_points(net, iter([(x, y, torch.arange(20))]), [make_spec("pgd", "linf", 0.01, steps=2)],
                       n_total=20, num_classes=4, input_size=(3, 8, 8), device=torch.device("cpu"), seed=0)
    assert got.clean_by_class.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert got.collapse is not None and "class" in got.collapse
