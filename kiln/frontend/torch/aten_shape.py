"""Movement ATen ops → reshape / permute / expand / slice / concat / gathers."""
from __future__ import annotations

import numpy as np

from ...core.dims import numel
from ...ops.shape import INT_MAX, reshape_target
from .context import Ctx
from .handlers import handles


@handles("aten.view.default", "aten._unsafe_view.default", "aten.view_copy.default", "aten.reshape.default")
def view(ctx: Ctx, x, shape):
    # Kiln values are immutable, so a view and a reshaping copy are the same value.
    t = ctx.tensor(x)
    return ctx.reshape(t, reshape_target(ctx.shape(t), ctx.dims_of(shape)))


@handles("aten.flatten.using_ints")
def flatten(ctx: Ctx, x, start_dim=0, end_dim=-1):
    t = ctx.tensor(x)
    shape = list(ctx.shape(t))
    if not shape:
        return ctx.reshape(t, [1])
    a, b = ctx.axis(start_dim, t), ctx.axis(end_dim, t)
    return ctx.reshape(t, shape[:a] + [numel(shape[a:b + 1])] + shape[b + 1:])


@handles("aten.unflatten.int")
def unflatten(ctx: Ctx, x, dim, sizes):
    t = ctx.tensor(x)
    shape = list(ctx.shape(t))
    a = ctx.axis(dim, t)
    inner = reshape_target((shape[a],), ctx.dims_of(sizes))  # resolves a -1 among sizes
    return ctx.reshape(t, shape[:a] + list(inner) + shape[a + 1:])


@handles("aten.unsqueeze.default")
def unsqueeze(ctx: Ctx, x, dim):
    t = ctx.tensor(x)
    shape = list(ctx.shape(t))
    dim = dim % (len(shape) + 1)
    return ctx.reshape(t, shape[:dim] + [1] + shape[dim:])


@handles("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def squeeze(ctx: Ctx, x, dim=None):
    t = ctx.tensor(x)
    shape = list(ctx.shape(t))
    axes = range(len(shape)) if dim is None else [ctx.axis(d, t) for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
    keep = [d for i, d in enumerate(shape) if not (i in axes and d == 1)]
    return ctx.reshape(t, keep)


def permute_to(ctx: Ctx, t: str, perm) -> str:
    perm = tuple(int(p) for p in perm)
    return t if perm == tuple(range(len(perm))) else ctx.emit("permute", [t], {"perm": perm})


@handles("aten.permute.default")
def permute(ctx: Ctx, x, dims_):
    t = ctx.tensor(x)
    return permute_to(ctx, t, [ctx.axis(d, t) for d in dims_])


@handles("aten.transpose.int")
def transpose(ctx: Ctx, x, dim0, dim1):
    t = ctx.tensor(x)
    perm = list(range(ctx.rank(t)))
    a, b = ctx.axis(dim0, t), ctx.axis(dim1, t)
    perm[a], perm[b] = perm[b], perm[a]
    return permute_to(ctx, t, perm)


@handles("aten.t.default")
def t_(ctx: Ctx, x):
    t = ctx.tensor(x)
    return permute_to(ctx, t, list(range(ctx.rank(t)))[::-1])


@handles("aten.expand.default")
def expand(ctx: Ctx, x, size, implicit=False):
    t = ctx.tensor(x)
    target = ctx.dims_of(size)
    if tuple(ctx.shape(t)) == tuple(target):
        return t
    return ctx.emit("expand", [t], {"shape": target})


@handles("aten.expand_as.default")
def expand_as(ctx: Ctx, x, other):
    return expand(ctx, x, list(ctx.shape(ctx.tensor(other))))


@handles("aten.repeat.default")
def repeat(ctx: Ctx, x, repeats):
    # repeat = insert a size-r axis before each dim, expand, merge.
    t = ctx.tensor(x)
    reps = ctx.dims_of(repeats)
    shape = [1] * (len(reps) - ctx.rank(t)) + list(ctx.shape(t))
    t = ctx.reshape(t, shape)
    inter, target, final = [], [], []
    for r, d in zip(reps, shape):
        inter += [1, d]
        target += [r, d]
        final.append(r * d)
    t = ctx.reshape(t, inter)
    if tuple(target) != tuple(inter):
        t = ctx.emit("expand", [t], {"shape": tuple(target)})
    return ctx.reshape(t, final)


@handles("aten.repeat_interleave.self_int")
def repeat_interleave(ctx: Ctx, x, repeats, dim=None, *, output_size=None):
    # Each element r times in a row along ``dim`` = a size-r axis after ``dim``, expanded, merged:
    # [..., d, ...] -> [..., d, 1, ...] -> [..., d, r, ...] -> [..., d*r, ...]. No op of its own.
    t = ctx.tensor(x)
    if dim is None:  # torch flattens first
        t, dim = ctx.reshape(t, [numel(ctx.shape(t))]), 0
    r = ctx.dim(repeats)
    shape = list(ctx.shape(t))
    a = ctx.axis(dim, t)
    t = ctx.reshape(t, shape[:a + 1] + [1] + shape[a + 1:])
    if not (isinstance(r, int) and r == 1):
        t = ctx.emit("expand", [t], {"shape": tuple(shape[:a + 1] + [r] + shape[a + 1:])})
    return ctx.reshape(t, shape[:a] + [shape[a] * r] + shape[a + 1:])


def slice_(ctx: Ctx, t: str, axis: int, start, end, step=1) -> str:
    size = ctx.shape(t)[axis]
    start = 0 if start is None else start
    end = INT_MAX if end is None else end
    start, end = _clamp(start, size), _clamp(end, size)
    if start == 0 and end == size and step == 1:
        return t
    return ctx.emit("slice", [t], {"axis": axis, "start": start, "end": end, "step": int(step)})


def _clamp(i, size):
    """Python slice semantics on a possibly symbolic size."""
    if isinstance(i, int):
        if i >= INT_MAX // 2 or (isinstance(size, int) and i >= size):
            return size
        if i < 0:
            return max(size + i, 0) if isinstance(size, int) else size + i
    return i


@handles("aten.slice.Tensor", "aten.slice_copy.Tensor")
def slice_tensor(ctx: Ctx, x, dim=0, start=None, end=None, step=1):
    t = ctx.tensor(x)
    return slice_(ctx, t, ctx.axis(dim, t),
                  None if start is None else ctx.dim(start), None if end is None else ctx.dim(end), step)


@handles("aten.narrow.default")
def narrow(ctx: Ctx, x, dim, start, length):
    t = ctx.tensor(x)
    axis = ctx.axis(dim, t)
    start = ctx.dim(start)
    if isinstance(start, int) and start < 0:
        start = ctx.shape(t)[axis] + start
    return slice_(ctx, t, axis, start, start + ctx.dim(length))


@handles("aten.select.int")
def select(ctx: Ctx, x, dim, index):
    t = ctx.tensor(x)
    axis = ctx.axis(dim, t)
    index = ctx.dim(index)
    size = ctx.shape(t)[axis]
    if isinstance(index, int) and index < 0:
        index = size + index
    s = ctx.emit("slice", [t], {"axis": axis, "start": index, "end": index + 1, "step": 1})
    shape = list(ctx.shape(t))
    return ctx.reshape(s, shape[:axis] + shape[axis + 1:])


def _split_sizes(ctx, t, axis, split_size):
    size = ctx.shape(t)[axis]
    if not isinstance(size, int):
        raise ctx.unsupported("split along a symbolic axis")
    return [min(split_size, size - i) for i in range(0, size, split_size)]


def _split(ctx: Ctx, t: str, axis: int, sizes) -> list[str]:
    outs, start = [], 0
    for s in sizes:
        outs.append(slice_(ctx, t, axis, start, start + s))
        start = start + s
    return outs


@handles("aten.split.Tensor", "aten.split_with_sizes.default")
def split(ctx: Ctx, x, split_size, dim=0):
    t = ctx.tensor(x)
    axis = ctx.axis(dim, t)
    sizes = ctx.dims_of(split_size) if isinstance(split_size, (list, tuple)) else \
        _split_sizes(ctx, t, axis, int(ctx.dim(split_size)))
    return _split(ctx, t, axis, sizes)


@handles("aten.chunk.default")
def chunk(ctx: Ctx, x, chunks, dim=0):
    # torch's rule: chunks of ceil(size / chunks), the last one smaller (so possibly fewer chunks).
    t = ctx.tensor(x)
    axis = ctx.axis(dim, t)
    size = ctx.shape(t)[axis]
    if not isinstance(size, int):
        raise ctx.unsupported("chunk along a symbolic axis")
    return _split(ctx, t, axis, _split_sizes(ctx, t, axis, max(-(-size // int(chunks)), 1)))


@handles("aten.unbind.int")
def unbind(ctx: Ctx, x, dim=0):
    t = ctx.tensor(x)
    axis = ctx.axis(dim, t)
    size = ctx.shape(t)[axis]
    if not isinstance(size, int):
        raise ctx.unsupported("unbind along a symbolic axis")
    return [select(ctx, x, axis, i) for i in range(size)]


@handles("aten.cat.default", "aten.concat.default")
def cat(ctx: Ctx, tensors, dim=0):
    ts = [ctx.tensor(x) for x in tensors]
    ts = [t for t in ts if not (ctx.rank(t) == 1 and ctx.shape(t)[0] == 0)]  # torch allows empty 1-d
    if len(ts) == 1:
        return ts[0]
    axis = ctx.axis(dim, ts[0])
    dtype = ts[0]
    ts = [ctx.cast(t, ctx.dtype(dtype)) for t in ts]
    return _concat_chunked(ctx, ts, axis)


def _concat_chunked(ctx, ts, axis):
    from ...ops.registry import MAX_INPUTS
    while len(ts) > MAX_INPUTS:
        ts = [ctx.emit("concat", ts[:MAX_INPUTS], {"axis": axis})] + ts[MAX_INPUTS:]
    return ctx.emit("concat", ts, {"axis": axis})


@handles("aten.stack.default")
def stack(ctx: Ctx, tensors, dim=0):
    ts = [ctx.tensor(x) for x in tensors]
    axis = dim % (ctx.rank(ts[0]) + 1)
    ts = [ctx.reshape(t, list(ctx.shape(t))[:axis] + [1] + list(ctx.shape(t))[axis:]) for t in ts]
    return ts[0] if len(ts) == 1 else _concat_chunked(ctx, ts, axis)


@handles("aten.index_select.default")
def index_select(ctx: Ctx, x, dim, index):
    t = ctx.tensor(x)
    return ctx.emit("index_select", [t, ctx.tensor(index)], {"axis": ctx.axis(dim, t)})


@handles("aten.gather.default")
def gather(ctx: Ctx, x, dim, index, sparse_grad=False):
    t = ctx.tensor(x)
    return ctx.emit("gather", [t, ctx.tensor(index)], {"axis": ctx.axis(dim, t)})


@handles("aten.embedding.default")
def embedding(ctx: Ctx, weight, ids, padding_idx=-1, scale_grad=False, sparse=False):
    return ctx.emit("embedding", [ctx.tensor(weight), ctx.tensor(ids)])


@handles("aten.index.Tensor")
def index(ctx: Ctx, x, indices):
    t = ctx.tensor(x)
    pairs = [(axis, ctx.tensor(i)) for axis, i in enumerate(indices) if i is not None]
    if any(ctx.dtype(i) == "bool" for _, i in pairs):
        raise ctx.unsupported("boolean-mask indexing (data-dependent shape)")
    if len(pairs) == 1 and ctx.rank(pairs[0][1]) == 1:
        # x[:, [2, 0, 1]]: a gather along one axis, whether the indices are constant or not
        axis, i = pairs[0]
        return ctx.emit("index_select", [t, _wrapped(ctx, i, ctx.shape(t)[axis])], {"axis": axis})
    if not _size_only(ctx, t):
        lowered = _index_as_gather(ctx, t, pairs)
        if lowered is not None:
            return lowered
    # Indices into values built from shapes (HF mask construction) are folded at resolve time.
    return ctx.emit("index", [t] + [i for _, i in pairs], {"axes": tuple(a for a, _ in pairs)})


def _size_only(ctx: Ctx, t: str) -> bool:
    """Whether ``t`` is computed from constants and sizes alone (then it folds per binding)."""
    return all(ctx.g.is_const(x) for x in ctx.g.cone(t)[1])


def _size_tensor(ctx: Ctx, d) -> str:
    if isinstance(d, int):
        return ctx.scalar(d, "int64")
    # a symbolic size as a 0-d tensor: the sum of d ones (folded once the size is bound)
    ones = ctx.emit("full", [], {"shape": (d,), "value": 1.0, "dtype": "int64"})
    return ctx.emit("sum", [ones], {"axes": (0,), "keepdim": False})


def _wrapped(ctx: Ctx, i: str, size) -> str:
    """Negative indices count from the end, as in torch."""
    if ctx.g.is_const(i):
        v = ctx.g.constants[i]
        if isinstance(size, int) and (v < 0).any():
            return ctx.const(np.where(v < 0, v + size, v).astype(v.dtype), "index")
        return i
    zero = ctx.scalar(0, ctx.dtype(i))
    return ctx.emit("where", [ctx.emit("lt", [i, zero]), ctx.emit("add", [i, _size_tensor(ctx, size)]), i])


def _index_as_gather(ctx: Ctx, t: str, pairs):
    """x[..., I0, I1, ...] on adjacent axes (indices broadcast to B) as one index_select over those
    axes flattened: flat = I0 * (d1 * d2 ...) + I1 * (d2 ...) + ...; the result has B in their place.
    None when the indexed axes are not adjacent (torch then moves B to the front)."""
    axes = [a for a, _ in pairs]
    a, k = axes[0], len(axes)
    if axes != list(range(a, a + k)) or any(ctx.dtype(i) != "int64" for _, i in pairs):
        return None
    shape = list(ctx.shape(t))
    sizes = shape[a:a + k]
    flat = None
    for j, (axis, i) in enumerate(pairs):
        i = _wrapped(ctx, i, sizes[j])
        stride = numel(sizes[j + 1:])
        term = i if (isinstance(stride, int) and stride == 1) else ctx.emit("mul", [i, _size_tensor(ctx, stride)])
        flat = term if flat is None else ctx.emit("add", [flat, term])
    bshape = list(ctx.shape(flat))
    xr = ctx.reshape(t, shape[:a] + [numel(sizes)] + shape[a + k:])
    picked = ctx.emit("index_select", [xr, ctx.reshape(flat, [numel(bshape)])], {"axis": a})
    return ctx.reshape(picked, shape[:a] + bshape + shape[a + k:])


@handles("aten.diff.default")
def diff(ctx: Ctx, x, n=1, dim=-1, prepend=None, append=None):
    t = ctx.tensor(x)
    axis = ctx.axis(dim, t)
    parts = ([ctx.tensor(prepend, like=t)] if prepend is not None else []) + [t] + \
            ([ctx.tensor(append, like=t)] if append is not None else [])
    if len(parts) > 1:
        t = ctx.emit("concat", parts, {"axis": axis})
    for _ in range(n):
        size = ctx.shape(t)[axis]
        hi = slice_(ctx, t, axis, 1, size)
        lo = slice_(ctx, t, axis, 0, size - 1)
        t = ctx.emit("sub", [hi, lo])
    return t

