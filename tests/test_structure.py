"""The source tree's shape: no import cycles (function-level imports included) and no private names
imported across modules. STYLE.md rule 12: a cycle means a shared piece lives in the wrong file."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "edgeshrink"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported module, names imported from it) for every import anywhere in the file, resolved to a
    module of the package (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE and alias.name in modules:
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                continue
            names = []
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    yield f"{base}.{alias.name}", []
                else:
                    names.append(alias.name)
            if base in modules and names:
                yield base, names


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {target for target, _ in _imports(name, path, modules) if target != name}
            for name, path in modules.items()}


def _edges_without_packages(graph):
    # a package's __init__ re-exporting its modules is not a cycle with them: drop edges into a package
    # from its own submodules (they import the package only as the parent every import passes through)
    return {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = _edges_without_packages(graph)
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports() -> list[str]:
    modules = _modules()
    bad = []
    for name, path in modules.items():
        for target, names in _imports(name, path, modules):
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__") and target != name:
                    bad.append(f"{name} imports {target}.{imported}")
    return sorted(set(bad))


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + " | ".join(" -> ".join(c) for c in found)


def test_no_private_names_across_modules():
    found = private_imports()
    assert not found, "\n".join(found)


def test_the_checks_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"p": {"p.m"}, "p.m": {"p"}}) == []  # a package re-exporting its module
