"""State shared by the ATen handlers while one exported program is converted."""
from __future__ import annotations

import operator
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ...errors import KilnError, ShapeError, UnsupportedOpError
from ...core.dims import Dim, Sym
from ...ir.graph import Graph

TORCH_DTYPES = {torch.float32: "float32", torch.int64: "int64", torch.int32: "int32", torch.bool: "bool"}
# Narrower or wider types are computed in float32/int64: Kiln runs fp32 inference.
WIDENED = {torch.float64: "float32", torch.float16: "float32", torch.bfloat16: "float32",
           torch.int16: "int64", torch.int8: "int64", torch.uint8: "int64"}


def kiln_dtype(dt: torch.dtype, where: str = "") -> str:
    if dt in TORCH_DTYPES:
        return TORCH_DTYPES[dt]
    if dt in WIDENED:
        return WIDENED[dt]
    raise KilnError(f"{where}dtype {dt} is not supported (Kiln runs float32 models)")


def sym_to_dim(expr) -> Dim:
    """A sympy size expression from torch.export → Kiln Dim."""
    import sympy
    if isinstance(expr, (int, np.integer)):
        return int(expr)
    if isinstance(expr, torch.SymInt):
        return sym_to_dim(expr.node.expr)
    if isinstance(expr, sympy.Integer):
        return int(expr)
    if isinstance(expr, sympy.Symbol):
        return Sym.var(expr.name)
    if isinstance(expr, sympy.Add):
        out: Dim = 0
        for a in expr.args:
            out = out + sym_to_dim(a)
        return out
    if isinstance(expr, sympy.Mul):
        out = 1
        for a in expr.args:
            out = out * sym_to_dim(a)
        return out
    if type(expr).__name__ == "FloorDiv":
        return sym_to_dim(expr.args[0]) // sym_to_dim(expr.args[1])
    raise ShapeError(f"symbolic size {expr} is not supported (only sums, products and exact division)")


def source_of(fx_node) -> str:
    """The model source line a node came from: the innermost frame of its stack trace."""
    trace = fx_node.meta.get("stack_trace") or ""
    lines = [ln for ln in trace.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith("File "):
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{lines[i].strip()}: {code}"
    return ""


class Ctx:
    def __init__(self, graph: Graph):
        self.g = graph
        self.env: dict[Any, Any] = {}   # fx node -> kiln tensor name | Dim | list
        self.node = None                # the fx node being converted (for names and sources)
        self._scalar_cache: dict[tuple, str] = {}
        self._sources: dict[Any, str] = {}   # fx node -> its source line (one parse per node, not per emit)

    # -- values -------------------------------------------------------------------
    def value(self, arg):
        if isinstance(arg, torch.fx.Node):
            if arg not in self.env:
                raise KilnError(f"value {arg.name} used before it was converted")
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return [self.value(a) for a in arg]
        return arg

    def tensor(self, arg, like: Optional[str] = None) -> str:
        """A Kiln tensor for an fx arg; Python scalars become 0-d constants typed like ``like``."""
        v = self.value(arg)
        if isinstance(v, str):
            return v
        if isinstance(v, (bool, int, float)):
            if isinstance(v, bool):
                dtype = "bool"
            elif isinstance(v, float):
                dtype = "float32"
            else:
                dtype = self.dtype(like) if like is not None and self.dtype(like) != "bool" else "int64"
            return self.scalar(v, dtype)
        if isinstance(v, Sym):
            raise ShapeError(f"{self.where()}: a symbolic size used as a tensor value is not supported")
        raise KilnError(f"{self.where()}: cannot use {v!r} as a tensor")

    def scalar(self, value, dtype: str) -> str:
        key = (dtype, value)
        if key not in self._scalar_cache:
            name = self.g.fresh(f"scalar_{dtype}")
            self._scalar_cache[key] = self.g.add_const(name, np.array(value, dtype=np.dtype(dtype if dtype != "bool" else np.bool_)))
        return self._scalar_cache[key]

    def const(self, array: np.ndarray, base: str = "const") -> str:
        return self.g.add_const(self.g.fresh(base), array)

    def dim(self, arg) -> Dim:
        v = self.value(arg)
        if isinstance(v, (int, Sym)) and not isinstance(v, bool):
            return v
        if isinstance(v, torch.SymInt):
            return sym_to_dim(v)
        raise KilnError(f"{self.where()}: expected a size, got {v!r}")

    def dims_of(self, arg) -> tuple:
        v = arg if isinstance(arg, (list, tuple)) else [arg]
        return tuple(self.dim(a) for a in v)

    def shape(self, name: str) -> tuple:
        return self.g.tensors[name].shape

    def rank(self, name: str) -> int:
        return len(self.g.tensors[name].shape)

    def dtype(self, name: str) -> str:
        return self.g.tensors[name].dtype

    def axis(self, axis: int, name: str) -> int:
        r = max(self.rank(name), 1)
        if not -r <= axis < r:
            raise ShapeError(f"{self.where()}: axis {axis} out of range for rank {self.rank(name)}")
        return axis % r

    # -- emitting -----------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[str], attrs=None) -> str:
        base = self.node.name if self.node is not None else op
        try:
            return self.g.add_node(op, inputs, attrs, name=base, source=self.source())
        except KilnError as e:
            raise type(e)(f"{self.where()}: {e}") from None

    def cast(self, name: str, dtype: str) -> str:
        return name if self.dtype(name) == dtype else self.emit("cast", [name], {"dtype": dtype})

    def reshape(self, name: str, shape) -> str:
        shape = tuple(shape)
        return name if tuple(self.shape(name)) == shape else self.emit("reshape", [name], {"shape": shape})

    # -- messages -----------------------------------------------------------------
    def source(self) -> str:
        if self.node is None:
            return ""
        src = self._sources.get(self.node)
        if src is None:
            src = self._sources[self.node] = source_of(self.node)
        return src

    def where(self) -> str:
        if self.node is None:
            return "export"
        return f"{self.node.target} (node {self.node.name})"

    def unsupported(self, why: str = "") -> UnsupportedOpError:
        src = self.source()
        return UnsupportedOpError(
            f"ATen op {self.node.target} is not supported by Kiln{': ' + why if why else ''}\n"
            f"  model source: {src or '(no stack trace recorded)'}\n"
            f"  see the supported ops with `kiln ops` or kiln.frontend.torch.supported_ops()")


SYM_OPS = {operator.add: operator.add, operator.sub: operator.sub, operator.mul: operator.mul,
           operator.floordiv: operator.floordiv, operator.neg: operator.neg}
