"""The unplanned numpy reference: every node evaluated by its op's declared ``ref``.

It is the oracle for the planner and the C executors, and it runs graphs that
still hold symbolic shapes or fold-only ops (sizes come from the arrays)."""
from __future__ import annotations

import time
from typing import Mapping, Optional

import numpy as np

from ..core.blas import one_blas_thread
from ..errors import KilnError
from ..ir.feeds import check_feeds
from ..ir.graph import STATE, Graph
from ..ops.cache import WRITES_STATE
from ..ir.resolve import resolve
from ..ops import registry
from .planned import Profile


class ReferenceExecutor:
    """`run_reference` behind the executor interface (see kiln.executor.registry); ``plan`` is None."""

    plan = None

    def __init__(self, graph: Graph, state: dict):
        self.graph = graph
        self.state = state
        self.last_profile: Optional[Profile] = None

    def run(self, arrays: Mapping[str, np.ndarray], profile: bool = False) -> list[np.ndarray]:
        timings: Optional[dict] = {} if profile else None
        outs = run_reference(self.graph, arrays, timings=timings, state=self.state)
        if timings is not None:
            self.last_profile = Profile.build([("", op, "numpy", sec) for op, ts in timings.items() for sec in ts])
        return outs


def run_reference(graph: Graph, feeds: Mapping[str, np.ndarray], *,
                  timings: Optional[dict] = None, state: Optional[dict] = None) -> list[np.ndarray]:
    """Evaluate ``graph``. Values are functional: a node naming a state tensor sees its value
    from before the run. With ``state`` (name -> array), state is read from it and each state
    written by the graph is stored back into it at the end; without, nothing persists."""
    with one_blas_thread():
        return _run(graph, feeds, timings, state)


def _run(graph: Graph, feeds: Mapping[str, np.ndarray], timings: Optional[dict],
         state: Optional[dict]) -> list[np.ndarray]:
    arrays, binding = check_feeds(graph, feeds)
    if graph.symbols:
        graph = resolve(graph, binding)
    values: dict[str, np.ndarray] = dict(graph.constants)
    if state is not None:
        values.update(state)
    values.update(arrays)
    written: dict[str, str] = {}  # state -> the tensor holding its newest value
    written_root: dict[str, str] = {}
    for node in graph.nodes:
        t0 = time.perf_counter() if timings is not None else 0.0
        try:
            out = registry.get(node.op).evaluate([values[i] for i in node.inputs], node.attrs)
        except KilnError as e:
            raise type(e)(f"{node!r}: {e}" + (f"\n  at {node.source}" if node.source else "")) from None
        if registry.get(node.op).has(WRITES_STATE):
            root = written_root.get(node.inputs[0], node.inputs[0])
            if graph.tensors[root].kind == STATE:
                written[root] = node.output
                written_root[node.output] = root
        values[node.output] = out
        if timings is not None:
            timings.setdefault(node.op, []).append(time.perf_counter() - t0)
    if state is not None:
        for root, t in written.items():
            np.copyto(state[root], values[t])
    return [values[o] for o in graph.outputs]
