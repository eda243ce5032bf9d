"""Bind symbolic dims to sizes: a static graph per call shape.

Besides substituting sizes, resolving folds the shape-built subgraphs that
could not be folded while sizes were symbolic (arange → comparisons → masks):
a node is folded here when all its inputs are constant and it is fold-only or
fed by something folded here. Weight-only subgraphs are folded once by the
passes, not per binding.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from ..errors import KilnError, ShapeError
from ..ops import registry
from ..core import dims
from ..core.dims import Sym
from .graph import ACT, CONST, Graph, Tensor


def resolve_value(v, binding: Mapping[str, int]):
    if isinstance(v, Sym):
        return v.evaluate(binding)
    if isinstance(v, tuple):
        return tuple(resolve_value(x, binding) for x in v)
    return v


def attr_symbols(attrs) -> set:
    """The symbols an op's attrs mention (e.g. a reshape to [1, s0, 12])."""
    out: set = set()
    if attrs is None:
        return out
    for f in dataclasses.fields(attrs):
        v = getattr(attrs, f.name)
        for x in (v if isinstance(v, tuple) else (v,)):
            if isinstance(x, Sym):
                out |= x.symbols
    return out


def resolve_attrs(attrs, binding: Mapping[str, int]):
    if attrs is None:
        return None
    changes = {}
    for f in dataclasses.fields(attrs):
        v = getattr(attrs, f.name)
        r = resolve_value(v, binding)
        if r is not v:
            changes[f.name] = r
    return dataclasses.replace(attrs, **changes) if changes else attrs


def resolve(graph: Graph, binding: Mapping[str, int]) -> Graph:
    out = Graph(inputs=list(graph.inputs), outputs=list(graph.outputs), constants=dict(graph.constants),
                sym_sources=graph.sym_sources, sym_ranges=graph.sym_ranges, kv_cache=graph.kv_cache)
    for name, t in graph.tensors.items():
        if t.kind != ACT:
            out.tensors[name] = Tensor(name, dims.resolve_shape(t.shape, binding), t.dtype, t.kind, t.storage)
    folded: set[str] = set()
    for node in graph.nodes:
        opdef = registry.get(node.op)
        attrs = resolve_attrs(node.attrs, binding)
        ins = [out.tensors[i] for i in node.inputs]
        try:
            shape, dtype = opdef.infer(ins, attrs)
        except KilnError as e:
            raise ShapeError(f"{node.output} = {node.op}(...) with sizes {dict(binding)}: {e}"
                             + (f"\n  at {node.source}" if node.source else "")) from None
        all_const = all(t.kind == CONST for t in ins)
        if all_const and (opdef.has(registry.FOLD_ONLY) or any(i in folded for i in node.inputs)):
            value = opdef.evaluate([out.constants[i] for i in node.inputs], attrs)
            out.tensors[node.output] = Tensor(node.output, tuple(value.shape), dtype, CONST)
            out.constants[node.output] = value
            folded.add(node.output)
            continue
        out.tensors[node.output] = Tensor(node.output, tuple(int(d) for d in shape), dtype, ACT)
        out.insert_node(dataclasses.replace(node, attrs=attrs, inputs=list(node.inputs)))
    out.remove_unused_tensors()
    return out
