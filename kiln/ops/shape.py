"""Movement ops. Every Kiln tensor is contiguous, so a 'view' either aliases its
source's bytes (the planner decides, from ``alias_offset``) or is a copy kernel."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import registry
from .registry import MOVEMENT, AxisAttrs, declare
from ..errors import ShapeError, UnsupportedOpError
from ..core import dims
from ..core.dims import Dim

INT_MAX = 2**62


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


# -- reshape ---------------------------------------------------------------------
@dataclass(frozen=True)
class ReshapeAttrs:
    shape: tuple  # of Dim; may hold one -1


def reshape_target(src_shape, target) -> tuple:
    target = tuple(target)
    if target.count(-1) > 1:
        raise ShapeError(f"reshape to {list(target)}: more than one -1")
    if -1 in target:
        known = dims.numel([d for d in target if not (isinstance(d, int) and d == -1)])
        total = dims.numel(src_shape)
        rest = total // known if known != 0 else 0
        target = tuple(rest if (isinstance(d, int) and d == -1) else d for d in target)
    if dims.numel(target) != dims.numel(src_shape):
        raise ShapeError(f"cannot reshape {dims.fmt_shape(src_shape)} to {dims.fmt_shape(target)}")
    return target


declare("reshape", inputs=("x",), attrs=ReshapeAttrs,
        infer=lambda ins, a: (reshape_target(ins[0].shape, a.shape), ins[0].dtype),
        ref=lambda xs, a: xs[0].reshape(tuple(int(d) for d in reshape_target(xs[0].shape, a.shape))),
        props=(MOVEMENT,), alias_offset=lambda ins, out, a: 0, doc="view with a new shape")


declare("copy", inputs=("x",), infer=registry.same_as_first, ref=lambda xs, a: xs[0].copy(),
        props=(MOVEMENT,), doc="materialize a copy (used where an alias is impossible)")


# -- permute ---------------------------------------------------------------------
@dataclass(frozen=True)
class PermuteAttrs:
    perm: tuple[int, ...]


def _permute_infer(ins, a):
    shape = ins[0].shape
    if sorted(a.perm) != list(range(len(shape))):
        raise ShapeError(f"permute {list(a.perm)} is not a permutation of rank {len(shape)}")
    return tuple(shape[p] for p in a.perm), ins[0].dtype


def _permute_alias(ins, out, a):
    # Moving only size-1 axes keeps the element order: it is a reshape.
    moved = [p for p in a.perm if ins[0][p] != 1]
    return 0 if moved == sorted(moved) else None


declare("permute", inputs=("x",), attrs=PermuteAttrs, infer=_permute_infer,
        ref=lambda xs, a: np.ascontiguousarray(np.transpose(xs[0], a.perm)), props=(MOVEMENT,),
        alias_offset=_permute_alias, doc="general N-d axis permutation")


# -- expand ----------------------------------------------------------------------
@dataclass(frozen=True)
class ExpandAttrs:
    shape: tuple  # of Dim


def _expand_infer(ins, a):
    src = ins[0].shape
    if len(a.shape) < len(src):
        raise ShapeError(f"expand {dims.fmt_shape(src)} to fewer dims {dims.fmt_shape(a.shape)}")
    lead = len(a.shape) - len(src)
    out = []
    for i, d in enumerate(a.shape):
        s = src[i - lead] if i >= lead else 1
        if isinstance(d, int) and d == -1:
            d = s
        if s != 1 and s != d:
            raise ShapeError(f"cannot expand {dims.fmt_shape(src)} to {dims.fmt_shape(a.shape)}")
        out.append(d)
    return tuple(out), ins[0].dtype


declare("expand", inputs=("x",), attrs=ExpandAttrs, infer=_expand_infer,
        ref=lambda xs, a: np.ascontiguousarray(np.broadcast_to(
            xs[0], tuple(int(d) for d in _expand_infer([_T(xs[0])], a)[0]))),
        props=(MOVEMENT,), alias_offset=lambda ins, out, a: 0 if _prod(ins[0]) == _prod(out) else None,
        doc="broadcast to a larger shape (materialized)")


class _T:
    """Minimal tensor stand-in so refs can reuse infer functions."""
    def __init__(self, arr):
        self.shape = tuple(arr.shape)
        self.dtype = "bool" if arr.dtype == np.bool_ else str(arr.dtype)


# -- slice -----------------------------------------------------------------------
@dataclass(frozen=True)
class SliceAttrs:
    axis: int
    start: Dim
    end: Dim
    step: int = 1


def slice_len(size: Dim, start: Dim, end: Dim, step: int) -> Dim:
    if step < 1:
        raise ShapeError(f"slice step must be >= 1, got {step}")
    if isinstance(size, int) and isinstance(start, int) and isinstance(end, int):
        return len(range(*slice(start, end, step).indices(size)))
    n = end - start
    if step == 1:
        return n
    # ceil(n / step) of a symbolic n: exact when the coefficients divide (n = 2*s0, step 2);
    # otherwise the size needs a rounding division, which symbolic sizes do not have.
    for num in (n, n + step - 1):
        try:
            return num // step
        except ShapeError:
            pass
    raise UnsupportedOpError(f"slice with step {step} over a symbolic length {n}: the output length "
                             f"ceil(({n}) / {step}) is not a polynomial in the dims; make this axis static "
                             f"or its length a multiple of {step} (e.g. Dim('n') * {step})")


def _slice_infer(ins, a):
    shape = ins[0].shape
    if not 0 <= a.axis < len(shape):
        raise ShapeError(f"slice axis {a.axis} out of range for rank {len(shape)}")
    out = list(shape)
    out[a.axis] = slice_len(shape[a.axis], a.start, a.end, a.step)
    return tuple(out), ins[0].dtype


def _slice_alias(ins, out, a):
    shape = ins[0]
    if a.step != 1 and out[a.axis] > 1:
        return None
    if any(d != 1 for d in shape[:a.axis]):
        return None
    start = range(*slice(a.start, a.end, a.step).indices(shape[a.axis])).start
    return start * _prod(shape[a.axis + 1:])  # in elements; the planner scales by itemsize


def _slice_ref(xs, a):
    x = xs[0]
    idx = [slice(None)] * x.ndim
    idx[a.axis] = slice(int(a.start), int(a.end), a.step)
    return np.ascontiguousarray(x[tuple(idx)])


declare("slice", inputs=("x",), attrs=SliceAttrs, infer=_slice_infer, ref=_slice_ref, props=(MOVEMENT,),
        alias_offset=_slice_alias,
        doc="strided slice along one axis")


# -- concat ----------------------------------------------------------------------

def _check_axis(axis: int, rank: int, op: str) -> None:
    # axes reach C as given (frontends normalize), so a negative or too-large one is refused here
    if not 0 <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} out of range for rank {rank}")


def _concat_infer(ins, a):
    first = ins[0].shape
    _check_axis(a.axis, len(first), "concat")
    total: Dim = 0
    for t in ins:
        if len(t.shape) != len(first) or any(t.shape[i] != first[i] for i in range(len(first)) if i != a.axis):
            raise ShapeError(f"concat axis {a.axis}: shapes {[list(t.shape) for t in ins]} differ off-axis")
        if t.dtype != ins[0].dtype:
            raise ShapeError(f"concat of mixed dtypes {[t.dtype for t in ins]}")
        total = total + t.shape[a.axis]
    out = list(first)
    out[a.axis] = total
    return tuple(out), ins[0].dtype


declare("concat", inputs=("xs*",), attrs=AxisAttrs, infer=_concat_infer,
        ref=lambda xs, a: np.concatenate(xs, axis=a.axis), props=(MOVEMENT,),
        doc="concatenate along an axis")


# -- gathers ---------------------------------------------------------------------
def _index_check(idx, op):
    if idx.dtype not in ("int64", "int32"):
        raise ShapeError(f"{op}: indices must be int64/int32, got {idx.dtype}")


def _embedding_infer(ins, a):
    w, ids = ins
    _index_check(ids, "embedding")
    if len(w.shape) != 2:
        raise ShapeError(f"embedding table must be 2-D, got {list(w.shape)}")
    if getattr(w, "storage", "plain") not in ("plain", "f32", "f32_p16"):
        raise ShapeError(f"embedding: table {w.name!r} in storage {w.storage} (qembedding reads block storage)")
    return tuple(ids.shape) + (w.shape[1],), w.dtype


def _checked_take(table, idx, axis, op):
    n = table.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise ShapeError(f"{op}: index out of range [0, {n}) (got {int(idx.min())}..{int(idx.max())})")
    return np.take(table, np.where(idx < 0, idx + n, idx), axis=axis)


def _embedding_ref(xs, a):
    table = xs[0]
    if table.dtype == np.uint8:   # a table packed for the GEMM (tied to an LM head): its bytes [V, 4D]
        from ..core import storage
        table = storage.get("f32_p16").dequantize(table, (table.shape[0], table.shape[1] // 4))
    return _checked_take(table, xs[1], 0, "embedding")


declare("embedding", inputs=("weight", "ids"), infer=_embedding_infer, ref=_embedding_ref,
        doc="rows of a table by id (the table plain, or packed f32_p16 when an LM head shares it)")


def _index_select_infer(ins, a):
    x, idx = ins
    _index_check(idx, "index_select")
    if len(idx.shape) != 1:
        raise ShapeError(f"index_select indices must be 1-D, got {list(idx.shape)}")
    _check_axis(a.axis, len(x.shape), "index_select")
    out = list(x.shape)
    out[a.axis] = idx.shape[0]
    return tuple(out), x.dtype


declare("index_select", inputs=("x", "index"), attrs=AxisAttrs, infer=_index_select_infer,
        ref=lambda xs, a: _checked_take(xs[0], xs[1], a.axis, "index_select"),
        doc="select entries along an axis by a 1-D index")


def _gather_infer(ins, a):
    x, idx = ins
    _index_check(idx, "gather")
    if len(idx.shape) != len(x.shape):
        raise ShapeError(f"gather index rank {len(idx.shape)} != input rank {len(x.shape)}")
    _check_axis(a.axis, len(x.shape), "gather")
    for d, (n, m) in enumerate(zip(idx.shape, x.shape)):  # torch.gather: index.size(d) <= input.size(d)
        if d != a.axis and isinstance(n, int) and isinstance(m, int) and n > m:
            raise ShapeError(f"gather: index shape {list(idx.shape)} exceeds input shape {list(x.shape)} on axis {d}")
    return tuple(idx.shape), x.dtype


def _gather_ref(xs, a):
    x, idx = xs
    n = x.shape[a.axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise ShapeError(f"gather: index out of range [0, {n})")
    # torch.gather lets the index be smaller than x off the axis; numpy needs equal sizes there
    x = x[tuple(slice(None) if d == a.axis else slice(0, m) for d, m in enumerate(idx.shape))]
    return np.take_along_axis(x, np.where(idx < 0, idx + n, idx), axis=a.axis)


declare("gather", inputs=("x", "index"), attrs=AxisAttrs, infer=_gather_infer, ref=_gather_ref,
        doc="torch.gather along an axis")
