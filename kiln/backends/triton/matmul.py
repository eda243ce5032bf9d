"""GEMM with Kiln's matmul epilogue: act(alpha * A @ B(^T) + beta * bias), batch dims broadcast.

One kernel covers every form: the transposed B is read through swapped strides (no copy),
broadcast batch dims through per-operand batch strides (0 where broadcast), and the bias
through its own broadcast strides. Products accumulate in float32 with
``input_precision="ieee"`` (no TF32), so results match the float32 CPU kernels.
On a GPU the block sizes are autotuned per (M, N, K); under the interpreter a fixed
small shape is used (autotuning there would only time the interpreter).
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import index, mathfn, runtime
from .registry import register


@triton.jit
def _matmul(a, b, bias, c, meta, M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn, alpha, beta,
            BATCH_RANK: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    nb = tl.cdiv(N, BLOCK_N)
    pm, pn = pid // nb, pid % nb
    # batch offsets; meta rows: batch shape, A, B and bias batch strides (elements)
    batch = tl.program_id(1).to(tl.int64)
    a_off = index.offset(batch, meta, 0, 1, BATCH_RANK)
    b_off = index.offset(batch, meta, 0, 2, BATCH_RANK)
    c_off = index.offset(batch, meta, 0, 3, BATCH_RANK)
    rm = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        av = tl.load(a + a_off + rm[:, None] * s_am + kk[None, :] * s_ak,
                     mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        bv = tl.load(b + b_off + kk[:, None] * s_bk + rn[None, :] * s_bn,
                     mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(av, bv, acc, input_precision="ieee")
    acc = acc * alpha
    out_mask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_BIAS:
        acc += beta * tl.load(bias + c_off + rm[:, None] * s_cm + rn[None, :] * s_cn, mask=out_mask, other=0.0)
    acc = mathfn.act(acc, ACT)
    out_off = tl.program_id(1).to(tl.int64) * M * N
    tl.store(c + out_off + rm[:, None] * N + rn[None, :], acc, mask=out_mask)


def _configs():
    out = []
    for bm, bn, bk, w, s in ((16, 64, 64, 4, 3), (32, 64, 64, 4, 3), (64, 64, 32, 4, 3), (64, 128, 32, 4, 3),
                             (128, 64, 32, 4, 3), (128, 128, 32, 8, 3), (16, 128, 128, 4, 4)):
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s))
    return out


_matmul_tuned = None if runtime.INTERPRETED else triton.autotune(
    configs=_configs(), key=["M", "N", "K", "BATCH_RANK", "HAS_BIAS", "ACT"])(_matmul)


def _batch_strides(shape, nbatch: int) -> list[int]:
    """Batch strides (elements) of a contiguous operand broadcast over `nbatch` leading dims."""
    own = runtime.contiguous_strides(shape)
    lead = nbatch - (len(shape) - 2)
    return [0 if i < lead or shape[i - lead] == 1 else own[i - lead] for i in range(nbatch)]


@register("matmul")
def matmul(ins, out, attrs, ctx):
    a, b = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    M, K = a.shape[-2], a.shape[-1]
    N = out.shape[-1]
    batch = list(out.shape[:-2])
    if out.numel() == 0:
        return
    sa = _batch_strides(list(a.shape), len(batch))
    sb = _batch_strides(list(b.shape), len(batch))
    if bias is not None:
        bst = runtime.broadcast_strides(bias.shape, out.shape)
        sc, (s_cm, s_cn) = bst[:-2], bst[-2:]
    else:
        sc, s_cm, s_cn = [0] * len(batch), 0, 0
    dims, (sa, sb, sc) = runtime.coalesce(batch, sa, sb, sc) if batch else ([1], ([0], [0], [0]))
    m = runtime.meta(runtime.padded(dims, sa, sb, sc), ctx.device)
    nbatch = 1
    for d in batch:
        nbatch *= d
    s_bk, s_bn = (1, K) if attrs.transpose_b else (N, 1)
    args = (a, b, bias if bias is not None else a, out, m, M, N, K, K, 1, s_bk, s_bn, s_cm, s_cn,
            float(attrs.alpha), float(attrs.beta))
    kw = dict(BATCH_RANK=len(dims), HAS_BIAS=bias is not None, ACT=mathfn.ACT_CODES.index(attrs.act))
    if _matmul_tuned is not None:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), nbatch)  # noqa: E731
        _matmul_tuned[grid](*args, **kw)
    else:
        bm, bn, bk = runtime.block(M, 16, 64), runtime.block(N, 16, 64), runtime.block(K, 16, 64)
        _matmul[(triton.cdiv(M, bm) * triton.cdiv(N, bn), nbatch)](*args, **kw, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
