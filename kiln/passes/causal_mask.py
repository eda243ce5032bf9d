"""Absorb masks that are causal at every size of the exported range into ``causal=True``.

A mask is absorbed only with a proof that holds over the whole range, never from samples:

* **prefix proof** (one size symbol, the usual case). The nodes of the builder whose output has
  two symbolic axes (the [S, S] part) must be pointwise: elementwise ops and broadcasts with no
  symbol in their attrs. Each value they read from the rest of the builder (the "frontier") is a
  vector along the query or the key axis ([.., S, 1] or [.., 1, S]) or a constant. The frontier is
  evaluated at every size n of the range (O(n) each) and must equal the leading n entries of its
  value at the largest size. Then mask(n) == mask(max)[:n, :n] for every n, and the leading block of
  a causal matrix is causal, so one evaluation at the largest size proves the whole range.
* **exhaustive**: otherwise, when the range is small enough, the mask is evaluated at every size.

Neither applies (e.g. several independent sizes over a long range): the mask stays a runtime mask,
correct but not a ``causal`` flag. A sliding window shorter than the range fails the proof at the
largest size and so stays a mask.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from ..core import dims
from ..ir.graph import CONST, Graph
from ..ir.resolve import attr_symbols, resolve_attrs
from ..ops import registry
from .engine import dead_code_elimination

# Exhaustive checks evaluate the [S, S] mask at every size: keep their total work bounded.
EXHAUSTIVE_ELEMENTS = 2**24
DEFAULT_RANGE = (1, 64)


def causal_mask_absorption(graph: Graph) -> int:
    """attention(q, k, v, mask) → attention(q, k, v, causal=True) when the mask is provably causal."""
    fired = 0
    proofs: dict[tuple, bool] = {}   # one proof per distinct mask (all layers usually share one)
    for node in list(graph.nodes):
        if node.op != "attention" or len(node.inputs) != 4 or node.attrs.causal:
            continue
        mask, rest = node.inputs[3], []
        split = _split_runtime_conjunction(graph, mask)
        if split is not None:   # causal(sizes) AND padding(runtime): the flag plus the runtime part
            mask, rest = split
        # The proof reads q and k only through their shapes: layers sharing a mask share one proof.
        key = (mask, tuple(graph.tensors[node.inputs[0]].shape), tuple(graph.tensors[node.inputs[1]].shape))
        if key not in proofs:
            proofs[key] = is_causal_over_range(graph, mask, node.inputs[0], node.inputs[1])
        if proofs[key]:
            graph.replace_node(node, dataclasses.replace(node, inputs=node.inputs[:3] + rest,
                                                         attrs=dataclasses.replace(node.attrs, causal=True)))
            fired += 1
    if fired:
        dead_code_elimination(graph)   # the mask builders now have no reader
    return fired


def _split_runtime_conjunction(graph: Graph, mask: str):
    """logical_and(size-only part, runtime bool part) → (size-only part, [runtime part]), else None.
    A padding mask combined with the causal one has this form; the runtime part stays a mask input."""
    p = graph.producer(mask)
    if p is None or p.op != "logical_and" or len(p.inputs) != 2:
        return None
    a, b = p.inputs
    sa, sb = _shape_only_subgraph(graph, a) is not None, _shape_only_subgraph(graph, b) is not None
    if sa == sb or graph.tensors[b if sa else a].dtype != "bool":
        return None
    return (a, [b]) if sa else (b, [a])


def is_causal_over_range(graph: Graph, mask_name: str, q_name: str, k_name: str) -> bool:
    """Whether ``mask_name`` (for attention of q over k) is the causal pattern at every size of the range."""
    sub = _shape_only_subgraph(graph, mask_name)
    if sub is None:
        return False   # reads a runtime value: a real mask
    q, k, mask = (graph.tensors[t] for t in (q_name, k_name, mask_name))
    syms = sorted(dims.symbols_of(q.shape) | dims.symbols_of(k.shape) | dims.symbols_of(mask.shape)
                  | {x for n in sub for x in attr_symbols(n.attrs)})
    check = lambda b: _is_causal(graph, sub, mask_name, q.shape, k.shape, b)  # noqa: E731
    if not syms:
        return check({})
    ranges = {s: graph.sym_ranges.get(s, DEFAULT_RANGE) for s in syms}
    if len(syms) == 1:
        s = syms[0]
        lo, hi = ranges[s]
        if _prefix_stable(graph, sub, mask_name, s, lo, hi):
            return check({s: hi})
    return _exhaustive(ranges, check, q.shape, k.shape)


def _exhaustive(ranges, check, qshape, kshape) -> bool:
    names = list(ranges)
    grid = [range(lo, hi + 1) for lo, hi in ranges.values()]
    work = 0
    for values in itertools.product(*grid):
        b = dict(zip(names, values))
        work += dims.evaluate(qshape[2], b) * dims.evaluate(kshape[2], b)
        if work > EXHAUSTIVE_ELEMENTS:
            return False   # too costly to prove: keep the mask
    return all(check(dict(zip(names, values))) for values in itertools.product(*grid))


def _two_symbolic(shape) -> bool:
    return sum(1 for d in shape if not isinstance(d, int)) >= 2


def _prefix_stable(graph, sub, mask_name, sym, lo, hi) -> bool:
    """The prefix proof's structural and numeric conditions (see the module docstring)."""
    mask_shape = graph.tensors[mask_name].shape
    if len(mask_shape) < 2 or any(d != dims.Sym.var(sym) for d in mask_shape[-2:]):
        return False
    big = {n.output for n in sub if _two_symbolic(graph.tensors[n.output].shape)}
    if mask_name not in big:
        return False
    frontier = set()
    for n in sub:
        if n.output not in big:
            continue
        op = registry.get(n.op)
        if not (op.has(registry.ELEMENTWISE) or n.op == "expand") or \
                (n.op != "expand" and attr_symbols(n.attrs)):
            return False
        frontier.update(i for i in n.inputs if i not in big)
    rank = len(mask_shape)
    axes = {}
    for t in frontier:
        shape = graph.tensors[t].shape
        if len(shape) > rank:
            return False
        sym_axes = [rank - len(shape) + j for j, d in enumerate(shape) if not isinstance(d, int)]
        if not sym_axes:
            continue   # a static value: checked below to be the same at every size
        if len(sym_axes) != 1 or sym_axes[0] < rank - 2 or shape[sym_axes[0] - rank + len(shape)] != dims.Sym.var(sym):
            return False
        axes[t] = sym_axes[0] - rank + len(shape)
    at_hi = _evaluate(graph, sub, {sym: hi})
    for n in range(lo, hi):
        values = _evaluate(graph, [x for x in sub if x.output not in big], {sym: n})
        for t, axis in axes.items():
            if not np.array_equal(values[t], np.take(at_hi[t], np.arange(n), axis=axis)):
                return False
        for t in frontier - set(axes):
            if t in values and not np.array_equal(values[t], at_hi[t]):
                return False
    return True


def _shape_only_subgraph(graph, t):
    """The nodes computing ``t`` if every leaf is a constant; None if it reads an input/state."""
    nodes, leaves = graph.cone(t)
    return None if any(graph.tensors[x].kind != CONST for x in leaves) else nodes


def _evaluate(graph, nodes, binding) -> dict:
    values = {}
    for n in nodes:
        ins = [values[i] if i in values else graph.constants[i] for i in n.inputs]
        values[n.output] = registry.get(n.op).evaluate(ins, resolve_attrs(n.attrs, binding))
    return values


def _is_causal(graph, nodes, mask_name, qshape, kshape, binding) -> bool:
    values = _evaluate(graph, nodes, binding)
    m = values[mask_name] if mask_name in values else graph.constants[mask_name]
    sq, sk = dims.evaluate(qshape[2], binding), dims.evaluate(kshape[2], binding)
    if m.ndim < 2 or m.shape[-2:] != (sq, sk) or any(d != 1 for d in m.shape[:-2]):
        return False
    m = m.reshape(sq, sk)
    keep = np.tril(np.ones((sq, sk), dtype=bool))
    if m.dtype == np.bool_:
        return bool(np.array_equal(m, keep))
    return bool(np.all(m[keep] == 0) and np.all(np.isneginf(m[~keep])))
