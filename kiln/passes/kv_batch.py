"""Turn a single-sequence KV-cache graph into a batched one over ``slots`` sequence slots.

Input: a graph from add_kv_cache (kiln/passes/kv_cache.py): int64 [1, S] token ids, an int64 scalar
``cache_position``, caches [1, Hkv, L, D]. Output: a packed variable-length batch. The tokens of every
sequence that runs this step are concatenated on the sequence axis (still [1, S]); three new inputs say

  ``cache_slots``     int64 [S]  the slot (sequence) each token belongs to, in [0, slots)
  ``cache_positions`` int64 [S]  each token's position in its sequence, in [0, L)
  ``logit_rows``      int64 [R]  the tokens whose next-token logits are wanted (a sequence's last)

and the caches become [slots, Hkv, L, D]. cache_write becomes slot_cache_write (token t to
(slot[t], pos[t])), cached_attention becomes slot_cached_attention (token t sees positions 0..pos[t]
of its own slot), ``arange(S) + cache_position`` becomes ``cache_positions`` (so rotary tables and
learned position embeddings follow), and the last-position slice before the LM head becomes a gather
of ``logit_rows``, so the LM head runs on R rows only. Every other op works row by row, so a
sequence's results do not depend on what else is in the batch; a self-check (numpy reference) runs
two interleaved sequences against the single-sequence graph and refuses on any difference.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ..core import dims
from ..core.dims import Sym
from ..errors import KilnError
from ..ir.graph import Graph
from ..ir.kv_cache import KVCacheInfo
from ..ir.validate import validate
from ..ops import registry
from .engine import dead_code_elimination

SLOTS = "cache_slots"
POSITIONS = "cache_positions"
LOGIT_ROWS = "logit_rows"
RTOL = 1e-3


def batch_kv_cache(cached: Graph, slots: int, *, verify: bool = True) -> Graph:
    """The batched graph (see the module docstring). Raises KilnError naming what refuses: no KV cache,
    a batch other than 1, a node that reads the cache position in a way the transform cannot move, or
    a failed self-check."""
    info = cached.kv_cache
    if info is None or info.slots:
        raise KilnError("batch_kv_cache needs a single-sequence KV-cache graph (from add_kv_cache)")
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 4096:
        raise KilnError(f"the number of slots must be an integer in [1, 4096], got {slots!r}")
    g = cached.copy()
    tokens = g.tensors[info.token_input]
    seq = tokens.shape[1]
    if tokens.shape[0] != 1 or not isinstance(seq, Sym) or len(seq.symbols) != 1:
        raise KilnError(f"cannot batch the KV cache: token ids must be [1, S] with a symbolic S, got "
                        f"{dims.fmt_shape(tokens.shape)}")
    for name in (SLOTS, POSITIONS, LOGIT_ROWS):
        if name in g.tensors:
            raise KilnError(f"cannot batch the KV cache: the graph already has a tensor named {name!r}")
    g.add_input(SLOTS, (seq,), "int64")
    g.add_input(POSITIONS, (seq,), "int64")
    _slot_states(g, info, slots)
    for node in list(g.nodes):
        if info.position_input in node.inputs:
            _rewrite_position_user(g, node, info.position_input)
    g.inputs.remove(info.position_input)
    del g.tensors[info.position_input]
    _gather_logits(g, seq)
    dead_code_elimination(g)
    g.remove_unused_tensors()
    g.kv_cache = KVCacheInfo(info.token_input, POSITIONS, info.max_len, info.state_names, slots=slots,
                             slot_input=SLOTS, logits_input=LOGIT_ROWS)
    validate(g)
    if verify:
        verify_batched(cached, g)
    return g


def _slot_states(g: Graph, info: KVCacheInfo, slots: int) -> None:
    for name in info.state_names:
        t = g.tensors[name]
        if t.shape[0] != 1:
            raise KilnError(f"cannot batch the KV cache: state {name} is {list(t.shape)}, batch must be 1")
        shape = (slots,) + tuple(t.shape[1:])
        g.tensors[name] = dataclasses.replace(t, shape=shape)
        g.constants[name] = np.zeros(shape, g.constants[name].dtype)


def _rewrite_position_user(g: Graph, node, position: str) -> None:
    where = f"\n  at {node.source}" if node.source else ""
    index = g.nodes.index(node)
    if node.op == "cache_write" and node.inputs[2] == position:
        cache, new, _ = node.inputs
        out = g.add_node("slot_cache_write", [cache, new, SLOTS, POSITIONS], name=f"{node.output}.slots",
                         source=node.source, index=index)
    elif node.op == "cached_attention" and node.inputs[3] == position:
        q, k, v, _ = node.inputs
        out = g.add_node("slot_cached_attention", [q, k, v, SLOTS, POSITIONS], {"scale": node.attrs.scale},
                         name=f"{node.output}.slots", source=node.source, index=index)
    elif node.op == "add" and _is_arange(g, node.inputs[0]) and node.inputs[1] == position:
        out = POSITIONS
        if g.tensors[node.output].dtype != "int64":
            out = g.add_node("cast", [POSITIONS], {"dtype": g.tensors[node.output].dtype},
                             name=f"{node.output}.cast", source=node.source, index=index)
        if g.tensors[node.output].shape != g.tensors[out].shape:
            raise KilnError(f"cannot batch the KV cache: positions {node.output} have shape "
                            f"{dims.fmt_shape(g.tensors[node.output].shape)}, not [S]{where}")
    else:
        raise KilnError(f"cannot batch the KV cache: node {node.output} = {node.op}(...) reads the cache position "
                        f"in a way the per-token positions cannot replace{where}")
    g.replace_all_uses(node.output, out)
    g.remove_node(node)


def _is_arange(g: Graph, name: str) -> bool:
    p = g.producer(name)
    return p is not None and p.op == "arange" and p.attrs.start == 0 and p.attrs.step == 1


def _reinfer(g: Graph) -> None:
    """Shapes after a change upstream (a cache now [slots, ...], logits now R rows)."""
    for node in g.nodes:
        op = registry.get(node.op)
        try:
            shape, dtype = op.infer([g.tensors[i] for i in node.inputs], node.attrs)
        except KilnError as e:
            raise KilnError(f"cannot batch the KV cache: node {node.output} = {node.op}(...) does not take the "
                            f"batched shapes: {e}" + (f"\n  at {node.source}" if node.source else "")) from None
        t = g.tensors[node.output]
        if tuple(shape) != tuple(t.shape) or dtype != t.dtype:
            g.tensors[node.output] = dataclasses.replace(t, shape=tuple(shape), dtype=dtype)


def _gather_logits(g: Graph, seq: Sym) -> None:
    """The last-position slice before the LM head becomes a gather of the rows named by LOGIT_ROWS (a new
    symbol R); without such a slice, the logits of every token are gathered at the output."""
    sym = next(iter(seq.symbols))
    rows = g.fresh("r")
    while rows in g.symbols:
        rows += "_"
    r = Sym.var(rows)
    g.add_input(LOGIT_ROWS, (r,), "int64")
    g.sym_sources[rows] = (LOGIT_ROWS, 0)
    g.sym_ranges[rows] = (1, g.sym_ranges.get(sym, (1, 2**31))[1])
    last = _last_slice(g, seq)
    if last is not None:
        out = g.add_node("index_select", [last.inputs[0], LOGIT_ROWS], {"axis": last.attrs.axis},
                         name=f"{last.output}.rows", source=last.source, index=g.nodes.index(last))
        g.replace_all_uses(last.output, out)
        g.remove_node(last)
    else:
        logits = g.outputs[0]
        shape = g.tensors[logits].shape
        if len(shape) != 3 or shape[1] != seq:
            raise KilnError(f"cannot batch the KV cache: the logits are {dims.fmt_shape(shape)}, neither one row "
                            f"per token nor the last token's")
        out = g.add_node("index_select", [logits, LOGIT_ROWS], {"axis": 1}, name=f"{logits}.rows")
        g.outputs = [out if o == logits else o for o in g.outputs]
    _reinfer(g)


def _last_slice(g: Graph, seq: Sym) -> Optional[object]:
    """The slice keeping only the last of S positions (HF's logits_to_keep=1), if there is exactly one."""
    found = []
    for node in g.nodes:
        if node.op != "slice" or node.attrs.step != 1:
            continue
        shape = g.tensors[node.inputs[0]].shape
        axis = node.attrs.axis
        if axis < len(shape) and shape[axis] == seq and g.tensors[node.output].shape[axis] == 1:
            found.append(node)
    return found[0] if len(found) == 1 else None


def verify_batched(cached: Graph, batched: Graph, *, single=None, packed=None) -> None:
    """Two sequences interleaved in ``batched`` against each alone in ``cached``: a prefill of both in one
    step (in swapped slots), then two decode steps. KilnError on a difference.

    ``single(feeds, binding, fresh)`` and ``packed(feeds, binding)`` run one step of each graph and return
    its logits (``fresh``: a new sequence starts, its cache is empty); the default is the numpy reference.
    A runtime passes its own sessions to check the executor it will run (kiln/serve/runner.py)."""
    from .kv_cache_check import _run, _vocab
    info, binfo = cached.kv_cache, batched.kv_cache
    seq_sym = next(iter(dims.symbols_of(cached.tensors[info.token_input].shape)))
    rows_sym = next(s for s, (src, _) in batched.sym_sources.items() if src == binfo.logits_input)
    lens, steps = (3, 2), 2
    if max(lens) + steps > info.max_len:
        return
    if single is None:
        states: dict = {}

        def single(feeds, binding, fresh):
            if fresh:
                states.update({s: np.array(cached.constants[s], copy=True) for s in cached.state})
            return _run(cached, feeds, binding, states)
    if packed is None:
        bstate = {s: np.array(batched.constants[s], copy=True) for s in batched.state}

        def packed(feeds, binding):
            return _run(batched, feeds, binding, bstate)
    vocab = _vocab(cached)
    seqs = [(np.arange(n + steps, dtype=np.int64) * (7 + 4 * i) + 3 + i) % vocab for i, n in enumerate(lens)]
    want = []
    for ids, n in zip(seqs, lens):
        first = {info.token_input: ids[None, :n], info.position_input: np.asarray(0, np.int64)}
        outs = [single(first, {seq_sym: n}, True)[0, -1]]
        for p in range(n, n + steps):
            step = {info.token_input: ids[None, p:p + 1], info.position_input: np.asarray(p, np.int64)}
            outs.append(single(step, {seq_sym: 1}, False)[0, -1])
        want.append(outs)
    slot_of = [min(1, binfo.slots - 1), 0]
    for step in range(steps + 1):
        toks, slot, pos, rows = [], [], [], []
        for i, (ids, n) in enumerate(zip(seqs, lens)):
            if binfo.slots < 2 and i:
                continue
            lo, hi = (0, n) if step == 0 else (n + step - 1, n + step)
            toks += list(ids[lo:hi])
            slot += [slot_of[i]] * (hi - lo)
            pos += list(range(lo, hi))
            rows.append(len(toks) - 1)
        feeds = {binfo.token_input: np.asarray([toks], np.int64), binfo.slot_input: np.asarray(slot, np.int64),
                 binfo.position_input: np.asarray(pos, np.int64), binfo.logits_input: np.asarray(rows, np.int64)}
        got = packed(feeds, {seq_sym: len(toks), rows_sym: len(rows)})[0]
        for i, row in enumerate(got):
            ref = want[i][step]
            err = float(np.max(np.abs(row - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
            if not err <= RTOL:
                raise KilnError(f"batched KV cache self-check failed: sequence {i} at step {step} differs from the "
                                f"single-sequence graph by {err:.3g} (relative); some op mixes the tokens of "
                                f"different sequences")
