"""Linear algebra, normalization, reductions and attention ATen ops."""
from __future__ import annotations

import numpy as np

from ...core import dims
from .context import Ctx, kiln_dtype
from .handlers import handles


def _scaled(ctx: Ctx, t: str, factor) -> str:
    return t if factor == 1 else ctx.emit("mul", [t, ctx.scalar(float(factor), "float32")])


@handles("aten.linear.default")
def linear(ctx: Ctx, x, weight, bias=None):
    # nn.Linear stores W as [out, in]: that is matmul's transpose_b layout, not a transpose to absorb.
    out = ctx.emit("matmul", [ctx.tensor(x), ctx.tensor(weight)], {"transpose_b": True})
    return out if bias is None else ctx.emit("add", [out, ctx.tensor(bias)])


@handles("aten.mm.default", "aten.bmm.default")
def mm(ctx: Ctx, a, b):
    return ctx.emit("matmul", [ctx.tensor(a), ctx.tensor(b)])


@handles("aten.addmm.default", "aten.baddbmm.default")
def addmm(ctx: Ctx, bias, a, b, beta=1, alpha=1):
    out = _scaled(ctx, ctx.emit("matmul", [ctx.tensor(a), ctx.tensor(b)]), alpha)
    if beta == 0:
        return out
    return ctx.emit("add", [out, _scaled(ctx, ctx.tensor(bias), beta)])


@handles("aten.matmul.default")
def matmul(ctx: Ctx, a, b):
    ta, tb = ctx.tensor(a), ctx.tensor(b)
    ra, rb = ctx.rank(ta), ctx.rank(tb)
    if ra == 1:
        ta = ctx.reshape(ta, [1, ctx.shape(ta)[0]])
    if rb == 1:
        tb = ctx.reshape(tb, [ctx.shape(tb)[0], 1])
    out = ctx.emit("matmul", [ta, tb])
    shape = list(ctx.shape(out))
    if ra == 1:
        shape.pop(-2)
    if rb == 1:
        shape.pop(-1)
    return ctx.reshape(out, shape)


def _last_axes_norm(ctx: Ctx, op: str, x, normalized_shape, params, eps):
    t = ctx.tensor(x)
    shape = list(ctx.shape(t))
    k = len(normalized_shape)
    if k > 1:  # normalize over several trailing axes = one merged axis
        merged = dims.numel(shape[-k:])
        t = ctx.reshape(t, shape[:-k] + [merged])
        params = [ctx.reshape(p, [merged]) for p in params]
    out = ctx.emit(op, [t] + params, {"eps": float(eps)})
    return ctx.reshape(out, shape) if k > 1 else out


@handles("aten.layer_norm.default")
def layer_norm(ctx: Ctx, x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    t = ctx.tensor(x)
    params = [] if weight is None and bias is None else [
        ctx.tensor(weight) if weight is not None else ctx.const(np.ones(ctx.shape(t)[-1], np.float32), "ones"),
    ] + ([ctx.tensor(bias)] if bias is not None else [])
    return _last_axes_norm(ctx, "layer_norm", x, normalized_shape, params, eps)


@handles("aten.native_layer_norm.default")
def native_layer_norm(ctx: Ctx, x, normalized_shape, weight, bias, eps):
    # Only output 0 is supported; using mean/rstd raises when the getitem is converted.
    return [layer_norm(ctx, x, normalized_shape, weight, bias, eps), None, None]


@handles("aten.rms_norm.default")
def rms_norm(ctx: Ctx, x, normalized_shape, weight=None, eps=None):
    eps = float(np.finfo(np.float32).eps) if eps is None else eps
    params = [ctx.tensor(weight)] if weight is not None else []
    return _last_axes_norm(ctx, "rms_norm", x, normalized_shape, params, eps)


def _softmax_like(op):
    def handler(ctx: Ctx, x, dim, *rest):
        t = ctx.cast(ctx.tensor(x), "float32")
        return ctx.emit(op, [t], {"axis": ctx.axis(dim, t)})
    return handler


handles("aten.softmax.int", "aten._softmax.default", "aten.special_softmax.default")(_softmax_like("softmax"))
handles("aten.log_softmax.int", "aten._log_softmax.default")(_softmax_like("log_softmax"))


def _reduce(op):
    def handler(ctx: Ctx, x, dim=None, keepdim=False, dtype=None):
        t = ctx.tensor(x)
        if dtype is not None:
            t = ctx.cast(t, kiln_dtype(dtype))
        if ctx.rank(t) == 0:
            return t
        axes = range(ctx.rank(t)) if dim is None or (isinstance(dim, (list, tuple)) and not dim) else \
            (dim if isinstance(dim, (list, tuple)) else [dim])
        axes = tuple(sorted({ctx.axis(a, t) for a in axes}))
        if op == "mean" and ctx.dtype(t) != "float32":
            t = ctx.cast(t, "float32")
        return ctx.emit(op, [t], {"axes": axes, "keepdim": bool(keepdim)})
    return handler


handles("aten.mean.dim", "aten.mean.default")(_reduce("mean"))
handles("aten.sum.dim_IntList", "aten.sum.default")(_reduce("sum"))
handles("aten.amax.default")(_reduce("max"))


@handles("aten.max.dim")
def max_dim(ctx: Ctx, x, dim, keepdim=False):
    return [_reduce("max")(ctx, x, dim, keepdim), None]


@handles("aten.cumsum.default")
def cumsum(ctx: Ctx, x, dim, dtype=None):
    t = ctx.tensor(x)
    if dtype is not None:
        t = ctx.cast(t, kiln_dtype(dtype))
    return ctx.emit("cumsum", [t], {"axis": ctx.axis(dim, t)})


@handles("aten.scaled_dot_product_attention.default")
def sdpa(ctx: Ctx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    tq, tk, tv = ctx.tensor(q), ctx.tensor(k), ctx.tensor(v)
    if dropout_p:
        raise ctx.unsupported("attention dropout (call model.eval() before compiling)")
    rank = ctx.rank(tq)
    if rank != 4:  # attention over [..., S, D]: view leading dims as batch with one head
        lead = list(ctx.shape(tq))[:-2]
        tq, tk, tv = (ctx.reshape(t, [dims.numel(list(ctx.shape(t))[:-2]), 1] + list(ctx.shape(t))[-2:])
                      for t in (tq, tk, tv))
    hq, hk = ctx.shape(tq)[1], ctx.shape(tk)[1]
    if hq != hk and not enable_gqa:
        raise ctx.unsupported(f"{hq} query heads with {hk} key heads needs enable_gqa=True")
    ins = [tq, tk, tv]
    if attn_mask is not None:
        m = ctx.tensor(attn_mask)
        if rank != 4:
            m = ctx.reshape(m, [1] * (4 - min(ctx.rank(m), 2)) + list(ctx.shape(m))[-2:]) if ctx.rank(m) <= 2 else \
                ctx.reshape(m, [dims.numel(list(ctx.shape(m))[:-2]), 1] + list(ctx.shape(m))[-2:])
        ins.append(m)
    out = ctx.emit("attention", ins, {"causal": bool(is_causal), "scale": None if scale is None else float(scale)})
    if rank != 4:
        out = ctx.reshape(out, lead + list(ctx.shape(out))[-2:])
    return out

