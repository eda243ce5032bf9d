"""Calibration for the quantize stage: how large each constant matmul weight's inputs are.

Activation-aware int8 scales (kiln/core/quantize_int8.py ``mse_search(channel_weights=h)``)
weigh a weight's rounding error in input channel k by h_k, the mean over calibration rows of
x_k^2 — the diagonal of the layer's input second moment, so sum_k h_k (w_k - s q_k)^2 is the
expected squared error of that output for inputs like the calibration's. (Transformer MLP
down-projections see a few input channels orders of magnitude larger than the rest; max-abs or
plain-MSE scales spend the step on weights those channels do not amplify.)

The graph is evaluated with the numpy reference of each op, node by node, on the caller's
calibration feeds (e.g. token ids of a text that is not the evaluation text).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import KilnError
from ..ir.feeds import check_feeds
from ..ir.graph import CONST, Graph
from ..ir.resolve import resolve
from ..ops import registry


def input_energy(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """For each constant 2-D matmul B: float64 [K], the mean over every calibration row of
    every matmul reading it of its A input squared, per input channel k. ``feeds``: one or more
    input mappings as a Session takes them. KilnError when ``feeds`` is empty."""
    if not feeds:
        raise KilnError("quantize calibration: no calibration inputs given")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for feed in feeds:
        arrays, binding = check_feeds(graph, feed)
        g = resolve(graph, binding) if graph.symbols else graph
        values: dict[str, np.ndarray] = dict(g.constants)
        values.update(arrays)
        last_use = {}
        for i, node in enumerate(g.nodes):
            for t in node.inputs:
                last_use[t] = i
        for i, node in enumerate(g.nodes):
            ins = [values[t] for t in node.inputs]
            if node.op == "matmul" and len(node.inputs) >= 2:
                w = node.inputs[1]
                t = g.tensors[w]
                if t.kind == CONST and len(t.shape) == 2 and w != node.inputs[0]:
                    x = np.asarray(ins[0], np.float64)
                    x = x.reshape(-1, x.shape[-1])
                    sums[w] = sums.get(w, 0) + np.einsum("ij,ij->j", x, x)
                    counts[w] = counts.get(w, 0) + x.shape[0]
            values[node.output] = registry.get(node.op).evaluate(ins, node.attrs)
            for t in node.inputs:   # free what no later node reads (the logits of every position are large)
                if last_use.get(t) == i and t not in g.constants and t not in g.outputs:
                    values.pop(t, None)
    return {w: sums[w] / max(counts[w], 1) for w in sums}
