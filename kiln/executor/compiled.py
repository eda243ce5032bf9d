"""The compiled executor: one C call runs the whole plan.

At construction it resolves every step into a ``cabi.Call`` (op id, each tensor
as slot + byte offset + shape + dtype, scratch, packed params) and fills the
slots array with the pointers that never change (arena, weights, state). Every
(slot, offset, nbytes) is checked against its buffer here, in Python, so nothing
unchecked reaches C. A run only binds the inputs' and freshly allocated outputs'
pointers and calls ``clib.run_calls`` once: no Python between ops. Large outputs
reuse a buffer the caller has let go of (``OutputRecycler``), so a run does not fault
in fresh pages inside its kernels.
"""
from __future__ import annotations

import ctypes
import math
import threading
from typing import Mapping, Optional

import numpy as np

from ..backends import cabi, clib
from ..backends.c import BACKEND as C
from ..core.buffers import OutputRecycler
from ..core.dtypes import ITEMSIZE, np_dtype
from ..errors import BackendError, ValidationError
from ..ir.graph import Graph
from ..ops import registry
from ..planner.kinds import SlotKind, StepKind
from ..planner.plan import HOST, Placement, Plan
from .planned import Profile, aligned_arena, feed_array, fixed_slot_arrays


class CompiledExecutor:
    def __init__(self, graph: Graph, plan: Plan, state: Optional[dict[str, np.ndarray]] = None):
        if not clib.available():
            raise BackendError("the compiled executor needs the C kernels: run `pip install -e .` to build them")
        self.plan = plan
        self.graph = g = plan.graph_to_run(graph)
        plan.check_memory(HOST, "the compiled executor")
        C.check(g)
        self._arena = aligned_arena(plan.arena_bytes)
        arrays, self.state = fixed_slot_arrays(g, plan, state)
        arrays[0] = self._arena
        self._arrays = arrays  # keeps weights/state/arena alive while C holds their pointers
        # Bytes actually behind each slot: the real arrays where they exist, the resolved
        # shapes for the per-run inputs and outputs (whose feeds are size-checked each run).
        self._slot_nbytes = [a.nbytes if a is not None else s.nbytes for a, s in zip(arrays, plan.slots)]
        self._slots = (ctypes.c_void_p * max(len(plan.slots), 1))()
        for i, a in enumerate(arrays):
            if a is not None:
                self._slots[i] = a.ctypes.data
        self._inputs = [(i, s.name, np_dtype(g.tensors[s.name].dtype), s.nbytes)
                        for i, s in enumerate(plan.slots) if s.kind == SlotKind.INPUT]
        self._outputs = [(i, tuple(int(d) for d in g.tensors[s.name].shape), np_dtype(g.tensors[s.name].dtype))
                         for i, s in enumerate(plan.slots) if s.kind == SlotKind.OUTPUT]
        self._build_calls()
        self._lock = threading.Lock()  # the arena, slots array and output buffers are shared by every run
        self._out_buffers = OutputRecycler()
        self.last_profile = None

    def _build_calls(self) -> None:
        g, plan = self.graph, self.plan
        work = [s for s in plan.steps if s.kind != StepKind.ALIAS]  # true aliases need no kernel
        self._n = len(work)
        self._calls = (cabi.Call * max(self._n, 1))()
        self._params = []  # ctypes param structs must outlive the calls that point at them
        self._ops: list[tuple[str, str]] = []  # (output, op) per call, for profiles
        self._nodes = [st.node for st in work]  # graph node per call, for error messages
        for k, st in enumerate(work):
            node = g.nodes[st.node]
            where = f"{node!r}"
            opdef = registry.get(node.op)
            if opdef.has(registry.FOLD_ONLY):
                raise ValidationError(f"{where}: fold-only op reached the executor")
            if len(node.inputs) > registry.MAX_INPUTS:
                raise ValidationError(f"{where}: {len(node.inputs)} inputs exceed the C limit of {registry.MAX_INPUTS}")
            c = self._calls[k]
            c.op = cabi.op_id(node.op)
            c.n_in = len(node.inputs)
            for j, name in enumerate(node.inputs):
                self._fill(getattr(c, "in")[j], name, where)
            self._fill(c.out, node.output, where)
            if st.scratch is not None and st.scratch.nbytes > 0:
                self._check(st.scratch, (st.scratch.nbytes,), "bool", f"{where} scratch")
                cabi.fill_tensor(c.scratch, slot=0, offset=st.scratch.offset, shape=(st.scratch.nbytes,), dtype="bool")
            in_shapes = [tuple(int(d) for d in g.tensors[i].shape) for i in node.inputs]
            out_shape = tuple(int(d) for d in g.tensors[node.output].shape)
            params = cabi.make_params(node.op, C.kernel_for(g, node).param_values(node.attrs, in_shapes, out_shape))
            if params is not None:
                self._params.append(params)
                c.params = ctypes.cast(ctypes.pointer(params), ctypes.c_void_p)
            self._ops.append((node.output, node.op))

    def _fill(self, t: cabi.Tensor, name: str, where: str) -> None:
        tensor = self.graph.tensors[name]
        shape = tuple(int(d) for d in tensor.shape)
        dtype = tensor.dtype
        if tensor.storage != "plain":  # a stored weight travels as its bytes (the kernel knows [N, K])
            shape, dtype = (int(tensor.nbytes),), "bool"
        if len(shape) > registry.MAX_DIMS:
            raise ValidationError(f"{where}: tensor {name!r} has rank {len(shape)}, the C limit is {registry.MAX_DIMS}")
        p = self.plan.placements[name]
        self._check(p, shape, dtype, f"{where} tensor {name!r}")
        cabi.fill_tensor(t, slot=p.slot, offset=p.offset, shape=shape, dtype=dtype)

    def _check(self, p: Placement, shape, dtype: str, what: str) -> None:
        need = math.prod(int(d) for d in shape) * ITEMSIZE[dtype]  # Python ints: no overflow
        if p.nbytes != need:
            raise ValidationError(f"{what}: placed with {p.nbytes} bytes, its shape needs {need}")
        if not 0 <= p.slot < len(self._slot_nbytes):
            raise ValidationError(f"{what}: slot {p.slot} does not exist")
        if p.offset < 0 or p.offset + need > self._slot_nbytes[p.slot]:
            raise ValidationError(f"{what}: bytes [{p.offset}, {p.offset + need}) lie outside slot {p.slot} "
                                  f"({self.plan.slots[p.slot].kind} {self.plan.slots[p.slot].name!r}, "
                                  f"{self._slot_nbytes[p.slot]} bytes)")

    def run(self, feeds: Mapping[str, np.ndarray], profile: bool = False) -> list[np.ndarray]:
        # The feeds' sizes are the one check we must make: C trusts every byte count.
        arrays = [(i, feed_array(feeds, name, dtype, nbytes)) for i, name, dtype, nbytes in self._inputs]
        prof = (ctypes.c_int64 * max(self._n, 1))() if profile else None
        with self._lock:
            outs = [self._out_buffers.array(i, shape, dtype) for i, shape, dtype in self._outputs]
            for i, a in arrays:
                self._slots[i] = a.ctypes.data
            for (i, _, _), o in zip(self._outputs, outs):
                self._slots[i] = o.ctypes.data
            try:
                clib.run_calls(self._calls, self._n, self._slots, prof)
            except clib.KernelError as e:  # name the node; its output (and later ones) are unwritten
                if not 0 <= e.index < self._n:
                    raise
                raise BackendError(f"{self.graph.nodes[self._nodes[e.index]]!r}: {e}") from None
        if profile:
            self.last_profile = Profile.build([(name, op, "c", prof[k] * 1e-9) for k, (name, op) in enumerate(self._ops)])
        return outs

