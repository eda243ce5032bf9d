"""The Executor protocol and the one registry of executors a Session can run a graph with.

Two independent choices run a graph: the **backend** is *which kernels* (``c``, ``numpy``,
``triton``: ``kiln.backends.kernels``), the **executor** is *how they are driven* (one C call
over the plan, a Python loop over the plan, no plan at all, a device loop). Each executor
names the backends it can drive (the first is its default) and the memory space its plans
live in. ``resolve(executor, backend)`` fills in whichever is not given and rejects a pair
that does not fit; ``build`` plans the graph with the backend's scratch rule and memory space
and checks, before any run, that the backend has a kernel for every node.

Every executor satisfies ``Executor``: ``run(arrays, profile=False) -> outputs``, ``plan``
(None for the unplanned reference) and ``last_profile`` (a ``Profile`` after a profiled run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Protocol

import numpy as np

from ..backends import kernels
from ..errors import KilnError
from ..ir.graph import Graph
from ..planner.plan import DEVICE, HOST, Plan
from .planned import Profile, reset_state as reset_host_state

DEFAULT = "compiled"


class Executor(Protocol):
    plan: Optional[Plan]
    last_profile: Optional[Profile]

    def run(self, arrays: Mapping[str, np.ndarray], profile: bool = False) -> list[np.ndarray]: ...


# (graph, binding, state, backend, **options) -> Executor. ``state`` is the Session's dict of
# state tensors in this executor's memory space: executors use the entries they find and add
# the ones missing, so every plan of one session shares one KV cache.
Factory = Callable[..., Executor]


@dataclass(frozen=True)
class ExecutorSpec:
    name: str
    factory: Factory
    backends: tuple[str, ...]     # the backends it can drive; the first is the default
    memory: str                   # HOST or DEVICE: where its plans' slots and its state live
    reset: Callable[[dict, Graph], None] = reset_host_state   # state back to its initial values
    stored_plans: bool = False    # its factory takes ``stored_plan=`` (a plan kept in a model file)

    @property
    def doc(self) -> str:
        return " ".join((self.factory.__doc__ or "").split(".")[0].split())


def _planned(graph: Graph, binding: Mapping[str, int], backend: kernels.Backend, memory: str,
             stored_plan: Optional[dict] = None):
    """The static graph for ``binding`` and its memory plan, with ``backend``'s scratch: the stored
    plan when one is given and passes kiln/planner/stored.py's checks for this graph and backend,
    else a fresh one. Both paths validate the static graph."""
    from ..ir.resolve import resolve
    from ..planner import plan as make_plan
    static = resolve(graph, dict(binding)) if graph.symbols else graph
    if stored_plan is not None:
        from ..planner.stored import load_plan
        p = load_plan(static, stored_plan, scratch_rule=backend.scratch_rule, memory=memory)
        if p is not None:
            return static, p
    return static, make_plan(static, scratch_rule=backend.scratch_rule, memory=memory)


def _compiled(graph, binding, state, backend, stored_plan=None):
    """The plan resolved into one array of C calls, run by one C call per run (the default, the
    fast path; needs the built C kernels)."""
    from .compiled import CompiledExecutor
    static, p = _planned(graph, binding, backend, HOST, stored_plan)
    return CompiledExecutor(static, p, state=state)


def _interpreted(graph, binding, state, backend, stored_plan=None):
    """The planned executor: a Python loop over the same plan, each op by the backend's kernel (C
    falls back to the op's numpy reference where a kernel rejects its arguments); per-node
    profiles and kernel-by-kernel debugging."""
    from .planned import PlannedExecutor
    static, p = _planned(graph, binding, backend, HOST, stored_plan)
    return PlannedExecutor(static, p, backends=("c", "numpy") if backend.name == "c" else ("numpy",), state=state)


def _numpy(graph, binding, state, backend, stored_plan=None):
    """The planned executor with the numpy references only: the planner's memory layout checked
    without any C."""
    from .planned import PlannedExecutor
    static, p = _planned(graph, binding, backend, HOST, stored_plan)
    return PlannedExecutor(static, p, backends=("numpy",), state=state)


def _reference(graph, binding, state, backend):
    """The unplanned numpy reference (the oracle): no plan, no arena; runs symbolic shapes as given."""
    from .reference import ReferenceExecutor
    return ReferenceExecutor(graph, state)


def _triton(graph, binding, state, backend, *, cuda_graph: bool = False, device=None):
    """The plan on one device (a GPU, or Triton's CPU interpreter): every slot a device buffer,
    the KV cache on the device, one Triton launch per step."""
    from .triton import TritonExecutor
    static, p = _planned(graph, binding, backend, DEVICE)
    return TritonExecutor(static, p, state=state, device=device, cuda_graph=cuda_graph)


def _reset_device_state(state: dict, graph: Graph) -> None:
    from .triton import reset_state
    reset_state(state, graph)


EXECUTORS: dict[str, ExecutorSpec] = {s.name: s for s in (
    ExecutorSpec("compiled", _compiled, ("c",), HOST, stored_plans=True),
    ExecutorSpec("interpreted", _interpreted, ("c", "numpy"), HOST, stored_plans=True),
    ExecutorSpec("numpy", _numpy, ("numpy",), HOST, stored_plans=True),
    ExecutorSpec("reference", _reference, ("numpy",), HOST),
    ExecutorSpec("triton", _triton, ("triton",), DEVICE, _reset_device_state),
)}
# the executor a backend gets when only the backend is named
DEFAULT_FOR_BACKEND = {"c": "compiled", "numpy": "numpy", "triton": "triton"}


def check_name(name: str, what: str = "executor") -> str:
    """``name`` if it is an executor, else a KilnError listing them (``what`` names the setting)."""
    if name not in EXECUTORS:
        raise KilnError(f"{what} must be one of {', '.join(EXECUTORS)}, got {name!r}")
    return name


def resolve(executor: Optional[str] = None, backend: Optional[str] = None) -> tuple[ExecutorSpec, str]:
    """(executor spec, backend name) for what the caller named; neither: compiled on C.
    Raises KilnError for an unknown name or an executor that cannot drive that backend."""
    if backend is not None:
        kernels.check_name(backend)
    if executor is None:
        executor = DEFAULT_FOR_BACKEND[backend] if backend is not None else DEFAULT
    spec = EXECUTORS[check_name(executor)]
    if backend is None:
        backend = spec.backends[0]
    elif backend not in spec.backends:
        raise KilnError(f"executor {executor!r} cannot drive the {backend} backend (it drives: "
                        f"{', '.join(spec.backends)}); for backend={backend!r} use executor="
                        f"{DEFAULT_FOR_BACKEND[backend]!r}")
    return spec, backend


def prepare(backend_name: str, graph: Graph) -> kernels.Backend:
    """The backend, checked before any run: importable, usable here (a device for Triton), and
    with a kernel for every node of ``graph`` (else a BackendError naming the ops)."""
    backend = kernels.get(backend_name)
    if backend.ready is not None:
        backend.ready()
    backend.check(graph)
    return backend


def describe() -> str:
    """One line per executor: its name, its backends and the first sentence of its docstring (for --help)."""
    return "; ".join(f"{n} [{'/'.join(s.backends)}]: {s.doc}" for n, s in EXECUTORS.items())
