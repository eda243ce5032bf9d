"""Triton kernels registered per op: op name -> launcher.

A launcher is ``fn(ins, out, attrs, ctx)``: ``ins`` are contiguous device tensors (the
op's inputs in declaration order), ``out`` the preallocated output (it may share bytes
with ``ins[0]`` when the planner placed the step in place), ``attrs`` the node's attrs
and ``ctx`` a runtime.Context. Launchers only enqueue kernels; nothing syncs.
"""
from __future__ import annotations

from typing import Callable, Iterable

from ...errors import BackendError
from ...ir.graph import Graph
from ...ops import registry as ops

Launcher = Callable[..., None]
KERNELS: dict[str, Launcher] = {}


def register(*names: str) -> Callable[[Launcher], Launcher]:
    """Decorator: ``@register("matmul")`` makes the function the Triton launcher of that op."""
    def deco(fn: Launcher) -> Launcher:
        for n in names:
            ops.get(n)  # only declared ops
            if n in KERNELS:
                raise BackendError(f"triton backend: op {n!r} registered twice")
            KERNELS[n] = fn
        return fn
    return deco


def get(name: str) -> Launcher:
    try:
        return KERNELS[name]
    except KeyError:
        raise BackendError(f"the triton backend has no kernel for op {name!r}") from None


def missing_ops(graph_or_ops: Graph | Iterable[str]) -> list[str]:
    """Ops a graph (or a list of op names) executes that this backend has no kernel for."""
    names = ({n.op for n in graph_or_ops.nodes} if isinstance(graph_or_ops, Graph) else set(graph_or_ops))
    return sorted(n for n in names if n not in KERNELS and not ops.get(n).has(ops.FOLD_ONLY))
