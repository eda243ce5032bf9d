"""TritonSession: one graph on the device for any binding of its symbolic dims.

The contract of ``kiln.Session.run`` (numpy feeds in, checked; numpy outputs out) with a
TritonExecutor per binding, cached like Session's plans, all sharing one device-resident
state, so a prefill plan and a decode plan continue one KV-cache sequence. It is what a
``Session(executor="triton")`` needs underneath; until Session grows that hook, generation
code such as ``kiln.models.decoders.CachedDecoder`` can take a TritonSession directly.
"""
from __future__ import annotations

import collections
from typing import Mapping, Optional

import numpy as np

from ...ir.feeds import check_feeds
from ...ir.graph import Graph
from ...ir.validate import validate
from .executor import TritonExecutor, build

MAX_PLANS = 8   # as kiln.session.MAX_PLANS: prefill and decode, and a bound for many prompt lengths


class TritonSession:
    def __init__(self, graph: Graph, *, device=None, max_plans: int = MAX_PLANS, cuda_graph: bool = False):
        validate(graph)
        self.graph = graph
        self.device = device
        self.max_plans = max_plans
        self.cuda_graph = cuda_graph
        self.state: Optional[dict] = None   # device tensors, made by the first executor
        self._executors: collections.OrderedDict[tuple, TritonExecutor] = collections.OrderedDict()
        self.last_profile = None

    @property
    def input_names(self) -> list[str]:
        return list(self.graph.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    def run(self, feeds: Mapping[str, np.ndarray], *, profile: bool = False) -> list[np.ndarray]:
        arrays, binding = check_feeds(self.graph, feeds)
        if self.graph.kv_cache is not None:
            self.graph.kv_cache.check_positions(arrays)
        ex = self.executor_for(binding)
        outs = ex.run(arrays, profile=profile)
        if profile:
            self.last_profile = ex.last_profile
        return outs

    def executor_for(self, binding: Mapping[str, int]) -> TritonExecutor:
        key = tuple(sorted(binding.items()))
        ex = self._executors.get(key)
        if ex is None:
            ex = build(self.graph, dict(binding), state=self.state, device=self.device, cuda_graph=self.cuda_graph)
            self.state = ex.state
            self._executors[key] = ex
            while len(self._executors) > self.max_plans:
                self._executors.popitem(last=False)
        else:
            self._executors.move_to_end(key)
        return ex

    def reset_state(self) -> None:
        """Every state tensor (the KV cache) back to its initial value, on the device."""
        if self._executors:
            next(iter(self._executors.values())).reset_state()
