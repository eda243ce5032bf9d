"""Attention: fuse MATMUL→(scale)→(mask)→SOFTMAX→MATMUL and naive softmax, share GQA heads,
and absorb causal masks into ``causal=True``."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..core import dims
from ..ir.graph import CONST, Graph
from ..ir.resolve import attr_symbols, resolve_attrs
from ..ops import registry
from .engine import Rule, RuleSet, dead_code_elimination
from .pattern import Any, Op, Scalar

NEG_INF = -math.inf


def _scores():
    return Op("matmul", Any("q"), Any("k"), name="scores", transpose_b=True)


def _attention(b, q, k, v, scores, mask=None, mask_kind=None, p=None, **_):
    mm = b.node(scores)
    if len(mm.inputs) != 2 or any(len(b.shape(t)) != 4 for t in (q, k, v)):
        return None
    if b.node(p).attrs.axis != 3:
        return None
    ins = [q, k, v]
    if mask_kind == "keep":
        ins.append(mask)
    elif mask_kind == "drop":
        ins.append(b.op("logical_not", [mask]))  # fold-only: the mask is built from shapes
    elif mask_kind == "additive":
        if b.dtype(mask) != "float32":
            return None
        ins.append(mask)
    if len(ins) == 4 and len(b.shape(ins[3])) > 4:
        return None
    return b.op("attention", ins, {"causal": False, "scale": float(mm.attrs.alpha)})


def _sdpa_rule(name, masked, mask_kind):
    return Rule(f"attention-from-matmuls{name}",
                Op("matmul", Op("softmax", masked, name="p"), Any("v")),
                lambda b, **c: _attention(b, mask_kind=mask_kind, **c), priority=1)


ATTENTION = RuleSet([
    _sdpa_rule("", _scores(), None),
    _sdpa_rule("-where-keep", Op("where", Any("mask"), _scores(), Scalar(value=NEG_INF)), "keep"),
    _sdpa_rule("-where-fill", Op("where", Any("mask"), Scalar(value=NEG_INF), _scores()), "drop"),
    _sdpa_rule("-additive", Op("add", _scores(), Any("mask")), "additive"),
])


# -- naive softmax ------------------------------------------------------------------------
def _softmax(b, x, e, den, mx=None):
    root_axes = b.node(den).attrs
    if not root_axes.keepdim or len(root_axes.axes) != 1:
        return None
    axis = root_axes.axes[0]
    if mx is not None:
        ma = b.node(mx).attrs
        if tuple(ma.axes) != (axis,) or not ma.keepdim:
            return None
    return b.op("softmax", [x], {"axis": axis})


SOFTMAX = RuleSet([
    Rule("softmax-from-exp-sum", Op("div", Op("exp", Op("sub", Any("x"), Op("max", Any("x"), name="mx")), name="e"),
                                     Op("sum", Any("e"), name="den")), _softmax, priority=1),
    Rule("softmax-from-exp-sum-unshifted", Op("div", Op("exp", Any("x"), name="e"), Op("sum", Any("e"), name="den")),
         _softmax),
])


# -- grouped-query attention from repeat_kv (unsqueeze → expand → reshape) -----------------------
def _repeated(name):
    return Op("reshape", Op("expand", Op("reshape", Any(name), name=f"{name}5"), name=f"{name}x"), name=f"{name}r")


def _unrepeat(b, src, r5, rx, rr):
    s = b.shape(src)
    if len(s) != 4:
        return None
    b_, kv, n, d = s
    if tuple(b.shape(r5)) != (b_, kv, 1, n, d):
        return None
    ex = b.shape(rx)
    if len(ex) != 5 or tuple(ex[:2]) != (b_, kv) or tuple(ex[3:]) != (n, d) or tuple(b.shape(rr)) != (b_, kv * ex[2], n, d):
        return None
    return ex[2]


def _gqa(b, q, k, v, k5, kx, kr, v5, vx, vr):
    gk, gv = _unrepeat(b, k, k5, kx, kr), _unrepeat(b, v, v5, vx, vr)
    if gk is None or gv is None or gk != gv:
        return None
    node = b.match.root
    return b.op("attention", [q, k, v] + node.inputs[3:], node.attrs)


GQA = RuleSet([Rule("gqa-from-repeat-kv", Op("attention", Any("q"), _repeated("k"), _repeated("v")).prefix(), _gqa)])


# -- causal masks --------------------------------------------------------------------------
def causal_mask_absorption(graph: Graph) -> int:
    """attention(q, k, v, mask) → attention(q, k, v, causal=True) when the mask is causal.

    The mask must depend on no runtime value (only constants and sizes). When sizes are
    symbolic it is evaluated at several sample sizes from the exported range; mask builders
    are shape arithmetic, so agreeing at every sample (including the smallest sizes, where
    off-by-one shifts show) identifies the causal pattern.
    """
    fired = 0
    for node in list(graph.nodes):
        if node.op != "attention" or len(node.inputs) != 4 or node.attrs.causal:
            continue
        sub = _shape_only_subgraph(graph, node.inputs[3])
        if sub is None:
            continue
        q, k, mask = (graph.tensors[t] for t in (node.inputs[0], node.inputs[1], node.inputs[3]))
        syms = sorted(dims.symbols_of(q.shape) | dims.symbols_of(k.shape) | dims.symbols_of(mask.shape)
                      | {x for n in sub for x in attr_symbols(n.attrs)})
        if all(_is_causal(graph, sub, node.inputs[3], q.shape, k.shape, b) for b in _samples(graph, syms)):
            graph.replace_node(node, dataclasses.replace(node, inputs=node.inputs[:3],
                                                         attrs=dataclasses.replace(node.attrs, causal=True)))
            fired += 1
    if fired:
        dead_code_elimination(graph)   # the mask builders now have no reader
    return fired


def _shape_only_subgraph(graph, t):
    """The nodes computing ``t`` if every leaf is a constant; None if it reads an input/state."""
    nodes, stack, seen = [], [t], set()
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        p = graph.producer(x)
        if p is not None:
            nodes.append(p)
            stack.extend(p.inputs)
        elif graph.tensors[x].kind != CONST:
            return None
    order = {id(n): j for j, n in enumerate(graph.nodes)}
    return sorted(nodes, key=lambda n: order[id(n)])


def _samples(graph, syms):
    if not syms:
        return [{}]
    out = []
    for size in (1, 2, 3, 5, 17):
        b = {}
        for s in syms:
            lo, hi = graph.sym_ranges.get(s, (1, 64))
            b[s] = min(max(size, lo), hi)
        if b not in out:
            out.append(b)
    return out


def _is_causal(graph, nodes, mask_name, qshape, kshape, binding) -> bool:
    values = {}
    for n in nodes:
        ins = [values[i] if i in values else graph.constants[i] for i in n.inputs]
        values[n.output] = registry.get(n.op).evaluate(ins, resolve_attrs(n.attrs, binding))
    m = values[mask_name] if mask_name in values else graph.constants[mask_name]
    sq, sk = dims.evaluate(qshape[2], binding), dims.evaluate(kshape[2], binding)
    if m.ndim < 2 or m.shape[-2:] != (sq, sk) or any(d != 1 for d in m.shape[:-2]):
        return False
    m = m.reshape(sq, sk)
    keep = np.tril(np.ones((sq, sk), dtype=bool))
    if m.dtype == np.bool_:
        return bool(np.array_equal(m, keep))
    return bool(np.all(m[keep] == 0) and np.all(np.isneginf(m[~keep])))
