"""Storage types as data: how a tensor's logical float values are laid out in bytes.

One table (``STORAGE``) describes every storage type Kiln knows: plain f32/f16/bf16,
int8 with one fp32 scale per output row, and the GGUF block formats Q8_0, Q4_0, Q4_1,
Q4_K, Q5_K, Q6_K. A row gives the name, the GGUF type id (``gguf.GGMLQuantizationType``),
the block size along the last (contiguous) axis, the bytes per block, the bytes each row
carries besides its blocks, a numpy ``dequantize`` (bytes -> float32) and, where Kiln
produces the type itself, a numpy ``quantize`` (float32 -> bytes). Byte sizes always come
from here (``nbytes``).

Block layouts follow ggml (``ggml-common.h``: block_q8_0, block_q4_0, block_q4_1,
block_q4_K, block_q5_K, block_q6_K; QK_K = 256) and are the bytes a GGUF file stores.
Every block type also has ``decode`` (bytes -> q, D, M with value = D * q + M, D and M one
per 16 elements; q signed where the format's codes are): the form the C kernels in
csrc/quant.h unpack to, except that C keeps codes unsigned (Q8_0 as q + 128, Q4_0 and Q6_K
as stored) and moves the offset into M. The C side mirrors this table in
csrc/qgemm.c (``kiln_qformats``; tests/test_quant_kernels.py compares the two through
``kiln_qrow_bytes``).

fp32 packed panels (``f32_p16``, no GGUF type): a constant matmul weight of logical shape
[N, K] (N output columns, rows of K as a Linear weight) in the C GEMM's own layout
(csrc/gemm.h): ceil(N / 16) panels of 16 output columns, each K-major (16 floats per k),
the last panel only N % 16 wide when N is not a multiple of 16 — so exactly 4 * N * K bytes,
the plain size. Made once at compile time (kiln/passes/pack.py); ``dequantize`` unpacks it
for the numpy reference. Only 2-D.

int8 per-channel (``i8_row``, no GGUF type): each row of K values is stored as its fp32
scale (4 bytes, little-endian) followed by K int8 values; value = scale * q, with
scale = max|row| / 127 (symmetric).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import KilnError
from . import buffers

QK_K = 256
_F16 = np.dtype("<f2")


@dataclass(frozen=True)
class StorageType:
    """One row of the storage table.

    block_size: logical elements per block along the last axis (1 for plain types).
    block_bytes: bytes per block. row_extra: bytes each row carries besides its blocks
    (the fp32 scale of ``i8_row``). dequantize(raw uint8 [..., row_bytes], shape) ->
    float32 ``shape``. quantize(float32 [..., K]) -> uint8 [..., row_bytes] or None.
    decode(blocks uint8 [n, block_bytes]) -> (q int16 [n, bs], D f32 [n, bs/16],
    M f32 [n, bs/16]) for block types, else None.
    """
    name: str
    gguf_type: Optional[int]
    block_size: int
    block_bytes: int
    row_extra: int
    dequantize: Callable[[np.ndarray, Tuple[int, ...]], np.ndarray]
    quantize: Optional[Callable[[np.ndarray], np.ndarray]] = None
    decode: Optional[Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray, np.ndarray]]] = None

    @property
    def is_block(self) -> bool:
        return self.decode is not None

    def row_bytes(self, k: int) -> int:
        """Bytes of one row of ``k`` logical elements; KilnError when k is not whole blocks."""
        if k % self.block_size:
            raise KilnError(f"storage {self.name}: a row of {k} elements is not a whole number "
                            f"of {self.block_size}-element blocks")
        return k // self.block_size * self.block_bytes + self.row_extra


def nbytes(storage: str | StorageType, shape: Sequence[int]) -> int:
    """Bytes of a tensor of logical ``shape`` (blocks run along the last axis)."""
    st = get(storage) if isinstance(storage, str) else storage
    if len(shape) == 0:
        shape = (1,)
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return rows * st.row_bytes(int(shape[-1]))


def get(name: str) -> StorageType:
    try:
        return STORAGE[name]
    except KeyError:
        raise KilnError(f"unknown storage type {name!r}; known: {', '.join(STORAGE)}") from None


def by_gguf_type(type_id: int) -> StorageType:
    """The storage type of a GGUF tensor type id; KilnError for a type Kiln does not read."""
    for st in STORAGE.values():
        if st.gguf_type == int(type_id):
            return st
    raise KilnError(f"GGUF tensor type {int(type_id)} is not supported; supported: "
                    + ", ".join(f"{s.name} ({s.gguf_type})" for s in STORAGE.values() if s.gguf_type is not None))


def _blocks(raw: np.ndarray, st: StorageType, shape: Tuple[int, ...]) -> np.ndarray:
    want = nbytes(st, shape)
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if raw.size != want:
        raise KilnError(f"storage {st.name}: {raw.size} bytes given for shape {tuple(shape)}, "
                        f"which needs {want}")
    return raw.reshape(-1, st.block_bytes)


def _dequant_blocks(st_name: str):
    def deq(raw: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
        st = STORAGE[st_name]
        q, d, m = st.decode(_blocks(raw, st, tuple(shape)))
        n = q.shape[0]
        x = d.reshape(n, -1, 1) * q.reshape(n, -1, 16).astype(np.float32) + m.reshape(n, -1, 1)
        return x.reshape(shape).astype(np.float32, copy=False)
    return deq


def _half(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(_F16).astype(np.float32)


# ---- decoders: blocks uint8 [n, block_bytes] -> (q, D per 16, M per 16) -------------------

def _nibbles(qs: np.ndarray, span: int) -> np.ndarray:
    """Low nibbles give the first ``span`` elements of each ``span``-chunk pair, high the next."""
    n = qs.shape[0]
    qs = qs.reshape(n, -1, 1, span)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, -1)


def _decode_q8_0(b):
    d = np.repeat(_half(b[:, :2]), 2, axis=1)
    return b[:, 2:].view(np.int8).astype(np.int16), d, np.zeros_like(d)


def _decode_q4_0(b):
    d = np.repeat(_half(b[:, :2]), 2, axis=1)
    return _nibbles(b[:, 2:], 16).astype(np.int16) - 8, d, np.zeros_like(d)


def _decode_q4_1(b):
    d = np.repeat(_half(b[:, :2]), 2, axis=1)
    m = np.repeat(_half(b[:, 2:4]), 2, axis=1)
    return _nibbles(b[:, 4:], 16).astype(np.int16), d, m


def _k_scales(sc: np.ndarray):
    """The 8 six-bit scales and mins of a Q4_K/Q5_K block from its 12 packed bytes:
    bytes 0-3 hold scales 0-3 (low 6 bits), 4-7 mins 0-3; scales/mins 4-7 take their low
    4 bits from bytes 8-11 and their top 2 bits from the top of bytes 0-3 / 4-7."""
    lo, mid, hi = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    s = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    m = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return s.astype(np.float32), m.astype(np.float32)


def _decode_qk_head(b):
    d, dmin = _half(b[:, 0:2]), _half(b[:, 2:4])
    s, m = _k_scales(b[:, 4:16])
    return np.repeat(d * s, 2, axis=1), np.repeat(-(dmin * m), 2, axis=1)


def _decode_q4_k(b):
    d, m = _decode_qk_head(b)
    return _nibbles(b[:, 16:144], 32).astype(np.int16), d, m


def _decode_q5_k(b):
    d, m = _decode_qk_head(b)
    n = b.shape[0]
    low = _nibbles(b[:, 48:176], 32).reshape(n, 8, 32)
    qh = b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return (low | ((qh & 1) << 4)).reshape(n, QK_K).astype(np.int16), d, m


def _decode_q6_k(b):
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 64)
    qh = b[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2).reshape(n, 2, 4, 32)
    q = (low | ((qh & 3) << 4)).reshape(n, QK_K).astype(np.int16) - 32
    d = _half(b[:, 208:210]) * b[:, 192:208].view(np.int8).astype(np.float32)
    return q, d, np.zeros_like(d)


# ---- quantizers: float32 [..., K] -> uint8 [..., row_bytes] --------------------------------

def _rows(x: np.ndarray, bs: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim == 0 or x.shape[-1] % bs:
        raise KilnError(f"quantize: last dimension {x.shape[-1:]} is not a multiple of the block size {bs}")
    if not np.all(np.isfinite(x)):
        raise KilnError("quantize: the tensor holds NaN or infinity")
    return x.reshape(-1, bs)


def _round_away(x: np.ndarray) -> np.ndarray:
    """C roundf: halves away from zero (ggml's reference quantizers use it)."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _quantize_q8_0(x):
    b = _rows(x, 32)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = _round_away(b * inv).astype(np.int8)
    out = np.concatenate([d.astype(_F16).view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(*np.shape(x)[:-1], -1)


def _quantize_q4_0(x):
    b = _rows(x, 32)
    idx = np.abs(b).argmax(axis=1)[:, None]
    d = np.take_along_axis(b, idx, axis=1) / np.float32(-8)     # signed: the extreme maps to -8
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np.minimum(np.trunc(b * inv + np.float32(8.5)), 15).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    out = np.concatenate([d.astype(_F16).view(np.uint8), packed], axis=1)
    return out.reshape(*np.shape(x)[:-1], -1)


def _f16_up(x: np.ndarray) -> np.ndarray:
    """fp16 of x rounded up (never below x), so a scale derived from it still covers x."""
    h = x.astype(_F16)
    return np.where(h.astype(np.float32) < x, np.nextafter(h, _F16.type(np.inf)), h).astype(_F16)


def _quantize_q4_k(x):
    """A plain (not error-searching, unlike llama.cpp's) Q4_K quantizer: per 32-element
    sub-block an offset covering its minimum and a step covering its range, both coded in
    6 bits against fp16 block maxima rounded up, so no code clips: every value is within
    half a step (D) of its original."""
    b = _rows(x, QK_K).reshape(-1, 8, 32)
    n = b.shape[0]
    lo = np.minimum(b.min(axis=2), 0)
    dmin = _f16_up((-lo).max(axis=1) / np.float32(63))
    dmf = dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        m6 = np.where(dmf > 0, np.ceil(-lo / dmf), 0).clip(0, 63).astype(np.uint8)
        need = (b.max(axis=2) + dmf * m6) / np.float32(15)          # step covering [lo', hi]
        d = _f16_up(need.max(axis=1) / np.float32(63))
        df = d.astype(np.float32)[:, None]
        s6 = np.where(df > 0, np.ceil(need / df), 0).clip(0, 63).astype(np.uint8)
        step = (df * s6)[:, :, None]
        q = np.where(step > 0, np.rint((b + (dmf * m6)[:, :, None]) / step), 0).clip(0, 15).astype(np.uint8)
    scales = np.empty((n, 12), np.uint8)
    scales[:, 0:4] = s6[:, :4] | ((s6[:, 4:] >> 4) << 6)
    scales[:, 4:8] = m6[:, :4] | ((m6[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (s6[:, 4:] & 0x0F) | ((m6[:, 4:] & 0x0F) << 4)
    q = q.reshape(n, 4, 2, 32)
    packed = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    out = np.concatenate([d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), scales, packed], axis=1)
    return out.reshape(*np.shape(x)[:-1], -1)


def _quantize_i8_row(x):
    x = np.asarray(x, np.float32)
    rows = _rows(x, x.shape[-1] if x.ndim else 1)
    scale = (np.abs(rows).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.rint(rows / scale), 0).clip(-127, 127).astype(np.int8)
    out = np.concatenate([scale.view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(*x.shape[:-1], -1)


def _dequantize_i8_row(raw, shape):
    st = STORAGE["i8_row"]
    k = int(shape[-1])
    r = _blocks(raw, st, tuple(shape)).reshape(-1, k + 4)
    scale = np.ascontiguousarray(r[:, :4]).view("<f4")
    return (scale * r[:, 4:].view(np.int8).astype(np.float32)).reshape(shape)


def _plain(dtype):
    def deq(raw, shape):
        a = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        if a.size != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise KilnError(f"storage {np.dtype(dtype).name}: {a.size} bytes given for shape {tuple(shape)}")
        return a.view(dtype).astype(np.float32).reshape(shape)

    def quant(x):
        return np.ascontiguousarray(np.asarray(x, np.float32).astype(dtype)).view(np.uint8)
    return deq, quant


def _bf16_deq(raw, shape):
    a = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if a.size != int(np.prod(shape, dtype=np.int64)) * 2:
        raise KilnError(f"storage bf16: {a.size} bytes given for shape {tuple(shape)}")
    return (a.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)


def _bf16_quant(x):
    """Round to nearest even, as torch does; NaN stays NaN."""
    u = np.ascontiguousarray(np.asarray(x, np.float32)).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r = np.where(np.isnan(np.asarray(x, np.float32)), np.uint16(0x7FC0), r)
    return r.astype("<u2").view(np.uint8)


_P16 = 16  # panel width (KILN_GEMM_NR in csrc/gemm.h)


def _p16_dims(shape) -> Tuple[int, int]:
    if len(shape) != 2:
        raise KilnError(f"storage f32_p16: only a 2-D [N, K] weight packs, got shape {list(shape)}")
    return int(shape[0]), int(shape[1])


def pack_f32_p16(parts: Sequence[np.ndarray]) -> np.ndarray:
    """float32 [N_i, K] parts, stacked along N (a merged QKV or gate/up weight) -> uint8
    [sum N_i, 4K]: the bytes of the panel layout (csrc/gemm.h) of their concatenation, written
    straight from the parts into one new buffer (kiln/core/buffers.py): no concatenated copy."""
    parts = [np.asarray(p, np.float32) for p in parts]
    if not parts:
        raise KilnError("storage f32_p16: nothing to pack")
    k = _p16_dims(parts[0].shape)[1]
    for p in parts:
        if _p16_dims(p.shape)[1] != k:
            raise KilnError(f"storage f32_p16: parts of {k} and {p.shape[1]} columns do not stack")
    starts = np.cumsum([0] + [p.shape[0] for p in parts])
    n = int(starts[-1])
    full = n // _P16 * _P16
    out = buffers.fresh(4 * n * k).view(np.float32)
    panels = out[:full * k].reshape(full // _P16, k, _P16)

    def rows(a, b):   # rows [a, b) of the stacked weight: a view unless they straddle parts
        pieces = [p[max(a, s) - s:min(b, e) - s] for p, s, e in zip(parts, starts, starts[1:]) if s < b and a < e]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    # Each part's whole panels are written through a transposed view of the output, so the
    # copy reads the weight's rows contiguously (reading a transposed view of the input ran
    # at half the speed); a panel that straddles two parts is gathered first (16 rows).
    for p, s, e in zip(parts, starts, starts[1:]):
        a, b = -(-int(s) // _P16) * _P16, min(int(e), full) // _P16 * _P16
        if a < b:
            panels[a // _P16:b // _P16].transpose(0, 2, 1)[...] = p[a - s:b - s].reshape(-1, _P16, k)
    for q in sorted({int(s) // _P16 for s in starts[1:-1] if s % _P16 and s < full}):
        panels[q].T[...] = rows(q * _P16, (q + 1) * _P16)
    if full < n:
        out[full * k:] = rows(full, n).T.reshape(-1)                    # [k, N % 16]
    return out.view(np.uint8).reshape(n, 4 * k)


def _pack_p16(x):
    """float32 [N, K] -> uint8 [N, 4K]: the bytes of the panel layout (csrc/gemm.h)."""
    return pack_f32_p16([x])


def _unpack_p16(raw, shape):
    n, k = _p16_dims(shape)
    a = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if a.size != 4 * n * k:
        raise KilnError(f"storage f32_p16: {a.size} bytes given for shape {list(shape)}, which needs {4 * n * k}")
    f = a.view("<f4")
    full = n // _P16 * _P16
    head = f[:full * k].reshape(full // _P16, k, _P16).transpose(0, 2, 1).reshape(full, k)
    tail = f[full * k:].reshape(k, n - full).T
    return np.concatenate([head, tail]).astype(np.float32, copy=False)


_f32 = _plain("<f4")
_f16 = _plain("<f2")

STORAGE: Dict[str, StorageType] = {st.name: st for st in [
    StorageType("f32", 0, 1, 4, 0, _f32[0], _f32[1]),
    StorageType("f16", 1, 1, 2, 0, _f16[0], _f16[1]),
    StorageType("bf16", 30, 1, 2, 0, _bf16_deq, _bf16_quant),
    StorageType("i8_row", None, 1, 1, 4, _dequantize_i8_row, _quantize_i8_row),
    StorageType("q8_0", 8, 32, 34, 0, _dequant_blocks("q8_0"), _quantize_q8_0, _decode_q8_0),
    StorageType("q4_0", 2, 32, 18, 0, _dequant_blocks("q4_0"), _quantize_q4_0, _decode_q4_0),
    StorageType("q4_1", 3, 32, 20, 0, _dequant_blocks("q4_1"), None, _decode_q4_1),
    StorageType("q4_k", 12, QK_K, 144, 0, _dequant_blocks("q4_k"), _quantize_q4_k, _decode_q4_k),
    StorageType("q5_k", 13, QK_K, 176, 0, _dequant_blocks("q5_k"), None, _decode_q5_k),
    StorageType("q6_k", 14, QK_K, 210, 0, _dequant_blocks("q6_k"), None, _decode_q6_k),
    StorageType("f32_p16", None, 1, 4, 0, _unpack_p16, _pack_p16),
]}
