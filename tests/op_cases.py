"""Per-op test cases and PyTorch oracles, keyed by op name.

Every registered op must appear here (tests/ops/test_ops.py asserts it), so an op
declared without a reference test and a shape-inference test fails the suite.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kiln.ops import attention, creation, elementwise, matmul, reduce, shape

R = np.random.default_rng(1234)


def f32(*shape, lo=-2.0, hi=2.0):
    return R.uniform(lo, hi, size=shape).astype(np.float32)


def pos(*shape):
    return R.uniform(0.1, 3.0, size=shape).astype(np.float32)


def ints(hi, *shape):
    return R.integers(0, hi, size=shape).astype(np.int64)


def bools(*shape):
    return R.random(shape) < 0.5


T = torch.from_numpy

UNARY_TORCH = {
    "neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "relu": torch.relu, "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"), "silu": torch.nn.functional.silu,
    "erf": torch.erf, "cos": torch.cos, "sin": torch.sin,
}
POSITIVE = {"log", "sqrt", "rsqrt", "reciprocal"}
BINARY_TORCH = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
                "maximum": torch.maximum, "minimum": torch.minimum}
COMPARE_TORCH = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
                 "logical_and": torch.logical_and, "logical_or": torch.logical_or}

_ACTS = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu, "relu": torch.relu,
         "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh")}

# op -> (cases: list of (inputs, attrs dict)), torch oracle (torch inputs, attrs) -> tensor)
CASES: dict[str, tuple[list, callable]] = {}

for _op, _fn in UNARY_TORCH.items():
    gen = pos if _op in POSITIVE else f32
    CASES[_op] = ([([gen(7)], {}), ([gen(3, 17)], {}), ([gen(2, 3, 33)], {}), ([gen(1)], {})],
                  (lambda fn: lambda xs, a: fn(*xs))(_fn))

for _op, _fn in BINARY_TORCH.items():
    lhs = pos if _op == "pow" else f32
    rhs = (lambda *s: R.uniform(-2, 2, size=s).astype(np.float32)) if _op != "div" else pos
    CASES[_op] = ([([lhs(4, 5), rhs(4, 5)], {}), ([lhs(2, 3, 8), rhs(8)], {}), ([lhs(3, 1, 5), rhs(1, 4, 5)], {}),
                   ([lhs(6), np.array(1.5, np.float32)], {}), ([lhs(2, 7, 1), rhs(2, 1, 9)], {})]
                  + ([([ints(9, 3, 4), ints(9, 4)], {})] if _op in ("add", "sub", "mul", "maximum", "minimum") else []),
                  (lambda fn: lambda xs, a: fn(*xs))(_fn))

for _op, _fn in COMPARE_TORCH.items():
    if _op.startswith("logical"):
        CASES[_op] = ([([bools(3, 4), bools(4)], {}), ([bools(2, 1, 3), bools(1, 5, 3)], {})],
                      (lambda fn: lambda xs, a: fn(*xs))(_fn))
    else:
        CASES[_op] = ([([ints(4, 3, 4), ints(4, 4)], {}), ([f32(2, 5), f32(2, 1)], {})],
                      (lambda fn: lambda xs, a: fn(*xs))(_fn))
CASES["logical_not"] = ([([bools(3, 5)], {})], lambda xs, a: torch.logical_not(xs[0]))

CASES["where"] = ([([bools(3, 4), f32(3, 4), f32(4)], {}), ([bools(1, 1, 4, 4), f32(2, 3, 4, 4),
                   np.array(-np.inf, np.float32)], {})], lambda xs, a: torch.where(*xs))
CASES["cast"] = ([([f32(3, 4) * 10], {"dtype": "int64"}), ([ints(7, 5)], {"dtype": "float32"}),
                  ([bools(4)], {"dtype": "float32"}), ([ints(3, 6)], {"dtype": "bool"})],
                 lambda xs, a: xs[0].to({"int64": torch.int64, "float32": torch.float32, "bool": torch.bool}[a["dtype"]]))


def _mm(xs, a):
    x, w = xs[0], xs[1]
    out = a.get("alpha", 1.0) * (x @ (w.transpose(-1, -2) if a.get("transpose_b") else w))
    out = out + a.get("beta", 1.0) * xs[2] if len(xs) == 3 else out
    act = a.get("act", "none")
    return out if act == "none" else _ACTS[act](out)


CASES["matmul"] = ([([f32(5, 7), f32(7, 3)], {}), ([f32(2, 5, 7), f32(3, 7)], {"transpose_b": True}),
                    ([f32(2, 3, 4, 6), f32(2, 3, 6, 5)], {}), ([f32(2, 1, 4, 6), f32(3, 6, 5)], {}),
                    ([f32(1, 9), f32(9, 17), f32(17)], {"alpha": 0.5, "beta": 2.0}),
                    ([f32(1, 1, 33), f32(12, 33), f32(12)], {"transpose_b": True}),
                    ([f32(4, 9), f32(9, 7), f32(7)], {"act": "relu"}), ([f32(3, 9), f32(6, 9)], {"transpose_b": True,
                                                                                             "act": "gelu_tanh"}),
                    ([f32(2, 3, 9), f32(9, 5)], {"act": "gelu"})], _mm)

CASES["reshape"] = ([([f32(2, 3, 4)], {"shape": (6, 4)}), ([f32(2, 3, 4)], {"shape": (2, -1)}),
                     ([ints(5, 4, 1)], {"shape": (4,)})], lambda xs, a: xs[0].reshape(a["shape"]))
CASES["copy"] = ([([f32(3, 5)], {}), ([ints(9, 4)], {})], lambda xs, a: xs[0].clone())
CASES["permute"] = ([([f32(2, 3, 4)], {"perm": (2, 0, 1)}), ([f32(2, 3, 4, 5)], {"perm": (0, 2, 1, 3)}),
                     ([f32(1, 3, 1, 5)], {"perm": (2, 1, 0, 3)}), ([f32(7, 9)], {"perm": (1, 0)})],
                    lambda xs, a: xs[0].permute(a["perm"]))
CASES["expand"] = ([([f32(3, 1)], {"shape": (3, 4)}), ([f32(1, 2, 1, 5)], {"shape": (2, 2, 3, 5)}),
                    ([f32(4)], {"shape": (2, 4)})], lambda xs, a: xs[0].expand(a["shape"]))


def _slice(xs, a):
    idx = [slice(None)] * xs[0].dim()
    idx[a["axis"]] = slice(a["start"], a["end"], a.get("step", 1))
    return xs[0][tuple(idx)]


CASES["slice"] = ([([f32(4, 10)], {"axis": 1, "start": 2, "end": 7}), ([f32(6, 5)], {"axis": 0, "start": 1, "end": 6, "step": 2}),
                   ([f32(1, 8, 3)], {"axis": 1, "start": 3, "end": 8}), ([f32(2, 3, 9)], {"axis": 2, "start": 0, "end": 4})],
                  _slice)
CASES["concat"] = ([([f32(2, 3), f32(2, 5)], {"axis": 1}), ([f32(1, 4), f32(2, 4), f32(3, 4)], {"axis": 0}),
                    ([ints(5, 2, 2, 2), ints(5, 2, 1, 2)], {"axis": 1})], lambda xs, a: torch.cat(xs, a["axis"]))
CASES["embedding"] = ([([f32(10, 4), ints(10, 2, 3)], {}), ([f32(50, 7), ints(50, 5)], {})],
                      lambda xs, a: torch.nn.functional.embedding(xs[1], xs[0]))
CASES["index_select"] = ([([f32(6, 4), ints(6, 3)], {"axis": 0}), ([f32(2, 7, 3), ints(7, 5)], {"axis": 1})],
                         lambda xs, a: torch.index_select(xs[0], a["axis"], xs[1]))
CASES["gather"] = ([([f32(3, 5), ints(5, 3, 2)], {"axis": 1}), ([f32(4, 2), ints(4, 3, 2)], {"axis": 0})],
                   lambda xs, a: torch.gather(xs[0], a["axis"], xs[1]))

_RED = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax}
for _op, _fn in _RED.items():
    CASES[_op] = ([([f32(3, 4)], {"axes": (1,)}), ([f32(2, 3, 5)], {"axes": (0, 2), "keepdim": True}),
                   ([f32(4, 6)], {"axes": (0,)}), ([f32(2, 3, 4)], {"axes": (1,), "keepdim": True})],
                  (lambda fn: lambda xs, a: fn(xs[0], dim=a["axes"], keepdim=a.get("keepdim", False)))(_fn))
CASES["softmax"] = ([([f32(3, 7)], {"axis": 1}), ([f32(2, 5, 4) * 30], {"axis": 1}), ([f32(2, 3, 33)], {"axis": 2})],
                    lambda xs, a: torch.softmax(xs[0], a["axis"]))
CASES["log_softmax"] = ([([f32(3, 7)], {"axis": 1}), ([f32(4, 2, 6)], {"axis": 0})],
                        lambda xs, a: torch.log_softmax(xs[0], a["axis"]))
CASES["cumsum"] = ([([ints(3, 2, 5)], {"axis": 1}), ([f32(4, 3)], {"axis": 0}), ([bools(2, 6)], {"axis": 1})],
                   lambda xs, a: torch.cumsum(xs[0], a["axis"]))
CASES["layer_norm"] = ([([f32(3, 16), f32(16), f32(16)], {"eps": 1e-5}), ([f32(2, 2, 33)], {}),
                        ([f32(4, 8), f32(8)], {"eps": 1e-6})],
                       lambda xs, a: torch.nn.functional.layer_norm(xs[0], xs[0].shape[-1:],
                                                                    *(xs[1:] + [None] * (3 - len(xs))),
                                                                    eps=a.get("eps", 1e-5)))
CASES["rms_norm"] = ([([f32(3, 16), f32(16)], {"eps": 1e-6}), ([f32(2, 5, 9)], {})],
                     lambda xs, a: torch.nn.functional.rms_norm(xs[0], xs[0].shape[-1:], xs[1] if len(xs) > 1 else None,
                                                                eps=a.get("eps", 1e-5)))


def _sdpa(xs, a):
    q, k, v = xs[:3]
    mask = xs[3] if len(xs) == 4 else None
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=a.get("causal", False),
                                                            scale=a.get("scale"), enable_gqa=q.shape[1] != k.shape[1])


CASES["attention"] = ([
    ([f32(1, 2, 5, 8), f32(1, 2, 5, 8), f32(1, 2, 5, 8)], {}),
    ([f32(2, 4, 7, 16), f32(2, 4, 7, 16), f32(2, 4, 7, 16)], {"causal": True}),
    ([f32(1, 4, 6, 8), f32(1, 2, 6, 8), f32(1, 2, 6, 8)], {"causal": True}),  # GQA 4/2
    ([f32(1, 2, 3, 8), f32(1, 2, 9, 8), f32(1, 2, 9, 8), bools(1, 1, 3, 9) | np.eye(3, 9, dtype=bool)], {"scale": 0.3}),
    ([f32(1, 3, 4, 8), f32(1, 3, 4, 8), f32(1, 3, 4, 8), f32(4, 4)], {}),
], _sdpa)

CASES["arange"] = ([([], {"start": 0, "end": 7}), ([], {"start": 2, "end": 11, "step": 3})],
                   lambda xs, a: torch.arange(a["start"], a["end"], a.get("step", 1)))
CASES["full"] = ([([], {"shape": (2, 3), "value": 1.5}), ([], {"shape": (4,), "value": 1.0, "dtype": "bool"})],
                 lambda xs, a: torch.full(a["shape"], a["value"],
                                          dtype=torch.bool if a.get("dtype") == "bool" else torch.float32))
CASES["triu"] = ([([f32(4, 5)], {"diagonal": 1}), ([bools(3, 3)], {})], lambda xs, a: torch.triu(xs[0], a.get("diagonal", 0)))
CASES["tril"] = ([([f32(4, 5)], {}), ([bools(2, 3, 3)], {"diagonal": -1})], lambda xs, a: torch.tril(xs[0], a.get("diagonal", 0)))


def _index(xs, a):
    key = [slice(None)] * xs[0].dim()
    for ax, t in zip(a["axes"], xs[1:]):
        key[ax] = t
    return xs[0][tuple(key)]


CASES["index"] = ([([f32(4, 5), ints(4, 3, 1)], {"axes": (0,)}), ([f32(2, 6, 3), ints(2, 1, 1), ints(6, 1, 4)], {"axes": (0, 1)}),
                   ([f32(3, 4, 5), ints(3, 2), ints(5, 2)], {"axes": (0, 2)})], _index)

def _gated(xs, a):
    g, u = (xs[0], xs[1]) if len(xs) == 2 else xs[0].chunk(2, -1)
    return _ACTS[a["act"]](g) * u


def _rope(xs, a):
    x, cos, sin = xs
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin


CASES["gated_act"] = ([([f32(3, 8), f32(3, 8)], {"act": "silu"}), ([f32(2, 3, 16)], {"act": "gelu"}),
                       ([f32(4, 6), f32(4, 6)], {"act": "gelu_tanh"}), ([f32(5, 10)], {"act": "relu"})], _gated)
CASES["rope"] = ([([f32(1, 2, 5, 8), f32(5, 8), f32(5, 8)], {}), ([f32(3, 4, 16), f32(4, 16), f32(4, 16)], {})], _rope)

def _cache_write(xs, a):
    cache, new, pos = xs
    out = cache.clone()
    out[:, :, int(pos):int(pos) + new.shape[2]] = new
    return out


def _cached_attention(xs, a):
    q, k, v, pos = xs
    p, sq = int(pos), q.shape[2]
    k, v = k[:, :, :p + sq], v[:, :, :p + sq]
    keep = torch.arange(p + sq)[None, :] <= (p + torch.arange(sq))[:, None]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=a.get("scale"),
                                                            enable_gqa=q.shape[1] != k.shape[1])


CASES["cache_write"] = ([([f32(1, 2, 10, 4), f32(1, 2, 3, 4), np.array(4)], {}),
                         ([f32(2, 3, 6, 8), f32(2, 3, 1, 8), np.array(5)], {})], _cache_write)
CASES["cached_attention"] = ([([f32(1, 4, 3, 8), f32(1, 2, 12, 8), f32(1, 2, 12, 8), np.array(5)], {}),
                              ([f32(1, 2, 1, 16), f32(1, 2, 9, 16), f32(1, 2, 9, 16), np.array(8)], {"scale": 0.3}),
                              ([f32(2, 3, 4, 8), f32(2, 3, 4, 8), f32(2, 3, 4, 8), np.array(0)], {})],
                             _cached_attention)

def _slot_cache_write(xs, a):
    cache, new, slot, pos = xs
    out = cache.clone()
    for t in range(new.shape[2]):
        out[int(slot[t]), :, int(pos[t])] = new[0, :, t]
    return out


def _slot_cached_attention(xs, a):
    q, k, v, slot, pos = xs
    rows = []
    for t in range(q.shape[2]):
        n, s = int(pos[t]) + 1, int(slot[t])
        rows.append(torch.nn.functional.scaled_dot_product_attention(
            q[:, :, t:t + 1], k[s:s + 1, :, :n], v[s:s + 1, :, :n], scale=a.get("scale"),
            enable_gqa=q.shape[1] != k.shape[1]))
    return torch.cat(rows, 2)


def _i64(*xs):
    return np.array(xs, np.int64)


CASES["slot_cache_write"] = ([([f32(3, 2, 6, 4), f32(1, 2, 4, 4), _i64(2, 0, 0, 1), _i64(5, 0, 1, 3)], {}),
                              ([f32(1, 1, 3, 8), f32(1, 1, 1, 8), _i64(0), _i64(2)], {})], _slot_cache_write)
CASES["slot_cached_attention"] = ([([f32(1, 4, 4, 8), f32(3, 2, 9, 8), f32(3, 2, 9, 8), _i64(2, 0, 0, 1),
                                     _i64(8, 0, 1, 3)], {}),
                                   ([f32(1, 2, 1, 16), f32(2, 2, 70, 16), f32(2, 2, 70, 16), _i64(1), _i64(69)],
                                    {"scale": 0.3})], _slot_cached_attention)

_ = (attention, creation, elementwise, matmul, reduce, shape, math)
