"""Check run() feeds against the graph's inputs and bind its symbolic dims."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from ..errors import FeedError
from ..core import dims
from ..core.dims import Sym
from ..core.dtypes import np_dtype
from .graph import Graph

# numpy kinds accepted for each graph dtype, converted without loss of meaning
_ACCEPT = {"float32": ("f",), "int64": ("i", "u"), "int32": ("i", "u"), "bool": ("b",)}


def check_feeds(graph: Graph, feeds: Mapping[str, np.ndarray],
                memo: Optional[dict] = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Return (contiguous arrays in the graph's dtypes, symbol binding) or raise FeedError.

    ``memo``: a dict the caller keeps for one graph that no longer changes (a session's),
    holding the index ranges per binding: finding them walks every reader of the integer
    inputs (a decoder's position feeds ~60 nodes), ~0.15 ms of a 5 ms quantized decode step.

    Every check that can fail runs before any copy: names, dtypes, shapes and the symbol
    binding and ranges are read from the feeds' metadata, so a huge broadcast view of the
    wrong shape is refused without being materialized. Values are checked after conversion:
    an integer that does not fit the graph's dtype (a uint64 above 2**63 - 1), and token ids
    or indices that feed an embedding, gather or index_select directly, outside the table.
    """
    if not isinstance(feeds, Mapping):
        raise FeedError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    unknown = [k for k in feeds if k not in graph.inputs]
    if unknown:
        raise FeedError(f"unknown input {unknown[0]!r}; the model's inputs are: {', '.join(graph.inputs)}")
    missing = [k for k in graph.inputs if k not in feeds]
    if missing:
        raise FeedError(f"missing input {missing[0]!r} ({_sig(graph, missing[0])})")
    binding: dict[str, int] = {}
    given: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        a = _as_array(name, feeds[name])
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
        given[name] = a
    # Bind bare symbols first (then those of c*s + k, e.g. an axis exported as 2*n), then check
    # every expression against the binding.
    for bare in (True, False):
        _bind(graph, given, binding, bare)
    for name in graph.inputs:
        t = graph.tensors[name]
        for axis, (want, got) in enumerate(zip(t.shape, given[name].shape)):
            if isinstance(want, Sym):
                if not want.symbols <= binding.keys():
                    raise FeedError(f"input {name!r}: cannot bind {want} from the feeds")
                if want.evaluate(binding) != got:
                    raise FeedError(f"input {name!r}: expected shape {dims.fmt_shape(t.shape)} with "
                                    f"{_fmt_binding(binding)}, i.e. axis {axis} = {want.evaluate(binding)}, "
                                    f"got {list(given[name].shape)}")
    _check_ranges(graph, binding)
    arrays = {name: _convert(name, given[name], graph.tensors[name].dtype) for name in graph.inputs}
    _check_indices(graph, arrays, binding, memo)
    return arrays, binding


def _bind(graph: Graph, given: Mapping[str, np.ndarray], binding: dict[str, int], bare: bool) -> None:
    for name in graph.inputs:
        t = graph.tensors[name]
        for axis, (want, got) in enumerate(zip(t.shape, given[name].shape)):
            lin = _linear(want)
            if lin is None or (lin[1:] != (1, 0)) == bare:
                continue
            sym, c, k = lin
            if (got - k) % c or (got - k) // c < 0:
                raise FeedError(f"input {name!r}: axis {axis} is {got}, but the model needs {want} for some "
                                f"{sym} >= 0; expected shape {dims.fmt_shape(t.shape)}")
            value = (got - k) // c
            if sym in binding and binding[sym] != value:
                src_name, src_axis = graph.sym_sources.get(sym, (name, axis))
                raise FeedError(f"input {name!r}: axis {axis} is {got}, but dimension {sym} was bound to "
                                f"{binding[sym]} by input {src_name!r} axis {src_axis}; "
                                f"expected shape {dims.fmt_shape(t.shape)}, got {list(given[name].shape)}")
            binding[sym] = int(value)


def _linear(d) -> "tuple[str, int, int] | None":
    """(s, c, k) when ``d`` is c*s + k with c >= 1, else None."""
    if not isinstance(d, Sym) or len(d.symbols) != 1:
        return None
    sym = next(iter(d.symbols))
    if set(d.terms) - {(sym,), ()} or d.terms.get((sym,), 0) < 1:
        return None
    return sym, d.terms[(sym,)], d.terms.get((), 0)


def _as_array(name: str, a) -> np.ndarray:
    """A numpy array from a feed: an ndarray, or an object with ``.numpy()`` (a torch tensor)."""
    if isinstance(a, np.ndarray):
        return a
    fn = getattr(a, "numpy", None) if not isinstance(a, (str, bytes)) else None
    if not callable(fn):
        raise FeedError(f"input {name!r}: expected a numpy array, got {type(a).__name__}")
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 (a foreign object's failure becomes one clear error)
        raise FeedError(f"input {name!r}: {type(a).__name__}.numpy() failed: {type(e).__name__}: {e}") from None
    if not isinstance(out, np.ndarray):
        raise FeedError(f"input {name!r}: {type(a).__name__}.numpy() returned {type(out).__name__}, not an array")
    return out


def _convert(name: str, a: np.ndarray, dtype: str) -> np.ndarray:
    target = np_dtype(dtype)
    if a.dtype.kind in "iu" and a.dtype != target and a.size:
        info = np.iinfo(target)
        lo, hi = int(a.min()), int(a.max())
        if lo < info.min or hi > info.max:
            raise FeedError(f"input {name!r}: values {lo}..{hi} do not fit {dtype} "
                            f"[{info.min}, {info.max}]")
    return np.asarray(a, dtype=target, order="C")


# (op, input position of the index) -> the axis of input 0 it indexes (None: the attr axis),
# and whether negative indices count from the end (torch.gather/index_select) or not (embedding).
_INDEXING = {("embedding", 1): (0, False), ("gather", 1): (None, True), ("index_select", 1): (None, True)}


def index_ranges(graph: Graph, binding: Mapping[str, int]) -> dict[str, tuple[int, int, str]]:
    """input name -> (lo, hi, what) for integer inputs read directly as indices: valid values
    are lo <= v < hi, ``what`` names the node and table (for the error)."""
    out: dict[str, tuple[int, int, str]] = {}
    for name in graph.inputs:
        if graph.tensors[name].dtype not in ("int64", "int32"):
            continue
        for node in graph.users(name):
            for pos, x in enumerate(node.inputs):
                rule = _INDEXING.get((node.op, pos))
                if x != name or rule is None:
                    continue
                axis = rule[0] if rule[0] is not None else node.attrs.axis
                table = graph.tensors[node.inputs[0]]
                if not 0 <= axis < len(table.shape):
                    continue  # the op's own shape check refuses the graph
                n = dims.evaluate(table.shape[axis], binding) if isinstance(table.shape[axis], Sym) else table.shape[axis]
                lo, hi = (-n if rule[1] else 0), n
                what = f"{node.op} {node.output!r} over {node.inputs[0]!r} axis {axis}"
                prev = out.get(name)
                if prev is not None:  # read by several: every reader's range must hold
                    lo, hi, what = max(lo, prev[0]), min(hi, prev[1]), (what if hi < prev[1] else prev[2])
                out[name] = (lo, hi, what)
    return out


_MEMO_MAX = 1024   # bindings remembered per graph (one per prompt length, at most)


def _check_indices(graph: Graph, arrays: Mapping[str, np.ndarray], binding: Mapping[str, int],
                   memo: Optional[dict] = None) -> None:
    key = tuple(sorted(binding.items()))
    ranges = memo.get(key) if memo is not None else None
    if ranges is None:
        ranges = index_ranges(graph, binding)
        if memo is not None:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[key] = ranges
    for name, (lo, hi, what) in ranges.items():
        a = arrays[name]
        if a.size and (int(a.min()) < lo or int(a.max()) >= hi):
            raise FeedError(f"input {name!r}: values {int(a.min())}..{int(a.max())} outside the valid range "
                            f"[{lo}, {hi}) of {what}")


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
