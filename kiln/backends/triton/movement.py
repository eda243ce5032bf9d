"""Movement kernels: one strided copy (copy, reshape, permute, expand, slice, concat), the
row gathers (embedding, index_select), torch.gather, and the KV-cache write.

Most movement never runs: the planner turns reshapes and many slices/permutes into
aliases (views of the input's bytes). What does run is a copy whose source (and for
concat, destination) is read through element strides over the output shape.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import index, runtime
from .registry import register
from ...ops.shape import reshape_target  # noqa: F401  (documents where reshape's shape comes from)

BLOCK = 1024


@triton.jit
def _strided_copy(x, y, meta, n, x_base, y_base, RANK: tl.constexpr, BLOCK: tl.constexpr):
    # meta rows: shape, source strides, destination strides (elements)
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = idx < n
    xo = x_base + index.offset(idx, meta, 0, 1, RANK)
    yo = y_base + index.offset(idx, meta, 0, 2, RANK)
    tl.store(y + yo, tl.load(x + xo, mask=m), mask=m)


def strided_copy(x, y, shape, x_strides, y_strides, ctx, x_base: int = 0, y_base: int = 0) -> None:
    """y[y_base + sum(i*ys)] = x[x_base + sum(i*xs)] over every index i of `shape` (elements)."""
    n = 1
    for d in shape:
        n *= int(d)
    if n == 0:
        return
    dims, (xs, ys) = runtime.coalesce(list(shape), list(x_strides), list(y_strides))
    m = runtime.meta(runtime.padded(dims, xs, ys), ctx.device)
    _strided_copy[(triton.cdiv(n, BLOCK),)](x, y, m, n, x_base, y_base, RANK=len(dims), BLOCK=BLOCK)


def _flat_copy(ins, out, attrs, ctx):
    if out.data_ptr() != ins[0].data_ptr():
        strided_copy(ins[0], out, [out.numel()], [1], [1], ctx)


register("copy", "reshape")(_flat_copy)


@register("permute")
def permute(ins, out, attrs, ctx):
    src = runtime.contiguous_strides(ins[0].shape)
    strided_copy(ins[0], out, out.shape, [src[p] for p in attrs.perm], runtime.contiguous_strides(out.shape), ctx)


@register("expand")
def expand(ins, out, attrs, ctx):
    strided_copy(ins[0], out, out.shape, runtime.broadcast_strides(ins[0].shape, out.shape),
                 runtime.contiguous_strides(out.shape), ctx)


@register("slice")
def slice_(ins, out, attrs, ctx):
    x = ins[0]
    size = x.shape[attrs.axis]
    start = range(*slice(int(attrs.start), int(attrs.end), attrs.step).indices(size)).start
    xs = runtime.contiguous_strides(x.shape)
    base = start * xs[attrs.axis]
    xs[attrs.axis] *= attrs.step
    strided_copy(x, out, out.shape, xs, runtime.contiguous_strides(out.shape), ctx, x_base=base)


@register("concat")
def concat(ins, out, attrs, ctx):
    ys = runtime.contiguous_strides(out.shape)
    at = 0
    for x in ins:
        strided_copy(x, out, x.shape, runtime.contiguous_strides(x.shape), ys, ctx, y_base=at * ys[attrs.axis])
        at += x.shape[attrs.axis]


@triton.jit
def _take(x, idx, y, n_idx, N, inner, flag, code, BLOCK: tl.constexpr):
    # program (row, col block): y[o, j, :] = x[o, idx[j], :] over rows of `inner` elements
    row = tl.program_id(0).to(tl.int64)
    o = row // n_idx
    j = tl.load(idx + row % n_idx).to(tl.int64)
    j = tl.where(j < 0, j + N, j)
    tl.store(flag, code, mask=(j < 0) | (j >= N))
    col = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = col < inner
    j = j + col * 0
    ok = (j >= 0) & (j < N)
    j = tl.where(ok, j, 0)
    v = tl.load(x + (o * N + j) * inner + col, mask=m & ok, other=0)
    tl.store(y + row * inner + col, v, mask=m)


def take(x, idx, out, axis: int, ctx) -> None:
    shape = list(x.shape)
    inner = 1
    for d in shape[axis + 1:]:
        inner *= d
    n_idx = idx.numel()
    rows = out.numel() // max(inner, 1)
    if out.numel() == 0:
        return
    blk = runtime.block(inner, 16, BLOCK)
    _take[(rows, triton.cdiv(inner, blk))](x, idx, out, n_idx, shape[axis], inner, ctx.flag, ctx.code, BLOCK=blk)


@register("embedding")
def embedding(ins, out, attrs, ctx):
    take(ins[0], ins[1], out, 0, ctx)


@register("index_select")
def index_select(ins, out, attrs, ctx):
    take(ins[0], ins[1], out, attrs.axis, ctx)


@triton.jit
def _gather(x, idx, y, meta, n, N, flag, code, AXIS: tl.constexpr, RANK: tl.constexpr, BLOCK: tl.constexpr):
    # meta rows: index (= output) shape, x strides
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    j = tl.load(idx + i, mask=m, other=0).to(tl.int64)
    j = tl.where(j < 0, j + N, j)
    ok = (j >= 0) & (j < N)
    tl.store(flag + i * 0, code + i.to(tl.int32) * 0, mask=m & ((j < 0) | (j >= N)))
    j = tl.where(ok, j, 0)
    xo = i * 0
    rem = i
    for t in tl.static_range(RANK):
        d = RANK - 1 - t
        size = tl.load(meta + d)
        c = rem % size
        if d == AXIS:
            c = j
        xo += c * tl.load(meta + 8 + d)
        rem = rem // size
    tl.store(y + i, tl.load(x + xo, mask=m & ok, other=0), mask=m)


@register("gather")
def gather(ins, out, attrs, ctx):
    x, idx = ins
    n = out.numel()
    if n == 0:
        return
    m = runtime.meta(runtime.padded(idx.shape, runtime.contiguous_strides(x.shape)), ctx.device)
    _gather[(triton.cdiv(n, BLOCK),)](x, idx, out, m, n, x.shape[attrs.axis], ctx.flag, ctx.code,
                                      AXIS=attrs.axis, RANK=max(idx.dim(), 1), BLOCK=BLOCK)


@triton.jit
def _cache_write(new, cache, pos_ptr, n, S, L, D, flag, code, BLOCK: tl.constexpr):
    # new [B, H, S, D] into cache [B, H, L, D] at rows pos..pos+S
    pos = tl.load(pos_ptr)
    tl.store(flag, code, mask=(pos < 0) | (pos + S > L))
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    d = i % D
    s = (i // D) % S
    bh = i // (D * S)
    dst = pos + s
    ok = (dst >= 0) & (dst < L)
    tl.store(cache + (bh * L + dst) * D + d, tl.load(new + i, mask=m, other=0.0), mask=m & ok)


@register("cache_write")
def cache_write(ins, out, attrs, ctx):
    cache, new, pos = ins
    if out.data_ptr() != cache.data_ptr():  # planned in place over the state; a copy only when called alone
        strided_copy(cache, out, [cache.numel()], [1], [1], ctx)
    n = new.numel()
    if n:
        B, H, S, D = new.shape
        _cache_write[(triton.cdiv(n, BLOCK),)](new, out, pos, n, S, cache.shape[2], D, ctx.flag, ctx.code,
                                               BLOCK=BLOCK)
