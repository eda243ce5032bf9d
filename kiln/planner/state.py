"""State written in place (KV caches): which nodes write a state slot, and the order that implies.

An op with the ``writes_state`` property (``cache_write``) whose input 0 is a state
tensor — directly, or through a chain of such writes — writes into the state's own
slot, so the new value persists to the next run. That is only correct if every
node that reads the *old* value (the state tensor or an earlier write's output, and
their aliases) runs before the write. Those become extra ordering edges; if a
reader of the old value also depends on the write, the graph asks for two values in
one buffer and planning fails with a ValidationError naming both nodes.
"""
from __future__ import annotations

from typing import Optional

from ..errors import ValidationError
from ..ir.graph import STATE, Graph
from ..ops import registry
from ..ops.cache import WRITES_STATE


def writes_state(graph: Graph, node) -> Optional[str]:
    """The state tensor this node overwrites in place, or None."""
    if not node.inputs or not registry.get(node.op).has(WRITES_STATE):
        return None
    return state_root(graph, node.inputs[0])


def state_root(graph: Graph, name: str) -> Optional[str]:
    while True:
        t = graph.tensors[name]
        if t.kind == STATE:
            return name
        node = graph.producer(name)
        if node is None or not registry.get(node.op).has(WRITES_STATE):
            return None
        name = node.inputs[0]


def extra_deps(graph: Graph) -> dict[int, set[int]]:
    """node index -> indices of nodes that must run before it (readers of the value it overwrites)."""
    nodes = graph.nodes
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in set(n.inputs):
            readers.setdefault(t, []).append(i)
    deps: dict[int, set[int]] = {}
    for w, node in enumerate(nodes):
        if writes_state(graph, node) is None:
            _refuse_view_of_state(graph, node)
            continue
        # The old value: input 0 and everything that views its bytes (aliases of it, transitively).
        old, stack = set(), [node.inputs[0]]
        while stack:
            t = stack.pop()
            old.add(t)
            for r in readers.get(t, ()):
                n = nodes[r]
                if r != w and n.inputs[0] == t and registry.get(n.op).alias_offset is not None:
                    stack.append(n.output)
        before = {r for t in old for r in readers.get(t, ()) if r != w}
        # Graph nodes are in topological order (validate): only readers after the write can depend on it.
        late = {r for r in before if r > w}
        clash = late & _descendants(nodes, readers, w, max(late)) if late else set()
        if clash:
            r = nodes[min(clash)]
            raise ValidationError(f"{node!r} overwrites state {writes_state(graph, node)!r} in place, but "
                                  f"{r!r} reads the old value and also depends on the new one")
        deps[w] = before
    return deps


def _descendants(nodes, readers, start: int, limit: int) -> set[int]:
    """The nodes at index <= ``limit`` that depend on node ``start`` (a path to one of them, in a
    topologically ordered graph, passes only through nodes at indices in (start, limit])."""
    out: set[int] = set()
    stack = [start]
    while stack:
        i = stack.pop()
        for r in readers.get(nodes[i].output, ()):
            if r <= limit and r not in out:
                out.add(r)
                stack.append(r)
    return out


def _refuse_view_of_state(graph: Graph, node) -> None:
    """A state write through a reshape/slice of the state would update a copy, and the new value
    would silently not persist: refuse it (the graph should write the state tensor itself)."""
    if not node.inputs or not registry.get(node.op).has(WRITES_STATE):
        return
    name = node.inputs[0]
    while (p := graph.producer(name)) is not None and registry.get(p.op).alias_offset is not None:
        name = p.inputs[0]
    if graph.tensors[name].kind == STATE:
        raise ValidationError(f"{node!r} writes a view of state {name!r}; it must write the state tensor "
                              "itself (or an earlier write of it) for the new value to persist")
