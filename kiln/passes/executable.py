"""The last check of compile: anything compile accepts must run.

Fold-only ops (``index``, ``logical_and``, ``full`` ...) have no kernel: they exist to be folded
once their inputs are constant, which for values built from sizes happens when a length is bound.
A fold-only node that reads a runtime value would first fail at ``run()``; here the graph is
resolved at one representative binding, exactly as an executor would, and such a node is refused
now, naming the op, what it reads and its source line.
"""
from __future__ import annotations

from ..errors import UnsupportedOpError
from ..ir.graph import CONST, Graph
from ..ir.resolve import resolve
from ..ops import registry


def representative_binding(graph: Graph) -> dict[str, int]:
    """A small size from each symbol's range (2 where allowed: 1 can hide broadcasting mistakes)."""
    out = {}
    for s in sorted(graph.symbols):
        lo, hi = graph.sym_ranges.get(s, (1, 2))
        out[s] = min(max(lo, 2), hi)
    return out


def check_executable(graph: Graph) -> None:
    """Raise UnsupportedOpError if some node would reach the executor without a kernel."""
    static = resolve(graph, representative_binding(graph)) if graph.symbols else graph
    for node in static.nodes:
        if registry.get(node.op).has(registry.FOLD_ONLY):
            runtime = [i for i in node.inputs if static.tensors[i].kind != CONST]
            raise UnsupportedOpError(
                f"op {node.op!r} ({node.output}) cannot run: it has no kernel (it is only folded when its inputs "
                f"are constant), but it reads values computed at run time ({', '.join(runtime)})"
                + (f"\n  at {node.source}" if node.source else ""))
