"""One rewrite engine for every pass: rules applied to a fixed point, by priority.

The engine, not the rules, owns safety: a match whose interior value is read
outside the match (or is a graph output) is refused, the replacement must
have the replaced value's shape and dtype, graph outputs keep their names,
and nodes that lose their last reader are removed as the change is made.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np

from ..errors import KilnError
from ..ir.graph import ACT, CONST, Graph, Node
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

    def node(self, t: str) -> Node:
        """The matched node computing ``t`` (its op and attrs), without a graph lookup."""
        return self.match.node(t)

    def shape(self, t: str) -> tuple:
        return self.graph.tensors[t].shape

    def dtype(self, t: str) -> str:
        return self.graph.tensors[t].dtype

    def value(self, t: str) -> Optional[np.ndarray]:
        return self.graph.constants.get(t)

    def rollback(self) -> None:
        for n in reversed(self.added):
            self.graph.remove_node(n)
        for c in self.added_consts:
            del self.graph.tensors[c]
            del self.graph.constants[c]


def rewrite(graph: Graph, rules: RuleSet, *, max_steps: Optional[int] = None) -> dict[str, int]:
    """Apply ``rules`` until none fires. Mutates ``graph``; returns fire counts per rule.

    A worklist holds the nodes to try, all of them at first in graph order. After a rule
    fires only the nodes near the change go back on it: the replacement's nodes, the
    readers of the new value, and the producers of the match's inputs (a match that failed
    on a shared value may succeed once the value has fewer readers). Nodes that lose their
    last reader are removed on the spot, with whatever they alone kept alive.
    """
    fired: dict[str, int] = collections.Counter()
    limit = max_steps if max_steps is not None else 50 * (len(graph.nodes) + 16)
    work = collections.deque(graph.nodes)
    queued = set(work)
    matcher = Matcher(graph)
    steps = 0
    while work:
        node = work.popleft()
        queued.discard(node)
        if graph.producer(node.output) is not node:
            continue                         # removed since it was queued
        if not graph.is_used(node.output):
            _remove_dead(graph, node, work, queued)
            continue
        for rule in rules.by_root.get(node.op, ()):
            m = matcher.match(rule.pattern, node)
            if m is None or not _interior_is_private(m, graph):
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
            fired[rule.name] += 1
            steps += 1
            if steps > limit:
                raise KilnError(f"rewrite did not converge after {limit} rewrites (rules fired: {dict(fired)})")
            near = _replace(graph, node, new, b)
            near += [graph.producer(t) for t in m.captures.values()]
            for n in near:
                if n is not None and n not in queued:
                    work.append(n)
                    queued.add(n)
            for n in m.nodes:
                if graph.producer(n.output) is n and not graph.is_used(n.output):
                    _remove_dead(graph, n, work, queued)
            for c in b.added_consts:
                if c in graph.tensors and not graph.is_used(c):
                    del graph.tensors[c]
                    del graph.constants[c]
            break
    return dict(fired)


def _interior_is_private(m: Match, graph: Graph) -> bool:
    for n in m.nodes:
        if n is m.root:
            continue
        if n.output in graph.outputs or any(c not in m.nodes for c in graph.users(n.output)):
            return False
    return True


def _check_same_type(graph: Graph, old: str, new: str, rule: Rule) -> None:
    a, b = graph.tensors[old], graph.tensors[new]
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        raise KilnError(f"rule {rule.name} replaced {old} ({a.dtype}{list(a.shape)}) with "
                        f"{new} ({b.dtype}{list(b.shape)}): shapes/dtypes differ")


def _replace(graph: Graph, root: Node, new: str, b: Builder) -> list[Node]:
    """Readers of the root read ``new``; returns the nodes to revisit."""
    old = root.output
    near = list(b.added) + graph.replace_all_uses(old, new, outputs=False)
    if old in graph.outputs:
        produced_here = any(n.output == new for n in b.added) and graph.tensors[new].kind == ACT
        if produced_here:  # keep the user-visible output name
            graph.remove_node(root)
            graph.rename(new, old)
        else:
            graph.outputs = [new if o == old else o for o in graph.outputs]
    return near


def _remove_dead(graph: Graph, node: Node, work, queued) -> None:
    """Remove ``node`` (read by no one, not an output), then whatever only it kept alive."""
    stack = [node]
    while stack:
        n = stack.pop()
        graph.remove_node(n)
        for i in dict.fromkeys(n.inputs):
            if graph.is_used(i):
                continue
            p = graph.producer(i)
            if p is not None:
                stack.append(p)
            elif graph.tensors[i].kind == CONST:
                del graph.tensors[i]
                graph.constants.pop(i, None)


def dead_code_elimination(graph: Graph) -> int:
    """Drop nodes nothing reads, then tensors (weights included) nothing references."""
    used = set(graph.outputs)
    keep = []
    for n in reversed(graph.nodes):
        if n.output in used:
            keep.append(n)
            used.update(n.inputs)
    removed = len(graph.nodes) - len(keep)
    if removed:
        graph.nodes = keep[::-1]
    graph.remove_unused_tensors()
    return removed
