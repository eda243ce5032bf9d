"""Fold-only ops: tensors built from shapes (arange, full, masks, advanced indexing).

They exist so the frontend can emit what the model computes even when a size is
symbolic; they are folded once sizes are bound, and reaching an executor with
one is a validation error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.dtypes import np_dtype
from .registry import FOLD_ONLY, broadcast_shapes, declare
from ..errors import ShapeError
from ..core.dims import Dim


@dataclass(frozen=True)
class ArangeAttrs:
    start: Dim
    end: Dim
    step: int = 1
    dtype: str = "int64"


def _arange_len(a) -> Dim:
    n = a.end - a.start
    if isinstance(n, int):
        return max(0, -(-n // a.step))
    if a.step != 1:
        return (n + a.step - 1) // a.step
    return n


declare("arange", inputs=(), attrs=ArangeAttrs,
        infer=lambda ins, a: ((_arange_len(a),), a.dtype),
        ref=lambda xs, a: np.arange(int(a.start), int(a.end), a.step).astype(np_dtype(a.dtype)),
        props=(FOLD_ONLY,), doc="range of values (folded)")


@dataclass(frozen=True)
class FullAttrs:
    shape: tuple  # of Dim
    value: float
    dtype: str = "float32"


declare("full", inputs=(), attrs=FullAttrs, infer=lambda ins, a: (tuple(a.shape), a.dtype),
        ref=lambda xs, a: np.full(tuple(int(d) for d in a.shape), a.value, dtype=np_dtype(a.dtype)),
        props=(FOLD_ONLY,), doc="constant-filled tensor (folded)")


@dataclass(frozen=True)
class DiagonalAttrs:
    diagonal: int = 0


def _tri_infer(ins, a):
    if len(ins[0].shape) < 2:
        raise ShapeError("triu/tril need rank >= 2")
    return ins[0].shape, ins[0].dtype


declare("triu", inputs=("x",), attrs=DiagonalAttrs, infer=_tri_infer,
        ref=lambda xs, a: np.triu(xs[0], a.diagonal), props=(FOLD_ONLY,), doc="upper triangle (folded)")
declare("tril", inputs=("x",), attrs=DiagonalAttrs, infer=_tri_infer,
        ref=lambda xs, a: np.tril(xs[0], a.diagonal), props=(FOLD_ONLY,), doc="lower triangle (folded)")


@dataclass(frozen=True)
class IndexAttrs:
    axes: tuple[int, ...]  # which axes of x the index tensors (inputs 1..) index


def _index_infer(ins, a):
    x, idx = ins[0], ins[1:]
    if len(idx) != len(a.axes) or not idx:
        raise ShapeError(f"index: {len(idx)} index tensors for axes {list(a.axes)}")
    b = broadcast_shapes(*(t.shape for t in idx))
    axes = list(a.axes)
    rest = [d for i, d in enumerate(x.shape) if i not in axes]
    if axes == list(range(axes[0], axes[0] + len(axes))):
        first = axes[0]
        out = tuple(x.shape[:first]) + tuple(b) + tuple(x.shape[axes[-1] + 1:])
    else:
        out = tuple(b) + tuple(rest)
    return out, x.dtype


def _index_ref(xs, a):
    x = xs[0]
    key = [slice(None)] * x.ndim
    for ax, t in zip(a.axes, xs[1:]):
        key[ax] = t
    return np.ascontiguousarray(x[tuple(key)])


declare("index", inputs=("x", "indices*"), attrs=IndexAttrs, infer=_index_infer, ref=_index_ref,
        props=(FOLD_ONLY,), doc="advanced indexing with index tensors (folded)")
