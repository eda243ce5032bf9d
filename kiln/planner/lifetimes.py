"""Lifetimes and sharing: which tensors get their own buffer, which share one.

Walking the order once, each node's output is either
  * an alias of input 0 (the op declares ``alias_offset``): it lives inside input 0's
    bytes, wherever those are (arena buffer, weight, input, output slot);
  * written in place over input 0 (the op is INPLACE): allowed only when input 0 sits
    in an arena buffer whose every member dies at this step, with the same dtype and
    element count, and no other input of the node reads that buffer;
  * written into a state tensor's own slot (a ``writes_state`` op such as cache_write
    over a state): the new value persists; state.py orders the old value's readers first;
  * a graph output: it gets its own external slot, and is never an alias (the op's
    kernel then copies), so outputs never point into the arena or at a weight;
  * otherwise a fresh arena buffer.
A buffer lives from its first member's definition to the last use of any member; that
is why an alias of a live tensor keeps its base alive. Kernel scratch is a buffer of
its own, live for one step.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..core.dtypes import ITEMSIZE
from ..ir.graph import ACT, Graph, Node
from ..ops import registry
from .kinds import Loc, StepKind
from .state import writes_state



def alias_bytes(graph: Graph, node: Node) -> Optional[int]:
    """Byte offset of node's output inside input 0 if the op can alias it here, else None."""
    opdef = registry.get(node.op)
    if opdef.alias_offset is None or not node.inputs:
        return None
    src, out = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    if src.dtype != out.dtype:
        return None
    try:
        off = opdef.alias_offset([tuple(graph.tensors[i].shape) for i in node.inputs], tuple(out.shape), node.attrs)
    except Exception as e:  # noqa: BLE001 - a broken declaration costs memory, never correctness
        _warn_once(node.op, e)
        return None
    if off is None:
        return None
    off = int(off) * ITEMSIZE[src.dtype]  # declarations give elements of input 0
    if off < 0 or off + int(out.nbytes) > int(src.nbytes):
        return None
    return off


_WARNED: set[str] = set()


def _warn_once(op: str, e: Exception) -> None:
    if op not in _WARNED:
        _WARNED.add(op)
        warnings.warn(f"op {op}: alias_offset(in_shapes, out_shape, attrs) raised {type(e).__name__}: {e}; "
                      "planning it as a copy", RuntimeWarning, stacklevel=3)


@dataclass
class Buffer:
    """One arena allocation: `size` bytes live over steps [start, end]."""
    size: int
    start: int
    end: int
    members: list[str] = field(default_factory=list)
    scratch_step: Optional[int] = None   # set for kernel scratch


@dataclass
class Sharing:
    """The result of the walk: where every tensor lives relative to its buffer or slot."""
    loc: dict[str, Loc]                    # tensor -> its buffer or external slot, and offset
    buffers: list[Buffer]
    kinds: list[StepKind]
    scratch: list[Optional[int]]           # per step: buffer index of its scratch
    lifetimes: dict[str, tuple[int, int]]  # activation -> (def step, last use step)


def lifetimes(graph: Graph, order: list[int]) -> dict[str, tuple[int, int]]:
    """Def step and last-use step of every activation; graph outputs live to the end."""
    end = len(order)
    out: dict[str, tuple[int, int]] = {}
    for step, idx in enumerate(order):
        node = graph.nodes[idx]
        for i in node.inputs:
            if i in out:
                out[i] = (out[i][0], step)
        out[node.output] = (step, step)
    for o in graph.outputs:
        if o in out:
            out[o] = (out[o][0], end)
    return out


def share(graph: Graph, order: list[int], *, alias: bool = True, inplace: bool = True,
          scratch_rule: Optional[Callable[[Graph, Node], int]] = None) -> Sharing:
    """``scratch_rule(graph, node) -> bytes``: the chosen backend's kernel scratch (None: no scratch)."""
    life = lifetimes(graph, order)
    outputs = set(graph.outputs)
    loc: dict[str, Loc] = {}
    for name, t in graph.tensors.items():
        if t.kind != ACT or name in outputs:
            loc[name] = Loc(external=name)
    buffers: list[Buffer] = []
    kinds: list[StepKind] = []
    scratch: list[Optional[int]] = []

    def new_buffer(size: int, start: int, end: int, member: Optional[str]) -> int:
        buffers.append(Buffer(size, start, end, [member] if member else []))
        return len(buffers) - 1

    for step, idx in enumerate(order):
        node = graph.nodes[idx]
        out = node.output
        kind = StepKind.KERNEL
        if out not in outputs:
            off = alias_bytes(graph, node) if alias else None
            if writes_state(graph, node) is not None:
                loc[out] = loc[node.inputs[0]]  # into the state's own slot, so the value persists
                kind = StepKind.INPLACE
            elif off is not None:
                loc[out] = loc[node.inputs[0]].shifted(off)
                kind = StepKind.ALIAS
            elif inplace and _can_write_over(graph, node, step, loc, buffers):
                loc[out] = loc[node.inputs[0]]
                kind = StepKind.INPLACE
            if kind != StepKind.KERNEL and loc[out].in_arena:
                b = buffers[loc[out].buffer]
                b.members.append(out)
                b.end = max(b.end, life[out][1])  # an alias keeps its base alive
        if out not in loc:
            loc[out] = Loc(buffer=new_buffer(int(graph.tensors[out].nbytes), step, life[out][1], out))
        kinds.append(kind)
        nscratch = int(scratch_rule(graph, node)) if scratch_rule is not None else 0
        if nscratch > 0:
            s = new_buffer(nscratch, step, step, None)
            buffers[s].scratch_step = step
            scratch.append(s)
        else:
            scratch.append(None)
    return Sharing(loc, buffers, kinds, scratch, life)


def _can_write_over(graph: Graph, node: Node, step: int, loc, buffers: list[Buffer]) -> bool:
    opdef = registry.get(node.op)
    if not opdef.has(registry.INPLACE) or not node.inputs:
        return False
    src, out = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    if src.dtype != out.dtype or tuple(src.shape) != tuple(out.shape):
        return False  # (equal shapes: equal sizes and the kernel walks both the same way)
    src_loc = loc[node.inputs[0]]
    if not src_loc.in_arena:
        return False  # never over inputs, weights, state or graph outputs
    if buffers[src_loc.buffer].end != step:
        return False  # some tensor sharing these bytes is read later
    for other in node.inputs[1:]:
        if loc[other].same_bytes_owner(src_loc):
            # The kernel would read those bytes after writing some of them. The same tensor
            # again (x * x) is harmless for elementwise ops, which read index i before writing it.
            if not (other == node.inputs[0] and opdef.has(registry.ELEMENTWISE)):
                return False
    return True
