"""Normalization: remove identities and merge chains so later patterns see one form."""
from __future__ import annotations

import numpy as np

from .engine import Rule, RuleSet
from .pattern import Any, Op, Scalar


def _same_shape(b, x, out_shape):
    return x if tuple(b.shape(x)) == tuple(out_shape) else None


def _reshape_chain(b, x, inner):
    return b.op("reshape", [x], {"shape": tuple(b.shape(b.match.root.output))})


def _permute_chain(b, x, inner):
    p1 = b.node(inner).attrs.perm
    p2 = b.match.root.attrs.perm
    perm = tuple(p1[i] for i in p2)
    return x if perm == tuple(range(len(perm))) else b.op("permute", [x], {"perm": perm})


def _identity(b, x):
    return _same_shape(b, x, b.shape(b.match.root.output)) if b.dtype(x) == b.dtype(b.match.root.output) else None


def _div_to_mul(b, x, c):
    v = b.value(c)
    if v.dtype != np.float32 or v.reshape(()) == 0:
        return None
    return b.op("mul", [x, b.const((1.0 / v.astype(np.float64)).astype(np.float32), "recip")])


def _drop_scalar(b, x, c):
    return x if tuple(b.shape(x)) == tuple(b.shape(b.match.root.output)) and b.dtype(x) == b.dtype(b.match.root.output) \
        else None


RULES = RuleSet([
    Rule("reshape-identity", Op({"reshape", "expand", "copy"}, Any("x")), _identity),
    Rule("permute-identity", Op("permute", Any("x"), perm=lambda p: p == tuple(range(len(p)))), _identity),
    Rule("cast-identity", Op("cast", Any("x")), _identity),
    Rule("reshape-chain", Op("reshape", Op("reshape", Any("x"), name="inner")), _reshape_chain),
    Rule("permute-chain", Op("permute", Op("permute", Any("x"), name="inner")), _permute_chain),
    Rule("div-by-constant", Op("div", Any("x"), Scalar("c")), _div_to_mul),
    Rule("mul-by-one", Op("mul", Any("x"), Scalar("c", 1.0)), _drop_scalar),
    Rule("add-zero", Op({"add", "sub"}, Any("x"), Scalar("c", 0.0)), _drop_scalar),
])
