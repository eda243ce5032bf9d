"""Session: a compiled model you can run, profile, inspect and save."""
from __future__ import annotations

import collections
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import KilnError
from .ir import serialize
from .ir.feeds import check_feeds
from .ir.graph import Graph
from .ir.resolve import resolve
from .ir.validate import validate

EXECUTORS = ("compiled", "interpreted", "numpy", "reference")
# Plans kept per session (least recently used first out): a decode loop needs two, and a
# server seeing many prompt lengths must not grow without bound.
MAX_PLANS = 8


class Session:
    """Runs one graph. Plans are made per binding of the symbolic dims and cached, so a
    dynamic-shape session never re-exports or re-optimizes; it only re-plans for new sizes."""

    def __init__(self, graph: Graph, *, executor: str = "compiled", meta: Optional[dict] = None):
        if executor not in EXECUTORS:
            raise KilnError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
        validate(graph)
        self.graph = graph
        self.executor = executor
        self.meta = dict(meta or {})
        self._executors: collections.OrderedDict[tuple, object] = collections.OrderedDict()
        self.last_profile: Optional[dict] = None
        # State (a KV cache) belongs to the session: every per-binding plan reads and writes
        # these same arrays, so a prefill plan and a decode plan continue one sequence.
        self.state = {name: np.array(graph.constants[name], order="C", copy=True) for name in graph.state}
        from .passes.kv_cache import position_check
        self._value_check = position_check(graph)  # shapes are checked generically; cache positions here

    # -- public surface ---------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return list(self.graph.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    def run(self, feeds: Mapping[str, np.ndarray], *, profile: bool = False) -> list[np.ndarray]:
        arrays, binding = check_feeds(self.graph, feeds)
        if self._value_check is not None:
            self._value_check(arrays)
        ex = self._executor_for(binding)
        outs = ex.run(arrays, profile=profile)
        if profile:
            self.last_profile = getattr(ex, "last_profile", None)
        return outs

    def __call__(self, *args: np.ndarray, **feeds: np.ndarray) -> list[np.ndarray]:
        feeds = dict(zip(self.input_names, args), **feeds)
        return self.run(feeds)

    def reset_state(self) -> None:
        """Return every state tensor (e.g. the KV cache) to its initial value."""
        for name, a in self.state.items():
            a[...] = self.graph.constants[name]

    def save(self, path: str | os.PathLike) -> None:
        serialize.save(self.graph, path, extra={"meta": self.meta})

    def plan(self, **binding: int):
        """The Plan for one binding of the symbolic dims (e.g. ``session.plan(s0=256)``)."""
        return self._executor_for(binding).plan

    def summary(self) -> str:
        return self.graph.summary()

    def __repr__(self) -> str:
        return f"<kiln.Session executor={self.executor} inputs={self.input_names} outputs={self.output_names}>"

    # -- executors per binding ----------------------------------------------------------
    def _executor_for(self, binding: Mapping[str, int]):
        key = tuple(sorted(binding.items()))
        ex = self._executors.get(key)
        if ex is None:
            ex = self._build(dict(binding))
            self._executors[key] = ex
            while len(self._executors) > MAX_PLANS:
                self._executors.popitem(last=False)
        else:
            self._executors.move_to_end(key)
        return ex

    def _build(self, binding: dict):
        if self.executor == "reference":
            return _ReferenceExecutor(self.graph, self.state)
        static = resolve(self.graph, binding) if self.graph.symbols else self.graph
        validate(static, static=True, executable=True)
        from .planner import plan as make_plan
        p = make_plan(static)
        if self.executor == "compiled":
            from .executor.compiled import CompiledExecutor
            return CompiledExecutor(static, p, state=self.state)
        from .executor.planned import PlannedExecutor
        return PlannedExecutor(static, p, backends=("c", "numpy") if self.executor == "interpreted" else ("numpy",),
                               state=self.state)


class _ReferenceExecutor:
    """The unplanned numpy reference behind the Session interface (the oracle)."""

    plan = None

    def __init__(self, graph: Graph, state: dict):
        self.graph = graph
        self.state = state
        self.last_profile = None

    def run(self, arrays, profile: bool = False) -> list[np.ndarray]:
        from .executor.reference import run_reference
        timings: Optional[dict] = {} if profile else None
        outs = run_reference(self.graph, arrays, timings=timings, state=self.state)
        if timings is not None:
            self.last_profile = {op: {"count": len(t), "ms": 1e3 * sum(t)} for op, t in timings.items()}
        return outs


def load(path: str | os.PathLike, *, executor: str = "compiled") -> Session:
    """Load a saved model. Needs numpy and Kiln only — torch is never imported."""
    graph, extra = serialize.load(path)
    return Session(graph, executor=executor, meta=extra.get("meta", {}))


def compile(module, example_args: Sequence, *, dynamic_shapes=None, executor: str = "compiled",
            optimize: bool = True, passes: Optional[Sequence[str]] = None) -> Session:
    """Capture ``module`` with torch.export, optimize the graph and return a Session.

    dynamic_shapes uses torch.export's own format, e.g. ``{"input_ids": {1: Dim("seq", max=1024)}}``.
    ``passes`` names the optimization stages to run (default: all); ``optimize=False`` runs none.
    ``session.meta["compile_ms"]`` holds where the time went: "torch.export", "decompose",
    "convert", one "stage:NAME" per optimization stage, and "total" (milliseconds).
    """
    import time

    from .frontend.torch import export
    t0 = time.perf_counter()
    steps: dict = {}
    graph = export(module, tuple(example_args) if isinstance(example_args, (list, tuple)) else (example_args,),
                   dynamic_shapes=dynamic_shapes, timings=steps)
    ms = {k: 1e3 * v for k, v in steps.items() if isinstance(v, float)}
    if optimize:
        from .passes.pipeline import optimize as run_passes
        log: list = []
        graph = run_passes(graph, stages=passes, log=log)
        ms.update({f"stage:{e.name}": e.ms for e in log})
    session = Session(graph, executor=executor)
    ms["total"] = 1e3 * (time.perf_counter() - t0)
    session.meta["compile_ms"] = {k: round(v, 1) for k, v in ms.items()}
    return session
