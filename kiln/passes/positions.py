"""Positions computed from sizes alone, rewritten as ``arange(S) + c`` so the KV cache can move them.

The cache transform offsets ``arange(0, S)`` by the cache position. Some models compute the same
positions another way: OPT takes ``cumsum(attention_mask) - 1`` over an all-ones mask it makes
itself, then adds 2. Such a value depends only on constants and the sequence length; when it equals
``arange(S) + c`` (broadcast to its shape) at *every* length of the range, it is replaced by exactly
that, and the offset follows. Checked at every length, not sampled: each check is O(S) work.
"""
from __future__ import annotations

import numpy as np

from ..core import dims
from ..core.dims import Sym
from ..ir.graph import CONST, Graph
from ..ir.resolve import resolve_attrs
from ..ops import registry

INT_DTYPES = ("int64", "int32")


def positions_as_arange(g: Graph, seq: str) -> int:
    """Rewrite every size-only integer value read by runtime compute that equals arange(S) + c."""
    lo, hi = g.sym_ranges.get(seq, (1, 64))
    shape_only = _shape_only(g)
    rewritten = 0
    for node in list(g.nodes):
        t = g.tensors[node.output]
        if node.output not in shape_only or t.dtype not in INT_DTYPES or not _along(t.shape, seq):
            continue
        if all(_is_position_like(g, r.output, shape_only, seq) for r in g.users(node.output)):
            continue   # only the last integer value of the chain (the one the lookup reads) is rewritten
        sub = g.cone(node.output)[0]
        if any(n.op == "arange" for n in sub):
            continue   # already an arange: the cache transform offsets it directly
        offset = _arange_offset(g, sub, node.output, seq, lo, hi)
        if offset is None:
            continue
        _replace(g, node, seq, offset)
        rewritten += 1
    return rewritten


def _is_position_like(g: Graph, name: str, shape_only: set, seq: str) -> bool:
    t = g.tensors[name]
    return name in shape_only and t.dtype in INT_DTYPES and _along(t.shape, seq)


def _along(shape, seq: str) -> bool:
    symbolic = [d for d in shape if not isinstance(d, int)]
    return len(symbolic) == 1 and symbolic[0] == Sym.var(seq)


def _shape_only(g: Graph) -> set:
    """Tensors computed from constants and sizes alone (no input, no state)."""
    out = set()
    for n in g.nodes:
        if all(i in out or g.tensors[i].kind == CONST for i in n.inputs):
            out.add(n.output)
    return out


def _arange_offset(g, sub, name, seq, lo, hi):
    """c such that ``name`` == arange(n) + c at every n in [lo, hi], else None."""
    shape = g.tensors[name].shape
    axis = next(j for j, d in enumerate(shape) if not isinstance(d, int))
    offset = None
    for n in range(lo, hi + 1):
        values = {}
        binding = {seq: n}
        for node in sub:
            ins = [values[i] if i in values else g.constants[i] for i in node.inputs]
            values[node.output] = registry.get(node.op).evaluate(ins, resolve_attrs(node.attrs, binding))
        v = values[name]
        first = np.take(v, [0], axis=axis).reshape(-1)
        if first.size == 0:
            return None
        c = int(first[0])
        want = np.arange(n, dtype=np.int64) + c
        shaped = [1] * len(shape)
        shaped[axis] = n
        if offset not in (None, c) or \
                not np.array_equal(v, np.broadcast_to(want.reshape(shaped), dims.resolve_shape(shape, binding))):
            return None
        offset = c
    return offset


def _replace(g: Graph, node, seq: str, offset: int) -> None:
    t = g.tensors[node.output]
    axis = next(j for j, d in enumerate(t.shape) if not isinstance(d, int))
    index = g.nodes.index(node) + 1
    s = Sym.var(seq)
    base = g.fresh(f"{node.output}.positions")
    ar = g.add_node("arange", [], {"start": 0, "end": s, "step": 1, "dtype": t.dtype}, name=base,
                    source=node.source, index=index)
    shaped = tuple(s if j == axis else 1 for j in range(len(t.shape)))
    cur = g.add_node("reshape", [ar], {"shape": shaped}, name=f"{base}.view", source=node.source, index=index + 1)
    k = 2
    if shaped != tuple(t.shape):
        cur = g.add_node("expand", [cur], {"shape": tuple(t.shape)}, name=f"{base}.expand", source=node.source,
                         index=index + k)
        k += 1
    if offset:
        c = g.add_const(g.fresh(f"{base}.offset"), np.array(offset, dtype=np.dtype(t.dtype)))
        cur = g.add_node("add", [cur, c], name=f"{base}.add", source=node.source, index=index + k)
    g.replace_all_uses(node.output, cur)
