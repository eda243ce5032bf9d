"""Elementwise ops: unary math, broadcast binary arithmetic, comparisons, where, cast."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.dtypes import np_dtype
from .registry import BINARY, COMMUTATIVE, ELEMENTWISE, FOLD_ONLY, INPLACE, UNARY, broadcast_shapes, declare
from ..errors import ShapeError


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 in float64 (|error| < 1.5e-7): exact enough for a float32 oracle
    # without pulling in scipy.
    x64 = x.astype(np.float64)
    s = np.sign(x64)
    a = np.abs(x64)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-a * a)
    return (s * y).astype(x.dtype)


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype)


def _gelu_erf(x):
    return (0.5 * x * (1.0 + _erf(x / np.float32(math.sqrt(2.0))))).astype(x.dtype)


def _gelu_tanh(x):
    c = np.float32(math.sqrt(2.0 / math.pi))
    return (0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))).astype(x.dtype)


UNARY_REFS = {
    "neg": np.negative,
    "abs": np.abs,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: (1.0 / np.sqrt(x)).astype(x.dtype),
    "reciprocal": lambda x: (1.0 / x).astype(x.dtype),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0).astype(x.dtype),
    "gelu": _gelu_erf,
    "gelu_tanh": _gelu_tanh,
    "silu": lambda x: (x * _sigmoid(x)).astype(x.dtype),
    "erf": _erf,
    "cos": np.cos,
    "sin": np.sin,
}


def _float_unary(ins, attrs):
    if ins[0].dtype != "float32":
        raise ShapeError(f"expects float32 input, got {ins[0].dtype}")
    return ins[0].shape, "float32"


def _unary_ref(fn):
    def ref(xs, attrs):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.asarray(fn(xs[0]), dtype=xs[0].dtype)
    return ref


for _name, _fn in UNARY_REFS.items():
    declare(_name, inputs=("x",), infer=_float_unary, ref=_unary_ref(_fn),
            props=(ELEMENTWISE, UNARY, INPLACE), doc=f"elementwise {_name}")


def _promote(a: str, b: str) -> str:
    for dt in ("float32", "int64", "int32", "bool"):
        if dt in (a, b):
            return dt
    return a


def _binary_infer(ins, attrs):
    a, b = ins
    return broadcast_shapes(a.shape, b.shape), _promote(a.dtype, b.dtype)


def _binary_ref(fn):
    def ref(xs, attrs):
        a, b = xs
        dt = np_dtype(_promote(_dt(a), _dt(b)))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.asarray(fn(a.astype(dt, copy=False), b.astype(dt, copy=False))).astype(dt, copy=False)
    return ref


def _dt(a) -> str:
    return "bool" if a.dtype == np.bool_ else str(a.dtype)


def _int_div(a, b):
    return np.true_divide(a, b).astype(a.dtype) if a.dtype.kind in "iub" else np.divide(a, b)


BINARY_REFS = {
    "add": (np.add, True),
    "sub": (np.subtract, False),
    "mul": (np.multiply, True),
    "div": (_int_div, False),
    "pow": (np.power, False),
    "maximum": (np.maximum, True),
    "minimum": (np.minimum, True),
}

for _name, (_fn, _comm) in BINARY_REFS.items():
    declare(_name, inputs=("a", "b"), infer=_binary_infer, ref=_binary_ref(_fn),
            props=(ELEMENTWISE, BINARY, INPLACE) + ((COMMUTATIVE,) if _comm else ()),
            doc=f"broadcast {_name}")


# Comparisons and boolean logic only ever build masks from shapes; they are folded away.
def _cmp_infer(ins, attrs):
    return broadcast_shapes(*(t.shape for t in ins)), "bool"


def _cmp_ref(fn):
    return lambda xs, attrs: np.asarray(fn(*xs), dtype=np.bool_)


COMPARE_REFS = {
    "eq": (np.equal, 2), "ne": (np.not_equal, 2), "lt": (np.less, 2), "le": (np.less_equal, 2),
    "gt": (np.greater, 2), "ge": (np.greater_equal, 2),
    "logical_and": (np.logical_and, 2), "logical_or": (np.logical_or, 2), "logical_not": (np.logical_not, 1),
}
for _name, (_fn, _n) in COMPARE_REFS.items():
    declare(_name, inputs=("a", "b")[:_n], infer=_cmp_infer, ref=_cmp_ref(_fn),
            props=(ELEMENTWISE, FOLD_ONLY), doc=f"{_name} (folded)")


def _where_infer(ins, attrs):
    c, a, b = ins
    if c.dtype != "bool":
        raise ShapeError(f"where: condition must be bool, got {c.dtype}")
    return broadcast_shapes(c.shape, a.shape, b.shape), _promote(a.dtype, b.dtype)


def _where_ref(xs, attrs):
    c, a, b = xs
    dt = np_dtype(_promote(_dt(a), _dt(b)))
    return np.where(c, a.astype(dt), b.astype(dt))


declare("where", inputs=("cond", "a", "b"), infer=_where_infer, ref=_where_ref, props=(ELEMENTWISE,),
        doc="select a where cond else b, with broadcasting")


@dataclass(frozen=True)
class CastAttrs:
    dtype: str


def _cast_infer(ins, attrs):
    return ins[0].shape, attrs.dtype


declare("cast", inputs=("x",), attrs=CastAttrs, infer=_cast_infer,
        ref=lambda xs, a: xs[0].astype(np_dtype(a.dtype)), props=(ELEMENTWISE,), doc="dtype conversion")
