"""Fused kernels the passes produce: gated activations (SwiGLU/GeGLU) and rotary embedding."""
from __future__ import annotations

import triton
import triton.language as tl

from . import mathfn, runtime
from .registry import register

BLOCK = 1024


@triton.jit
def _gated(g, u, y, n, half, PACKED: tl.constexpr, ACT: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = idx < n
    if PACKED:  # gate and up are the two halves of each input row of 2*half
        src = (idx // half) * 2 * half + idx % half
        gate = tl.load(g + src, mask=m, other=0.0)
        up = tl.load(g + src + half, mask=m, other=0.0)
    else:
        gate = tl.load(g + idx, mask=m, other=0.0)
        up = tl.load(u + idx, mask=m, other=0.0)
    tl.store(y + idx, mathfn.act(gate, ACT) * up, mask=m)


@register("gated_act")
def gated_act(ins, out, attrs, ctx):
    n = out.numel()
    if not n:
        return
    packed = len(ins) == 1
    _gated[(triton.cdiv(n, BLOCK),)](ins[0], ins[0] if packed else ins[1], out, n, out.shape[-1],
                                     PACKED=packed, ACT=mathfn.ACT_CODES.index(attrs.act), BLOCK=BLOCK)


@triton.jit
def _rope(x, cos, sin, y, S, D, BLOCK_D: tl.constexpr):
    # One program per row of D; both halves are loaded before the store (in-place safe).
    row = tl.program_id(0).to(tl.int64)
    s = row % S
    half = D // 2
    d = tl.arange(0, BLOCK_D)
    m = d < D
    v = tl.load(x + row * D + d, mask=m, other=0.0)
    partner = tl.where(d < half, d + half, d - half)
    p = tl.load(x + row * D + partner, mask=m, other=0.0)
    rot = tl.where(d < half, -p, p)
    c = tl.load(cos + s * D + d, mask=m, other=0.0)
    sn = tl.load(sin + s * D + d, mask=m, other=0.0)
    tl.store(y + row * D + d, v * c + rot * sn, mask=m)


@register("rope")
def rope(ins, out, attrs, ctx):
    x, cos, sin = ins
    S, D = x.shape[-2], x.shape[-1]
    if out.numel():
        _rope[(out.numel() // D,)](x, cos, sin, out, S, D, BLOCK_D=runtime.block(D, 16, 1 << 14))
