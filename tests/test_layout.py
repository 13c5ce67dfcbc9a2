"""The layout of ``core``: its import graph, read with ``ast`` from the source, has no cycles.

Every import counts: at module level, inside a function (it runs later, but it still ties the two
modules together) and under ``if TYPE_CHECKING:`` (it never runs, but the type checker and a reader
follow it).
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"


def _module(path: Path) -> str:
    parts = path.relative_to(CORE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def _imports(path: Path, known: set[str]) -> set[str]:
    name = _module(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.level:
                base = package[: len(package) - (child.level - 1)] if child.level > 1 else list(package)
                target = ".".join([*base, *(child.module.split(".") if child.module else [])])
                for alias in child.names:
                    sub = f"{target}.{alias.name}" if target else alias.name
                    found.add(sub if sub in known else target or "__init__")
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("batchbridge.core"):
                absolute = child.module
                found.add(absolute[len("batchbridge.core."):] if absolute != "batchbridge.core" else "__init__")
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(name)
    return {f for f in found if f in known}


def graph() -> dict[str, set[str]]:
    files = sorted(CORE.rglob("*.py"))
    known = {_module(p) for p in files}
    return {_module(p): _imports(p, known) for p in files}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_the_graph_is_read() -> None:
    edges = graph()
    assert "retry" in edges["errors"] and "errors" in edges["publisher"]
    assert "vendors" in edges["vendors.tencent"]


def test_core_has_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
