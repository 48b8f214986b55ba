"""The import contract (docs/architecture.md): layers point one way and no module imports itself in a circle.

Every ``import`` in the source tree counts, including those inside functions and under ``TYPE_CHECKING`` (a hidden
import is still a dependency), and so does every package a module sits in (importing ``audit.contract.model`` runs
``audit/__init__.py`` and ``audit/contract/__init__.py`` first). The checks follow imports transitively: a module may
reach, directly or through others, only modules of its own layer or below. The layers and the modules each holds are
read from the table in docs/architecture.md, which must name every module of the project exactly once, so the
picture a newcomer reads is the one this test enforces.

The one import left out of the layering is a package's PEP 562 ``__getattr__`` (``audit.AuditConfig``): it runs
when the name is read, never on import; the cycle check still sees it.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import defaultdict, deque
from pathlib import Path

import pytest
from support import ROOT

PACKAGES = ("audit", "reat_finetune", "reports", "tailaudit")
ARCHITECTURE = ROOT / "docs" / "architecture.md"
CONTRACT = ("values", "contract")  # the layers the reports may reach: the contract and the value types it is written in
RUNTIMES = ("torch", "torchvision", "onnxruntime", "onnx", "timm")  # none of them loads with the contract or reports


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


def _lazy_nodes(tree: ast.Module, path: Path) -> set[int]:
    """The import nodes inside a package's module-level ``__getattr__`` (PEP 562: run when a name is read)."""
    if path.name != "__init__.py":
        return set()
    return {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
            for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}


def _read_graph(mods: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(imports that run when the module is imported, lazy imports of a package's ``__getattr__``)."""
    g: dict[str, set[str]] = defaultdict(set)
    lazy: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deferred = _lazy_nodes(tree, path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                (lazy if id(node) in deferred else g)[mod].update(_targets(mod, node, mods))
    return {m: set(g.get(m, ())) for m in mods}, {m: set(lazy.get(m, ())) for m in mods}


@pytest.fixture(scope="module")
def graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    return _read_graph(_modules())


@pytest.fixture(scope="module")
def graph(graphs) -> dict[str, set[str]]:
    return graphs[0]


def _parents(mod: str, g: dict[str, set[str]]) -> list[str]:
    """The packages a module sits in (their ``__init__`` runs before it)."""
    parts = mod.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in g]


def _closure(g: dict[str, set[str]], start: str) -> dict[str, str | None]:
    """Every module importing ``start`` loads (itself excluded), each with the module that brought it in."""
    seen: dict[str, str | None] = {start: None}
    todo = deque([start])
    while todo:
        mod = todo.popleft()
        for nxt in sorted(g.get(mod, set()) | set(_parents(mod, g))):
            if nxt not in seen:
                seen[nxt] = mod
                todo.append(nxt)
    del seen[start]
    return seen


def _chain(reached: dict[str, str | None], start: str, end: str) -> str:
    """'a -> b -> c': how ``start`` comes to load ``end``."""
    path = [end]
    while path[-1] in reached:
        path.append(reached[path[-1]])  # type: ignore[arg-type]
    return " -> ".join(reversed(path))


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


# -- the layers, as docs/architecture.md draws them -------------------------------------------------------------

ROW = re.compile(r"^\|\s*(\d+)\.\s*([^|]+?)\s*\|([^|]*)\|")
NAME = re.compile(r"`([a-z_][a-z0-9_.]*(?:\.\{[a-z0-9_, ]+\})?)`")


def _expand(token: str) -> list[str]:
    """``audit.attacks.{apgd, pgd}`` -> ``audit.attacks.apgd``, ``audit.attacks.pgd``."""
    if ".{" not in token:
        return [token]
    head, _, rest = token.partition(".{")
    return [f"{head}.{leaf.strip()}" for leaf in rest.rstrip("}").split(",") if leaf.strip()]


def _placements(text: str) -> list[tuple[int, str, str]]:
    """(layer number, layer name, module) for every module the layer table names, in order."""
    out = []
    for line in text.splitlines():
        row = ROW.match(line)
        if not row:
            continue
        for token in NAME.findall(row.group(3)):
            if token.split(".")[0] in (*PACKAGES, "cli"):
                out += [(int(row.group(1)), row.group(2).strip(), m) for m in _expand(token)]
    return out


@pytest.fixture(scope="module")
def layers() -> dict[str, tuple[int, str]]:
    placed = _placements(ARCHITECTURE.read_text(encoding="utf-8"))
    return {mod: (number, name) for number, name, mod in placed}


def test_the_checker_sees_cycles_indirect_imports_and_packages() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from .pipeline import run\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    mods = {"audit": ROOT / "audit" / "__init__.py", "audit.pipeline": ROOT / "audit" / "pipeline.py"}
    assert _targets("audit", node, mods) == ["audit.pipeline"]
    # reports.x -> p.q loads p (the package p.q sits in) and, through it, r: both are reached, with the chain
    g = {"reports.x": {"p.q"}, "p.q": set(), "p": {"r"}, "r": set(), "reports": set()}
    reached = _closure(g, "reports.x")
    assert set(reached) == {"p.q", "p", "r", "reports"}
    assert _chain(reached, "reports.x", "r") == "reports.x -> p.q -> p -> r"


def test_the_table_reader_expands_and_keeps_only_module_names() -> None:
    row = "| 2. parts | `audit.attacks`, `audit.attacks.{apgd, pgd}` (not `load_results`) | layer 1 |"
    assert _placements(row) == [(2, "parts", "audit.attacks"), (2, "parts", "audit.attacks.apgd"),
                                (2, "parts", "audit.attacks.pgd")]


def test_architecture_names_every_module_once() -> None:
    placed = [m for _, _, m in _placements(ARCHITECTURE.read_text(encoding="utf-8"))]
    mods = set(_modules())
    assert sorted(m for m in set(placed) if placed.count(m) > 1) == []
    assert sorted(mods - set(placed)) == [], "modules docs/architecture.md does not place"
    assert sorted(set(placed) - mods) == [], "docs/architecture.md places modules that do not exist"


def test_no_import_cycles(graphs) -> None:
    g, lazy = graphs
    assert _cycles({m: g[m] | lazy[m] for m in g}) == []


def test_every_module_reaches_only_its_layer_and_below(graph, layers) -> None:
    wrong = []
    for mod in sorted(graph):
        reached = _closure(graph, mod)
        wrong += [f"{_chain(reached, mod, r)} (layer {layers[mod][0]} reaches {layers[r][0]})" for r in sorted(reached)
                  if layers[r][0] > layers[mod][0]]
    assert wrong == []


def test_reports_read_the_contract_only(graph, layers) -> None:
    allowed = {m for m, (_, name) in layers.items() if name in CONTRACT or m == "reports" or m.startswith("reports.")}
    wrong = []
    for mod in sorted(m for m in graph if m == "reports" or m.startswith("reports.")):
        reached = _closure(graph, mod)
        wrong += [_chain(reached, mod, r) for r in sorted(set(reached) - allowed)]
    assert wrong == []


def test_the_contract_is_a_layer_of_its_own_at_the_bottom(layers) -> None:
    contract = {m for m, (_, name) in layers.items() if name == "contract"}
    assert contract == {m for m in _modules() if m == "audit.contract" or m.startswith("audit.contract.")}
    assert {n for m, (n, name) in layers.items() if name in CONTRACT} == {0, 1}


def test_only_the_application_layer_calls_the_renderer(graph) -> None:
    callers = {a for a, bs in graph.items() for b in bs
               if (b == "reports" or b.startswith("reports.")) and not a.startswith("reports")}
    assert callers and all(a == "tailaudit" or a.startswith("tailaudit.") for a in callers), sorted(callers)


def _loaded_by(statement: str) -> list[str]:
    """The model runtimes a fresh interpreter holds after ``statement`` (the worktree first on the path)."""
    code = f"import sys; {statement}; print(' '.join(m for m in {RUNTIMES!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_reports_load_without_torch_or_onnxruntime() -> None:
    assert _loaded_by("import reports; import reports.render") == []


def test_the_contract_loads_without_torch_or_onnxruntime() -> None:
    contract = sorted(m for m in _modules() if m.startswith("audit.contract."))
    assert len(contract) >= 6
    assert _loaded_by("; ".join(f"import {m}" for m in contract)) == []
    # and the checker is not blind: the audit engine does load torch
    assert "torch" in _loaded_by("import audit.run.engine")
