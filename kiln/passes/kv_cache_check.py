"""The KV-cache transform checks its own result before anyone decodes with it.

A short synthetic prompt is prefilled through the cached graph, then a few tokens are decoded one
at a time; after each step the last position's logits must equal those of the stateless graph
recomputed on the whole prefix. Both graphs are evaluated with the numpy reference (ops' own
``evaluate``), so the check needs no executor and no compiled kernels. A position-dependent value
the transform did not move (positions from ``cumsum(attention_mask) - 1``, a mask it cannot see)
shows here as different logits, and the transform refuses instead of decoding wrong tokens.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..core import dims
from ..core.blas import one_blas_thread
from ..errors import KilnError
from ..ir.graph import STATE, Graph
from ..ir.resolve import resolve_attrs
from ..ops import registry
from ..ops.cache import WRITES_STATE

PROMPT = 3
STEPS = 3
RTOL = 1e-3


def verify_kv_cache(stateless: Graph, cached: Graph) -> None:
    """Raise KilnError when ``cached`` (from add_kv_cache) disagrees with ``stateless`` on a synthetic run."""
    info = cached.kv_cache
    tokens = stateless.tensors[info.token_input]
    batch, seq = tokens.shape
    sym = next(iter(dims.symbols_of((seq,))), None)
    lo, hi = stateless.sym_ranges.get(sym, (1, info.max_len)) if sym else (seq, seq)
    prompt = max(PROMPT, lo)
    steps = min(STEPS, info.max_len - prompt, hi - prompt)
    if sym is None or steps < 1 or not isinstance(batch, int):
        return   # nothing to decode in this range: no decode step can go wrong
    vocab = _vocab(stateless)
    ids = (np.arange(batch * (prompt + steps), dtype=np.int64).reshape(batch, -1) * 7 + 3) % vocab
    state = {name: np.array(cached.constants[name], copy=True) for name in cached.state}
    for end in range(prompt, prompt + steps + 1):
        start = 0 if end == prompt else end - 1
        new = _run(cached, {info.token_input: ids[:, start:end], info.position_input: np.int64(start)},
                   {sym: end - start}, state)
        ref = _run(stateless, {info.token_input: ids[:, :end]}, {sym: end}, None)
        got, want = _last(new), _last(ref)
        if got.shape != want.shape:
            raise KilnError(f"KV cache self-check: cached logits {got.shape} vs stateless {want.shape}")
        err = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
        if not err <= RTOL:
            what = "the prompt" if end == prompt else f"decode step {end - prompt} (position {end - 1})"
            raise KilnError(
                f"KV cache self-check failed: after {what} of a {prompt}-token synthetic prompt, the cached "
                f"graph's logits differ from the stateless graph's on the whole prefix by {err:.3g} (relative); "
                f"some position-dependent value does not follow the cache position "
                f"(e.g. positions computed from an attention mask, or a mask the transform does not see)")


def _vocab(graph: Graph) -> int:
    """An upper bound for token ids: the rows of the embedding table the tokens index."""
    token = next(i for i in graph.inputs if graph.tensors[i].dtype == "int64")
    for node in graph.users(token):
        shape = graph.tensors[node.inputs[0]].shape if node.inputs else ()
        if node.inputs and node.inputs[0] != token and shape and isinstance(shape[0], int):
            return int(shape[0])
    out = graph.tensors[graph.outputs[0]].shape
    return int(out[-1]) if out and isinstance(out[-1], int) else 2


def _last(x: np.ndarray) -> np.ndarray:
    return x[..., -1:, :] if x.ndim >= 2 else x


def _run(graph: Graph, feeds: dict, binding: dict, state: Optional[dict]) -> np.ndarray:
    """One step of ``graph`` with the numpy reference (also the batched transform's self-check)."""
    with one_blas_thread():
        return _evaluate(graph, feeds, binding, state)


def _evaluate(graph: Graph, feeds: dict, binding: dict, state: Optional[dict]) -> np.ndarray:
    values = dict(graph.constants)
    if state is not None:
        values.update(state)
    values.update(feeds)
    written: dict[str, str] = {}
    for node in graph.nodes:
        op = registry.get(node.op)
        values[node.output] = op.evaluate([values[i] for i in node.inputs], resolve_attrs(node.attrs, binding))
        if op.has(WRITES_STATE):
            root = next((r for r, t in written.items() if t == node.inputs[0]), node.inputs[0])
            if graph.tensors[root].kind == STATE:
                written[root] = node.output
    if state is not None:
        for root, t in written.items():
            state[root] = values[t]
    return values[graph.outputs[0]]
