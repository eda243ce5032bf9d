"""Constant folding with the numpy reference, and dead-code elimination (weights included)."""
from __future__ import annotations

from ..core import dims
from ..ir.graph import CONST, PLAIN, Graph, Tensor
from ..ir.resolve import attr_symbols
from ..ops import registry
from .engine import dead_code_elimination

# Folding must not inflate the weights: an expand or a broadcast of a small constant stays
# compute unless the result is small in absolute terms.
FOLD_GROWTH_LIMIT = 4 * 2**20


def constant_folding(graph: Graph) -> int:
    """Evaluate every node whose inputs are all constant and whose sizes are known."""
    folded = 0
    keep = []
    for node in graph.nodes:
        out = graph.tensors[node.output]
        ins = [graph.tensors[i] for i in node.inputs]
        if not all(t.kind == CONST for t in ins) or not dims.is_static(out.shape) or \
                attr_symbols(node.attrs) or any(t.storage != PLAIN for t in ins):
            # (a stored weight stays in its blocks: folding would make the fp32 copy)
            keep.append(node)
            continue
        in_bytes = sum(graph.constants[i].nbytes for i in node.inputs)
        if int(out.nbytes) > max(in_bytes, FOLD_GROWTH_LIMIT):
            keep.append(node)
            continue
        value = registry.get(node.op).evaluate([graph.constants[i] for i in node.inputs], node.attrs)
        graph.tensors[node.output] = Tensor(node.output, tuple(value.shape), out.dtype, CONST)
        graph.constants[node.output] = value
        folded += 1
    graph.nodes = keep
    dead_code_elimination(graph)
    return folded

