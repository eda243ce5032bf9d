"""KV-cache ops: state written in place at a runtime position, and attention over its valid prefix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .attention import scale_of
from .registry import FUSED, INPLACE, declare
from ..errors import ShapeError

# Ops whose output is input 0's buffer, written in place even when that is graph state.
WRITES_STATE = "writes_state"


def _pos_check(t, op):
    if t.dtype != "int64" or len(t.shape) != 0:
        raise ShapeError(f"{op}: position must be an int64 scalar, got {t.dtype}{list(t.shape)}")


def _write_infer(ins, a):
    cache, new, pos = ins
    _pos_check(pos, "cache_write")
    if len(cache.shape) != 4 or len(new.shape) != 4 or cache.shape[:2] != new.shape[:2] \
            or cache.shape[3] != new.shape[3] or cache.dtype != new.dtype:
        raise ShapeError(f"cache_write: new {list(new.shape)} does not fit cache {list(cache.shape)}")
    return cache.shape, cache.dtype


def _write_ref(xs, a):
    cache, new, pos = xs
    p, s = int(pos), new.shape[2]
    if not 0 <= p <= cache.shape[2] - s:
        raise ShapeError(f"cache_write: positions [{p}, {p + s}) exceed the cache length {cache.shape[2]}")
    out = cache.copy()
    out[:, :, p:p + s] = new
    return out


declare("cache_write", inputs=("cache", "new", "pos"), infer=_write_infer, ref=_write_ref,
        props=(FUSED, INPLACE, WRITES_STATE),
        doc="write new [B, H, S, D] into cache [B, H, L, D] at positions [pos, pos + S), in place")


@dataclass(frozen=True)
class CachedAttentionAttrs:
    scale: Optional[float] = None


def _cached_infer(ins, a):
    q, k, v, pos = ins
    _pos_check(pos, "cached_attention")
    if len(q.shape) != 4 or len(k.shape) != 4 or k.shape != v.shape or q.shape[3] != k.shape[3] \
            or q.shape[0] != k.shape[0]:
        raise ShapeError(f"cached_attention: q {list(q.shape)} k {list(k.shape)} v {list(v.shape)} do not agree")
    if isinstance(q.shape[1], int) and isinstance(k.shape[1], int) and q.shape[1] % k.shape[1]:
        raise ShapeError(f"cached_attention: {q.shape[1]} query heads not a multiple of {k.shape[1]}")
    return q.shape, "float32"


def _cached_ref(xs, a):
    q, k, v, pos = xs
    p, sq = int(pos), q.shape[2]
    n = p + sq
    if n > k.shape[2]:
        raise ShapeError(f"cached_attention: {n} positions exceed the cache length {k.shape[2]}")
    group = q.shape[1] // k.shape[1]
    kk = np.repeat(k[:, :, :n].astype(np.float64), group, axis=1)
    vv = np.repeat(v[:, :, :n].astype(np.float64), group, axis=1)
    s = np.matmul(q.astype(np.float64), np.swapaxes(kk, -1, -2)) * scale_of(a, q.shape[-1])
    keep = np.arange(n)[None, :] <= (p + np.arange(sq))[:, None]   # query i sits at position p + i
    s = np.where(keep, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (np.matmul(e / e.sum(-1, keepdims=True), vv)).astype(np.float32)


declare("cached_attention", inputs=("q", "k_cache", "v_cache", "pos"), attrs=CachedAttentionAttrs,
        infer=_cached_infer, ref=_cached_ref, props=(FUSED,),
        doc="causal attention of q (positions pos..pos+S) over the cache's first pos+S keys; GQA by head groups")
