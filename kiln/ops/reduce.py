"""Reductions over a set of axes, and normalizations over the last axis."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .registry import FOLD_ONLY, INPLACE, AxisAttrs, declare, same_as_first
from ..errors import ShapeError


@dataclass(frozen=True)
class ReduceAttrs:
    axes: tuple[int, ...]
    keepdim: bool = False


def _reduce_infer(ins, a):
    shape = ins[0].shape
    if not a.axes or any(not 0 <= ax < len(shape) for ax in a.axes) or len(set(a.axes)) != len(a.axes):
        raise ShapeError(f"reduce axes {list(a.axes)} invalid for rank {len(shape)}")
    out = [1 if i in a.axes else d for i, d in enumerate(shape)] if a.keepdim else \
        [d for i, d in enumerate(shape) if i not in a.axes]
    dtype = ins[0].dtype if ins[0].dtype == "float32" else "int64"
    return tuple(out), dtype


def _axes_mask(a, ins, out):
    return {"axes_mask": sum(1 << ax for ax in a.axes)}


def _reduce_ref(fn):
    def ref(xs, a):
        x = xs[0]
        r = fn(x.astype(np.float64) if x.dtype == np.float32 else x, axis=a.axes, keepdims=a.keepdim)
        return np.asarray(r).astype(np.float32 if x.dtype == np.float32 else np.int64)
    return ref


for _name, _fn in (("sum", np.sum), ("mean", np.mean), ("max", np.max)):
    declare(_name, inputs=("x",), attrs=ReduceAttrs, infer=_reduce_infer, ref=_reduce_ref(_fn),
            params=(("axes_mask", "i64"),), c_params=_axes_mask, doc=f"{_name} over axes")


def _axis_infer(ins, a):
    if not 0 <= a.axis < len(ins[0].shape):
        raise ShapeError(f"axis {a.axis} out of range for rank {len(ins[0].shape)}")
    if ins[0].dtype != "float32":
        raise ShapeError(f"expects float32, got {ins[0].dtype}")
    return same_as_first(ins, a)


def _softmax(x, axis):
    x64 = x.astype(np.float64)
    e = np.exp(x64 - np.max(x64, axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def _log_softmax(x, axis):
    x64 = x.astype(np.float64)
    m = np.max(x64, axis=axis, keepdims=True)
    return (x64 - m - np.log(np.exp(x64 - m).sum(axis=axis, keepdims=True))).astype(np.float32)


declare("softmax", inputs=("x",), attrs=AxisAttrs, infer=_axis_infer, ref=lambda xs, a: _softmax(xs[0], a.axis),
        props=(INPLACE,), params=(("axis", "i64"),), doc="numerically stable softmax")
declare("log_softmax", inputs=("x",), attrs=AxisAttrs, infer=_axis_infer,
        ref=lambda xs, a: _log_softmax(xs[0], a.axis), props=(INPLACE,), params=(("axis", "i64"),),
        doc="log of softmax")


def _cumsum_infer(ins, a):
    if not 0 <= a.axis < len(ins[0].shape):
        raise ShapeError(f"axis {a.axis} out of range")
    return ins[0].shape, "int64" if ins[0].dtype in ("bool", "int32", "int64") else ins[0].dtype


declare("cumsum", inputs=("x",), attrs=AxisAttrs, infer=_cumsum_infer,
        ref=lambda xs, a: np.cumsum(xs[0], axis=a.axis).astype(
            np.int64 if xs[0].dtype.kind in "biu" else xs[0].dtype),
        props=(FOLD_ONLY,), doc="cumulative sum (mask building; folded)")


# -- normalizations (last axis) ---------------------------------------------------
@dataclass(frozen=True)
class NormAttrs:
    eps: float = 1e-5


def _norm_infer(ins, a):
    x = ins[0]
    if x.dtype != "float32":
        raise ShapeError(f"norm expects float32, got {x.dtype}")
    if not x.shape:
        raise ShapeError("norm needs an input of rank >= 1, got a scalar")
    for p in ins[1:]:
        if tuple(p.shape) != (x.shape[-1],):
            raise ShapeError(f"norm parameter shape {list(p.shape)} != [{x.shape[-1]}]")
    return x.shape, x.dtype


def _layer_norm_ref(xs, a):
    x = xs[0].astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + a.eps)
    if len(xs) > 1:
        y = y * xs[1]
    if len(xs) > 2:
        y = y + xs[2]
    return y.astype(np.float32)


def _rms_norm_ref(xs, a):
    x = xs[0].astype(np.float64)
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + a.eps)
    if len(xs) > 1:
        y = y * xs[1]
    return y.astype(np.float32)


declare("layer_norm", inputs=("x", "weight?", "bias?"), attrs=NormAttrs, infer=_norm_infer, ref=_layer_norm_ref,
        props=(INPLACE,), params=(("eps", "f32"),), doc="layer norm over the last axis")
declare("rms_norm", inputs=("x", "weight?"), attrs=NormAttrs, infer=_norm_infer, ref=_rms_norm_ref,
        props=(INPLACE,), params=(("eps", "f32"),), doc="RMS norm over the last axis")
