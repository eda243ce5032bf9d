"""Kiln's packages import each other one way only (docs/DESIGN.md, "Layers").

Every import in every kiln module counts, including those inside functions: a
deferred import hides a cycle from the interpreter, not from the design.
"""
from __future__ import annotations

import ast
import pathlib

import kiln

ROOT = pathlib.Path(kiln.__file__).parent

# The bottom layers, in order: each may import only those before it (and the top-level
# leaf modules errors/config). The test below checks the whole graph for cycles too.
LAYERS = ["core", "ops", "ir", "passes", "planner"]
LEAVES = {"errors", "config"}


def _unit(module: str) -> str:
    """kiln.ir.graph -> "ir"; kiln.session -> "session" (a top-level module is its own unit)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kiln"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute names of the kiln modules ``path`` imports."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "kiln"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "kiln":
                continue
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}   # `from . import dims` names a module
    return out


def package_graph() -> dict[str, set[str]]:
    """unit -> units it imports (kiln's subpackages and top-level modules)."""
    known = {_module_name(p) for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        src = _unit(_module_name(path))
        for target in _imports(path):
            while target not in known and "." in target:   # `from .x import name`: the module x
                target = target.rsplit(".", 1)[0]
            dst = _unit(target)
            if dst not in (src, "kiln"):
                graph.setdefault(src, set()).add(dst)
    return graph


def find_cycle(graph: dict[str, set[str]]):
    """One cycle as a list of units, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def test_no_import_cycle_between_kiln_packages():
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle between kiln packages: " + " -> ".join(cycle)


def test_bottom_layers_import_only_downward():
    graph = package_graph()
    for i, layer in enumerate(LAYERS):
        allowed = set(LAYERS[:i]) | LEAVES
        bad = graph.get(layer, set()) - allowed
        assert not bad, f"kiln/{layer} imports {sorted(bad)}; it may import only {sorted(allowed)}"


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = package_graph()
    assert "core" in graph["ops"] and "ops" in graph["ir"]   # the parser finds real edges
