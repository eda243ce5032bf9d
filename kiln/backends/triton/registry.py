"""Triton kernels registered per op on the ``triton`` Backend (device memory).

A launcher is ``fn(ins, out, attrs, ctx)``: ``ins`` are contiguous device tensors (the
op's inputs in declaration order), ``out`` the preallocated output (it may share bytes
with ``ins[0]`` when the planner placed the step in place), ``attrs`` the node's attrs
and ``ctx`` a runtime.Context. Launchers only enqueue kernels; nothing syncs. The
kernels need no planner scratch and take the node's attrs as they are (no lowering).
"""
from __future__ import annotations

from typing import Callable, Iterable

from ...ir.graph import Graph
from ...ops import registry as ops
from ..kernels import DEVICE, PLAIN, Backend

BACKEND = Backend("triton", memory=DEVICE, doc="Triton kernels on a GPU (or Triton's CPU interpreter)")
Launcher = Callable[..., None]


def register(*names: str, storage=PLAIN) -> Callable[[Launcher], Launcher]:
    """Decorator: ``@register("matmul")`` makes the function the Triton launcher of that op."""
    def deco(fn: Launcher) -> Launcher:
        for n in names:
            BACKEND.register(n, storage=storage, fn=fn)
        return fn
    return deco


def get(name: str) -> Launcher:
    """The launcher of ``name`` on plain storage (a BackendError naming the op if there is none)."""
    return BACKEND.kernel(name).fn


def missing_ops(graph_or_ops: Graph | Iterable[str]) -> list[str]:
    """Ops a graph (or a list of op names) executes that this backend has no kernel for."""
    if isinstance(graph_or_ops, Graph):
        return sorted({op for op, _ in BACKEND.missing(graph_or_ops)})
    return sorted(n for n in set(graph_or_ops) if BACKEND.find(n) is None and not ops.get(n).has(ops.FOLD_ONLY))
