"""One declaration per op.

An ``OpDef`` is the only place an op's facts live: input and attr schema,
shape/dtype inference (symbolic-aware), the numpy reference (oracle, constant
folder and fallback backend), alias and in-place eligibility, scratch size,
the C parameter struct, and property sets used by rewrite rules and the
planner. ``kiln.ops.codegen`` derives the C header from these declarations.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import KilnError, ShapeError
from .schema import check_attrs

# Property sets (match on membership, never on id ranges).
ELEMENTWISE = "elementwise"   # output[i] depends on inputs[i] only (after broadcast)
UNARY = "unary"
BINARY = "binary"
COMMUTATIVE = "commutative"
INPLACE = "inplace"           # output may overwrite input 0 when it dies here
ALIAS = "alias"               # output may share input 0's bytes (see OpDef.alias_offset)
MOVEMENT = "movement"
FOLD_ONLY = "fold_only"       # exists only to be constant-folded; never executed
FUSED = "fused"               # produced by passes, not by the frontend

MAX_DIMS = 8
MAX_INPUTS = 8


@dataclass(frozen=True)
class OpDef:
    name: str
    inputs: tuple[str, ...]                 # names; a trailing "?" marks an optional input
    infer: Callable                         # (list[Tensor], attrs) -> (shape, dtype)
    ref: Callable                           # (list[np.ndarray], attrs) -> np.ndarray
    attrs: Optional[type] = None            # frozen dataclass of typed attrs
    props: frozenset = frozenset()
    # offset (in elements) of the output inside input 0 when it can alias, else None:
    # (input shapes, output shape, attrs) -> Optional[int]
    alias_offset: Optional[Callable] = None
    scratch: Optional[Callable] = None      # (input shapes, output shape, attrs) -> bytes
    params: tuple[tuple[str, str], ...] = ()  # C params struct fields (name, "i64"|"f32"|"i64x8")
    c_params: Optional[Callable] = None     # (attrs, input shapes, output shape) -> {param: value}
    doc: str = ""

    # -- schema -----------------------------------------------------------------
    @property
    def min_inputs(self) -> int:
        return sum(1 for i in self.inputs if not i.endswith("?"))

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].endswith("*")

    def make_attrs(self, attrs: Any):
        if self.attrs is None:
            if attrs not in (None, {}):
                raise KilnError(f"op {self.name} takes no attrs, got {attrs!r}")
            return None
        if isinstance(attrs, self.attrs):
            return attrs
        attrs = check_attrs(self.name, self.attrs, attrs)  # types and ranges (kiln/ops/schema.py)
        try:
            return self.attrs(**(attrs or {}))
        except TypeError as e:
            raise KilnError(f"op {self.name}: bad attrs {attrs!r}: {e}") from None

    def check_arity(self, n: int) -> None:
        if self.variadic and 1 <= n <= MAX_INPUTS:
            return
        if not (self.min_inputs <= n <= len(self.inputs)):
            raise KilnError(f"op {self.name} takes inputs ({', '.join(self.inputs)}), got {n}")

    def has(self, prop: str) -> bool:
        return prop in self.props

    # -- facts for later stages --------------------------------------------------
    def scratch_bytes(self, in_shapes, out_shape, attrs) -> int:
        return int(self.scratch(in_shapes, out_shape, attrs)) if self.scratch else 0

    def param_values(self, attrs, in_shapes, out_shape) -> dict:
        """The values of the C params struct's fields for one call (default: the attrs of those names)."""
        if self.c_params is not None:
            return self.c_params(attrs, in_shapes, out_shape)
        return {name: getattr(attrs, name) for name, _ in self.params}

    def evaluate(self, arrays: Sequence[np.ndarray], attrs) -> np.ndarray:
        return self.ref(list(arrays), attrs)


REGISTRY: dict[str, OpDef] = {}


def declare(name: str, *, inputs: Sequence[str], infer: Callable, ref: Callable, attrs: Optional[type] = None,
            props: Sequence[str] = (), alias_offset=None, scratch=None, params=(), c_params=None, doc="") -> OpDef:
    if name in REGISTRY:
        raise KilnError(f"op {name!r} declared twice")
    if attrs is not None and not (dataclasses.is_dataclass(attrs) and attrs.__dataclass_params__.frozen):
        raise KilnError(f"op {name!r}: attrs must be a frozen dataclass")
    props = frozenset(props)
    if alias_offset is not None:
        props |= {ALIAS}
    opdef = OpDef(name, tuple(inputs), infer, ref, attrs, props, alias_offset, scratch, tuple(params), c_params, doc)
    REGISTRY[name] = opdef
    return opdef


def get(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KilnError(f"unknown op {name!r}; known ops: {', '.join(sorted(REGISTRY))}") from None


def ops_with(prop: str) -> list[str]:
    return sorted(n for n, d in REGISTRY.items() if prop in d.props)


def executable_ops() -> list[str]:
    """Ops with a C kernel, in the fixed order that defines their C ids."""
    return sorted(n for n, d in REGISTRY.items() if FOLD_ONLY not in d.props)


# -- shared inference helpers ----------------------------------------------------

def broadcast_shapes(*shapes) -> tuple:
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        size: Any = 1
        for s in shapes:
            k = axis - (rank - len(s))
            if k < 0:
                continue
            d = s[k]
            if d == 1:
                continue
            if size == 1:
                size = d
            elif d != size:
                raise ShapeError(f"shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast "
                                 f"(axis {axis}: {size} vs {d})")
        out.append(size)
    return tuple(out)


def norm_axis(axis: int, rank: int, op: str = "") -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ShapeError(f"{op}: axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


@dataclass(frozen=True)
class AxisAttrs:
    """Attrs of an op along one axis (softmax, log_softmax, cumsum, concat)."""
    axis: int


def same_as_first(ins, attrs):
    return ins[0].shape, ins[0].dtype

