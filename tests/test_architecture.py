"""The shape of the code a newcomer reads: no import cycles (lazy imports included), modules
and functions of a readable size, one definition of each name list."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fne"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 200


def _files() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _name(p: Path) -> str:
    parts = ("fne", *p.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_name(p): ast.parse(p.read_text()) for p in _files()}


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """fne modules `name` imports anywhere in its body (top level or inside functions)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fne"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    out.discard(name)
    return out & known


def test_no_import_cycles():
    mods = _modules()
    graph = {m: _imports(m, t, set(mods)) for m, t in mods.items()}
    # `fne` itself imports no submodule statically (verbs load on first use), so importing the
    # package from a submodule closes no cycle.
    assert graph["fne"] == set()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_modules_and_functions_fit_on_a_screen():
    too_long = []
    for p in _files():
        text = p.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{_name(p)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            n = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and n > MAX_FUNCTION_LINES:
                too_long.append(f"{_name(p)}:{node.lineno} {node.name}(): {n} lines")
            elif isinstance(node, ast.ClassDef) and n > MAX_CLASS_LINES:
                too_long.append(f"{_name(p)}:{node.lineno} class {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


def test_name_lists_are_defined_once():
    """Choices (precisions, heads, modes, crops, ...) live in fne/names.py only."""
    from fne import names

    lists = {k for k, v in vars(names).items() if k.isupper() and isinstance(v, tuple)}
    again = []
    for p in _files():
        if p.name == "names.py":
            continue
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                again += [f"{p.name}: {t.id}" for t in targets if isinstance(t, ast.Name) and t.id in lists]
    assert not again, again


def test_every_imported_package_is_declared():
    """Each third-party package fne imports (at the top or lazily) is a dependency or in an extra
    of pyproject.toml, under its distribution's name."""
    import importlib.metadata as md
    import re
    import sys
    import tomllib

    project = tomllib.loads((PKG.parent / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {norm(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in reqs}
    imported = set()
    for tree in _modules().values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"fne", "__future__"})
    dists = md.packages_distributions()
    undeclared = [m for m in third_party if not any(norm(d) in declared for d in dists.get(m, [m]))]
    assert not undeclared, undeclared


def test_scikit_learn_floor_has_what_fne_imports():
    """validate_data (sklearn.utils.validation) exists from scikit-learn 1.6 on."""
    text = "\n".join(p.read_text() for p in _files())
    deps = (PKG.parent / "pyproject.toml").read_text()
    if "validate_data" in text:
        floor = re.search(r'"scikit-learn>=(\d+)\.(\d+)', deps)
        assert floor and (int(floor.group(1)), int(floor.group(2))) >= (1, 6), "scikit-learn>=1.6 needed"
