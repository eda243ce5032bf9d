"""Give a stateless causal LM graph a KV cache held as graph state.

Input: a graph computing logits for the current tokens from input_ids alone,
whose attentions are causal over those tokens (the passes absorb the model's
mask into ``causal=True``) and whose positions come from ``arange(S)``.
Output: the same graph plus an int64 scalar input ``cache_position`` (how
many positions the cache already holds) and, per attention, two state
tensors [B, Hkv, max_len, D]. Each step writes its new keys/values in place
at ``cache_position`` and attends over the valid prefix only; positions
become ``arange(S) + cache_position``, so rotary tables and learned position
embeddings follow without knowing which the model uses. The sequence length
stays symbolic: prefill (S prompt tokens) and decode (S = 1) are two plans
of one graph. The facts the runtime needs (which input holds the tokens, which
the position, the cache length, the state tensors) are recorded on the graph as
``graph.kv_cache`` (kiln/ir/kv_cache.py), not left to be guessed from names.
"""
from __future__ import annotations


import numpy as np

from ..core import dims
from ..core.dims import Sym
from ..errors import KilnError
from ..ir.graph import STATE, Graph
from ..ir.kv_cache import KVCacheInfo
from ..ir.validate import validate
from .engine import dead_code_elimination
from .kv_cache_check import verify_kv_cache
from .positions import positions_as_arange

POSITION = "cache_position"


def add_kv_cache(graph: Graph, max_len: int, *, verify: bool = True) -> Graph:
    """The cached graph (see the module docstring). ``verify`` runs the self-check of
    kv_cache_check.py (prefill + decode against the stateless graph) and raises KilnError when
    they differ. Raises KilnError naming the node when the graph cannot be given a cache."""
    if max_len < 1:
        raise KilnError(f"KV cache length must be >= 1, got {max_len}")
    g = graph.copy()
    if g.kv_cache is not None:
        raise KilnError("the graph already has a KV cache")
    if POSITION in g.tensors:
        raise KilnError(f"graph already has a tensor named {POSITION!r}")
    tokens = [i for i in g.inputs if g.tensors[i].dtype == "int64" and len(g.tensors[i].shape) == 2]
    if len(tokens) != 1:
        raise KilnError(f"cannot add a KV cache: the graph must have exactly one int64 [B, S] input (token ids); "
                        f"it has {', '.join(f'{i}: {g.tensors[i].dtype}{list(g.tensors[i].shape)}' for i in g.inputs)}")
    seq = g.tensors[tokens[0]].shape[1]
    if isinstance(seq, Sym) and len(seq.symbols) == 1:
        # positions computed another way (OPT: cumsum(mask) - 1) become arange(S) + c, which moves below
        if positions_as_arange(g, next(iter(seq.symbols))):
            dead_code_elimination(g)
    g.add_input(POSITION, (), "int64")
    states: list[str] = []
    layer = 0
    for node in list(g.nodes):
        if node.op != "attention":
            continue
        if len(node.inputs) == 3 and not node.attrs.causal:
            raise KilnError(f"cannot add a KV cache: attention {node.output} is not causal (every token sees "
                            f"every other), so a cached prefix would change" + (f"\n  at {node.source}" if node.source else ""))
        if len(node.inputs) != 3:
            raise KilnError(f"cannot add a KV cache: attention {node.output} keeps its mask {node.inputs[3]!r}, "
                            f"which is not causal at every length up to the export range's maximum (a sliding "
                            f"window shorter than that, or a mask computed from a runtime input); the cache "
                            f"supports causal attention only" + (f"\n  at {node.source}" if node.source else ""))
        q, k, v = node.inputs
        b, hkv, _, d = g.tensors[k].shape
        dv = g.tensors[v].shape[3]
        if not all(isinstance(x, int) for x in (b, hkv, d, dv)):
            raise KilnError(f"cannot add a KV cache: batch/heads/head size of {k} must be static, "
                            f"got {g.tensors[k].shape}")
        caches = []
        for kind, src, width in (("k", k, d), ("v", v, dv)):
            name = g.add_const(g.fresh(f"kv_cache.{layer}.{kind}"), np.zeros((b, hkv, max_len, width), np.float32),
                               kind=STATE)
            states.append(name)
            index = g.nodes.index(node)
            caches.append(g.add_node("cache_write", [name, src, POSITION], name=f"{name}.write",
                                     source=node.source, index=index))
        index = g.nodes.index(node)
        out = g.add_node("cached_attention", [q, caches[0], caches[1], POSITION], {"scale": node.attrs.scale},
                         name=f"{node.output}.cached", source=node.source, index=index)
        g.replace_all_uses(node.output, out)
        g.remove_node(node)
        layer += 1
    if layer == 0:
        raise KilnError(_no_fused_attention(g))
    _offset_positions(g)
    g.kv_cache = KVCacheInfo(tokens[0], POSITION, max_len, tuple(states))
    # One-token decode is valid for this graph even if the export range started at 2.
    g.sym_ranges = {s: (min(lo, 1), hi) for s, (lo, hi) in g.sym_ranges.items()}
    validate(g)
    if verify:
        verify_kv_cache(graph, g)
    return g


def _no_fused_attention(g: Graph) -> str:
    """Why there is nothing to cache: the softmax a hand-written attention left unfused, with the ops
    between its scores and the softmax (soft-capping's tanh, ALiBi's bias add, ...)."""
    soft = next((n for n in g.nodes if n.op == "softmax"), None)
    if soft is None:
        return "cannot add a KV cache: the graph computes no attention (no attention op and no softmax)"
    chain, t = [], soft.inputs[0]
    while (p := g.producer(t)) is not None and p.op != "matmul" and len(chain) < 6:
        chain.append(p.op)
        t = p.inputs[0]
    between = " → ".join(reversed(chain)) or "nothing"
    return (f"cannot add a KV cache: attention is computed by hand at softmax {soft.output} (scores → {between} → "
            f"softmax), which the fused attention op does not express (e.g. logit soft-capping or an ALiBi bias); "
            f"the cache needs fused attention" + (f"\n  at {soft.source}" if soft.source else ""))


def _offset_positions(g: Graph) -> None:
    """arange(0, S) over the sequence becomes arange(0, S) + cache_position."""
    seq = {s for n in g.nodes if n.op == "cached_attention" for s in dims.symbols_of(g.tensors[n.inputs[0]].shape)}
    for node in list(g.nodes):
        a = node.attrs
        if node.op != "arange" or a.start != 0 or a.step != 1 or not isinstance(a.end, Sym) or a.end.symbols - seq:
            continue
        readers = g.users(node.output)
        index = g.nodes.index(node) + 1
        shifted = g.add_node("add", [node.output, POSITION], name=f"{node.output}.shifted", source=node.source,
                             index=index)
        for n in readers:
            g.set_inputs(n, [shifted if i == node.output else i for i in n.inputs])
        g.outputs = [shifted if o == node.output else o for o in g.outputs]

