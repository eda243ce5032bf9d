"""Declarative patterns over the Graph.

A pattern is a small tree (or DAG, through repeated capture names) of op
matchers. Leaves capture any tensor; predicates look at attrs, shapes and
constness. Commutative ops (by the op's COMMUTATIVE property) match their
two inputs in either order. A match yields captures (name -> tensor) and the
set of matched nodes.

    Op("mul", Any("x"), Op("sigmoid", Any("x")))      # x * sigmoid(x): one x, a DAG
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

import numpy as np

from ..ir.graph import CONST, Graph, Node
from ..ops import registry

Pred = Callable[["Match", str], bool]   # (match so far, tensor name) -> ok


@dataclass(frozen=True)
class Pattern:
    ops: Optional[frozenset] = None          # None: any tensor (leaf)
    inputs: Optional[tuple] = None           # sub-patterns; None: inputs not inspected
    name: Optional[str] = None               # capture name for the matched tensor
    attrs: tuple = ()                        # ((attr, value or predicate), ...)
    where: tuple = ()                        # extra predicates on the matched tensor
    const: Optional[bool] = None             # leaf must (not) be a constant
    variadic: bool = False                   # inputs pattern may match a prefix

    def __call__(self, name: str) -> "Pattern":
        return dataclasses.replace(self, name=name)

    def If(self, *preds: Pred) -> "Pattern":
        return dataclasses.replace(self, where=self.where + preds)

    def prefix(self) -> "Pattern":
        """Match when the node's first inputs match (e.g. a matmul with or without a bias)."""
        return dataclasses.replace(self, variadic=True)


def Op(op: Union[str, set, frozenset], *inputs: Pattern, name: Optional[str] = None, **attrs) -> Pattern:
    ops = frozenset([op]) if isinstance(op, str) else frozenset(op)
    for o in ops:
        registry.get(o)  # typos fail at declaration time
    return Pattern(ops, tuple(inputs) if inputs else None, name, tuple(sorted(attrs.items())))


def Any(name: Optional[str] = None) -> Pattern:
    return Pattern(name=name)


def Const(name: Optional[str] = None) -> Pattern:
    return Pattern(name=name, const=True)


def Scalar(name: Optional[str] = None, value: Optional[float] = None, tol: float = 1e-6) -> Pattern:
    """A constant with a single element (any rank), optionally of a given value.

    ``tol`` is relative to ``value``: 0 only matches an exact 0 (an epsilon is not zero)."""
    def pred(m: "Match", t: str) -> bool:
        v = m.graph.constants.get(t)
        if v is None or v.size != 1:
            return False
        if value is None:
            return True
        got = float(v.reshape(()))
        return got == value or abs(got - value) <= tol * abs(value)
    return Pattern(name=name, const=True, where=(pred,))


@dataclass
class Match:
    graph: Graph
    root: Node
    captures: dict = field(default_factory=dict)
    nodes: list = field(default_factory=list)      # matched nodes, root included

    def const(self, name: str) -> Optional[np.ndarray]:
        return self.graph.constants.get(self.captures[name])

    def node(self, tensor: str) -> Node:
        """The matched node computing ``tensor`` (a captured interior value or the root)."""
        for n in self.nodes:
            if n.output == tensor:
                return n
        raise KeyError(f"{tensor!r} is not computed by a node of this match")

    def shape(self, name: str) -> tuple:
        return self.graph.tensors[self.captures[name]].shape


class Matcher:
    def __init__(self, graph: Graph):
        self.graph = graph

    def match(self, pattern: Pattern, node: Node) -> Optional[Match]:
        for m in self._match(pattern, node.output, Match(self.graph, node)):
            return m
        return None

    # Generators, so commutative alternatives backtrack cleanly.
    def _match(self, p: Pattern, tensor: str, m: Match) -> Iterator[Match]:
        if p.name is not None and p.name in m.captures:
            if m.captures[p.name] != tensor:
                return
        t = self.graph.tensors[tensor]
        if p.const is not None and (t.kind == CONST) != p.const:
            return
        if p.ops is not None:
            node = self.graph.producer(tensor)
            if node is None or node.op not in p.ops:
                return
            for attr, want in p.attrs:
                have = getattr(node.attrs, attr, _MISSING)
                if have is _MISSING or (not want(have) if callable(want) else have != want):
                    return
        m2 = Match(m.graph, m.root, dict(m.captures), list(m.nodes))
        if p.name is not None:
            m2.captures[p.name] = tensor
        if not all(pred(m2, tensor) for pred in p.where):
            return
        if p.ops is None:
            yield m2
            return
        m2.nodes.append(node)
        if p.inputs is None:
            yield m2
            return
        if len(node.inputs) != len(p.inputs) and not (p.variadic and len(node.inputs) >= len(p.inputs)):
            return
        orders = [p.inputs]
        if len(p.inputs) == 2 and registry.get(node.op).has(registry.COMMUTATIVE):
            orders.append(p.inputs[::-1])
        for order in orders:
            yield from self._match_inputs(list(order), node.inputs[:len(order)], m2)

    def _match_inputs(self, pats: list, tensors: list, m: Match) -> Iterator[Match]:
        if not pats:
            yield m
            return
        for m2 in self._match(pats[0], tensors[0], m):
            yield from self._match_inputs(pats[1:], tensors[1:], m2)


_MISSING = object()
