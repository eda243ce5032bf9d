"""Reductions (sum, mean, max over a set of axes) and softmax / log_softmax over one axis."""
from __future__ import annotations

import triton
import triton.language as tl

from . import index, runtime
from .registry import register


@triton.jit
def _reduce(x, y, meta, n_red, scale, OP: tl.constexpr, KR: tl.constexpr, RR: tl.constexpr,
            IS_FLOAT: tl.constexpr, BLOCK: tl.constexpr):
    # One program per output element. meta rows: kept shape, kept strides, reduced shape, reduced strides.
    base = index.offset(tl.program_id(0).to(tl.int64), meta, 0, 1, KR)
    ty = y.dtype.element_ty
    if OP == 2:
        if IS_FLOAT:
            lowest = float("-inf")
        else:
            lowest = -9223372036854775807
        acc = tl.full([BLOCK], lowest, ty)
    else:
        acc = tl.zeros([BLOCK], dtype=ty)
    for start in range(0, n_red, BLOCK):
        r = start + tl.arange(0, BLOCK).to(tl.int64)
        m = r < n_red
        off = base + index.offset(r, meta, 2, 3, RR)
        if OP == 2:
            v = tl.load(x + off, mask=m, other=lowest)
            acc = tl.maximum(acc, v.to(ty), propagate_nan=tl.PropagateNan.ALL)
        else:
            acc += tl.load(x + off, mask=m, other=0).to(ty)
    if OP == 2:
        res = tl.max(acc, axis=0)
    else:
        res = tl.sum(acc, axis=0)
        if OP == 1:
            res = res * scale
    tl.store(y + tl.program_id(0), res)


def _reduce_launcher(code: int):
    def launch(ins, out, attrs, ctx):
        x = ins[0]
        shape = list(x.shape)
        strides = runtime.contiguous_strides(shape)
        kept = [i for i in range(len(shape)) if i not in attrs.axes]
        red = sorted(attrs.axes)
        kd, (ks,) = runtime.coalesce([shape[i] for i in kept], [strides[i] for i in kept])
        rd, (rs,) = runtime.coalesce([shape[i] for i in red], [strides[i] for i in red])
        n_red = 1
        for i in red:
            n_red *= shape[i]
        if out.numel() == 0:
            return
        if n_red == 0 and code == 2:
            raise runtime.BackendError("max over an empty axis")
        m = runtime.meta(runtime.padded(kd, ks, rd, rs), ctx.device)
        _reduce[(out.numel(),)](x, out, m, n_red, 1.0 / max(n_red, 1), OP=code, KR=len(kd), RR=len(rd),
                                IS_FLOAT=out.dtype.is_floating_point, BLOCK=runtime.block(n_red, 16, 1024))
    return launch


for _i, _name in enumerate(("sum", "mean", "max")):
    register(_name)(_reduce_launcher(_i))


@triton.jit
def _softmax(x, y, n, inner, LOG: tl.constexpr, BLOCK: tl.constexpr):
    # One program per (outer, inner) row of n elements at stride `inner`. Online max/sum in
    # one pass, then a pass that writes; each chunk is read before it is written (in-place safe).
    pid = tl.program_id(0).to(tl.int64)
    base = (pid // inner) * n * inner + pid % inner
    m_run = tl.full([BLOCK], float("-inf"), tl.float32)
    s_run = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(x + base + offs * inner, mask=offs < n, other=float("-inf"))
        m_new = tl.maximum(m_run, v)
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_run = s_run * tl.exp(m_run - safe) + tl.exp(v - safe)
        m_run = m_new
    mx = tl.max(m_run, axis=0)
    total = tl.sum(s_run * tl.exp(m_run - mx), axis=0)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mk = offs < n
        v = tl.load(x + base + offs * inner, mask=mk, other=0.0)
        if LOG:
            r = v - mx - tl.log(total)
        else:
            r = tl.exp(v - mx) / total
        tl.store(y + base + offs * inner, r, mask=mk)


def _softmax_launcher(log: bool):
    def launch(ins, out, attrs, ctx):
        shape = list(ins[0].shape)
        n = shape[attrs.axis]
        inner = 1
        for d in shape[attrs.axis + 1:]:
            inner *= d
        rows = out.numel() // max(n, 1)
        if out.numel():
            _softmax[(rows,)](ins[0], out, n, inner, LOG=log, BLOCK=runtime.block(n, 16, 1024))
    return launch


register("softmax")(_softmax_launcher(False))
register("log_softmax")(_softmax_launcher(True))
