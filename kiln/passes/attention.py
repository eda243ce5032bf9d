"""Attention: fuse MATMUL→(scale)→(mask)→SOFTMAX→MATMUL and naive softmax, share GQA heads,
(causal masks become ``causal=True`` in causal_mask.py)."""
from __future__ import annotations

import math

from .engine import Rule, RuleSet
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
