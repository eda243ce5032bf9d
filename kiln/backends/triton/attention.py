"""Attention, flash style: one pass over key tiles with an online softmax, never the
full score matrix. Covers ``attention`` (causal top-left, optional bool/float mask that
broadcasts to [B, Hq, Sq, Sk]) and ``cached_attention`` (queries at positions pos..pos+S
over the cache's valid prefix [0, pos+S), pos read on the device: no host sync per token).
Grouped-query attention indexes the shared K/V head (h // group); K/V are never copied.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import runtime
from .registry import register
from ...ops.attention import scale_of


@triton.jit
def _attn(q, k, v, mask, o, pos_ptr, flag, code, Sq, Sk, Hq, group, D, DV, scale,
          s_mb, s_mh, s_mq, s_mk,
          CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, HAS_POS: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    bi = bh // Hq
    h = bh % Hq
    hk = bi * (Hq // group) + h // group          # flat (batch, kv head) index
    if HAS_POS:
        pos = tl.load(pos_ptr)
        n_keys = pos + Sq
        tl.store(flag, code, mask=(pos < 0) | (n_keys > Sk))
        n_keys = tl.minimum(tl.maximum(n_keys, 0), Sk)
    else:
        pos = 0
        n_keys = Sk
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    qv = tl.load(q + (bh * Sq + offs_m[:, None]) * D + offs_d[None, :],
                 mask=(offs_m[:, None] < Sq) & (offs_d[None, :] < D), other=0.0)
    hi = n_keys
    if CAUSAL:  # keys after this block's last query are masked for every row: skip them
        hi = tl.minimum(hi, pos + (pid_m + 1) * BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start in range(0, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kt = tl.load(k + (hk * Sk + offs_n[None, :]) * D + offs_d[:, None],
                     mask=(offs_n[None, :] < n_keys) & (offs_d[:, None] < D), other=0.0)
        s = tl.dot(qv, kt, input_precision="ieee") * scale
        keep = (offs_n[None, :] < n_keys) & (offs_m[:, None] < Sq)
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= pos + offs_m[:, None])
        if HAS_MASK:
            mptr = mask + bi * s_mb + h * s_mh + offs_m[:, None] * s_mq + offs_n[None, :] * s_mk
            if MASK_BOOL:
                keep = keep & (tl.load(mptr, mask=keep, other=0) != 0)
            else:
                s += tl.load(mptr, mask=keep, other=0.0)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with nothing kept so far
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vt = tl.load(v + (hk * Sk + offs_n[:, None]) * DV + offs_dv[None, :],
                     mask=(offs_n[:, None] < n_keys) & (offs_dv[None, :] < DV), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p, vt, input_precision="ieee")
        m_i = m_new
    den = tl.where(l_i > 0, l_i, 1.0)       # fully masked rows give 0, as the reference does
    out = tl.where(l_i[:, None] > 0, acc / den[:, None], 0.0)
    tl.store(o + (bh * Sq + offs_m[:, None]) * DV + offs_dv[None, :], out,
             mask=(offs_m[:, None] < Sq) & (offs_dv[None, :] < DV))


def _blocks(sq: int, sk: int, d: int) -> tuple[int, int]:
    """(query rows, keys) per tile. fp32 tiles of a 128-wide head at 64x64 would spill registers,
    so wide heads take smaller tiles (to be tuned on a GPU)."""
    if runtime.INTERPRETED:
        return runtime.block(sq, 16, 32), runtime.block(sk, 16, 32)
    wide = d > 64
    return runtime.block(sq, 16, 32 if wide else 64), 32 if wide else 64


def _launch(q, k, v, mask, out, pos, scale, causal, ctx):
    B, Hq, Sq, D = q.shape
    Hk, Sk, DV = k.shape[1], k.shape[2], v.shape[3]
    if out.numel() == 0:
        return
    bm, bn = _blocks(Sq, Sk, max(D, DV))
    if mask is not None:
        s_mb, s_mh, s_mq, s_mk = runtime.broadcast_strides(mask.shape, (B, Hq, Sq, Sk))
    else:
        s_mb = s_mh = s_mq = s_mk = 0
    _attn[(triton.cdiv(Sq, bm), B * Hq)](
        q, k, v, mask if mask is not None else q, out, pos if pos is not None else ctx.flag, ctx.flag, ctx.code,
        Sq, Sk, Hq, Hq // Hk, D, DV, float(scale), s_mb, s_mh, s_mq, s_mk,
        CAUSAL=causal, HAS_MASK=mask is not None, MASK_BOOL=mask is not None and mask.dtype == runtime.torch.bool,
        HAS_POS=pos is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=runtime.block(D, 16, 512),
        BLOCK_DV=runtime.block(DV, 16, 512), num_warps=4 if runtime.INTERPRETED or D <= 64 else 8)


@register("attention")
def attention(ins, out, attrs, ctx):
    q, k, v = ins[:3]
    _launch(q, k, v, ins[3] if len(ins) > 3 else None, out, None, scale_of(attrs, q.shape[-1]), attrs.causal, ctx)


@register("cached_attention")
def cached_attention(ins, out, attrs, ctx):
    q, kc, vc, pos = ins
    _launch(q, kc, vc, None, out, pos, scale_of(attrs, q.shape[-1]), True, ctx)
