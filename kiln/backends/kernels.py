"""Backends and their kernels: the open half of the op model.

An op's declaration (``kiln.ops.registry.OpDef``) holds what is true of the op on every
backend: schema, shape/dtype inference, the numpy reference, properties. Everything a
particular backend needs to run it is a ``Kernel`` that backend registers, keyed by
(op, input storage types): its launch function, how attrs lower to its parameters, and how
much scratch it wants. ``PLAIN`` ("any plain dtype": float32 activations and weights plus the
int64/bool inputs an op's schema takes) is the default key; other storage types register
kernels under their names in ``kiln.storage.STORAGE`` (``q8_0``, ``q4_k``, ``i8_row``, ...)
beside it. A tensor stored as ``f32`` counts as PLAIN.

Backends: ``c`` (the C kernels, host memory), ``numpy`` (every op's reference; host),
``triton`` (Triton kernels; device memory). ``get(name)`` imports a backend on first use, so
``import kiln`` never pulls torch or triton in.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from ..errors import BackendError, KilnError
from ..ir.graph import Graph, Node
from ..ops import registry as ops

PLAIN = "plain"       # the default storage type: a tensor of its declared dtype, no blocks
HOST, DEVICE = "host", "device"

Shapes = Sequence[tuple[int, ...]]


@dataclass(frozen=True)
class Kernel:
    """One backend's implementation of one op for one combination of input storage types.

    ``fn``: the backend's own callable (a Triton launcher, the numpy ref; None for C, whose
    kernels are found by op id in the generated table). ``params``: the backend's parameter
    fields ((name, kind) pairs; for C they become the params struct). ``lower(attrs, in_shapes,
    out_shape) -> {param: value}`` (default: the attrs of those names). ``scratch(in_shapes,
    out_shape, attrs) -> bytes`` of per-step workspace the planner places in the arena."""
    op: str
    storage: str | tuple[str, ...] = PLAIN
    fn: Any = None
    params: tuple[tuple[str, str], ...] = ()
    lower: Optional[Callable] = None
    scratch: Optional[Callable] = None

    def param_values(self, attrs, in_shapes: Shapes, out_shape) -> dict:
        if self.lower is not None:
            return self.lower(attrs, in_shapes, out_shape)
        return {name: getattr(attrs, name) for name, _ in self.params}

    def scratch_bytes(self, in_shapes: Shapes, out_shape, attrs) -> int:
        return int(self.scratch(in_shapes, out_shape, attrs)) if self.scratch else 0


def storage_of(graph: Graph, name: str) -> str:
    """A tensor's storage type: its ``storage`` name where the graph records one (block or int8
    weights), PLAIN for plain dtypes (no record, or ``f32``)."""
    st = getattr(graph.tensors[name], "storage", None)
    return PLAIN if st in (None, "", "f32", PLAIN) else st


def node_storages(graph: Graph, node: Node) -> tuple[str, ...]:
    return tuple(storage_of(graph, i) for i in node.inputs)


def _shapes(graph: Graph, node: Node) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    return ([tuple(int(d) for d in graph.tensors[i].shape) for i in node.inputs],
            tuple(int(d) for d in graph.tensors[node.output].shape))


class Backend:
    """A set of kernels and the memory space they work in (``HOST`` or ``DEVICE``)."""

    def __init__(self, name: str, memory: str = HOST, doc: str = ""):
        self.name = name
        self.memory = memory
        self.doc = doc
        self.kernels: dict[tuple[str, Any], Kernel] = {}
        # called before a session uses the backend: raises a BackendError saying what is missing
        # (a device, a built library); None when the backend is always usable once imported
        self.ready: Optional[Callable[[], None]] = None

    def register(self, op: str, *, storage: str | tuple[str, ...] = PLAIN, fn=None, params=(), lower=None,
                 scratch=None) -> Kernel:
        ops.get(op)  # only declared ops
        key = (op, storage)
        if key in self.kernels:
            raise BackendError(f"{self.name} backend: a kernel for op {op!r} on {storage} is registered twice")
        k = Kernel(op, storage, fn, tuple(params), lower, scratch)
        self.kernels[key] = k
        return k

    def find(self, op: str, storages: Sequence[str] = ()) -> Optional[Kernel]:
        """The kernel for these input storage types: an exact registration first, then PLAIN
        when every input is plain; None when there is none."""
        storages = tuple(storages)
        k = self.kernels.get((op, storages))
        if k is None and all(s == PLAIN for s in storages):
            k = self.kernels.get((op, PLAIN))
        return k

    def kernel(self, op: str, storages: Sequence[str] = ()) -> Kernel:
        k = self.find(op, storages)
        if k is None:
            raise BackendError(f"the {self.name} backend has no kernel for op {op!r} on inputs "
                               f"({', '.join(storages) or PLAIN})")
        return k

    def kernel_for(self, graph: Graph, node: Node) -> Kernel:
        return self.kernel(node.op, node_storages(graph, node))

    def missing(self, graph: Graph) -> list[tuple[str, tuple[str, ...]]]:
        """(op, input storage types) of every node this backend cannot run (fold-only ops never run)."""
        out = set()
        for n in graph.nodes:
            if ops.get(n.op).has(ops.FOLD_ONLY):
                continue
            st = node_storages(graph, n)
            if self.find(n.op, st) is None:
                out.add((n.op, st))
        return sorted(out)

    def check(self, graph: Graph) -> None:
        """Raise a BackendError naming every op (and its input storage types) without a kernel here."""
        missing = self.missing(graph)
        if missing:
            what = "; ".join(f"{op} on ({', '.join(st) or PLAIN})" for op, st in missing)
            raise BackendError(f"the {self.name} backend has no kernel for: {what}")

    def scratch_rule(self, graph: Graph, node: Node) -> int:
        """Bytes of scratch this backend's kernel wants for ``node`` (the planner's question)."""
        k = self.find(node.op, node_storages(graph, node))
        if k is None:
            return 0
        in_shapes, out_shape = _shapes(graph, node)
        return k.scratch_bytes(in_shapes, out_shape, node.attrs)

    def ops(self) -> list[str]:
        return sorted({op for op, _ in self.kernels})

    def __repr__(self) -> str:
        return f"<kiln backend {self.name} ({self.memory}, {len(self.kernels)} kernels)>"


class ReferenceBackend(Backend):
    """The numpy backend: every declared op's ``ref`` is its kernel, so it needs no registrations
    (a new op is runnable here the moment it is declared). A stored (block/int8) input only where
    the op declares one (kiln/ops/quant.py STORED_INPUTS): those refs decode it."""

    def find(self, op: str, storages: Sequence[str] = ()) -> Optional[Kernel]:
        from ..ops.quant import STORED_INPUTS
        k = super().find(op, storages)
        stored_ok = all(s == PLAIN or STORED_INPUTS.get(op) == i for i, s in enumerate(storages))
        if k is None and stored_ok and op in ops.REGISTRY:
            k = Kernel(op, PLAIN, fn=ops.REGISTRY[op].ref)
        return k


# name -> module defining BACKEND (imported on first use: triton needs torch and triton)
MODULES = {"c": "kiln.backends.c", "numpy": "kiln.backends.reference", "triton": "kiln.backends.triton"}
DEFAULT = "c"


def check_name(name: str) -> str:
    if name not in MODULES:
        raise KilnError(f"backend must be one of {', '.join(MODULES)}, got {name!r}")
    return name


def get(name: str) -> Backend:
    """The backend called ``name`` (importing it; a missing dependency is a BackendError saying what)."""
    return importlib.import_module(MODULES[check_name(name)]).BACKEND


def names() -> Iterable[str]:
    return list(MODULES)
