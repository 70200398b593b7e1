"""The package tree shows the architecture: few top-level modules, no import circles, lower layers never
import the jobs above them (issue 22's layout, checked on the source so it cannot drift)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cnnlab"
#: Layers below the jobs: they may import each other (as drawn in docs/architecture.md) but no job.
LOWER = ("cnnlab.models", "cnnlab.imagedata", "cnnlab.runtime", "cnnlab.render", "cnnlab.metrics")
JOBS = ("cnnlab.bench", "cnnlab.train", "cnnlab.review", "cnnlab.collect", "cnnlab.prediction", "cnnlab.serve", "cnnlab.cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every cnnlab module ``path`` imports, at any depth (function-local too), except for type checkers."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("cnnlab"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("cnnlab"):
                found.add(child.module)
                found.update(f"{child.module}.{a.name}" for a in child.names if f"{child.module}.{a.name}" in MODULES)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def test_few_modules_lie_directly_under_the_package() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 8, top


def test_no_import_circles() -> None:
    """Tarjan's strongly connected components over every import, function-local ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            connect(v)
    assert circles == []


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_never_import_a_job(layer: str) -> None:
    wrong = sorted(f"{name} -> {m}" for name, deps in GRAPH.items() if name.startswith(layer)
                   for m in deps if m.startswith(JOBS))
    assert wrong == []


def test_the_checker_sees_imports() -> None:
    """The graph is not empty by mistake: a known import is in it."""
    assert "cnnlab.models.spec" in GRAPH["cnnlab.models.registry"]
