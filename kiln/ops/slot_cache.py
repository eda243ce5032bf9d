"""Batched KV-cache ops: a packed variable-length batch of tokens over a cache of sequence slots.

The tokens of every active sequence are concatenated on the sequence axis (batch 1, S tokens in
all); two int64 [S] inputs say, per token, which slot (sequence) it belongs to and at which position.
The cache is [slots, Hkv, max_len, D]. Each token's result depends only on its own slot's cache
rows and its own position, never on the other tokens of the step (see docs/DESIGN.md, "Batched
decoding"), so a sequence's outputs are the same alone or batched.
"""
from __future__ import annotations


import numpy as np

from .attention import scale_of
from .cache import WRITES_STATE, CachedAttentionAttrs
from .registry import FUSED, INPLACE, declare
from ..errors import ShapeError


def _ids_check(t, what, op):
    if t.dtype != "int64" or len(t.shape) != 1:
        raise ShapeError(f"{op}: {what} must be int64 [S], got {t.dtype}{list(t.shape)}")


def _rows_check(ins, seq, op):
    slot, pos = ins
    _ids_check(slot, "slot ids", op)
    _ids_check(pos, "positions", op)
    if slot.shape[0] != seq or pos.shape[0] != seq:
        raise ShapeError(f"{op}: slot ids {list(slot.shape)} and positions {list(pos.shape)} must have one entry "
                         f"per token ({seq})")


def check_rows(slot: np.ndarray, pos: np.ndarray, slots: int, max_len: int, op: str) -> None:
    """Raise ShapeError unless every slot id is in [0, slots) and every position in [0, max_len)."""
    if slot.size and (slot.min() < 0 or slot.max() >= slots):
        bad = int(slot[(slot < 0) | (slot >= slots)][0])
        raise ShapeError(f"{op}: slot id {bad} is outside [0, {slots})")
    if pos.size and (pos.min() < 0 or pos.max() >= max_len):
        bad = int(pos[(pos < 0) | (pos >= max_len)][0])
        raise ShapeError(f"{op}: position {bad} is outside the cache's [0, {max_len})")


def _write_infer(ins, a):
    cache, new = ins[:2]
    if len(cache.shape) != 4 or len(new.shape) != 4 or new.shape[0] != 1 or cache.shape[1] != new.shape[1] \
            or cache.shape[3] != new.shape[3] or cache.dtype != new.dtype:
        raise ShapeError(f"slot_cache_write: new {list(new.shape)} does not fit cache {list(cache.shape)} "
                         f"(new must be [1, H, S, D] for a cache [slots, H, L, D])")
    _rows_check(ins[2:], new.shape[2], "slot_cache_write")
    return cache.shape, cache.dtype


def _write_ref(xs, a):
    cache, new, slot, pos = xs
    check_rows(slot, pos, cache.shape[0], cache.shape[2], "slot_cache_write")
    out = cache.copy()
    for t in range(new.shape[2]):
        out[slot[t], :, pos[t]] = new[0, :, t]
    return out


declare("slot_cache_write", inputs=("cache", "new", "slot", "pos"), infer=_write_infer, ref=_write_ref,
        props=(FUSED, INPLACE, WRITES_STATE),
        doc="write token t of new [1, H, S, D] into cache [slots, H, L, D] at (slot[t], :, pos[t]), in place")


def _attn_infer(ins, a):
    q, k, v = ins[:3]
    if len(q.shape) != 4 or len(k.shape) != 4 or len(v.shape) != 4 or q.shape[0] != 1 \
            or k.shape[:3] != v.shape[:3] or q.shape[3] != k.shape[3]:
        raise ShapeError(f"slot_cached_attention: q {list(q.shape)} k {list(k.shape)} v {list(v.shape)} do not "
                         f"agree (q [1, Hq, S, D], caches [slots, Hkv, L, D])")
    if isinstance(q.shape[1], int) and isinstance(k.shape[1], int) and q.shape[1] % k.shape[1]:
        raise ShapeError(f"slot_cached_attention: {q.shape[1]} query heads not a multiple of {k.shape[1]}")
    _rows_check(ins[3:], q.shape[2], "slot_cached_attention")
    return (1, q.shape[1], q.shape[2], v.shape[3]), "float32"


def _attn_ref(xs, a):
    q, k, v, slot, pos = xs
    check_rows(slot, pos, k.shape[0], k.shape[2], "slot_cached_attention")
    group = q.shape[1] // k.shape[1]
    scale = scale_of(a, q.shape[-1])
    out = np.zeros(q.shape[:3] + (v.shape[3],), np.float32)
    for t in range(q.shape[2]):
        n = int(pos[t]) + 1           # causal within the slot: positions 0..pos[t]
        kk = np.repeat(k[slot[t], :, :n].astype(np.float64), group, axis=0)   # [Hq, n, D]
        vv = np.repeat(v[slot[t], :, :n].astype(np.float64), group, axis=0)
        s = np.einsum("hd,hnd->hn", q[0, :, t].astype(np.float64), kk) * scale
        e = np.exp(s - s.max(-1, keepdims=True))
        out[0, :, t] = np.einsum("hn,hnd->hd", e / e.sum(-1, keepdims=True), vv)
    return out


declare("slot_cached_attention", inputs=("q", "k_cache", "v_cache", "slot", "pos"), attrs=CachedAttentionAttrs,
        infer=_attn_infer, ref=_attn_ref, props=(FUSED,),
        doc="token t of q [1, Hq, S, D] attends to keys 0..pos[t] of its slot slot[t] in the caches "
            "[slots, Hkv, L, D]; GQA by head groups")
