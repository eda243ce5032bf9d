"""The interpreted executor: a Python loop over a Plan, with numpy views into one arena.

Each step's tensors are views of the plan's slots (the arena, weights, state,
this run's inputs and outputs), so it exercises exactly the memory layout the
compiled executor uses, while allowing per-op timing and a numpy fallback.
Per node it tries the backends in order: the C kernel (``clib.run_op``), then
the op's numpy reference (computed, then assigned into the planned view, which
is what makes in-place steps safe for it).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Optional, Sequence

import numpy as np

from ..core.buffers import OutputRecycler
from ..core.dtypes import np_dtype
from ..errors import BackendError, FeedError, KilnError, ValidationError
from ..ir.graph import Graph
from ..ops import registry
from ..planner.arena import ALIGNMENT
from ..planner.kinds import SlotKind, StepKind
from ..planner.plan import HOST, Plan

BACKENDS = ("c", "numpy")

# (slot, byte offset, nbytes, numpy dtype, shape): enough to make a view of a slot
Spec = tuple[int, int, int, np.dtype, tuple[int, ...]]


def aligned_arena(nbytes: int) -> np.ndarray:
    """A uint8 buffer of `nbytes` whose first byte is ALIGNMENT-aligned (numpy only promises 16)."""
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + nbytes]


def as_bytes(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array's bytes as a flat uint8 view (0-d arrays included)."""
    return a.reshape(-1).view(np.uint8)


def fixed_slot_arrays(graph: Graph, plan: Plan, state: Optional[dict[str, np.ndarray]] = None
                      ) -> tuple[list[Optional[np.ndarray]], dict[str, np.ndarray]]:
    """Arrays behind the slots that do not change per run: weights (as given) and state.

    State persists across runs. ``state`` hands in arrays owned by the caller (a Session
    shares one set between its prefill and decode plans); they are used in place, never
    copied. Without it the executor keeps a private copy. Inputs and outputs are bound per
    run (None here)."""
    shared = state

    arrays: list[Optional[np.ndarray]] = [None] * len(plan.slots)
    state = {}
    for i, s in enumerate(plan.slots):
        if s.kind in (SlotKind.CONST, SlotKind.STATE):
            t = graph.tensors[s.name]
            a = np.asarray(shared[s.name] if shared is not None and s.kind == SlotKind.STATE else graph.constants[s.name])
            if a.dtype != t.array_dtype or tuple(a.shape) != t.array_shape:
                raise ValidationError(f"{s.kind} {s.name!r}: data is {a.dtype}{list(a.shape)}, "
                                      f"the graph says {t.dtype}{list(t.shape)}")
            if s.kind == SlotKind.STATE:
                if shared is None:
                    a = np.array(a, order="C", copy=True)
                elif not a.flags.c_contiguous or not a.flags.writeable:
                    raise ValidationError(f"state {s.name!r} must be a writable C-contiguous array")
                state[s.name] = a
            elif not a.flags.c_contiguous:
                a = a.copy(order="C")
            if a.nbytes != s.nbytes:
                raise ValidationError(f"{s.kind} {s.name!r} has {a.nbytes} bytes, its slot {s.nbytes}")
            arrays[i] = a
    return arrays, state


def reset_state(state: dict[str, np.ndarray], graph: Graph) -> None:
    """Put every state tensor (e.g. a KV cache) back to its initial value, ``graph.constants[name]``.

    In place: executors hold these arrays' pointers in their slots, so the arrays must stay."""
    for name, a in state.items():
        a[...] = graph.constants[name]


def feed_array(feeds: Mapping[str, np.ndarray], name: str, dtype: np.dtype, nbytes: int) -> np.ndarray:
    """The feed as a C-contiguous array of the graph's dtype; its size must match the plan's slot."""
    try:
        a = feeds[name]
    except KeyError:
        raise FeedError(f"missing input {name!r}") from None
    a = np.asarray(a, dtype=dtype)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")
    if a.nbytes != nbytes:
        raise FeedError(f"input {name!r} has {a.nbytes} bytes ({list(a.shape)}), the plan expects {nbytes}")
    return a


@dataclass
class Profile(Mapping):
    """Seconds per executed node and a per-op-type summary (count, total ms, % of the run).

    As a mapping it is the summary, ``{op: {"count", "ms", "pct"}}``, the shape the
    reference executor's profile has, so Session callers need not care which ran."""
    nodes: list[tuple[str, str, str, float]]   # (output tensor, op, backend, seconds)
    by_op: dict[str, dict]                     # op -> {"count", "ms", "pct"}
    total_ms: float

    def __getitem__(self, op: str) -> dict:
        return self.by_op[op]

    def __iter__(self):
        return iter(self.by_op)

    def __len__(self) -> int:
        return len(self.by_op)

    @staticmethod
    def build(nodes: list[tuple[str, str, str, float]]) -> "Profile":
        total = sum(n[3] for n in nodes) * 1e3
        by_op: dict[str, dict] = {}
        for _, op, _, sec in nodes:
            e = by_op.setdefault(op, {"count": 0, "ms": 0.0, "pct": 0.0})
            e["count"] += 1
            e["ms"] += sec * 1e3
        for e in by_op.values():
            e["pct"] = 100.0 * e["ms"] / total if total > 0 else 0.0
        by_op = dict(sorted(by_op.items(), key=lambda kv: -kv[1]["ms"]))
        return Profile(nodes, by_op, total)

    def table(self) -> str:
        lines = [f"{'op':<16}{'count':>7}{'ms':>11}{'%':>8}"]
        lines += [f"{op:<16}{e['count']:>7}{e['ms']:>11.3f}{e['pct']:>7.1f}%" for op, e in self.by_op.items()]
        lines.append(f"{'total':<16}{len(self.nodes):>7}{self.total_ms:>11.3f}")
        return "\n".join(lines)


class PlannedExecutor:
    def __init__(self, graph: Graph, plan: Plan, backends: Sequence[str] = BACKENDS,
                 state: Optional[dict[str, np.ndarray]] = None):
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown or not backends:
            raise KilnError(f"backends must be a non-empty sequence of {BACKENDS}, got {tuple(backends)}")
        self.plan = plan
        self.graph = g = plan.graph_to_run(graph)
        plan.check_memory(HOST, "the planned executor")
        self.use_numpy = "numpy" in backends
        self.use_c = False
        if "c" in backends:
            from ..backends import clib
            self.use_c = clib.available()
            if not self.use_c and not self.use_numpy:
                raise BackendError("the C backend was requested alone but the kernels are not built")
        self._arena = aligned_arena(plan.arena_bytes)
        fixed, self.state = fixed_slot_arrays(g, plan, state)
        self._fixed = [as_bytes(a) if a is not None else None for a in fixed]
        self._fixed[0] = self._arena
        self._inputs = [(i, s.name, np_dtype(g.tensors[s.name].dtype), s.nbytes)
                        for i, s in enumerate(plan.slots) if s.kind == SlotKind.INPUT]
        self._outputs = [(i, tuple(g.tensors[s.name].shape), np_dtype(g.tensors[s.name].dtype))
                         for i, s in enumerate(plan.slots) if s.kind == SlotKind.OUTPUT]
        self._steps = []
        for st in plan.steps:
            if st.kind == StepKind.ALIAS:
                continue  # the output's view already shows the input's bytes
            node = g.nodes[st.node]
            self._steps.append((node, registry.get(node.op), [self._spec(i) for i in node.inputs],
                                self._spec(node.output)))
        self.fallbacks: dict[str, str] = {}  # node output -> why its C kernel was skipped
        self.last_profile: Optional[Profile] = None
        self._lock = threading.Lock()
        self._out_buffers = OutputRecycler()  # large outputs the caller let go of (kiln/core/buffers.py)

    def _spec(self, name: str) -> Spec:
        p = self.plan.placements[name]
        t = self.graph.tensors[name]
        return (p.slot, p.offset, p.nbytes, t.array_dtype, tuple(int(d) for d in t.array_shape))

    def run(self, feeds: Mapping[str, np.ndarray], profile: bool = False) -> list[np.ndarray]:
        with self._lock:  # the arena is shared by every run
            return self._run(feeds, profile)

    def _run(self, feeds: Mapping[str, np.ndarray], profile: bool) -> list[np.ndarray]:
        slots = list(self._fixed)
        for i, name, dtype, nbytes in self._inputs:
            slots[i] = as_bytes(feed_array(feeds, name, dtype, nbytes))
        outs = {}
        for i, shape, dtype in self._outputs:
            outs[i] = self._out_buffers.array(i, shape, dtype)
            slots[i] = as_bytes(outs[i])

        def view(spec: Spec) -> np.ndarray:
            slot, off, nbytes, dtype, shape = spec
            return slots[slot][off:off + nbytes].view(dtype).reshape(shape)

        timings: list[tuple[str, str, str, float]] = []
        for node, opdef, in_specs, out_spec in self._steps:
            t0 = time.perf_counter() if profile else 0.0
            backend = self._run_node(node, opdef, [view(s) for s in in_specs], view(out_spec))
            if profile:
                timings.append((node.output, node.op, backend, time.perf_counter() - t0))
        if profile:
            self.last_profile = Profile.build(timings)
        return [outs[i] for i, _, _ in self._outputs]

    def _run_node(self, node, opdef, ins: list[np.ndarray], out: np.ndarray) -> str:
        if self.use_c and node.output not in self.fallbacks:
            from ..backends import clib
            try:
                clib.run_op(node.op, ins, node.attrs, out)
                return "c"
            except BackendError as e:
                if not self.use_numpy:
                    raise BackendError(f"{node!r}: {e}") from None
                self.fallbacks[node.output] = f"{node.op}: {e}"  # visible to callers; later runs skip to numpy
        try:
            res = np.asarray(opdef.evaluate(ins, node.attrs))
        except KilnError as e:
            raise type(e)(f"{node!r}: {e}") from None
        if res.shape != out.shape:
            raise ValidationError(f"{node!r}: reference produced {list(res.shape)}, the plan has {list(out.shape)}")
        out[...] = res  # computed in full first, so writing over input 0 (in place) is safe
        return "numpy"
