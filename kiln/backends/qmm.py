"""ctypes access to the quantized-matmul kernels (csrc/quant.h): used by the tests and
bench/quant_gemv.py until the C backend registers them as op kernels.

The library is the one kiln.backends.clib loads; this module only declares the
kiln_qmm_* / kiln_qembed signatures and owns the buffers of a call.
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import clib
from ..core import storage
from ..errors import BackendError, KilnError

# C format ids (csrc/quant.h enum), by storage-table name.
FORMATS = {"q8_0": 0, "q4_0": 1, "q4_1": 2, "q4_k": 3, "q5_k": 4, "q6_k": 5, "i8_row": 6, "q5_0": 7, "q5_1": 8}
MODES = {"exact": 0, "int8": 1}
ISAS = {"generic": 0, "avx2": 1, "avx512": 2}

I64, PTR = ctypes.c_int64, ctypes.c_void_p


class QmmArgs(ctypes.Structure):
    _fields_ = [("fmt", ctypes.c_int), ("mode", ctypes.c_int), ("M", I64), ("N", I64), ("K", I64),
                ("a", PTR), ("lda", I64), ("w", PTR), ("bias", PTR), ("out", PTR), ("ldo", I64),
                ("scratch", PTR)]


def lib():
    lb = clib.lib()
    if not getattr(lb, "_qmm_declared", False):
        lb.kiln_qrow_bytes.argtypes = [ctypes.c_int, I64]
        lb.kiln_qrow_bytes.restype = I64
        lb.kiln_qmm_scratch_bytes.argtypes = [ctypes.c_int, ctypes.c_int, I64, I64, ctypes.c_int]
        lb.kiln_qmm_scratch_bytes.restype = I64
        for f in ("kiln_qmm", "kiln_qmm_check"):
            getattr(lb, f).argtypes = [ctypes.POINTER(QmmArgs)]
            getattr(lb, f).restype = ctypes.c_int
        lb.kiln_qmm_threaded.argtypes = [ctypes.POINTER(QmmArgs), ctypes.c_int]
        lb.kiln_qmm_threaded.restype = ctypes.c_int
        lb.kiln_qembed.argtypes = [ctypes.c_int, PTR, I64, I64, PTR, I64, PTR]
        lb.kiln_qembed.restype = ctypes.c_int
        lb.kiln_qmm_set_isa.argtypes = [ctypes.c_int]
        lb.kiln_qmm_set_isa.restype = ctypes.c_int
        lb.kiln_qmm_get_isa.restype = ctypes.c_int
        lb._qmm_declared = True
    return lb


def available_isas():
    """ISA levels this CPU runs (the kernel table is restored afterwards)."""
    lb = lib()
    saved = lb.kiln_qmm_get_isa()
    found = [name for name, i in ISAS.items() if lb.kiln_qmm_set_isa(i) == 0]
    lb.kiln_qmm_set_isa(saved)
    return found


def aligned(nbytes: int, align: int = 64) -> np.ndarray:
    raw = np.empty(nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + nbytes]


def _p(x):
    return None if x is None else x.ctypes.data


_CODES = {-1: "unknown format", -2: "unknown mode", -3: "K is not whole blocks / groups of 32",
          -4: "bad stride", -5: "null pointer", -6: "scratch not 64-byte aligned"}


def _fmt_mode(fmt: str, mode: str):
    if fmt not in FORMATS:
        raise BackendError(f"quantized matmul: no kernel for storage {fmt!r} (kernels: {', '.join(FORMATS)})")
    if mode not in MODES:
        raise BackendError(f"quantized matmul: mode {mode!r} is not one of {', '.join(MODES)}")
    return FORMATS[fmt], MODES[mode]


def _weight_bytes(fmt: str, w: np.ndarray, n: int, k: int, what: str) -> np.ndarray:
    try:
        want = storage.nbytes(fmt, (n, k))
    except KilnError as e:
        raise BackendError(f"{what}: {e}") from None
    w = np.ascontiguousarray(w).reshape(-1).view(np.uint8)
    if w.nbytes != want:
        raise BackendError(f"{what}: {w.nbytes} weight bytes for [{n}, {k}] in {fmt}, which needs {want}")
    return w


class Qmm:
    """One prepared call: out[M, N] = a[M, K] @ dequantize(w)[N, K].T (+ bias[N]).

    a: float32 [M, K]; w: the raw bytes of an [N, K] weight in storage ``fmt`` (rows of K,
    as GGUF stores a linear weight); mode 'exact' or 'int8'. The call's buffers (output,
    64-byte aligned scratch for ``threads`` workers) are owned here; shapes and byte sizes
    are checked before anything reaches C (BackendError).
    """

    def __init__(self, fmt: str, mode: str, a: np.ndarray, w: np.ndarray, n: int, k: int,
                 bias=None, threads: int = 1):
        lb = lib()
        cf, cm = _fmt_mode(fmt, mode)
        self.a = np.ascontiguousarray(a, np.float32)
        if self.a.ndim != 2 or self.a.shape[1] != k:
            raise BackendError(f"quantized matmul: activations are {list(self.a.shape)}, expected [M, {k}]")
        self.w = _weight_bytes(fmt, w, n, k, "quantized matmul")
        self.bias = None if bias is None else np.ascontiguousarray(bias, np.float32)
        if self.bias is not None and self.bias.shape != (n,):
            raise BackendError(f"quantized matmul: bias is {list(self.bias.shape)}, expected [{n}]")
        if threads < 1:
            raise BackendError(f"quantized matmul: threads must be >= 1, got {threads}")
        m = self.a.shape[0]
        self.out = np.empty((m, n), np.float32)
        size = lb.kiln_qmm_scratch_bytes(cf, cm, m, k, threads)
        if size < 0:
            raise BackendError(f"quantized matmul: K={k} is not whole {fmt} blocks and groups of 32")
        self.scratch = aligned(max(int(size), 64))
        self.threads = threads
        self.args = QmmArgs(cf, cm, m, n, k, _p(self.a), k, _p(self.w), _p(self.bias),
                            _p(self.out), n, _p(self.scratch))

    def __call__(self) -> np.ndarray:
        lb = lib()
        rc = lb.kiln_qmm(ctypes.byref(self.args)) if self.threads == 1 else \
            lb.kiln_qmm_threaded(ctypes.byref(self.args), self.threads)
        if rc:
            raise BackendError(f"kiln_qmm refused the call: {_CODES.get(rc, rc)}")
        return self.out


def qmm(fmt, mode, a, w, n, k, bias=None, threads=1) -> np.ndarray:
    """out = a @ dequantize(w).T (+ bias), a fresh array; see Qmm."""
    return Qmm(fmt, mode, a, w, n, k, bias, threads)().copy()


def qembed(fmt: str, table: np.ndarray, n_rows: int, k: int, ids) -> np.ndarray:
    """float32 [len(ids), K]: the rows ``ids`` of an [n_rows, K] table in storage ``fmt``,
    dequantized (only those rows are read). BackendError for an id outside [0, n_rows)."""
    cf, _ = _fmt_mode(fmt, "exact")
    ids = np.ascontiguousarray(ids, np.int64).reshape(-1)
    table = _weight_bytes(fmt, table, n_rows, k, "quantized embedding")
    out = np.empty((ids.size, k), np.float32)
    rc = lib().kiln_qembed(cf, table.ctypes.data, n_rows, k, ids.ctypes.data, ids.size, out.ctypes.data)
    if rc == -2:
        bad = ids[(ids < 0) | (ids >= n_rows)]
        raise BackendError(f"quantized embedding: id {int(bad[0])} is outside [0, {n_rows})")
    if rc:
        raise BackendError(f"kiln_qembed refused the call: {rc}")
    return out
