"""TritonExecutor: a static, planned Kiln graph run by Triton kernels on one device.

Memory follows the Plan exactly as the CPU executors do: slot 0 (the arena) is one
device byte buffer and every activation is a typed view at its planned offset, so
aliases share bytes and in-place steps write over their input with no extra copies.
Weights are uploaded once, at construction; state (the KV cache) lives on the device
for the executor's life and can be shared with other plans of the same graph (prefill
and decode); inputs cross to the device once per run into preallocated buffers, and
outputs cross back once. Between those two copies a run only enqueues kernels.
Every slot of its plan is in DEVICE memory (``plan(..., memory=DEVICE)``).
"""
from __future__ import annotations

import threading
import time
from typing import Mapping, Optional

import numpy as np

from ..backends.triton import BACKEND, runtime
from ..backends.triton.runtime import TORCH_DTYPES, torch
from ..core.dtypes import ITEMSIZE, np_dtype
from ..errors import ValidationError
from ..ir.graph import Graph
from ..ops import registry as ops
from ..planner.kinds import SlotKind, StepKind
from ..planner.plan import DEVICE, Plan
from .planned import Profile, feed_array


def _upload(a: np.ndarray, dev) -> "torch.Tensor":
    return torch.from_numpy(np.array(a, order="C", copy=True)).to(dev)


def _bytes(t: "torch.Tensor") -> "torch.Tensor":
    return t.reshape(-1).view(torch.uint8)


class TritonExecutor:
    """Run ``plan`` (made for ``graph``) on ``device`` (default: runtime.device()).

    ``state``: name -> device tensor, shared with other executors of the same graph so
    that their runs continue one sequence (pass ``other.state``, or a Session's dict): the
    tensors found are used in place, missing ones start from the graph's initial values and
    are added to that same dict; numpy arrays in it are replaced by device copies.
    ``cuda_graph``: on a GPU, record the launches of the second run into a CUDA graph and
    replay it from then on (every buffer is fixed and cache positions are read on the device,
    so one recording serves every later run; the first run autotunes and compiles). Off by
    default: not yet exercised on a GPU here.
    Raises BackendError when an op has no Triton kernel or no device is usable, and
    ValidationError for a plan made for host memory."""

    def __init__(self, graph: Graph, plan: Plan, state: Optional[Mapping] = None, device=None,
                 cuda_graph: bool = False):
        self.plan = plan
        self.graph = g = plan.graph_to_run(graph)
        plan.check_memory(DEVICE, "the triton executor")
        BACKEND.check(g)
        self.ctx = runtime.Context(device)
        dev = self.ctx.device
        self.device = dev
        self.state: dict[str, "torch.Tensor"] = state if isinstance(state, dict) else {}
        slots: list["torch.Tensor"] = []
        self._inputs, self._outputs = [], []
        for i, s in enumerate(plan.slots):
            t = g.tensors[s.name] if s.name else None
            if i == 0:
                buf = torch.empty(max(s.nbytes, 1), dtype=torch.uint8, device=dev)
            elif s.kind == SlotKind.CONST:
                buf = _bytes(_upload(self._checked(s, g.constants[s.name]), dev))
            elif s.kind == SlotKind.STATE:
                buf = _bytes(self._state_tensor(s, state))
            else:
                buf = torch.empty(max(s.nbytes, 1), dtype=torch.uint8, device=dev)
                shape = tuple(int(d) for d in t.shape)
                if s.kind == SlotKind.INPUT:
                    self._inputs.append((s.name, np_dtype(t.dtype), s.nbytes, buf))
                elif s.kind == SlotKind.OUTPUT:
                    self._outputs.append((buf, s.nbytes, TORCH_DTYPES[t.dtype], shape))
            slots.append(buf)
        self._slots = slots
        self._steps = []
        for st in plan.steps:
            if st.kind == StepKind.ALIAS:
                continue  # the output's view already shows the input's bytes
            node = g.nodes[st.node]
            opdef = ops.get(node.op)
            if opdef.has(ops.FOLD_ONLY):
                raise ValidationError(f"{node!r}: fold-only op reached the executor")
            self._steps.append((BACKEND.kernel_for(g, node).fn, [self._view(i, node) for i in node.inputs],
                                self._view(node.output, node), node.attrs, node))
        self.last_profile: Optional[Profile] = None
        self._lock = threading.Lock()
        self._use_graph = cuda_graph and dev.type == "cuda"
        self._graph = None
        self._runs = 0

    # -- construction helpers ---------------------------------------------------------
    def _checked(self, slot, a) -> np.ndarray:
        t = self.graph.tensors[slot.name]
        a = np.asarray(a)
        if a.dtype != np_dtype(t.dtype) or tuple(a.shape) != tuple(int(d) for d in t.shape):
            raise ValidationError(f"{slot.kind} {slot.name!r}: data is {a.dtype}{list(a.shape)}, "
                                  f"the graph says {t.dtype}{list(t.shape)}")
        return a

    def _state_tensor(self, slot, shared) -> "torch.Tensor":
        given = None if shared is None else shared.get(slot.name)
        if isinstance(given, torch.Tensor):
            t = self.graph.tensors[slot.name]
            if (given.device != self.device or given.dtype != TORCH_DTYPES[t.dtype]
                    or tuple(given.shape) != tuple(int(d) for d in t.shape) or not given.is_contiguous()):
                raise ValidationError(f"state {slot.name!r}: expected a contiguous {t.dtype}{list(t.shape)} "
                                      f"tensor on {self.device}, got {given.dtype}{list(given.shape)} on {given.device}")
            dev_t = given
        else:
            dev_t = _upload(self._checked(slot, self.graph.constants[slot.name] if given is None else given),
                            self.device)
        self.state[slot.name] = dev_t
        return dev_t

    def _view(self, name: str, node) -> "torch.Tensor":
        t = self.graph.tensors[name]
        p = self.plan.placements[name]
        shape = tuple(int(d) for d in t.shape)
        need = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[t.dtype]
        buf = self._slots[p.slot]
        if p.nbytes != need or p.offset < 0 or p.offset + need > buf.numel() or p.offset % ITEMSIZE[t.dtype]:
            raise ValidationError(f"{node!r}: tensor {name!r} placed at [{p.offset}, {p.offset + p.nbytes}) of slot "
                                  f"{p.slot} ({buf.numel()} bytes) does not fit {t.dtype}{list(shape)}")
        return buf[p.offset:p.offset + need].view(TORCH_DTYPES[t.dtype]).view(shape)

    # -- running ------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Put every state tensor back to its initial value (in place: views keep pointing at it)."""
        with self._lock:
            reset_state(self.state, self.graph)

    def run(self, feeds: Mapping[str, np.ndarray], profile: bool = False) -> list[np.ndarray]:
        host = [(feed_array(feeds, name, dtype, nbytes), buf) for name, dtype, nbytes, buf in self._inputs]
        with self._lock:  # the arena and the input/output buffers are shared by every run
            for a, buf in host:
                if a.nbytes:
                    buf[:a.nbytes].copy_(_bytes(torch.from_numpy(a)))
            timings: list = []
            if self._graph is not None and not profile:
                self._graph.replay()
            elif self._use_graph and self._runs >= 1 and not profile:
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph):
                    self._launch_all(None)
                self._graph.replay()
            else:
                self._launch_all(timings if profile else None)
            self._runs += 1
            outs = [buf[:n].view(dtype).view(shape).to("cpu", copy=True).numpy() for buf, n, dtype, shape in self._outputs]
            self.ctx.check(lambda code: repr(self._steps[code - 1][4]))
        if profile:
            self.last_profile = Profile.build(timings)
        return outs

    def _launch_all(self, timings: Optional[list]) -> None:
        for k, (launch, ins, out, attrs, node) in enumerate(self._steps):
            self.ctx.code = k + 1
            t0 = time.perf_counter() if timings is not None else 0.0
            launch(ins, out, attrs, self.ctx)
            if timings is not None:
                self._sync()
                timings.append((node.output, node.op, "triton", time.perf_counter() - t0))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def reset_state(state: dict, graph: Graph) -> None:
    """Every device state tensor (the KV cache) back to ``graph.constants[name]``, in place."""
    for name, t in state.items():
        t.copy_(torch.from_numpy(np.asarray(graph.constants[name])).to(t.device))


def build(graph: Graph, binding: Optional[Mapping[str, int]] = None, *, state=None, device=None,
          cuda_graph: bool = False) -> TritonExecutor:
    """Resolve ``graph`` for ``binding`` (symbol -> size), plan it for the device with the triton
    backend, and return its executor (what ``Session(graph, backend="triton")`` does per binding)."""
    from .registry import EXECUTORS
    return EXECUTORS["triton"].factory(graph, dict(binding or {}), state, BACKEND, cuda_graph=cuda_graph,
                                       device=device)
