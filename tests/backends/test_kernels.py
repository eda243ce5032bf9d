"""C kernels vs the numpy references (the op declarations' `ref`), generated from the registry.

Every executable op must have cases here (test_every_op_has_a_case). Shapes are
chosen to hit each kernel path: odd lengths, size-1 dims, broadcast fast paths
(scalar, last-dim bias, one broadcast axis, general N-d), threaded sizes,
in-place aliasing for INPLACE ops, int dtypes, and both attention kernels.
The same cases re-run against the portable build in a subprocess
(KILN_FORCE_GENERIC=1).
"""
from __future__ import annotations

import ctypes
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pytest

import kiln.ops  # noqa: F401  (registers the ops)
from kiln.backends import cabi, clib
from kiln.errors import BackendError
from kiln.ops import registry


def _load_error() -> Optional[str]:
    try:
        clib.lib()
        return None
    except BackendError as e:
        return str(e)


_LOAD_ERROR = _load_error()
# Skip only when nothing is built; a library that exists but fails to load (stale build,
# an op without a kernel: undefined symbol) must fail test_library_loads instead.
pytestmark = pytest.mark.skipif(_LOAD_ERROR is not None and "not built" in _LOAD_ERROR,
                                reason="C kernels not built (pip install -e .)")


def test_library_loads():
    assert _LOAD_ERROR is None, _LOAD_ERROR

GENERIC = os.environ.get("KILN_FORCE_GENERIC") == "1"


@dataclass
class Case:
    op: str
    inputs: list
    attrs: Any = None
    inplace: bool = False
    rtol: float = 1e-5
    atol: float = 1e-6
    flash: Optional[int] = None   # force the attention kernel: flash from this Sk (0: always)
    tag: str = ""

    @property
    def id(self) -> str:
        shapes = "x".join("[" + ",".join(map(str, a.shape)) + "]" + _short(a.dtype) for a in self.inputs)
        attrs = "" if not self.attrs else "-" + ",".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.op}-{shapes}{attrs.replace(' ', '')}{'-' + self.tag if self.tag else ''}" \
               f"{'-inplace' if self.inplace else ''}"


def _short(dt) -> str:
    return {"float32": "f", "int64": "l", "int32": "i", "bool": "b"}[str(np.dtype(dt)) if dt != np.bool_ else "bool"]


_seed = [0]


def rnd(*shape, dtype="float32", lo=-3.0, hi=3.0) -> np.ndarray:
    _seed[0] += 1
    g = np.random.default_rng(_seed[0])
    if dtype == "float32":
        return g.uniform(lo, hi, size=shape).astype(np.float32)
    if dtype == "bool":
        return g.random(size=shape) < 0.5
    return g.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)


CASES: list[Case] = []


def add(*cases: Case) -> None:
    CASES.extend(cases)


# -- unary ----------------------------------------------------------------------------
UNARY_SHAPES = [(1,), (7,), (33,), (3, 17), (2, 1, 5), (1000,), (70001,)]
DOMAIN = {"log": (0.01, 50.0), "sqrt": (0.0, 50.0), "rsqrt": (0.01, 50.0), "reciprocal": (0.1, 5.0)}
SPECIAL = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5, 0.625, -0.625, 10, -10, 20, -20, 88.7,
                    -87.3, -100, -104, 100, 1e5, -1e5, np.inf, -np.inf, np.nan], dtype=np.float32)
for op in registry.ops_with(registry.UNARY):
    lo, hi = DOMAIN.get(op, (-8.0, 8.0))
    for shp in UNARY_SHAPES:
        add(Case(op, [rnd(*shp, lo=lo, hi=hi)], atol=2e-6))
    add(Case(op, [rnd(5, 13, lo=lo, hi=hi)], inplace=True, atol=2e-6))
    if op not in DOMAIN:
        add(Case(op, [SPECIAL.copy()], atol=2e-6, tag="special"))
        # a dense sweep over the interesting range: every branch of the polynomial approximations
        add(Case(op, [np.linspace(-12, 12, 20011, dtype=np.float32)], atol=2e-6, tag="sweep"))

# -- binary ----------------------------------------------------------------------------
BIN_SHAPES = [
    ((3, 5), (3, 5)),            # same shape
    ((3, 5), ()),                # scalar operand
    ((), (3, 5)),
    ((1,), (7,)),
    ((4, 6, 33), (33,)),         # last-dim bias
    ((4, 6, 33), (1, 1, 33)),
    ((4, 6, 33), (4, 1, 33)),    # one broadcast axis
    ((4, 6, 1), (4, 6, 33)),
    ((2, 1, 5, 1), (3, 1, 4)),   # general N-d
    ((1, 17), (19, 1)),
    ((300, 257), (257,)),        # threaded
    ((70001,), (70001,)),
]


def _bin_inputs(op, sa, sb, dt):
    if dt == "float32":
        a = rnd(*sa, lo=0.5 if op == "pow" else -3, hi=3)
        b = rnd(*sb, lo=-2 if op == "pow" else -3, hi=2 if op == "pow" else 3)
        if op == "div":
            b = np.where(np.abs(b) < 0.1, 1.0, b).astype(np.float32)
        return [a, b]
    a = rnd(*sa, dtype=dt, lo=-50, hi=50)
    b = rnd(*sb, dtype=dt, lo=0 if op == "pow" else -50, hi=3 if op == "pow" else 50)
    if op == "div":
        b = np.where(b == 0, 7, b).astype(dt)
    return [a, b]


for op in registry.ops_with(registry.BINARY):
    for sa, sb in BIN_SHAPES:
        add(Case(op, _bin_inputs(op, sa, sb, "float32")))
    for sa, sb in BIN_SHAPES[:6] + BIN_SHAPES[8:9]:
        add(Case(op, _bin_inputs(op, sa, sb, "int64")))
    add(Case(op, _bin_inputs(op, (4, 9), (9,), "int32")))
    add(Case(op, _bin_inputs(op, (6, 35), (6, 35), "float32"), inplace=True))
    add(Case(op, _bin_inputs(op, (6, 35), (35,), "float32"), inplace=True))
    add(Case(op, _bin_inputs(op, (6, 35), (6, 1), "int64"), inplace=True))
    # mixed dtypes promote (slow path)
    fa, ib = _bin_inputs(op, (3, 4), (4,), "float32")[0], _bin_inputs(op, (3, 4), (4,), "int64")[1]
    add(Case(op, [fa, ib], tag="mixed"))
add(Case("add", [rnd(3, 4, dtype="bool"), rnd(4, dtype="bool")], tag="bool"))
add(Case("div", [np.array([7, -7, 5, 0, -1], np.int64), np.array([2, 2, 3, 5, 3], np.int64)], tag="trunc"))

# -- where / cast -------------------------------------------------------------------------
for sc, sa, sb in [((3, 5), (3, 5), (3, 5)), ((5,), (3, 5), ()), ((3, 1), (1, 5), (3, 5)),
                   ((2, 1, 4), (3, 1), (2, 3, 4)), ((200, 300), (300,), (200, 1))]:
    add(Case("where", [rnd(*sc, dtype="bool"), rnd(*sa), rnd(*sb)]))
add(Case("where", [rnd(4, 6, dtype="bool"), rnd(4, 6, dtype="int64"), rnd(6, dtype="int64")]))
add(Case("where", [rnd(4, 6, dtype="bool"), rnd(4, 6, dtype="bool"), rnd(6, dtype="bool")]))
add(Case("where", [rnd(4, 6, dtype="bool"), rnd(4, 6), rnd(6, dtype="int64")], tag="mixed"))
for src in ("float32", "int64", "int32", "bool"):
    for dst in ("float32", "int64", "int32", "bool"):
        x = rnd(5, 7, dtype=src, lo=-100, hi=100)
        if src == "float32":
            x[0, :3] = [0.0, -0.7, 0.7]
        add(Case("cast", [x], {"dtype": dst}))
add(Case("cast", [rnd(70001, lo=-1e6, hi=1e6)], {"dtype": "int64"}))

# -- reductions -----------------------------------------------------------------------------
for op in ("sum", "mean", "max"):
    for shp, axes in [((3, 4, 5), (0,)), ((3, 4, 5), (1,)), ((3, 4, 5), (2,)), ((3, 4, 5), (0, 2)),
                      ((3, 4, 5), (1, 2)), ((3, 4, 5), (0, 1, 2)), ((2, 3, 4, 5), (0, 2)), ((1, 7, 1), (1,)),
                      ((64, 1001), (1,)), ((1001, 64), (0,)), ((3, 300, 70), (1,)), ((5, 1), (1,))]:
        for keep in (False, True):
            add(Case(op, [rnd(*shp)], {"axes": axes, "keepdim": keep}, rtol=1e-5, atol=1e-5))
    add(Case(op, [rnd(4, 6, dtype="int64", lo=-1000, hi=1000)], {"axes": (1,)}))
    add(Case(op, [rnd(4, 6, 3, dtype="int32", lo=-1000, hi=1000)], {"axes": (0, 2)}))
add(Case("sum", [rnd(4, 6, dtype="bool")], {"axes": (0,)}))

# -- softmax family / norms -------------------------------------------------------------------
for op in ("softmax", "log_softmax"):
    for shp, ax in [((7,), 0), ((3, 33), 1), ((3, 33), 0), ((2, 5, 7), 1), ((2, 70, 130), 1), ((1, 1), 1),
                    ((300, 200), 1), ((4, 1000), 0)]:
        add(Case(op, [rnd(*shp, lo=-20, hi=20)], {"axis": ax}))
    add(Case(op, [rnd(6, 35)], {"axis": 1}, inplace=True))
    x = rnd(4, 9)
    x[1, 2:] = -np.inf
    add(Case(op, [x], {"axis": 1}, tag="neg-inf"))
    # weights below e^-86 of the row's largest are flushed to 0 (csrc/vmath.h kiln_exp_ftz)
    add(Case(op, [rnd(3, 40, lo=-300, hi=300)], {"axis": 1}, tag="wide-spread"),
        Case(op, [rnd(40, 3, lo=-300, hi=300)], {"axis": 0}, tag="wide-spread"))
for n_par in (1, 2, 3):
    for shp in [(5, 33), (1, 1), (300, 257), (2, 3, 64)]:
        d = shp[-1]
        add(Case("layer_norm", [rnd(*shp) + 100.0] + [rnd(d) for _ in range(n_par - 1)], {"eps": 1e-5},
                 rtol=2e-5, atol=2e-5))
    add(Case("layer_norm", [rnd(6, 35)] + [rnd(35) for _ in range(n_par - 1)], {"eps": 1e-6}, inplace=True,
             rtol=2e-5, atol=2e-5))
for n_par in (1, 2):
    for shp in [(5, 33), (1, 1), (300, 257), (2, 3, 64)]:
        add(Case("rms_norm", [rnd(*shp)] + [rnd(shp[-1]) for _ in range(n_par - 1)], {"eps": 1e-6}))
    add(Case("rms_norm", [rnd(6, 35)] + [rnd(35) for _ in range(n_par - 1)], inplace=True))

# -- gathers -------------------------------------------------------------------------------------
add(Case("embedding", [rnd(50, 17), rnd(3, 4, dtype="int64", lo=-50, hi=49)]),
    Case("embedding", [rnd(50, 17), rnd(9, dtype="int32", lo=0, hi=49)]),
    Case("embedding", [rnd(1000, 64), rnd(2, 600, dtype="int64", lo=0, hi=999)]),
    Case("embedding", [rnd(10, 3, dtype="int64"), rnd(5, dtype="int64", lo=0, hi=9)]))
for shp, ax in [((5, 6, 7), 0), ((5, 6, 7), 1), ((5, 6, 7), 2), ((40, 300), 0)]:
    add(Case("index_select", [rnd(*shp), rnd(4, dtype="int64", lo=-shp[ax], hi=shp[ax] - 1)], {"axis": ax}))
add(Case("index_select", [rnd(5, 6, dtype="int64"), rnd(3, dtype="int32", lo=0, hi=5)], {"axis": 1}))
for xs, ishp, ax in [((5, 6), (5, 6), 0), ((5, 6), (5, 4), 1), ((4, 5, 6), (4, 2, 6), 1), ((4, 5, 6), (4, 5, 1), 2)]:
    add(Case("gather", [rnd(*xs), rnd(*ishp, dtype="int64", lo=-xs[ax], hi=xs[ax] - 1)], {"axis": ax}))
add(Case("gather", [rnd(5, 6), rnd(5, 6, dtype="int32", lo=0, hi=4)], {"axis": 0}))

# -- movement --------------------------------------------------------------------------------------
for dt in ("float32", "int64", "bool"):
    add(Case("reshape", [rnd(3, 4, 5, dtype=dt)], {"shape": (12, 5)}),
        Case("copy", [rnd(3, 4, 5, dtype=dt)]),
        Case("expand", [rnd(3, 1, 5, dtype=dt)], {"shape": (2, 3, 4, 5)}),
        Case("concat", [rnd(2, 3, dtype=dt), rnd(2, 5, dtype=dt), rnd(2, 1, dtype=dt)], {"axis": 1}),
        Case("permute", [rnd(2, 3, 4, 5, dtype=dt)], {"perm": (0, 2, 1, 3)}),
        Case("permute", [rnd(37, 45, dtype=dt)], {"perm": (1, 0)}),
        Case("slice", [rnd(4, 9, 3, dtype=dt)], {"axis": 1, "start": 2, "end": 9, "step": 3}))
add(Case("expand", [rnd(1)], {"shape": (7,)}), Case("expand", [rnd(5)], {"shape": (3, 5)}),
    Case("expand", [rnd(64, 1)], {"shape": (64, 300)}), Case("expand", [rnd(1, 300)], {"shape": (200, 300)}))
for perm in [(3, 2, 1, 0), (0, 1, 3, 2), (2, 0, 3, 1), (1, 0, 2, 3), (0, 1, 2, 3)]:
    add(Case("permute", [rnd(2, 3, 4, 5)], {"perm": perm}))
add(Case("permute", [rnd(1, 7, 1, 9)], {"perm": (2, 3, 0, 1)}),
    Case("permute", [rnd(300, 257)], {"perm": (1, 0)}),
    Case("permute", [rnd(2, 64, 12, 64)], {"perm": (0, 2, 1, 3)}),
    Case("permute", [rnd(2, 3, 40, 50)], {"perm": (0, 3, 1, 2)}))
for shp, ax, s, e, st in [((10,), 0, 0, 10, 1), ((10,), 0, 3, 8, 1), ((10,), 0, 1, 10, 4), ((4, 9, 3), 0, 1, 3, 1),
                          ((4, 9, 3), 2, 1, 3, 1), ((4, 9, 3), 1, -5, 9, 2), ((300, 400), 1, 100, 300, 1)]:
    add(Case("slice", [rnd(*shp)], {"axis": ax, "start": s, "end": e, "step": st}))
add(Case("concat", [rnd(2, 3)], {"axis": 0}),
    Case("concat", [rnd(2, 3), rnd(4, 3)], {"axis": 0}),
    Case("concat", [rnd(2, 3, 4), rnd(2, 3, 1), rnd(2, 3, 7)], {"axis": 2}),
    Case("concat", [rnd(200, 300), rnd(200, 100)], {"axis": 1}))

# -- fused ----------------------------------------------------------------------------------------
if "gated_act" in registry.REGISTRY:
    for act in ("silu", "gelu", "gelu_tanh", "relu"):
        add(Case("gated_act", [rnd(3, 5, 17), rnd(3, 5, 17)], {"act": act}, atol=2e-6),
            Case("gated_act", [rnd(4, 34)], {"act": act}, atol=2e-6))
    add(Case("gated_act", [rnd(300, 257), rnd(300, 257)], {"act": "silu"}, atol=2e-6))
    if registry.get("gated_act").has(registry.INPLACE):
        add(Case("gated_act", [rnd(6, 35), rnd(6, 35)], {"act": "silu"}, inplace=True, atol=2e-6))
if "rope" in registry.REGISTRY:
    for shp in [(1, 2, 5, 8), (2, 3, 7, 64), (1, 9, 300, 64)]:
        add(Case("rope", [rnd(*shp), rnd(*shp[-2:], lo=-1, hi=1), rnd(*shp[-2:], lo=-1, hi=1)]))
    add(Case("rope", [rnd(2, 3, 7, 64), rnd(7, 64, lo=-1, hi=1), rnd(7, 64, lo=-1, hi=1)], inplace=True))

# -- KV cache ---------------------------------------------------------------------------------------
for pos, s_new in ((0, 5), (7, 1), (3, 4), (15, 1)):
    add(Case("cache_write", [rnd(1, 3, 16, 8), rnd(1, 3, s_new, 8), np.array(pos, np.int64)], inplace=True),
        Case("cache_write", [rnd(2, 2, 16, 8), rnd(2, 2, s_new, 8), np.array(pos, np.int64)]))
    add(Case("cached_attention", [rnd(1, 6, s_new, 16), rnd(1, 2, 16, 16), rnd(1, 2, 16, 16), np.array(pos, np.int64)],
             rtol=1e-4, atol=1e-5),
        Case("cached_attention", [rnd(1, 3, s_new, 64), rnd(1, 3, 2000, 64), rnd(1, 3, 2000, 64),
                                  np.array(pos * 100, np.int64)], rtol=1e-4, atol=1e-5))
add(Case("cached_attention", [rnd(1, 4, 150, 32), rnd(1, 2, 300, 32), rnd(1, 2, 300, 32), np.array(37, np.int64)],
         rtol=1e-4, atol=1e-5, tag="blocked-prefill"))

# -- batched KV cache over slots (csrc/slot_cache.c): distinct (slot, position) per token ----------------
for slots, length, rows in ((3, 16, ((2, 5), (0, 0), (0, 1), (1, 15))), (1, 8, ((0, 7),)),
                            (4, 200, ((3, 199), (1, 64), (1, 65), (0, 63), (2, 128)))):
    sl, ps = (np.array(c, np.int64) for c in zip(*rows))
    n = len(rows)
    add(Case("slot_cache_write", [rnd(slots, 2, length, 8), rnd(1, 2, n, 8), sl, ps], inplace=True),
        Case("slot_cache_write", [rnd(slots, 3, length, 4), rnd(1, 3, n, 4), sl, ps]))
    add(Case("slot_cached_attention", [rnd(1, 6, n, 16), rnd(slots, 2, length, 16), rnd(slots, 2, length, 16), sl, ps],
             rtol=1e-4, atol=1e-5),
        Case("slot_cached_attention", [rnd(1, 2, n, 64), rnd(slots, 2, length, 64), rnd(slots, 2, length, 64), sl, ps],
             {"scale": 0.2}, rtol=1e-4, atol=1e-5))
# 12 query heads per K/V head with Dv 256: heads split into shares of 8 and 4 per task
add(Case("slot_cached_attention", [rnd(1, 12, 3, 256), rnd(2, 1, 90, 256), rnd(2, 1, 90, 256),
                                   np.array([1, 0, 1], np.int64), np.array([89, 70, 3], np.int64)],
         rtol=1e-4, atol=1e-5, tag="head-shares"))

# 8 < rows <= 128 against B^T: computed as C^T = B @ A^T through scratch, bias added on the way back
for sa, with_bias in (((20, 40), True), ((3, 7, 40), False), ((128, 40), True), ((129, 40), True)):
    add(Case("matmul", [rnd(*sa), rnd(52, 40)] + ([rnd(52)] if with_bias else []),
             {"transpose_b": True, "alpha": 0.5, "beta": 2.0}, rtol=1e-4, atol=1e-4, tag="transposed"))

# matmul with a fused activation epilogue (bias + relu/gelu...), small-M and BLAS paths
for act in ("relu", "gelu", "gelu_tanh", "silu"):
    add(Case("matmul", [rnd(3, 40), rnd(24, 40), rnd(24)], {"transpose_b": True, "act": act}, rtol=1e-4, atol=1e-4),
        Case("matmul", [rnd(70, 40), rnd(40, 33), rnd(33)], {"act": act}, rtol=1e-4, atol=1e-4))

# -- matmul ------------------------------------------------------------------------------------------
MM = dict(rtol=1e-4, atol=1e-4)
for sa, sb, tb in [((5, 7), (7, 3), False), ((1, 64), (64, 100), False), ((1, 64), (100, 64), True),
                   ((1, 1000), (1000, 700), False), ((1, 1000), (700, 1000), True), ((65, 129), (129, 67), False),
                   ((65, 129), (67, 129), True), ((4, 7, 9), (9, 11), False), ((4, 7, 9), (11, 9), True),
                   ((2, 3, 4, 5), (3, 5, 6), False), ((2, 1, 4, 5), (3, 6, 5), True), ((3, 4, 5), (1, 5, 6), False),
                   ((3, 1, 5), (3, 5, 6), False), ((6, 1), (1, 4), False), ((2, 8, 64), (2, 64, 8), False)]:
    add(Case("matmul", [rnd(*sa), rnd(*sb)], {"transpose_b": tb}, **MM))
n = 11
add(Case("matmul", [rnd(4, 7, 9), rnd(9, n), rnd(n)], {}, **MM),
    Case("matmul", [rnd(1, 9), rnd(n, 9), rnd(n)], {"transpose_b": True, "alpha": 0.5, "beta": 2.0}, **MM),
    Case("matmul", [rnd(7, 9), rnd(9, n), rnd(7, n)], {"alpha": -1.5, "beta": 0.25}, **MM),
    Case("matmul", [rnd(2, 7, 9), rnd(2, 9, n), rnd(7, 1)], {}, **MM),
    Case("matmul", [rnd(2, 3, 9), rnd(n, 9), rnd(1, n)], {"transpose_b": True, "alpha": 2.0}, **MM))


# -- attention ---------------------------------------------------------------------------------------
def attn(b, hq, hkv, sq, sk, d, dv=None, mask=None, causal=False, scale=None, flash=None, tag=""):
    q, k, v = rnd(b, hq, sq, d, lo=-1, hi=1), rnd(b, hkv, sk, d, lo=-1, hi=1), rnd(b, hkv, sk, dv or d, lo=-1, hi=1)
    ins = [q, k, v]
    if mask is not None:
        shape, kind = mask
        ins.append(rnd(*shape, dtype="bool") if kind == "bool" else rnd(*shape, lo=-4, hi=0))
    return Case("attention", ins, {"causal": causal, "scale": scale}, rtol=1e-4, atol=1e-5, flash=flash, tag=tag)


for flash in (None, 0):  # default rule, then flash forced for every size
    t = "flash" if flash == 0 else ""
    add(attn(1, 2, 2, 5, 5, 8, flash=flash, tag=t),
        attn(2, 4, 2, 7, 7, 16, causal=True, flash=flash, tag=t),
        attn(1, 4, 1, 1, 70, 32, flash=flash, tag=t),                        # decode, MQA
        attn(1, 2, 2, 9, 4, 8, causal=True, flash=flash, tag=t),             # Sq > Sk, causal top-left
        attn(1, 2, 2, 4, 130, 8, causal=True, flash=flash, tag=t),           # Sq < Sk
        attn(2, 2, 2, 6, 6, 8, mask=((6, 6), "bool"), flash=flash, tag=t),
        attn(2, 3, 3, 6, 67, 8, mask=((2, 1, 6, 67), "float"), causal=True, flash=flash, tag=t),
        attn(2, 3, 3, 6, 67, 8, mask=((1, 3, 1, 67), "bool"), flash=flash, tag=t),
        attn(1, 2, 2, 5, 9, 8, dv=12, scale=0.3, flash=flash, tag=t),
        attn(1, 6, 2, 40, 40, 64, causal=True, flash=flash, tag=t))
add(attn(1, 2, 1, 3, 1100, 16, causal=False, tag="long"),                   # default rule picks flash
    attn(1, 2, 2, 2, 1500, 8, mask=((1, 1, 2, 1500), "float"), tag="long"))
_full = attn(1, 2, 2, 4, 6, 8, mask=((4, 6), "bool"), tag="fully-masked-row")
_full.inputs[3][1, :] = False
add(_full)
_full_f = attn(1, 2, 2, 4, 100, 8, mask=((4, 100), "bool"), flash=0, tag="fully-masked-row-flash")
_full_f.inputs[3][2, :] = False
add(_full_f)
# Blocked (sgemm) kernel: Sq >= 32 under the default rule; row blocks of 128, so 130 crosses one.
add(attn(1, 4, 2, 130, 130, 32, causal=True, tag="blocked"),
    attn(2, 3, 3, 40, 64, 16, mask=((2, 1, 40, 64), "float"), causal=True, tag="blocked"),
    attn(1, 2, 2, 64, 33, 8, mask=((64, 33), "bool"), tag="blocked"),         # Sq > Sk
    attn(1, 2, 1, 33, 300, 16, dv=24, scale=0.2, causal=True, tag="blocked"),
    # on the GEMM microkernels: a Qwen3 head (GQA 2:1, 128 wide) and a GPT-2 one across query
    # blocks and row/column tile edges; odd widths (partial vectors of Q^T, V and O); a head wider
    # than the blocked kernel takes (KILN_ATTN_MAX_D: the row kernels run)
    attn(1, 4, 2, 200, 200, 128, causal=True, tag="blocked-qwen3"),
    attn(1, 2, 2, 161, 161, 64, causal=True, tag="blocked-gpt2"),
    attn(1, 2, 1, 70, 45, 20, dv=37, mask=((1, 1, 70, 45), "float"), tag="blocked-odd"),
    attn(1, 1, 1, 40, 40, 264, causal=True, tag="blocked-wide-head"),
    # per 64 queries only the keys they see: blocks of 128, a partial last sub-block, a causal
    # offset (Sk > Sq) with a bool mask besides, and scores far apart (weights flushed to 0)
    attn(1, 3, 1, 300, 300, 64, causal=True, tag="blocked-sub"),
    attn(1, 2, 2, 100, 250, 32, mask=((1, 1, 100, 250), "bool"), causal=True, tag="blocked-sub"),
    attn(1, 2, 2, 150, 150, 16, scale=60.0, causal=True, tag="blocked-wide-spread"))
_full_b = attn(1, 2, 2, 40, 50, 8, mask=((40, 50), "bool"), tag="blocked-fully-masked-row")
_full_b.inputs[3][5, :] = False
add(_full_b)


# -- the tests ----------------------------------------------------------------------------------------
def _run(case: Case) -> np.ndarray:
    opdef = registry.get(case.op)
    attrs = opdef.make_attrs(case.attrs)
    ref = opdef.ref([a.copy() for a in case.inputs], attrs)
    ref = np.array(ref, copy=True, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    inputs = [np.array(a, copy=True, order="C") for a in case.inputs]
    if case.inplace:
        assert opdef.has(registry.INPLACE), f"{case.op} is not INPLACE"
        assert inputs[0].shape == ref.shape and inputs[0].dtype == ref.dtype
        out = inputs[0]
    else:
        out = np.full(ref.shape, 7, dtype=ref.dtype)  # garbage: kernels must write every element
    if case.flash is not None:
        clib.set_flash_min_sk(case.flash)
    try:
        clib.run_op(case.op, inputs, attrs, out)
    finally:
        if case.flash is not None:
            clib.set_flash_min_sk(-1)
    return out, ref


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kernel_matches_reference(case: Case):
    out, ref = _run(case)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if ref.dtype == np.float32:
        np.testing.assert_allclose(out, ref, rtol=case.rtol, atol=case.atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(out, ref)


def test_every_executable_op_has_a_case():
    covered = {c.op for c in CASES}
    # stored-weight ops run through the compiled executor only (a kernel needs the plan's
    # logical shape of its weight bytes): tests/passes/test_quantize.py compares their kernels
    stored = {"dequantize", "qmatmul", "qembedding"}
    missing = sorted(set(registry.executable_ops()) - covered - stored)
    assert not missing, f"executable ops without a kernel test: {missing}"
    inplace = {c.op for c in CASES if c.inplace}
    no_alias_case = sorted(o for o in registry.ops_with(registry.INPLACE) if o not in inplace)
    assert not no_alias_case, f"INPLACE ops without an out==in test: {no_alias_case}"


def test_vector_math_vs_float64():
    """The vectorized exp/tanh/erf/gelu/sigmoid against float64 math (not the A&S oracle)."""
    x = np.concatenate([np.linspace(-30, 30, 60001), np.linspace(-1, 1, 20001)]).astype(np.float32)
    x64 = x.astype(np.float64)
    erf64 = np.array([math.erf(v) for v in x64])
    truth = {"exp": np.exp(np.clip(x64, -80, 80)), "tanh": np.tanh(x64), "sigmoid": 1 / (1 + np.exp(-x64)),
             "erf": erf64, "gelu": 0.5 * x64 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x64])),
             "silu": x64 / (1 + np.exp(-x64)),
             "gelu_tanh": 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))}
    for op, want in truth.items():
        xi = np.clip(x, -80, 80).astype(np.float32) if op == "exp" else x
        out = np.empty_like(xi)
        clib.run_op(op, [xi], None, out)
        err = np.abs(out - want) / np.maximum(np.abs(want), 1e-30)
        # relative 2e-6 where the value is not tiny; absolute 1e-7 near zeros of the function
        bad = (err > 2e-6) & (np.abs(out - want) > 1e-7 * np.maximum(1.0, np.abs(x64)))
        assert not bad.any(), f"{op}: worst at x={xi[bad][:5]}, got {out[bad][:5]}, want {want[bad][:5]}"


def _one_call(op_id: int):
    calls = (cabi.Call * 1)()
    calls[0].op = op_id
    calls[0].n_in = 0
    slots = (ctypes.c_void_p * 1)()
    return calls, slots


@pytest.mark.parametrize("bad", [-1, cabi.op_id("where") + 1000, 2**31 - 1])
def test_bad_op_id_is_an_error_not_a_crash(bad):
    calls, slots = _one_call(bad)
    with pytest.raises(BackendError, match="op id"):
        clib.run_calls(calls, 1, slots)


def test_run_calls_chains_and_profiles():
    x = rnd(4, 8)
    bufs = [x, np.empty_like(x), np.empty_like(x)]
    calls = (cabi.Call * 2)()
    for i, (op, src, dst) in enumerate((("exp", 0, 1), ("neg", 1, 2))):
        calls[i].op = cabi.op_id(op)
        calls[i].n_in = 1
        cabi.fill_tensor(getattr(calls[i], "in")[0], slot=src, offset=0, shape=x.shape, dtype="float32")
        cabi.fill_tensor(calls[i].out, slot=dst, offset=0, shape=x.shape, dtype="float32")
    slots = (ctypes.c_void_p * 3)(*[b.ctypes.data for b in bufs])
    prof = (ctypes.c_int64 * 2)(-1, -1)
    clib.run_calls(calls, 2, slots, prof)
    np.testing.assert_allclose(bufs[2], -np.exp(x), rtol=1e-6)
    assert all(p >= 0 for p in prof)


def test_run_op_checks_sizes():
    with pytest.raises(BackendError):
        clib.run_op("exp", [rnd(4, 8)], None, np.empty((4, 8), np.int64))


def test_layout_and_build_info():
    lib = clib.lib()
    assert lib.kiln_sizeof_call() == ctypes.sizeof(cabi.Call)
    assert lib.kiln_sizeof_tensor() == ctypes.sizeof(cabi.Tensor)
    info = clib.build_info()
    assert ("generic" in info) if GENERIC else info.split()[0] in ("avx512", "avx2", "generic")


@pytest.mark.skipif(GENERIC or os.environ.get("KILN_LIB") is not None, reason="already the generic/custom build")
def test_generic_build_passes_the_same_cases():
    env = dict(os.environ, KILN_FORCE_GENERIC="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", __file__,
                        "-k", "not generic_build"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.parametrize("scratch", ["none", "one-thread"])
def test_attention_with_less_scratch_than_threads(scratch):
    """Too little scratch must never overrun it: fewer threads, or the stack-tile flash path."""
    case = attn(1, 4, 2, 33, 200, 16, mask=((33, 200), "float"), causal=True)
    opdef = registry.get("attention")
    attrs = opdef.make_attrs(case.attrs)
    ref = opdef.ref(case.inputs, attrs)
    per = max(200, 64 + 16 + 2) * 4
    out = np.full(ref.shape, 7, np.float32)
    clib.run_op("attention", case.inputs, attrs, out, scratch_bytes=0 if scratch == "none" else per)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
