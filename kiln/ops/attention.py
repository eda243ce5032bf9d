"""Scaled dot-product attention with causal masking, explicit masks and grouped-query K/V."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .registry import broadcast_shapes, declare
from ..errors import ShapeError


@dataclass(frozen=True)
class AttentionAttrs:
    causal: bool = False             # top-left aligned, as torch's is_causal
    scale: Optional[float] = None    # default 1/sqrt(head_dim)


def _infer(ins, a):
    q, k, v = ins[:3]
    if len(q.shape) != 4 or len(k.shape) != 4 or len(v.shape) != 4:
        raise ShapeError(f"attention expects [B, H, S, D] q/k/v, got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    b, hq, sq, d = q.shape
    _, hk, sk, dk = k.shape
    if dk != d or k.shape[:3] != v.shape[:3] or k.shape[0] != b:
        raise ShapeError(f"attention q {list(q.shape)} k {list(k.shape)} v {list(v.shape)} do not agree")
    if isinstance(hq, int) and isinstance(hk, int) and hq % hk:
        raise ShapeError(f"attention: {hq} query heads is not a multiple of {hk} key/value heads")
    if len(ins) == 4:
        m = ins[3]
        if m.dtype not in ("bool", "float32"):
            raise ShapeError(f"attention mask must be bool or float32, got {m.dtype}")
        if broadcast_shapes(m.shape, (b, hq, sq, sk)) != (b, hq, sq, sk):
            raise ShapeError(f"attention mask {list(m.shape)} does not broadcast to {[b, hq, sq, sk]}")
    return (b, hq, sq, v.shape[3]), "float32"


def scale_of(a, head_dim: int) -> float:
    return a.scale if a.scale is not None else 1.0 / math.sqrt(head_dim)


def _ref(xs, a):
    q, k, v = (x.astype(np.float64) for x in xs[:3])
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * scale_of(a, q.shape[-1])
    sq, sk = s.shape[-2:]
    if len(xs) == 4:
        m = xs[3]
        s = np.where(m, s, -np.inf) if m.dtype == np.bool_ else s + m
    if a.causal:
        s = np.where(np.tril(np.ones((sq, sk), dtype=bool)), s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.exp(s - mx)
    den = e.sum(-1, keepdims=True)
    p = np.divide(e, den, out=np.zeros_like(e), where=den > 0)  # fully-masked rows give 0, not NaN
    return np.matmul(p, v).astype(np.float32)


declare("attention", inputs=("q", "k", "v", "mask?"), attrs=AttentionAttrs, infer=_infer, ref=_ref,
        doc="softmax(q k^T * scale + mask) v; K/V heads shared by groups of query heads")
