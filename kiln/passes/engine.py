"""One rewrite engine for every pass: rules applied to a fixed point, by priority.

The engine, not the rules, owns safety: a match whose interior value is read
outside the match (or is a graph output) is refused, the replacement must
have the replaced value's shape and dtype, graph outputs keep their names,
and dead nodes are removed after each change.
"""
from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np

from ..errors import KilnError
from ..ir.graph import ACT, Graph, Node
from .pattern import Match, Matcher, Pattern


@dataclass(frozen=True)
class Rule:
    """``build(b, **captures)`` returns the replacement tensor name, or None to decline."""
    name: str
    pattern: Pattern
    build: Callable
    priority: int = 0   # higher tries first at the same root


class RuleSet:
    def __init__(self, rules: Iterable[Rule] = ()):
        self.rules = sorted(rules, key=lambda r: -r.priority)
        self.by_root: dict[str, list[Rule]] = collections.defaultdict(list)
        for r in self.rules:
            for op in r.pattern.ops or ():
                self.by_root[op].append(r)

    def __add__(self, other: "RuleSet") -> "RuleSet":
        return RuleSet(self.rules + other.rules)

    def __iter__(self):
        return iter(self.rules)


class Builder:
    """Emits replacement nodes just before the matched root, so topological order holds."""

    def __init__(self, graph: Graph, match: Match):
        self.graph = graph
        self.match = match
        self.index = graph.nodes.index(match.root)
        self.source = match.root.source
        self.added: list[Node] = []
        self.added_consts: list[str] = []

    def op(self, op: str, inputs: list[str], attrs=None, *, name: Optional[str] = None) -> str:
        out = self.graph.add_node(op, inputs, attrs, name=name or op, source=self.source, index=self.index)
        self.added.append(self.graph.nodes[self.index])
        self.index += 1
        return out

    def const(self, value: np.ndarray, base: str = "const") -> str:
        name = self.graph.add_const(self.graph.fresh(base), value)
        self.added_consts.append(name)
        return name

    def shape(self, t: str) -> tuple:
        return self.graph.tensors[t].shape

    def dtype(self, t: str) -> str:
        return self.graph.tensors[t].dtype

    def value(self, t: str) -> Optional[np.ndarray]:
        return self.graph.constants.get(t)

    def rollback(self) -> None:
        for n in self.added:
            self.graph.nodes.remove(n)
            del self.graph.tensors[n.output]
        for c in self.added_consts:
            del self.graph.tensors[c]
            del self.graph.constants[c]


def rewrite(graph: Graph, rules: RuleSet, *, max_rounds: int = 50) -> dict[str, int]:
    """Apply ``rules`` until none fires. Mutates ``graph``; returns fire counts per rule."""
    fired: dict[str, int] = collections.Counter()
    for _ in range(max_rounds):
        if not _one_round(graph, rules, fired):
            return dict(fired)
    raise KilnError(f"rewrite did not converge after {max_rounds} rounds (rules fired: {dict(fired)})")


def _one_round(graph: Graph, rules: RuleSet, fired) -> bool:
    changed = False
    matcher = Matcher(graph)
    consumers = graph.consumers()
    alive = {id(n) for n in graph.nodes}
    for node in list(graph.nodes):
        if id(node) not in alive or (not consumers.get(node.output) and node.output not in graph.outputs):
            continue
        for rule in rules.by_root.get(node.op, ()):
            m = matcher.match(rule.pattern, node)
            if m is None or not _interior_is_private(m, consumers, graph):
                continue
            b = Builder(graph, m)
            try:
                new = rule.build(b, **m.captures)
            except Exception:
                b.rollback()
                raise
            if new is None or new == node.output:
                b.rollback()
                continue
            _check_same_type(graph, node.output, new, rule)
            _replace(graph, node, new, b)
            fired[rule.name] += 1
            changed = True
            dead_code_elimination(graph)
            matcher = Matcher(graph)
            consumers = graph.consumers()
            alive = {id(n) for n in graph.nodes}
            break
    return changed


def _interior_is_private(m: Match, consumers, graph: Graph) -> bool:
    inside = {id(n) for n in m.nodes}
    for n in m.nodes:
        if n is m.root:
            continue
        if n.output in graph.outputs or any(id(c) not in inside for c in consumers.get(n.output, ())):
            return False
    return True


def _check_same_type(graph: Graph, old: str, new: str, rule: Rule) -> None:
    a, b = graph.tensors[old], graph.tensors[new]
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        raise KilnError(f"rule {rule.name} replaced {old} ({a.dtype}{list(a.shape)}) with "
                        f"{new} ({b.dtype}{list(b.shape)}): shapes/dtypes differ")


def _replace(graph: Graph, root: Node, new: str, b: Builder) -> None:
    old = root.output
    for n in graph.nodes:
        if old in n.inputs:
            n.inputs = [new if i == old else i for i in n.inputs]
    if old in graph.outputs:
        produced_here = any(n.output == new for n in b.added) and graph.tensors[new].kind == ACT
        if produced_here:  # keep the user-visible output name
            graph.nodes.remove(root)
            del graph.tensors[old]
            rename(graph, new, old)
        else:
            graph.outputs = [new if o == old else o for o in graph.outputs]


def rename(graph: Graph, old: str, new: str) -> None:
    t = graph.tensors.pop(old)
    graph.tensors[new] = dataclasses.replace(t, name=new)
    for n in graph.nodes:
        if n.output == old:
            n.output = new
        if old in n.inputs:
            n.inputs = [new if i == old else i for i in n.inputs]
    graph.outputs = [new if o == old else o for o in graph.outputs]


def dead_code_elimination(graph: Graph) -> int:
    """Drop nodes nothing reads, then tensors (weights included) nothing references."""
    used = set(graph.outputs)
    keep = []
    for n in reversed(graph.nodes):
        if n.output in used:
            keep.append(n)
            used.update(n.inputs)
    removed = len(graph.nodes) - len(keep)
    graph.nodes = keep[::-1]
    graph.remove_unused_tensors()
    return removed
