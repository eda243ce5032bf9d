"""Choosing the scales of int8 per-channel weights (storage ``i8_row``).

``i8_row`` stores each output row of a [N, K] weight as one fp32 scale and K int8 codes,
value = scale * q (kiln/core/storage.py). The storage table's own quantizer takes the
largest magnitude as the scale (max|row| / 127): no value clips, but one outlier in a row
stretches the step for all K values of it. Here each row's scale is chosen instead to
minimise the row's squared rounding error sum_k (w_k - s * q_k)^2, the usual weight-only
recipe (a clipping search, as e.g. llama.cpp's ``make_qx_quants`` and GPTQ/AWQ's per-channel
"mse" option do):

1. candidates ``s = c * max|row| / 127`` for c in ``CLIP_GRID`` (c = 1 is the max-abs scale),
   codes ``q = clip(round(w / s), -127, 127)``; keep the candidate with the least error;
2. with those codes fixed, the least-squares scale ``<w, q> / <q, q>`` (never worse for them).

The final choice is made on the error of the stored (fp32-rounded) scale in float64, against
the max-abs scale's, so no row ends worse than max-abs. Measurements (bench/quant_accuracy.py,
docs/DESIGN.md "Quantization accuracy"): on SmolLM2-135M this halves the down-projection's
perplexity cost; it needs no calibration data.
"""
from __future__ import annotations

import numpy as np

from ..config import num_threads
from ..errors import KilnError

METHODS = ("mse", "max")
# c = max|row| * c / 127: 0.50 .. 1.00 in steps of 0.02 (26 candidates). Rows of LLM weights
# choose c in 0.6 .. 0.95 almost always; below 0.5 the clipped outliers dominate the error.
CLIP_GRID = np.round(np.arange(0.50, 1.0001, 0.02), 4).astype(np.float32)
_CHUNK = 1 << 20  # elements per block of rows searched at once (bounds the temporaries; blocks run in threads)


def _codes(rows: np.ndarray, scale: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.rint(rows / scale), 0)
    return np.clip(q, -127, 127)


def _row_error(rows: np.ndarray, scale: np.ndarray, q: np.ndarray, h=None) -> np.ndarray:
    """sum_k h_k (w - s q)^2 per row in float64, s q as i8_row's dequantize makes it (float32)."""
    d = rows.astype(np.float64) - (scale.astype(np.float32) * q.astype(np.float32)).astype(np.float64)
    return np.einsum("ij,ij->i", d * h if h is not None else d, d)


def max_abs_scales(rows: np.ndarray) -> np.ndarray:
    """float32 [N, 1]: max|row| / 127 (the storage table's definition)."""
    return (np.abs(rows).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)


def _mse_block(rows: np.ndarray, h=None) -> tuple[np.ndarray, np.ndarray]:
    amax = np.abs(rows).max(axis=1, keepdims=True)
    s_max = (amax / np.float32(127)).astype(np.float32)
    h32 = None if h is None else h.astype(np.float32)

    buf = np.empty_like(rows)
    positive = amax > 0

    def err32(s):  # the float32 scan, in one scratch array (as _codes, then w - s q)
        safe = np.where(positive, s, np.float32(1))
        np.divide(rows, safe, out=buf)
        np.rint(buf, out=buf)
        np.clip(buf, -127, 127, out=buf)
        np.multiply(buf, np.where(positive, s, np.float32(0)), out=buf)
        np.subtract(rows, buf, out=buf)
        return np.einsum("ij,ij->i", buf * h32 if h32 is not None else buf, buf)
    best_s = s_max.copy()
    best_e = err32(s_max)
    for c in CLIP_GRID[:-1]:
        s = (amax * (c / np.float32(127))).astype(np.float32)
        e = err32(s)
        better = e < best_e
        best_s[better], best_e[better] = s[better], e[better]
    # least squares for the chosen codes, then the exact float64 comparison with max-abs
    q = _codes(rows, best_s).astype(np.float64)
    hq = q * h if h is not None else q
    qq = np.einsum("ij,ij->i", hq, q)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(qq > 0, np.einsum("ij,ij->i", rows.astype(np.float64), hq)[:, None] / qq, 0)
    ls = ls.astype(np.float32)
    e_ls = _row_error(rows, ls, q, h)
    e_grid = _row_error(rows, best_s, q, h)
    chosen = np.where((e_ls < e_grid)[:, None], ls, best_s)
    e_chosen = np.minimum(e_ls, e_grid)
    q_max = _codes(rows, s_max)
    keep = (e_chosen <= _row_error(rows, s_max, q_max, h))[:, None]
    return np.where(keep, chosen, s_max).astype(np.float32), np.where(keep, q, q_max).astype(np.int8)


def mse_search(rows: np.ndarray, channel_weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the scale of least squared rounding error (see the module doc) and its codes:
    (float32 [N, 1], int8 [N, K]). ``rows``: float32 [N, K], finite. The codes are not always
    round(w / scale): after the least-squares step they are the candidate's.
    ``channel_weights`` (float [K], >= 0, optional): the error counts sum_k h_k (w_k - s q_k)^2,
    h the mean squared activation of input channel k (activation-aware: an error where the
    inputs are large costs more; kiln/passes/quantize_calibration.py measures h)."""
    rows = np.ascontiguousarray(rows, np.float32)
    h = None
    if channel_weights is not None:
        h = np.asarray(channel_weights, np.float64).reshape(1, -1)
        if h.shape[1] != rows.shape[1] or not (np.isfinite(h).all() and (h >= 0).all()):
            raise KilnError(f"int8 scales: channel weights must be {rows.shape[1]} finite values >= 0, "
                            f"got shape {list(np.shape(channel_weights))}")
    scale = np.empty((rows.shape[0], 1), np.float32)
    codes = np.empty(rows.shape, np.int8)
    step = max(1, _CHUNK // max(1, rows.shape[1]))

    def block(i: int) -> None:
        scale[i:i + step], codes[i:i + step] = _mse_block(rows[i:i + step], h)
    starts = range(0, rows.shape[0], step)
    threads = min(num_threads(), len(starts))
    if threads > 1:  # numpy's loops release the GIL: row blocks search in parallel
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(block, starts))
    else:
        for i in starts:
            block(i)
    return scale, codes


def quantize_i8_row(x: np.ndarray, method: str = "mse", channel_weights=None) -> np.ndarray:
    """float32 [..., K] -> the ``i8_row`` bytes uint8 [..., 4 + K] (fp32 scale, then K int8
    codes per row), scales chosen by ``method``: "mse" (least rounding error, the default of
    ``quantize="int8"``) or "max" (max|row| / 127, the storage table's definition);
    ``channel_weights``: see ``mse_search`` (method "mse" only).
    KilnError on NaN/infinity or an unknown method."""
    if method not in METHODS:
        raise KilnError(f"int8 scales: method {method!r} is not one of {', '.join(METHODS)}")
    x = np.asarray(x, np.float32)
    if x.ndim == 0:
        x = x.reshape(1)
    if not np.isfinite(x).all():
        raise KilnError("quantize: the tensor holds NaN or infinity")
    rows = x.reshape(-1, x.shape[-1])
    if method == "mse":
        scale, q = mse_search(rows, channel_weights)
    else:
        scale = max_abs_scales(rows)
        q = _codes(rows, scale).astype(np.int8)
    out = np.concatenate([scale.astype("<f4").view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(*x.shape[:-1], -1)
