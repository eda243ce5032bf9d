"""layer_norm and rms_norm over the last axis, with the optional fused weight (and bias)."""
from __future__ import annotations

import triton
import triton.language as tl

from . import runtime
from .registry import register


@triton.jit
def _norm(x, w, b, y, n, eps, RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
          BLOCK: tl.constexpr):
    # One program per row. Mean first, then the centred variance (two passes: stable for rows
    # with a large mean); the writing pass reads each chunk before writing it (in-place safe).
    row = x + tl.program_id(0).to(tl.int64) * n
    out = y + tl.program_id(0).to(tl.int64) * n
    mean = 0.0
    if not RMS:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(row + offs, mask=offs < n, other=0.0)
        mean = tl.sum(acc, axis=0) / n
    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(row + offs, mask=offs < n, other=0.0)
        v = tl.where(offs < n, v - mean, 0.0)
        acc2 += v * v
    inv = 1.0 / tl.sqrt(tl.sum(acc2, axis=0) / n + eps)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mk = offs < n
        v = (tl.load(row + offs, mask=mk, other=0.0) - mean) * inv
        if HAS_W:
            v = v * tl.load(w + offs, mask=mk, other=0.0)
        if HAS_B:
            v = v + tl.load(b + offs, mask=mk, other=0.0)
        tl.store(out + offs, v, mask=mk)


def _norm_launcher(rms: bool):
    def launch(ins, out, attrs, ctx):
        x = ins[0]
        n = x.shape[-1]
        if not out.numel():
            return
        w = ins[1] if len(ins) > 1 else x
        b = ins[2] if len(ins) > 2 else x
        _norm[(out.numel() // n,)](x, w, b, out, n, float(attrs.eps), RMS=rms, HAS_W=len(ins) > 1,
                                   HAS_B=len(ins) > 2, BLOCK=runtime.block(n, 16, 2048))
    return launch


register("layer_norm")(_norm_launcher(False))
register("rms_norm")(_norm_launcher(True))
