"""Parallel matmuls that read the same input (Q/K/V, gate/up) become one wider matmul.

One pass over the activations instead of several. Each original output becomes a slice
of the merged one. The wider weight is a ``concat`` of the constant parts, not a new
constant: pack-weights packs it straight from its parts (one copy of the weights, not a
concatenated one and then a packed one; kiln/passes/pack.py), and where packing is off
the cleanup stage's constant folding makes the plain concatenation.

Quantized matmuls (``qmatmul``) merge the same way when their weights share a storage type:
a row of a block format (or of int8 per-channel) is whole blocks with its own scales, so the
wider weight is the parts' bytes one after another, made here (one copy of the quantized
bytes; the parts, memory-mapped from the model file, are dropped). Measured on SmolLM2's
Q4_0 file: 7 → 4 quantized matmuls a layer, the small K/V projections no longer each
running alone on the pool (docs/DESIGN.md, "Quantized matmuls merge").
"""
from __future__ import annotations

import collections

import numpy as np

from ..core import buffers
from ..ir.graph import CONST, PLAIN, Graph
from .engine import dead_code_elimination


def merge_parallel_matmuls(graph: Graph) -> int:
    groups = collections.defaultdict(list)
    for node in graph.nodes:
        quantized = node.op == "qmatmul"
        if not quantized and (node.op != "matmul" or not node.attrs.transpose_b):
            continue
        w = graph.tensors[node.inputs[1]]
        if w.kind != CONST or len(w.shape) != 2:
            continue
        if w.storage != (node.attrs.storage if quantized else PLAIN):   # (a packed B is already merged or final)
            continue
        if len(node.inputs) == 3 and graph.tensors[node.inputs[2]].kind != CONST:
            continue
        key = (node.op, node.inputs[0], node.attrs, len(node.inputs), w.shape[1], w.dtype, w.storage)
        groups[key].append(node)
    merged = 0
    for (op, x, attrs, n_in, k, _dtype, stored), nodes in groups.items():
        if len(nodes) < 2:
            continue
        index = min(graph.nodes.index(n) for n in nodes)
        weights = [n.inputs[1] for n in nodes]
        if op == "qmatmul":
            rows = sum(int(graph.tensors[wt].shape[0]) for wt in weights)
            parts = [graph.constants[wt] for wt in weights]
            raw = buffers.fresh(sum(a.nbytes for a in parts)).reshape(-1, parts[0].shape[-1])
            np.concatenate(parts, out=raw)   # (into ordinary pages: written once, like a packed weight)
            w = graph.add_stored_const(graph.fresh("merged_weight"), raw, (rows, k), stored)
        else:
            w = graph.add_node("concat", weights, {"axis": 0}, name="merged_weight", source=nodes[0].source,
                               index=index)
            index += 1
        ins = [x, w]
        if n_in == 3:
            biases = [graph.constants[n.inputs[2]].reshape(-1) for n in nodes]
            ins.append(graph.add_const(graph.fresh("merged_bias"), np.concatenate(biases)))
        out = graph.add_node(op, ins, attrs, name="merged_matmul", source=nodes[0].source, index=index)
        index += 1
        axis = len(graph.tensors[out].shape) - 1
        start = 0
        for n, wt in zip(nodes, weights):
            end = start + int(graph.tensors[wt].shape[0])
            piece = graph.add_node("slice", [out], {"axis": axis, "start": start, "end": end, "step": 1},
                                   name=f"{n.output}_part", source=n.source, index=index)
            index += 1
            graph.replace_all_uses(n.output, piece)
            start = end
        merged += 1
    dead_code_elimination(graph)
    return merged
