"""Matmul absorption: transposes of B, scalar scales, and [in, out] constant weights.

Runs before constant folding: folding would materialize a transposed copy of
every weight, where absorbing flips a flag.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .engine import Rule, RuleSet
from .pattern import Any, Const, Op, Scalar


def _swaps_last_two(perm) -> bool:
    n = len(perm)
    return n >= 2 and tuple(perm) == tuple(range(n - 2)) + (n - 1, n - 2)


def _transpose_b(b, a, bt, src):
    mm = b.match.root
    attrs = dataclasses.replace(mm.attrs, transpose_b=not mm.attrs.transpose_b)
    return b.op("matmul", [a, src] + mm.inputs[2:], attrs)


def _scale_out(b, mm, c):
    node = b.node(mm)
    f = float(b.value(c).reshape(()))
    has_bias = len(node.inputs) == 3
    attrs = dataclasses.replace(node.attrs, alpha=node.attrs.alpha * f, beta=node.attrs.beta * f if has_bias else 1.0)
    return b.op("matmul", list(node.inputs), attrs)


def _scale_in(b, a, c, w):
    mm = b.match.root
    if len(mm.inputs) == 3:  # the bias is not scaled by a scaled input
        return None
    f = float(b.value(c).reshape(()))
    return b.op("matmul", [a, w], dataclasses.replace(mm.attrs, alpha=mm.attrs.alpha * f))


def _pretranspose(b, a, w):
    mm = b.match.root
    v = b.value(w)
    if mm.attrs.transpose_b or v.ndim != 2:
        return None
    wt = b.const(np.ascontiguousarray(v.T), f"{w}.T")
    return b.op("matmul", [a, wt] + mm.inputs[2:], dataclasses.replace(mm.attrs, transpose_b=True))


RULES = RuleSet([
    Rule("matmul-transpose-b", Op("matmul", Any("a"), Op("permute", Any("src"), name="bt", perm=_swaps_last_two)).prefix(),
         _transpose_b, priority=2),
    Rule("matmul-scale-out", Op("mul", Op("matmul", name="mm"), Scalar("c")), _scale_out, priority=1),
    Rule("matmul-scale-in", Op("matmul", Op("mul", Any("a"), Scalar("c")), Any("w")), _scale_in, priority=1),
    Rule("matmul-pretranspose-weight", Op("matmul", Any("a"), Const("w")).prefix(), _pretranspose),
])
