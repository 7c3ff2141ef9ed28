"""The package's structure rules (ARCHITECTURE.md), checked on the source with ``ast``."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    """``edgekd/strategies/fedmd.py`` -> ``edgekd.strategies.fedmd`` (packages: their name)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    """Every module of the package, parsed."""
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module, name: str) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every edgekd import in ``tree``, absolute."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("edgekd")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: -node.level] if node.level else []
                base = ".".join([*package, base] if base else package)
            if base.startswith("edgekd"):
                found.append((base, [alias.name for alias in node.names]))
    return found


def graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    edges: dict[str, set[str]] = {}
    for name, tree in trees.items():
        targets = set()
        for module, names in imports(tree, name):
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in trees]
            targets.update(submodules or ([module] if module in trees else []))
        edges[name] = targets - {name}
    return edges


def test_import_graph_has_no_circle() -> None:
    """No module reaches itself through its imports (a package reaching its own children is
    not a circle: ``__init__`` re-exports)."""
    edges = graph(modules())
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    real = [c for c in cycles if not any(b.startswith(a + ".") for a, b in itertools.pairwise(c))]
    assert real == []


def test_nothing_imports_the_server_or_the_test_helpers() -> None:
    """Production code never imports ``edgekd.server`` or ``edgekd.testing``."""
    offenders = [
        (name, module)
        for name, tree in modules().items()
        if not name.startswith(("edgekd.server", "edgekd.testing"))
        for module, _ in imports(tree, name)
        if module.startswith(("edgekd.server", "edgekd.testing"))
    ]
    assert offenders == []


def test_no_private_name_crosses_a_module() -> None:
    """``from edgekd.x import _private`` appears nowhere in the package."""
    offenders = [
        (name, module, imported)
        for name, tree in modules().items()
        for module, names in imports(tree, name)
        for imported in names
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert offenders == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_modules_and_functions_read_in_one_sitting(path: Path) -> None:
    """A module has at most 600 lines; a function at most 60 (its docstring excluded)."""
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            if body:
                length = (body[-1].end_lineno or 0) - body[0].lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append((node.name, length))
    assert long == []
