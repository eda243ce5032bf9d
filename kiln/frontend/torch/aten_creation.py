"""Tensor-creating ATen ops → fold-only ops (folded once sizes are known)."""
from __future__ import annotations



from .context import Ctx, kiln_dtype
from .handlers import handles


def _dtype(ctx: Ctx, dtype, default: str) -> str:
    return default if dtype is None else kiln_dtype(dtype, f"{ctx.where()}: ")


def _num(ctx: Ctx, v):
    return ctx.dim(v) if not isinstance(ctx.value(v), float) else ctx.value(v)


@handles("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def arange(ctx: Ctx, *args, dtype=None, **kwargs):
    vals = [_num(ctx, a) for a in args]
    start, end, step = (0, vals[0], 1) if len(vals) == 1 else (vals + [1])[:3]
    if any(isinstance(v, float) for v in (start, end, step)):
        if not all(isinstance(v, (int, float)) for v in (start, end, step)):
            raise ctx.unsupported("float arange with a symbolic bound")
        import numpy as np
        values = np.arange(start, end, step)
        return ctx.const(values.astype(_dtype(ctx, dtype, "float32")), "arange")
    out = ctx.emit("arange", [], {"start": start, "end": end, "step": int(step), "dtype": "int64"})
    return ctx.cast(out, _dtype(ctx, dtype, "int64"))


def _full(ctx: Ctx, size, value, dtype, default_dtype):
    shape = ctx.dims_of(size)
    v = ctx.value(value)
    dt = _dtype(ctx, dtype, default_dtype if default_dtype else
                ("bool" if isinstance(v, bool) else "int64" if isinstance(v, int) else "float32"))
    return ctx.emit("full", [], {"shape": tuple(shape), "value": float(v), "dtype": dt})


@handles("aten.full.default")
def full(ctx: Ctx, size, fill_value, *, dtype=None, **kwargs):
    return _full(ctx, size, fill_value, dtype, None)


@handles("aten.ones.default", "aten.zeros.default")
def ones_zeros(ctx: Ctx, size, *, dtype=None, **kwargs):
    value = 1.0 if "ones" in str(ctx.node.target) else 0.0
    return _full(ctx, size, value, dtype, "float32")


@handles("aten.new_ones.default", "aten.new_zeros.default", "aten.new_full.default", "aten.new_empty.default")
def new_full(ctx: Ctx, x, size, fill_value=None, *, dtype=None, **kwargs):
    name = str(ctx.node.target)
    value = 1.0 if "ones" in name else 0.0 if fill_value is None else fill_value
    return _full(ctx, size, value, dtype, ctx.dtype(ctx.tensor(x)))


@handles("aten.full_like.default", "aten.ones_like.default", "aten.zeros_like.default", "aten.empty_like.default")
def full_like(ctx: Ctx, x, fill_value=None, *, dtype=None, **kwargs):
    name = str(ctx.node.target)
    value = 1.0 if "ones" in name else 0.0 if fill_value is None else fill_value
    t = ctx.tensor(x)
    return _full(ctx, list(ctx.shape(t)), value, dtype, ctx.dtype(t))


@handles("aten.scalar_tensor.default")
def scalar_tensor(ctx: Ctx, value, *, dtype=None, **kwargs):
    return _full(ctx, [], value, dtype, "float32")


@handles("aten.triu.default", "aten.tril.default")
def tri(ctx: Ctx, x, diagonal=0):
    op = "triu" if "triu" in str(ctx.node.target) else "tril"
    return ctx.emit(op, [ctx.tensor(x)], {"diagonal": int(diagonal)})


@handles("aten.fill.Scalar")
def fill(ctx: Ctx, x, value):
    t = ctx.tensor(x)
    return _full(ctx, list(ctx.shape(t)), value, None, ctx.dtype(t))


@handles("aten.empty.memory_format")
def empty(ctx: Ctx, size, *, dtype=None, **kwargs):
    return _full(ctx, size, 0.0, dtype, "float32")


