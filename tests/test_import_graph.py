"""The package's import graph has no cycles, counting imports inside functions too (they hide a
loop from Python's import machinery, not from the design), and the core never imports the GUI."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_medadv

ROOT = Path(napari_medadv.__file__).parent
PKG = "napari_medadv"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    # "from .x import y": y may be a submodule; keep it only when such a module exists
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(mod, is_package, node)
            for t in targets:
                # the deepest existing module named by the import (a package's __init__ counts)
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t.startswith(PKG) and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_counting_imports_inside_functions():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert _cycles(graph) == []


def test_the_core_never_imports_the_front_ends():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if not t.startswith(f"{PKG}.core") and t != PKG)
           for m, ts in graph.items() if m.startswith(f"{PKG}.core")}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_the_walk_sees_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]
