"""The Kiln graph: named tensors connected by single-output compute nodes.

Inputs, constants (weights) and state (e.g. a KV cache) are tensors with no
producer. Every node is real compute with typed attrs (the op's frozen attrs
dataclass). Shapes may hold symbolic dims until a call binds them.
"""
from __future__ import annotations

import collections
import dataclasses
import types
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from ..core import dims, storage
from ..core.dims import Dim, fmt_shape
from ..core.dtypes import DTYPES, ITEMSIZE, from_numpy, np_dtype
from ..errors import KilnError
from .kv_cache import KVCacheInfo

INPUT, CONST, STATE, ACT = "input", "const", "state", "activation"
PLAIN = "plain"


@dataclass
class Tensor:
    name: str
    shape: tuple[Dim, ...]
    dtype: str
    kind: str = ACT
    # storage type (kiln/core/storage.py): "plain" is the dtype's own layout; any other row
    # (a quantized constant) keeps the logical shape and dtype and holds the table's bytes
    storage: str = PLAIN

    @property
    def nbytes(self) -> Dim:
        if self.storage != PLAIN:
            return storage.nbytes(self.storage, self.shape)
        return dims.numel(self.shape) * ITEMSIZE[self.dtype]

    @property
    def array_shape(self) -> tuple:
        """Shape of the numpy array holding the data: the logical shape, or for a stored
        tensor its rows of bytes [..., row_bytes] (uint8)."""
        if self.storage == PLAIN:
            return tuple(self.shape)
        return tuple(self.shape[:-1]) + (storage.get(self.storage).row_bytes(int(self.shape[-1])),)

    @property
    def array_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.storage != PLAIN else np_dtype(self.dtype)


@dataclass(eq=False)   # identity: the graph's use-def maps key on nodes
class Node:
    """One compute step. Read its fields freely; change ``inputs``/``output`` only through the
    Graph (``set_inputs``, ``replace_all_uses``, ``rename``), which keeps its use-def maps."""
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


class Graph:
    """Tensors by name, nodes in a topological order, and the use-def maps.

    The graph keeps, incrementally, which node produces each tensor and which nodes read
    it; every change to the nodes goes through the methods below (assigning ``nodes``
    rebuilds the maps). ``check_use_def`` compares them with a recomputation.
    """

    def __init__(self, tensors: Optional[dict[str, Tensor]] = None, nodes: Iterable[Node] = (),
                 inputs: Iterable[str] = (), outputs: Iterable[str] = (),
                 constants: Optional[dict[str, np.ndarray]] = None,
                 sym_sources: Optional[dict[str, tuple[str, int]]] = None,
                 sym_ranges: Optional[dict[str, tuple[int, int]]] = None,
                 kv_cache: Optional[KVCacheInfo] = None):
        self.tensors: dict[str, Tensor] = dict(tensors or {})
        self.inputs: list[str] = list(inputs)
        self.outputs: list[str] = list(outputs)
        self.constants: dict[str, np.ndarray] = dict(constants or {})  # weights and state initial values
        # symbol -> (input name, axis) that binds it at run time; kept for messages
        self.sym_sources: dict[str, tuple[str, int]] = dict(sym_sources or {})
        # symbol -> (min, max) the model was exported for
        self.sym_ranges: dict[str, tuple[int, int]] = dict(sym_ranges or {})
        self.kv_cache: Optional[KVCacheInfo] = kv_cache
        self.nodes = list(nodes)

    # -- the node list and its use-def maps ----------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """The nodes in a topological order. Read it; change it through the Graph's methods."""
        return self._nodes

    @nodes.setter
    def nodes(self, nodes: Iterable[Node]) -> None:
        self._nodes = list(nodes)
        self._producer: dict[str, Node] = {}
        self._users: dict[str, dict[Node, int]] = {}   # tensor -> reader -> times it reads it
        for n in self._nodes:
            self._link(n)

    def _link(self, n: Node) -> None:
        if n.output in self._producer:
            raise KilnError(f"tensor {n.output!r} has two producers")
        self._producer[n.output] = n
        for i in n.inputs:
            readers = self._users.setdefault(i, {})
            readers[n] = readers.get(n, 0) + 1

    def _unlink(self, n: Node) -> None:
        del self._producer[n.output]
        for i in n.inputs:
            readers = self._users[i]
            readers[n] -= 1
            if not readers[n]:
                del readers[n]
                if not readers:
                    del self._users[i]

    def producer(self, name: str) -> Optional[Node]:
        """The node computing ``name``; None for inputs, constants and state."""
        return self._producer.get(name)

    def producers(self) -> Mapping[str, Node]:
        """tensor -> the node computing it (a live read-only view; no copy)."""
        return types.MappingProxyType(self._producer)

    def users(self, name: str) -> list[Node]:
        """The nodes reading ``name``, each once."""
        return list(self._users.get(name, ()))

    def is_used(self, name: str) -> bool:
        """Whether a node reads ``name`` or it is a graph output."""
        return name in self._users or name in self.outputs

    def cone(self, name: str) -> tuple[list[Node], set[str]]:
        """The nodes that compute ``name`` (in graph order) and the leaf tensors they start from
        (inputs, state, constants, or ``name`` itself when nothing produces it)."""
        nodes, leaves, stack, seen = [], set(), [name], set()
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            p = self._producer.get(x)
            if p is None:
                leaves.add(x)
            else:
                nodes.append(p)
                stack.extend(p.inputs)
        order = {id(n): j for j, n in enumerate(self.nodes)}
        return sorted(nodes, key=lambda n: order[id(n)]), leaves

    def check_use_def(self) -> None:
        """Raise if the incremental maps differ from a recomputation (a change bypassed the Graph)."""
        fresh = Graph(nodes=self._nodes)
        if fresh._producer != self._producer or fresh._users != self._users:
            raise KilnError("graph use-def maps are out of date: a node was changed without the Graph")

    # -- building ---------------------------------------------------------------
    def add_input(self, name: str, shape, dtype: str) -> str:
        self._add_tensor(Tensor(name, tuple(shape), dtype, INPUT))
        self.inputs.append(name)
        return name

    def add_const(self, name: str, value: np.ndarray, kind: str = CONST) -> str:
        value = np.asarray(value, order="C")  # (ascontiguousarray would turn 0-d into 1-d)
        dtype = from_numpy(value.dtype)
        if value.dtype != np.dtype(dtype):
            value = value.astype(dtype)
        self._add_tensor(Tensor(name, tuple(int(d) for d in value.shape), dtype, kind))
        self.constants[name] = value
        return name

    def add_stored_const(self, name: str, raw: np.ndarray, shape, storage_type: str) -> str:
        """A float32 constant of logical ``shape`` held as ``storage_type`` bytes (uint8, kept as
        given: a memory map stays one). KilnError when the byte count is not the table's."""
        shape = tuple(int(d) for d in shape)
        want = storage.nbytes(storage_type, shape)
        raw = np.asarray(raw)
        if raw.dtype != np.uint8 or raw.nbytes != want:
            raise KilnError(f"constant {name!r}: {raw.nbytes} bytes of {raw.dtype} for {storage_type}"
                            f"{list(shape)}, which needs {want} uint8 bytes")
        self._add_tensor(Tensor(name, shape, "float32", CONST, storage_type))
        self.constants[name] = raw.reshape(shape[:-1] + (want // max(1, int(np.prod(shape[:-1], dtype=np.int64))),))
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
        self.insert_node(Node(op, inputs, out, attrs, source), index)
        return out

    def insert_node(self, node: Node, index: Optional[int] = None) -> Node:
        """Add an already built node (its output tensor must exist) at ``index`` (default: last)."""
        self._link(node)
        if index is None:
            self._nodes.append(node)
        else:
            self._nodes.insert(index, node)
        return node

    def remove_node(self, node: Node, *, drop_output: bool = True) -> None:
        """Take ``node`` out (and its output tensor unless ``drop_output``)."""
        self._unlink(node)
        self._nodes.remove(node)
        if drop_output:
            del self.tensors[node.output]

    def replace_node(self, old: Node, new: Node) -> None:
        """Put ``new`` in ``old``'s place in the order (same output name)."""
        self._unlink(old)
        self._link(new)
        self._nodes[self._nodes.index(old)] = new

    def set_inputs(self, node: Node, inputs: Iterable[str]) -> None:
        self._unlink(node)
        node.inputs = list(inputs)
        self._link(node)

    def replace_all_uses(self, old: str, new: str, *, outputs: bool = True) -> list[Node]:
        """Every read of ``old`` (and, with ``outputs``, the graph outputs) reads ``new`` instead.
        Returns the nodes changed."""
        readers = self.users(old)
        for n in readers:
            self.set_inputs(n, [new if i == old else i for i in n.inputs])
        if outputs:
            self.outputs = [new if o == old else o for o in self.outputs]
        return readers

    def rename(self, old: str, new: str) -> None:
        """Give tensor ``old`` the name ``new`` everywhere (producer, readers, inputs, outputs, metadata)."""
        if new in self.tensors:
            raise KilnError(f"cannot rename {old!r}: tensor {new!r} already exists")
        t = self.tensors.pop(old)
        self.tensors[new] = dataclasses.replace(t, name=new)
        if old in self.constants:
            self.constants[new] = self.constants.pop(old)
        node = self._producer.get(old)
        if node is not None:
            self._unlink(node)
            node.output = new
            self._link(node)
        self.replace_all_uses(old, new)
        self.inputs = [new if i == old else i for i in self.inputs]
        self.sym_sources = {s: ((new, ax) if src == old else (src, ax)) for s, (src, ax) in self.sym_sources.items()}
        if self.kv_cache is not None:
            self.kv_cache = self.kv_cache.renamed(old, new)

    def _add_tensor(self, t: Tensor) -> None:
        if t.name in self.tensors:
            raise ValueError(f"tensor {t.name!r} already exists")
        if t.dtype not in DTYPES:
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
                     self.inputs, self.outputs, self.constants, self.sym_sources, self.sym_ranges,
                     self.kv_cache)

    def remove_unused_tensors(self) -> None:
        used = set(self.inputs) | set(self.outputs) | set(self.state) | set(self._producer) | set(self._users)
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

