"""Check run() feeds against the graph's inputs and bind its symbolic dims."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import FeedError
from ..core import dims
from ..core.dims import Sym
from .graph import Graph

# numpy kinds accepted for each graph dtype, converted without loss of meaning
_ACCEPT = {"float32": ("f",), "int64": ("i", "u"), "int32": ("i", "u"), "bool": ("b",)}


def check_feeds(graph: Graph, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Return (contiguous arrays in the graph's dtypes, symbol binding) or raise FeedError."""
    if not isinstance(feeds, Mapping):
        raise FeedError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    unknown = [k for k in feeds if k not in graph.inputs]
    if unknown:
        raise FeedError(f"unknown input {unknown[0]!r}; the model's inputs are: {', '.join(graph.inputs)}")
    missing = [k for k in graph.inputs if k not in feeds]
    if missing:
        raise FeedError(f"missing input {missing[0]!r} ({_sig(graph, missing[0])})")
    binding: dict[str, int] = {}
    arrays: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        a = feeds[name]
        if not isinstance(a, np.ndarray):
            if hasattr(a, "numpy") and callable(a.numpy):
                a = a.numpy()
            else:
                raise FeedError(f"input {name!r}: expected a numpy array, got {type(a).__name__}")
        if a.dtype.kind not in _ACCEPT[t.dtype]:
            raise FeedError(f"input {name!r}: expected dtype {t.dtype}, got {a.dtype}")
        if a.ndim != len(t.shape):
            raise FeedError(f"input {name!r}: expected shape {dims.fmt_shape(t.shape)} (rank {len(t.shape)}), "
                            f"got {list(a.shape)} (rank {a.ndim})")
        for axis, (want, got) in enumerate(zip(t.shape, a.shape)):
            if isinstance(want, int):
                if want != got:
                    raise FeedError(f"input {name!r}: expected shape {dims.fmt_shape(t.shape)}, got {list(a.shape)} "
                                    f"(axis {axis} must be {want})")
        arrays[name] = np.asarray(a, dtype=t.dtype if t.dtype != "bool" else np.bool_, order="C")
    # Bind bare symbols first, then check every expression against the binding.
    for name in graph.inputs:
        t = graph.tensors[name]
        for axis, (want, got) in enumerate(zip(t.shape, arrays[name].shape)):
            if isinstance(want, Sym) and len(want.symbols) == 1 and want == Sym.var(next(iter(want.symbols))):
                sym = next(iter(want.symbols))
                if sym in binding and binding[sym] != got:
                    src_name, src_axis = graph.sym_sources.get(sym, (name, axis))
                    raise FeedError(f"input {name!r}: axis {axis} is {got}, but dimension {sym} was bound to "
                                    f"{binding[sym]} by input {src_name!r} axis {src_axis}; "
                                    f"expected shape {dims.fmt_shape(t.shape)}, got {list(arrays[name].shape)}")
                binding[sym] = int(got)
    for name in graph.inputs:
        t = graph.tensors[name]
        for axis, (want, got) in enumerate(zip(t.shape, arrays[name].shape)):
            if isinstance(want, Sym):
                if not want.symbols <= binding.keys():
                    raise FeedError(f"input {name!r}: cannot bind {want} from the feeds")
                if want.evaluate(binding) != got:
                    raise FeedError(f"input {name!r}: expected shape {dims.fmt_shape(t.shape)} with "
                                    f"{_fmt_binding(binding)}, i.e. axis {axis} = {want.evaluate(binding)}, "
                                    f"got {list(arrays[name].shape)}")
    _check_ranges(graph, binding)
    return arrays, binding


def _check_ranges(graph: Graph, binding: dict[str, int]) -> None:
    for sym, (lo, hi) in graph.sym_ranges.items():
        v = binding.get(sym)
        if v is not None and not (lo <= v <= hi):
            name, axis = graph.sym_sources.get(sym, ("?", -1))
            raise FeedError(f"input {name!r}: axis {axis} = {v} is outside the range [{lo}, {hi}] "
                            f"the model was compiled for")


def _sig(graph: Graph, name: str) -> str:
    t = graph.tensors[name]
    return f"{t.dtype}{dims.fmt_shape(t.shape)}"


def _fmt_binding(b: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(b.items()))
