"""Common-subexpression elimination: one node per distinct (op, inputs, attrs)."""
from __future__ import annotations

from ..ir.graph import Graph
from .engine import dead_code_elimination


def cse(graph: Graph) -> int:
    seen: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    merged = 0
    for node in graph.nodes:
        if any(i in rename for i in node.inputs):
            graph.set_inputs(node, [rename.get(i, i) for i in node.inputs])
        key = (node.op, tuple(node.inputs), node.attrs)
        try:
            first = seen.setdefault(key, node.output)
        except TypeError:  # unhashable attrs: leave the node alone
            continue
        if first != node.output and node.output not in graph.outputs:
            rename[node.output] = first
            merged += 1
    graph.outputs = [rename.get(o, o) for o in graph.outputs]
    dead_code_elimination(graph)
    return merged
