"""Ops over weights held in a storage type (kiln/core/storage.py): dequantize, and the
fused quantized matmul and embedding gather that read the blocks directly.

A stored constant keeps its logical shape ([N, K] for a linear weight, rows of K as GGUF
stores them) and float32 dtype; its array holds the table's bytes (uint8 [N, row_bytes]).
The rule in kiln/passes/quantize.py turns ``matmul(x, dequantize(W), transpose_b) [+ bias]``
into ``qmatmul`` and ``embedding(dequantize(W), ids)`` into ``qembedding``; a dequantize
left over (a use no kernel reads in storage) runs as its own op.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import storage
from ..errors import ShapeError
from .fused import ACTIVATIONS, apply_act
from .registry import declare

# The input each op reads in storage (the validator allows stored tensors only there).
STORED_INPUTS = {"dequantize": 0, "qmatmul": 1, "qembedding": 0,
                 "matmul": 1, "embedding": 0}   # a packed fp32 weight (kiln/passes/pack.py)
MODES = ("exact", "int8")

# -- C facts, in one place (they move to the C backend's registry) ------------------------
# Format ids of csrc/quant.h (the kernels' enum); storage types the C kernels read.
C_FORMATS = {"q8_0": 0, "q4_0": 1, "q4_1": 2, "q4_k": 3, "q5_k": 4, "q6_k": 5, "i8_row": 6, "q5_0": 7, "q5_1": 8}
# Scratch is sized for this many threads (csrc/qmatmul_op.c uses at most as many).
QMM_MAX_THREADS = 64
QMM_NR = 4  # weight rows per panel (KILN_QMM_NR)
# exact mode from this many rows: the outer-product path (KILN_QMM_OUTER_MIN_M, _P, _KC, _MB)
QMM_OUTER_MIN_M, QMM_OUTER_P, QMM_OUTER_KC, QMM_OUTER_MB = 9, 24, 256, 128


def qmm_scratch_bytes(mode: str, m: int, k: int, threads: int = QMM_MAX_THREADS) -> int:
    """Mirror of kiln_qmm_scratch_bytes (csrc/qmm_driver.c, csrc/quant.h)."""
    def up(x):
        return (x + 63) // 64 * 64

    def per_thread(shared, each):  # kiln_qthread_offset: each thread's region a page apart
        page = lambda x: (x + 4095) // 4096 * 4096  # noqa: E731
        return page(shared) + 4096 + threads * (page(each) + 4096)
    if mode == "exact" and m >= QMM_OUTER_MIN_M:
        mpad = (m + 15) // 16 * 16
        return per_thread(mpad * k * 4, QMM_OUTER_P * (QMM_OUTER_KC + 4 * min(mpad, QMM_OUTER_MB)) * 4)
    act = up(m * (k + k // 32 * 4 + k // 4 * 4)) if mode == "int8" else 0
    panel = up(QMM_NR * (k + k // 16 * 8 + k * 4))
    if mode == "int8" and m >= QMM_OUTER_MIN_M:  # the int8 outer path's codes per 16 rows
        mpad = (m + 15) // 16 * 16
        act += mpad // 16 * (k * 16 + k // 32 * 128 + k // 16 * 64)
        panel = max(panel, QMM_OUTER_P * (QMM_OUTER_KC + QMM_OUTER_KC // 16 * 8 + 4 * min(mpad, QMM_OUTER_MB)))
    return per_thread(act, panel)


@dataclass(frozen=True)
class StoredAttrs:
    storage: str                # the weight's storage type (kiln/core/storage.py)


@dataclass(frozen=True)
class QMatmulAttrs:
    storage: str
    mode: str = "exact"         # "exact": fp32 activations; "int8": activations quantized per 32
    act: str = "none"           # fused epilogue activation (one of fused.ACTIVATIONS)


def logical_cols(st: storage.StorageType, row_bytes: int) -> int:
    """K of a row of ``row_bytes`` bytes in storage ``st``."""
    return (row_bytes - st.row_extra) // st.block_bytes * st.block_size


def dequantize_array(raw: np.ndarray, name: str) -> np.ndarray:
    """float32 [..., K] of a stored array uint8 [..., row_bytes] (the table's reference)."""
    st = storage.get(name)
    raw = np.asarray(raw)
    return st.dequantize(raw, raw.shape[:-1] + (logical_cols(st, raw.shape[-1]),))


def _stored(t, attrs, op):
    if t.storage != attrs.storage:
        raise ShapeError(f"{op}: weight {t.name!r} is in storage {t.storage}, attrs say {attrs.storage}")
    if len(t.shape) != 2:
        raise ShapeError(f"{op}: weight must be [N, K], got {list(t.shape)}")


def _deq_infer(ins, attrs):
    if ins[0].storage != attrs.storage:
        raise ShapeError(f"dequantize: input {ins[0].name!r} is in storage {ins[0].storage}, attrs say {attrs.storage}")
    storage.get(attrs.storage)
    return ins[0].shape, "float32"




def _qmm_infer(ins, attrs):
    x, w = ins[0], ins[1]
    _stored(w, attrs, "qmatmul")
    if attrs.mode not in MODES:
        raise ShapeError(f"qmatmul: mode {attrs.mode!r} is not one of {', '.join(MODES)}")
    if attrs.act not in ACTIVATIONS:
        raise ShapeError(f"qmatmul: unknown activation {attrs.act!r}")
    if x.dtype != "float32" or len(x.shape) < 1 or x.shape[-1] != w.shape[1]:
        raise ShapeError(f"qmatmul: activations {x.dtype}{list(x.shape)} do not end in K={w.shape[1]}")
    n = w.shape[0]
    if len(ins) == 3 and (tuple(ins[2].shape) != (n,) or ins[2].dtype != "float32"):
        raise ShapeError(f"qmatmul: bias must be float32[{n}], got {ins[2].dtype}{list(ins[2].shape)}")
    return tuple(x.shape[:-1]) + (n,), "float32"


def int8_activations(x: np.ndarray) -> np.ndarray:
    """The int8 mode's rounding of activations [..., K] (per 32: scale max|a|/127, round half
    to even), dequantized back to float64: what the kernel's integer dots compute with."""
    a = np.asarray(x, np.float32)
    g = a.reshape(-1, a.shape[-1] // 32, 32)
    amax = np.abs(g).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(g * inv).astype(np.float64)
    scale = (amax / np.float32(127)).astype(np.float32).astype(np.float64)
    return (q * scale).reshape(a.shape)


def _qmm_ref(xs, attrs):
    x, raw = xs[0], xs[1]
    w = dequantize_array(raw, attrs.storage).astype(np.float64)
    a = int8_activations(x) if attrs.mode == "int8" else x.astype(np.float64)
    out = a @ w.T
    if len(xs) == 3:
        out = out + xs[2]
    return apply_act(out.astype(np.float32), attrs.act)


def _qmm_scratch(in_shapes, out_shape, attrs) -> int:
    k = in_shapes[0][-1]
    m = int(np.prod(in_shapes[0][:-1], dtype=np.int64))
    return qmm_scratch_bytes(attrs.mode, m, k)


def _qmm_lower(attrs, in_shapes, out_shape):
    return {"fmt": C_FORMATS.get(attrs.storage, -1), "mode": MODES.index(attrs.mode),
            "act": ACTIVATIONS.index(attrs.act), "threads": QMM_MAX_THREADS}


def _qemb_infer(ins, attrs):
    w, ids = ins
    _stored(w, attrs, "qembedding")
    if ids.dtype not in ("int64", "int32"):
        raise ShapeError(f"qembedding: indices must be int64/int32, got {ids.dtype}")
    return tuple(ids.shape) + (w.shape[1],), "float32"


def _qemb_ref(xs, attrs):
    raw, ids = xs
    n = raw.shape[0]
    if ids.size and (ids.min() < -n or ids.max() >= n):
        raise ShapeError(f"qembedding: index out of range [0, {n}) (got {int(ids.min())}..{int(ids.max())})")
    rows = raw[np.where(ids < 0, ids + n, ids).reshape(-1)]
    return dequantize_array(rows, attrs.storage).reshape(tuple(ids.shape) + (-1,))


def _fmt_lower(attrs, in_shapes, out_shape):
    return {"fmt": C_FORMATS.get(attrs.storage, -1)}


declare("dequantize", inputs=("w",), attrs=StoredAttrs, infer=_deq_infer,
        ref=lambda xs, a: dequantize_array(xs[0], a.storage),
        doc="float32 values of a weight held in a storage type")
declare("qmatmul", inputs=("x", "w", "bias?"), attrs=QMatmulAttrs, infer=_qmm_infer, ref=_qmm_ref,
        props=("fused",), doc="act(x[..., K] @ dequantize(W)[N, K]^T + bias), W read in its blocks")
declare("qembedding", inputs=("w", "ids"), attrs=StoredAttrs, infer=_qemb_infer, ref=_qemb_ref,
        props=("fused",), doc="rows of a table held in a storage type, dequantized")
