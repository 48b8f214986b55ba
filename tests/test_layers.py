"""The import contract (docs/architecture.md): layers point one way and no module imports itself in a circle.

Every ``import`` in the source tree counts, including those inside functions (a hidden import is
still a dependency). Layers, bottom to top:

1. value types and parsing: ``audit.values``, ``audit.errors``, ``audit.registry``, ``audit.bounds``,
   ``audit.version``, ``audit.textsafe``, the typed results ``audit.resultsmodel`` and repair documents
   ``audit.repairmodel`` with their JSON codec ``audit.typedjson`` (and the results helpers reports may read);
2. attacks, models and data; 3. the audit engine; 4. the repair engine (``reat_finetune``);
5. ``reports``, which reads results only; 6. the application layer (``tailaudit``, ``cli``), the
   only code that calls the renderer.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
from support import ROOT

PACKAGES = ("audit", "reat_finetune", "reports", "tailaudit")
BOTTOM = {"audit.values", "audit.errors", "audit.registry", "audit.bounds", "audit.version", "audit.textsafe",
          "audit.resultsmodel", "audit.repairmodel", "audit.typedjson"}
# what reports may read of the audit package: value types, results helpers, the stored verdict's constants
REPORTS_MAY_READ = BOTTOM | {"audit.jsonfile", "audit.results", "audit.outputs", "audit.verdict", "audit.metrics", "audit.inputs",
                                "audit.schema"}


def _modules() -> dict[str, Path]:
    mods = {"cli": ROOT / "cli.py"}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _targets(mod: str, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        base = node.module or ""
        if node.level:
            parts = mod.split(".") if mods[mod].name == "__init__.py" else mod.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    out = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != mod:
            out.append(name)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    g: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                g[mod].update(_targets(mod, node, mods))
    for mod in mods:
        g.setdefault(mod, set())
    return dict(g)


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _edges(g: dict[str, set[str]], src: str, dst: tuple[str, ...]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, bs in g.items() if a == src or a.startswith(src + ".")
                  for b in bs if any(b == d or b.startswith(d + ".") for d in dst))


def test_the_checker_sees_a_cycle_and_a_function_level_import() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from .pipeline import run\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    mods = {"audit": ROOT / "audit" / "__init__.py", "audit.pipeline": ROOT / "audit" / "pipeline.py"}
    assert _targets("audit", node, mods) == ["audit.pipeline"]


def test_no_import_cycles(graph) -> None:
    assert _cycles(graph) == []


def test_audit_engine_points_down_only(graph) -> None:
    assert _edges(graph, "audit", ("reports", "reat_finetune", "tailaudit", "cli")) == []


def test_repair_engine_does_not_render_or_reach_up(graph) -> None:
    assert _edges(graph, "reat_finetune", ("reports", "tailaudit", "cli")) == []


def test_reports_read_results_only(graph) -> None:
    assert _edges(graph, "reports", ("reat_finetune", "tailaudit", "cli")) == []
    reads = {b for a, bs in graph.items() if a == "reports" or a.startswith("reports.") for b in bs
             if b.startswith("audit")}
    assert reads <= REPORTS_MAY_READ, sorted(reads - REPORTS_MAY_READ)


def test_only_the_application_layer_calls_the_renderer(graph) -> None:
    callers = {a for a, bs in graph.items() for b in bs
               if (b == "reports" or b.startswith("reports.")) and not a.startswith("reports")}
    assert callers and all(a == "tailaudit" or a.startswith("tailaudit.") for a in callers), sorted(callers)


def test_value_types_sit_at_the_bottom(graph) -> None:
    for mod in BOTTOM:
        assert graph[mod] <= BOTTOM, (mod, sorted(graph[mod] - BOTTOM))
