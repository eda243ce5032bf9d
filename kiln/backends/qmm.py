"""ctypes access to the quantized-matmul kernels (csrc/quant.h): used by the tests and
bench/quant_gemv.py until the C backend registers them as op kernels.

The library is the one kiln.backends.clib loads; this module only declares the
kiln_qmm_* / kiln_qembed signatures and owns the buffers of a call.
"""
from __future__ import annotations

import ctypes

import numpy as np

from . import clib

# C format ids (csrc/quant.h enum), by storage-table name.
FORMATS = {"q8_0": 0, "q4_0": 1, "q4_1": 2, "q4_k": 3, "q5_k": 4, "q6_k": 5, "i8_row": 6}
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


class Qmm:
    """One prepared call: out = a @ dequant(w).T (+ bias); buffers owned here."""

    def __init__(self, fmt: str, mode: str, a: np.ndarray, w: np.ndarray, n: int, k: int,
                 bias=None, threads: int = 1):
        lb = lib()
        self.a = np.ascontiguousarray(a, np.float32)
        self.w = np.ascontiguousarray(w).reshape(-1).view(np.uint8)
        self.bias = None if bias is None else np.ascontiguousarray(bias, np.float32)
        m = self.a.shape[0]
        self.out = np.empty((m, n), np.float32)
        size = lb.kiln_qmm_scratch_bytes(FORMATS[fmt], MODES[mode], m, k, threads)
        if size < 0:
            raise ValueError(f"bad qmm sizes fmt={fmt} K={k}")
        self.scratch = aligned(max(int(size), 64))
        self.threads = threads
        self.args = QmmArgs(FORMATS[fmt], MODES[mode], m, n, k, _p(self.a), k, _p(self.w), _p(self.bias),
                            _p(self.out), n, _p(self.scratch))

    def __call__(self) -> np.ndarray:
        lb = lib()
        rc = lb.kiln_qmm(ctypes.byref(self.args)) if self.threads == 1 else \
            lb.kiln_qmm_threaded(ctypes.byref(self.args), self.threads)
        if rc:
            raise ValueError(f"kiln_qmm refused the call: {rc}")
        return self.out


def qmm(fmt, mode, a, w, n, k, bias=None, threads=1) -> np.ndarray:
    return Qmm(fmt, mode, a, w, n, k, bias, threads)().copy()


def qembed(fmt, table, n_rows, k, ids) -> np.ndarray:
    ids = np.ascontiguousarray(ids, np.int64)
    out = np.full((ids.size, k), np.nan, np.float32)
    table = np.ascontiguousarray(table).reshape(-1).view(np.uint8)
    rc = lib().kiln_qembed(FORMATS[fmt], table.ctypes.data, n_rows, k, ids.ctypes.data, ids.size, out.ctypes.data)
    if rc:
        raise ValueError(f"kiln_qembed refused the call: {rc}")
    return out
