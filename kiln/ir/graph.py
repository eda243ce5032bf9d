"""The Kiln graph: named tensors connected by single-output compute nodes.

Inputs, constants (weights) and state (e.g. a KV cache) are tensors with no
producer. Every node is real compute with typed attrs (the op's frozen attrs
dataclass). Shapes may hold symbolic dims until a call binds them.
"""
from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from . import dims
from .dims import Dim, fmt_shape

DTYPES = ("float32", "int64", "int32", "bool")
ITEMSIZE = {"float32": 4, "int64": 8, "int32": 4, "bool": 1}

INPUT, CONST, STATE, ACT = "input", "const", "state", "activation"


@dataclass
class Tensor:
    name: str
    shape: tuple[Dim, ...]
    dtype: str
    kind: str = ACT

    @property
    def nbytes(self) -> Dim:
        return dims.numel(self.shape) * ITEMSIZE[self.dtype]


@dataclass
class Node:
    op: str
    inputs: list[str]
    output: str
    attrs: Any = None          # the op's attrs dataclass instance (or None)
    source: str = ""           # model source line (from the export stack trace)

    def __repr__(self) -> str:
        return f"{self.output} = {self.op}({', '.join(self.inputs)}){_fmt_attrs(self.attrs)}"


def _fmt_attrs(attrs) -> str:
    if attrs is None:
        return ""
    items = ", ".join(f"{f.name}={getattr(attrs, f.name)!r}" for f in dataclasses.fields(attrs))
    return f" {{{items}}}" if items else ""


@dataclass
class Graph:
    tensors: dict[str, Tensor] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # weights and state initial values
    # symbol -> (input name, axis) that binds it at run time; kept for messages
    sym_sources: dict[str, tuple[str, int]] = field(default_factory=dict)
    # symbol -> (min, max) the model was exported for
    sym_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    # -- building ---------------------------------------------------------------
    def add_input(self, name: str, shape, dtype: str) -> str:
        self._add_tensor(Tensor(name, tuple(shape), dtype, INPUT))
        self.inputs.append(name)
        return name

    def add_const(self, name: str, value: np.ndarray, kind: str = CONST) -> str:
        value = np.asarray(value, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
        dtype = _np_dtype_name(value.dtype)
        if value.dtype != np.dtype(dtype):
            value = value.astype(dtype)
        self._add_tensor(Tensor(name, tuple(int(d) for d in value.shape), dtype, kind))
        self.constants[name] = value
        return name

    def add_node(self, op: str, inputs: Iterable[str], attrs=None, *, name: Optional[str] = None,
                 source: str = "", index: Optional[int] = None) -> str:
        """Append (or insert at ``index``) a node; its output shape comes from the op's declaration."""
        from ..ops import registry
        inputs = list(inputs)
        opdef = registry.get(op)
        attrs = opdef.make_attrs(attrs)
        shape, dtype = opdef.infer([self.tensors[i] for i in inputs], attrs)
        out = self.fresh(name or op)
        self._add_tensor(Tensor(out, tuple(shape), dtype, ACT))
        node = Node(op, inputs, out, attrs, source)
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return out

    def _add_tensor(self, t: Tensor) -> None:
        if t.name in self.tensors:
            raise ValueError(f"tensor {t.name!r} already exists")
        if t.dtype not in DTYPES:
            from ..errors import KilnError
            raise KilnError(f"tensor {t.name!r}: dtype {t.dtype} is not supported (supported: {', '.join(DTYPES)})")
        self.tensors[t.name] = t

    def fresh(self, base: str) -> str:
        if base not in self.tensors:
            return base
        i = 1
        while f"{base}_{i}" in self.tensors:
            i += 1
        return f"{base}_{i}"

    # -- queries ----------------------------------------------------------------
    def producers(self) -> dict[str, Node]:
        return {n.output: n for n in self.nodes}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = collections.defaultdict(list)
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n)
        return out

    def is_const(self, name: str) -> bool:
        return self.tensors[name].kind == CONST

    @property
    def state(self) -> list[str]:
        return [n for n, t in self.tensors.items() if t.kind == STATE]

    @property
    def symbols(self) -> set[str]:
        out: set[str] = set()
        for t in self.tensors.values():
            out |= dims.symbols_of(t.shape)
        return out

    def copy(self) -> "Graph":
        return Graph(dict((k, dataclasses.replace(v)) for k, v in self.tensors.items()),
                     [dataclasses.replace(n, inputs=list(n.inputs)) for n in self.nodes],
                     list(self.inputs), list(self.outputs), dict(self.constants),
                     dict(self.sym_sources), dict(self.sym_ranges))

    def remove_unused_tensors(self) -> None:
        used = set(self.inputs) | set(self.outputs) | set(self.state)
        for n in self.nodes:
            used.add(n.output)
            used.update(n.inputs)
        for name in list(self.tensors):
            if name not in used:
                del self.tensors[name]
                self.constants.pop(name, None)

    # -- printing ---------------------------------------------------------------
    def param_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.constants.values())

    def op_histogram(self) -> dict[str, int]:
        return dict(collections.Counter(n.op for n in self.nodes).most_common())

    def summary(self) -> str:
        def sig(names):
            return ", ".join(f"{n}: {self.tensors[n].dtype}{fmt_shape(self.tensors[n].shape)}" for n in names)
        lines = [f"Graph: {len(self.nodes)} nodes, {len(self.constants)} constants "
                 f"({self.param_bytes() / 2**20:.2f} MiB)",
                 f"  inputs:  {sig(self.inputs)}",
                 f"  outputs: {sig(self.outputs)}"]
        if self.state:
            lines.append(f"  state:   {sig(self.state)}")
        lines.append("  ops:     " + ", ".join(f"{op}×{c}" for op, c in self.op_histogram().items()))
        return "\n".join(lines)

    def dump(self) -> str:
        lines = [self.summary(), ""]
        for n in self.nodes:
            t = self.tensors[n.output]
            lines.append(f"  {n.output}: {t.dtype}{fmt_shape(t.shape)} = {n.op}({', '.join(n.inputs)})"
                         f"{_fmt_attrs(n.attrs)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _np_dtype_name(dt) -> str:
    dt = np.dtype(dt)
    if dt == np.float64 or dt == np.float16:
        return "float32"
    if dt == np.bool_:
        return "bool"
    if dt.kind in "iu":
        return "int64" if dt.itemsize == 8 or dt.kind == "u" else ("int32" if dt.itemsize == 4 else "int64")
    return str(dt)
