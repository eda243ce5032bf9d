"""Execution orders: the graph's own, and a greedy one that keeps live memory low.

Orders are registered by name like allocators. ``plan(order="memory")`` tries
the candidates and keeps the one whose arena is smallest, so the greedy
heuristic can only help: when it loses (it sometimes does, being myopic) the
given order wins.
"""
from __future__ import annotations

from typing import Callable

from ..ir.graph import ACT, Graph
from .lifetimes import alias_bytes

Order = Callable[[Graph, bool], list[int]]
ORDERS: dict[str, Order] = {}


def register_order(name: str) -> Callable[[Order], Order]:
    def deco(fn: Order) -> Order:
        ORDERS[name] = fn
        return fn
    return deco


@register_order("given")
def given_order(graph: Graph, alias: bool) -> list[int]:
    """The graph's node list (already checked to be topological by validation)."""
    return list(range(len(graph.nodes)))


@register_order("greedy")
def greedy_order(graph: Graph, alias: bool) -> list[int]:
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
        if alias and n.output not in outputs and alias_bytes(graph, n) is not None:
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
    producer = {n.output: i for i, n in enumerate(nodes)}
    waiting = [len({i for i in n.inputs if i in producer}) for n in nodes]
    readers: dict[str, list[int]] = {}
    for idx, n in enumerate(nodes):
        for i in set(n.inputs):
            if i in producer:
                readers.setdefault(i, []).append(idx)
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
        for r in readers.get(nodes[best].output, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    return order


def check_order(graph: Graph, order: list[int]) -> None:
    """A permutation of the nodes in which every input is produced before it is read."""
    from ..errors import ValidationError
    if sorted(order) != list(range(len(graph.nodes))):
        raise ValidationError(f"plan order is not a permutation of the graph's {len(graph.nodes)} nodes")
    producer = {n.output: i for i, n in enumerate(graph.nodes)}
    done: set[int] = set()
    for idx in order:
        node = graph.nodes[idx]
        for i in node.inputs:
            if i in producer and producer[i] not in done:
                raise ValidationError(f"plan order runs {node.output} = {node.op}(...) before its input {i!r}")
        done.add(idx)
