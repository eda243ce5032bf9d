"""Elementwise kernels: unary math, broadcast binary arithmetic, where, cast.

Broadcasting is done by strides: each operand is read through element strides over the
output's (coalesced) shape, 0 on broadcast axes, so no operand is ever expanded in
memory. When coalescing leaves one axis the kernel is a flat loop.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import index, mathfn, runtime
from .registry import register
from ...ops.elementwise import BINARY_REFS

UNARY_OPS = ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "sigmoid", "relu", "gelu",
             "gelu_tanh", "silu", "erf", "cos", "sin")
BINARY_OPS = tuple(BINARY_REFS)           # add sub mul div pow maximum minimum
WHERE = len(BINARY_OPS)                   # op code of where(cond, a, b) in _nary
BLOCK = 1024


@triton.jit
def _unary(x, y, n, OP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    v = tl.load(x + offs, mask=m, other=1.0)
    if OP == 0:
        r = -v
    elif OP == 1:
        r = tl.abs(v)
    elif OP == 2:
        r = tl.exp(v)
    elif OP == 3:
        r = tl.log(v)
    elif OP == 4:
        r = tl.sqrt(v)
    elif OP == 5:
        r = 1.0 / tl.sqrt(v)
    elif OP == 6:
        r = 1.0 / v
    elif OP == 7:
        r = mathfn.tanh(v)
    elif OP == 8:
        r = mathfn.sigmoid(v)
    elif OP == 9:
        r = mathfn.act(v, 1)
    elif OP == 10:
        r = mathfn.act(v, 2)
    elif OP == 11:
        r = mathfn.act(v, 3)
    elif OP == 12:
        r = mathfn.act(v, 4)
    elif OP == 13:
        r = tl.erf(v)
    elif OP == 14:
        r = tl.cos(v)
    else:
        r = tl.sin(v)
    tl.store(y + offs, r, mask=m)


@triton.jit
def _nary(a, b, c, y, meta, n, OP: tl.constexpr, RANK: tl.constexpr, IS_FLOAT: tl.constexpr,
          BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = idx < n
    ty = y.dtype.element_ty
    if OP == 7:  # where(cond=a, b, c)
        cond = tl.load(a + index.offset(idx, meta, 0, 1, RANK), mask=m, other=0) != 0
        vb = tl.load(b + index.offset(idx, meta, 0, 2, RANK), mask=m, other=0).to(ty)
        vc = tl.load(c + index.offset(idx, meta, 0, 3, RANK), mask=m, other=0).to(ty)
        r = tl.where(cond, vb, vc)
    else:
        va = tl.load(a + index.offset(idx, meta, 0, 1, RANK), mask=m, other=1).to(ty)
        vb = tl.load(b + index.offset(idx, meta, 0, 2, RANK), mask=m, other=1).to(ty)
        if OP == 0:
            r = va + vb
        elif OP == 1:
            r = va - vb
        elif OP == 2:
            r = va * vb
        elif OP == 3:
            if IS_FLOAT:
                r = va / vb
            else:  # numpy: true division, then truncation back to the integer type
                r = (va.to(tl.float64) / vb.to(tl.float64)).to(ty)
        elif OP == 4:
            if IS_FLOAT:
                r = mathfn.pow_(va, vb)
            else:
                r = mathfn.pow_(va.to(tl.float64), vb.to(tl.float64)).to(ty)
        elif OP == 5:
            r = tl.maximum(va, vb, propagate_nan=tl.PropagateNan.ALL)
        else:
            r = tl.minimum(va, vb, propagate_nan=tl.PropagateNan.ALL)
    tl.store(y + idx, r.to(ty), mask=m)


@triton.jit
def _cast(x, y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    v = tl.load(x + offs, mask=m)
    if y.dtype.element_ty == tl.int1:
        r = v != 0
    else:
        r = v.to(y.dtype.element_ty)
    tl.store(y + offs, r, mask=m)


def _grid(n: int):
    return (triton.cdiv(max(n, 1), BLOCK),)


def _unary_launcher(code: int):
    def launch(ins, out, attrs, ctx):
        n = out.numel()
        if n:
            _unary[_grid(n)](ins[0], out, n, OP=code, BLOCK=BLOCK)
    return launch


for _i, _name in enumerate(UNARY_OPS):
    register(_name)(_unary_launcher(_i))


def nary(code: int, ins, out, ctx) -> None:
    """out = op(ins...) with numpy broadcasting (ins: 2 for binary ops, 3 for where)."""
    n = out.numel()
    if not n:
        return
    shape = list(out.shape)
    dims, strides = runtime.coalesce(shape, *(runtime.broadcast_strides(x.shape, shape) for x in ins))
    while len(strides) < 3:
        strides.append([0] * len(dims))
    m = runtime.meta(runtime.padded(dims, *strides), ctx.device)
    c = ins[2] if len(ins) > 2 else ins[1]
    _nary[_grid(n)](ins[0], ins[1], c, out, m, n, OP=code, RANK=len(dims),
                    IS_FLOAT=out.dtype.is_floating_point, BLOCK=BLOCK)


def _binary_launcher(code: int):
    return lambda ins, out, attrs, ctx: nary(code, ins, out, ctx)


for _i, _name in enumerate(BINARY_OPS):
    register(_name)(_binary_launcher(_i))


@register("where")
def where(ins, out, attrs, ctx):
    nary(WHERE, ins, out, ctx)


@register("cast")
def cast(ins, out, attrs, ctx):
    n = out.numel()
    if n:
        _cast[_grid(n)](ins[0], out, n, BLOCK=BLOCK)

assert WHERE == 7 and BINARY_OPS[:7] == ("add", "sub", "mul", "div", "pow", "maximum", "minimum")
