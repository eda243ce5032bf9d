"""The executors a Session can run a graph with: one name -> one factory, documented here.

Every factory takes (graph, binding of the symbolic dims, the session's state arrays) and
returns an object with ``run(arrays, profile=False) -> outputs``, ``plan`` and ``last_profile``.
The CLI's ``--executor`` choices and the Session's check both come from ``EXECUTORS``.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ..errors import KilnError
from ..ir.graph import Graph

State = dict[str, np.ndarray]
Factory = Callable[[Graph, Mapping[str, int], State], object]
DEFAULT = "compiled"


def _planned(graph: Graph, binding: Mapping[str, int]):
    """The static graph for ``binding`` and its memory plan."""
    from ..ir.resolve import resolve
    from ..ir.validate import validate
    from ..planner import plan as make_plan
    static = resolve(graph, dict(binding)) if graph.symbols else graph
    validate(static, static=True, executable=True)
    return static, make_plan(static)


def _compiled(graph: Graph, binding: Mapping[str, int], state: State):
    """The plan resolved into one array of C calls, run by one C call per run (the default, the
    fast path; needs the built C kernels)."""
    from .compiled import CompiledExecutor
    static, p = _planned(graph, binding)
    return CompiledExecutor(static, p, state=state)


def _interpreted(graph: Graph, binding: Mapping[str, int], state: State):
    """The planned executor: a Python loop over the same plan, each op by its C kernel, falling back
    to the op's numpy reference; gives per-node profiles and kernel-by-kernel debugging."""
    from .planned import PlannedExecutor
    static, p = _planned(graph, binding)
    return PlannedExecutor(static, p, backends=("c", "numpy"), state=state)


def _numpy(graph: Graph, binding: Mapping[str, int], state: State):
    """The planned executor with the numpy references only: the planner's memory layout checked
    without any C."""
    from .planned import PlannedExecutor
    static, p = _planned(graph, binding)
    return PlannedExecutor(static, p, backends=("numpy",), state=state)


def _reference(graph: Graph, binding: Mapping[str, int], state: State):
    """The unplanned numpy reference (the oracle): no plan, no arena; runs symbolic shapes as given."""
    from .reference import ReferenceExecutor
    return ReferenceExecutor(graph, state)


EXECUTORS: dict[str, Factory] = {"compiled": _compiled, "interpreted": _interpreted, "numpy": _numpy,
                                 "reference": _reference}


def check_name(name: str, what: str = "executor") -> str:
    """``name`` if it is an executor, else a KilnError listing them (``what`` names the setting)."""
    if name not in EXECUTORS:
        raise KilnError(f"{what} must be one of {', '.join(EXECUTORS)}, got {name!r}")
    return name


def describe() -> str:
    """One line per executor: its name and the first sentence of its docstring (for --help)."""
    return "; ".join(f"{n}: {' '.join(f.__doc__.split('.')[0].split())}" for n, f in EXECUTORS.items())
