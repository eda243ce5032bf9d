"""Execution orders: the graph's own, and a greedy one that keeps live memory low.

Orders are registered by name like allocators. ``plan(order="memory")`` tries
the candidates and keeps the one whose arena is smallest, so the greedy
heuristic can only help: when it loses (it sometimes does, being myopic) the
given order wins.
"""
from __future__ import annotations

import heapq
from typing import Callable

from ..ir.graph import ACT, Graph
from .lifetimes import alias_bytes
from .state import writes_state

# (graph, alias enabled, extra deps: node -> nodes that must run before it) -> node indices
Order = Callable[[Graph, bool, dict[int, set[int]]], list[int]]
ORDERS: dict[str, Order] = {}


def register_order(name: str) -> Callable[[Order], Order]:
    def deco(fn: Order) -> Order:
        ORDERS[name] = fn
        return fn
    return deco


@register_order("given")
def given_order(graph: Graph, alias: bool, deps: dict[int, set[int]]) -> list[int]:
    """The graph's node list; with extra deps (state writes), the stable topological sort that
    moves as little as possible (the node list itself when it already satisfies them)."""
    if not deps:
        return list(range(len(graph.nodes)))
    preds = _preds(graph, deps)
    succs: dict[int, list[int]] = {}
    for i, ps in enumerate(preds):
        for p in ps:
            succs.setdefault(p, []).append(i)
    waiting = [len(ps) for ps in preds]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for s in succs.get(i, ()):
            waiting[s] -= 1
            if waiting[s] == 0:
                heapq.heappush(ready, s)
    if len(order) < len(graph.nodes):
        from ..errors import ValidationError
        stuck = graph.nodes[min(set(range(len(graph.nodes))) - set(order))]
        raise ValidationError(f"no order satisfies the state writes: {stuck!r} waits on a cycle "
                              "(two nodes overwrite the same state value?)")
    return order


def _preds(graph: Graph, deps: dict[int, set[int]]) -> list[set[int]]:
    producer = {n.output: i for i, n in enumerate(graph.nodes)}
    return [{producer[t] for t in n.inputs if t in producer} | deps.get(i, set())
            for i, n in enumerate(graph.nodes)]


@register_order("greedy")
def greedy_order(graph: Graph, alias: bool, deps: dict[int, set[int]]) -> list[int]:
    """List scheduling: among ready nodes run the one that frees the most bytes net of what it
    allocates; ties go to the earlier node so the result stays close to the given order.

    A buffer is freed when its last reader runs. Alias outputs belong to their source's
    buffer ("group"), so a reshape allocates nothing and its source is freed only when
    the reshape's readers are done too.
    """
    nodes = graph.nodes
    outputs = set(graph.outputs)
    group: dict[str, str] = {}
    for n in nodes:  # the given order is topological, so input 0's group is known
        if n.output not in outputs and ((alias and alias_bytes(graph, n) is not None)
                                        or writes_state(graph, n) is not None):
            group[n.output] = group.get(n.inputs[0], n.inputs[0])
        else:
            group[n.output] = n.output
    # Only arena activations are ever freed; graph outputs and everything external are pinned.
    size = {g: int(graph.tensors[g].nbytes) for g in set(group.values())
            if graph.tensors[g].kind == ACT and g not in outputs}
    users: dict[str, int] = {}          # group -> number of not-yet-run nodes reading it
    node_groups: list[set[str]] = []
    for n in nodes:
        gs = {group[i] for i in n.inputs if i in group}
        node_groups.append(gs)
        for g in gs:
            users[g] = users.get(g, 0) + 1
    preds = _preds(graph, deps)
    waiting = [len(ps) for ps in preds]
    succs: dict[int, list[int]] = {}
    for idx, ps in enumerate(preds):
        for p in ps:
            succs.setdefault(p, []).append(idx)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    order: list[int] = []

    def score(idx: int) -> int:
        freed = sum(size.get(g, 0) for g in node_groups[idx] if users[g] == 1)
        out = nodes[idx].output
        alloc = 0 if group[out] != out else size.get(out, 0)
        return freed - alloc

    while ready:
        best = max(ready, key=lambda i: (score(i), -i))
        ready.remove(best)
        order.append(best)
        for g in node_groups[best]:
            users[g] -= 1
        for r in succs.get(best, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    return order


def check_order(graph: Graph, order: list[int], deps: dict[int, set[int]]) -> None:
    """A permutation of the nodes in which every input (and extra dep) comes first."""
    from ..errors import ValidationError
    if sorted(order) != list(range(len(graph.nodes))):
        raise ValidationError(f"plan order is not a permutation of the graph's {len(graph.nodes)} nodes")
    preds = _preds(graph, deps)
    done: set[int] = set()
    for idx in order:
        missing = preds[idx] - done
        if missing:
            node = graph.nodes[idx]
            raise ValidationError(f"plan order runs {node!r} before {graph.nodes[min(missing)]!r}, "
                                  "which must come first")
        done.add(idx)
