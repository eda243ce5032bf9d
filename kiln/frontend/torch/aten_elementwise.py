"""Elementwise ATen ops → unary/binary/compare/where/cast ops."""
from __future__ import annotations

from .context import Ctx, kiln_dtype
from .handlers import handles

UNARY = {"neg": "neg", "abs": "abs", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt",
         "reciprocal": "reciprocal", "tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "silu": "silu",
         "erf": "erf", "cos": "cos", "sin": "sin"}


def _unary(op):
    def handler(ctx: Ctx, x):
        return ctx.emit(op, [ctx.cast(ctx.tensor(x), "float32")])
    return handler


for _aten, _op in UNARY.items():
    handles(f"aten.{_aten}.default")(_unary(_op))


@handles("aten.gelu.default")
def gelu(ctx: Ctx, x, approximate="none"):
    return ctx.emit("gelu_tanh" if approximate == "tanh" else "gelu", [ctx.tensor(x)])


def _operands(ctx: Ctx, a, b):
    """Tensor operands for a binary op; a Python scalar takes the other side's dtype (torch's rule)."""
    if isinstance(ctx.value(a), str):
        ta = ctx.tensor(a)
        tb = ctx.tensor(b, like=ta)
        if isinstance(ctx.value(b), float) and ctx.dtype(ta) != "float32":
            ta = ctx.cast(ta, "float32")
    else:
        tb = ctx.tensor(b)
        ta = ctx.tensor(a, like=tb)
        if isinstance(ctx.value(a), float) and ctx.dtype(tb) != "float32":
            tb = ctx.cast(tb, "float32")
    return ta, tb


def _binary(op):
    def handler(ctx: Ctx, a, b, alpha=1):
        ta, tb = _operands(ctx, a, b)
        if alpha != 1:
            tb = ctx.emit("mul", [tb, ctx.tensor(alpha, like=tb)])
        return ctx.emit(op, [ta, tb])
    return handler


for _op in ("add", "sub", "mul", "div"):
    handles(f"aten.{_op}.Tensor")(_binary(_op))
for _op in ("maximum", "minimum"):
    handles(f"aten.{_op}.default")(_binary(_op))


@handles("aten.rsub.Scalar")
def rsub(ctx: Ctx, a, b, alpha=1):
    return _binary("sub")(ctx, b, a) if alpha == 1 else _binary("sub")(ctx, b, ctx.emit(
        "mul", [ctx.tensor(a), ctx.tensor(alpha, like=ctx.tensor(a))]))


@handles("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor")
def pow_(ctx: Ctx, a, b):
    if isinstance(ctx.value(b), (int, float)) and not isinstance(ctx.value(b), bool):
        e = float(ctx.value(b))
        x = ctx.cast(ctx.tensor(a), "float32")
        return ctx.emit("pow", [x, ctx.scalar(e, "float32")])
    return ctx.emit("pow", list(_operands(ctx, a, b)))


@handles("aten.pow.Scalar")
def pow_scalar(ctx: Ctx, a, b):
    return ctx.emit("pow", [ctx.scalar(float(a), "float32"), ctx.cast(ctx.tensor(b), "float32")])


@handles("aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default")
def clamp(ctx: Ctx, x, min=None, max=None):
    name = ctx.node.target.__name__ if hasattr(ctx.node.target, "__name__") else str(ctx.node.target)
    if "clamp_max" in name:
        min, max = None, min
    out = ctx.tensor(x)
    if min is not None:
        out = ctx.emit("maximum", [out, ctx.tensor(min, like=out)])
    if max is not None:
        out = ctx.emit("minimum", [out, ctx.tensor(max, like=out)])
    return out


COMPARE = {"eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge"}
for _aten, _op in COMPARE.items():
    handles(f"aten.{_aten}.Tensor", f"aten.{_aten}.Scalar")(
        (lambda op: lambda ctx, a, b: ctx.emit(op, list(_operands(ctx, a, b))))(_op))


def _logical(op):
    def handler(ctx: Ctx, a, b):
        ta, tb = ctx.tensor(a), ctx.tensor(b)
        if ctx.dtype(ta) != "bool" or ctx.dtype(tb) != "bool":
            raise ctx.unsupported("bitwise ops on integers")
        return ctx.emit(op, [ta, tb])
    return handler


handles("aten.__and__.Tensor", "aten.bitwise_and.Tensor", "aten.logical_and.default")(_logical("logical_and"))
handles("aten.__or__.Tensor", "aten.bitwise_or.Tensor", "aten.logical_or.default")(_logical("logical_or"))


@handles("aten.logical_not.default", "aten.bitwise_not.default")
def logical_not(ctx: Ctx, a):
    ta = ctx.tensor(a)
    if ctx.dtype(ta) != "bool":
        raise ctx.unsupported("bitwise not on integers")
    return ctx.emit("logical_not", [ta])


@handles("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar")
def where(ctx: Ctx, cond, a, b):
    c = ctx.cast(ctx.tensor(cond), "bool")
    ta, tb = _operands(ctx, a, b)
    return ctx.emit("where", [c, ta, tb])


@handles("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def masked_fill(ctx: Ctx, x, mask, value):
    tx = ctx.tensor(x)
    fill = ctx.tensor(value, like=tx)
    if ctx.rank(fill) != 0:
        raise ctx.unsupported("masked_fill with a non-scalar value")
    return ctx.emit("where", [ctx.cast(ctx.tensor(mask), "bool"), fill, tx])


@handles("aten._to_copy.default")
def to_copy(ctx: Ctx, x, dtype=None, **kwargs):
    out = ctx.tensor(x)
    return out if dtype is None else ctx.cast(out, kiln_dtype(dtype, f"{ctx.where()}: "))


# The .to overloads torch.export keeps: the device and layout are the CPU's, only the dtype matters.
@handles("aten.to.dtype")
def to_dtype(ctx: Ctx, x, dtype, *flags, **kwargs):
    return to_copy(ctx, x, dtype=dtype)


@handles("aten.to.device")
def to_device(ctx: Ctx, x, device, dtype, *flags, **kwargs):
    return to_copy(ctx, x, dtype=dtype)


@handles("aten.to.dtype_layout")
def to_dtype_layout(ctx: Ctx, x, *, dtype=None, **kwargs):
    return to_copy(ctx, x, dtype=dtype)


@handles("aten.alias.default", "aten.clone.default", "aten.detach.default", "aten.contiguous.default",
         "aten.lift_fresh_copy.default", "aten.detach_.default")
def identity(ctx: Ctx, x, **kwargs):
    # Copies of immutable values are the values themselves (eval-mode dropout also arrives as clone).
    return ctx.tensor(x)


@handles("aten.type_as.default")
def type_as(ctx: Ctx, x, other):
    return ctx.cast(ctx.tensor(x), ctx.dtype(ctx.tensor(other)))


@handles("aten.native_dropout.default")
def native_dropout(ctx: Ctx, x, p, train):
    return [dropout(ctx, x, p, train), None]


@handles("aten.dropout.default")
def dropout(ctx: Ctx, x, p, train):
    if train:
        raise ctx.unsupported("training-mode dropout (call model.eval() before compiling)")
    return ctx.tensor(x)


@handles("aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
         "aten.sym_constrain_range_for_size.default")
def no_op(ctx: Ctx, *args, **kwargs):
    return None


@handles("aten.sym_size.int")
def sym_size(ctx: Ctx, x, dim):
    t = ctx.tensor(x)
    return ctx.shape(t)[ctx.axis(dim, t)]


