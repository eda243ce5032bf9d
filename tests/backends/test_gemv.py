"""Decode's GEMV against a packed weight: the `matmul` op's own split (csrc/matmul.c gemv_packed).

The op splits a product of <= 4 rows over panels for bandwidth and runs each chunk through
the engine's kernel; its result must be the engine's, bit for bit, for every thread count,
row count, odd N / K, bias, residual (beta), alpha and fused activation: a request's output
may not depend on the machine's threads or on the batch it shares (docs/DESIGN.md). The
file re-runs against the portable build. Also Kiln's read-bandwidth probe (csrc/probe.c).
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from kiln.backends import cabi, clib
from tests.conftest import rerun_on_generic_build
from tests.test_gemm_engine import GENERIC, LIB, assert_close, gemm, pack, reference, rnd

LIB.kiln_matmul_set_gemv_split.argtypes = [ctypes.c_int]
LIB.kiln_matmul_set_gemv_split.restype = None
LIB.kiln_read_probe.argtypes = [ctypes.c_void_p, ctypes.c_int64]
LIB.kiln_read_probe.restype = ctypes.c_double
LIB.kiln_read_probe_ahead.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
LIB.kiln_read_probe_ahead.restype = ctypes.c_double


def op_matmul(a, packed, n, c0=None, *, alpha=1.0, bias=None, beta=0.0, act=0):
    """The `matmul` op on A [M, K] and a packed B (as the compiled executor passes a stored
    weight: its bytes, a 1-D bool tensor); c0 is the broadcast input (bias or residual)."""
    m, k = a.shape
    out = np.full((m, n), np.nan, np.float32)
    third = bias if bias is not None else c0
    arrays = [a, packed[: k * n], out] + ([third] if third is not None else [])
    call = (cabi.Call * 1)()
    c = call[0]
    c.op = cabi.op_id("matmul")
    c.n_in = 3 if third is not None else 2
    slots = (ctypes.c_void_p * 4)()
    ins = getattr(c, "in")
    cabi.fill_tensor(ins[0], slot=0, offset=0, shape=a.shape, dtype="float32")
    cabi.fill_tensor(ins[1], slot=1, offset=0, shape=(4 * k * n,), dtype="bool")
    cabi.fill_tensor(c.out, slot=2, offset=0, shape=out.shape, dtype="float32")
    if third is not None:
        cabi.fill_tensor(ins[2], slot=3, offset=0, shape=third.shape, dtype="float32")
    for i, x in enumerate(arrays):
        slots[i] = x.ctypes.data
    params = cabi.make_params("matmul", {"transpose_b": 1, "alpha": alpha,
                                         "beta": 1.0 if bias is not None else beta, "act": act})
    c.params = ctypes.cast(ctypes.pointer(params), ctypes.c_void_p)
    clib.run_calls(call, 1, slots)
    return out


@pytest.fixture
def threads_restored():
    saved = LIB.kiln_pool_threads()
    yield
    LIB.kiln_pool_set_threads(saved)
    LIB.kiln_matmul_set_gemv_split(1)


CASES = [  # k, n: one panel, a partial last panel, N not a multiple of 8 panels, K past KC, an LM-head-like N
    (1, 1), (37, 15), (128, 17), (300, 200), (576, 576), (129, 1000), (64, 12000 + 7)]


@pytest.mark.parametrize("k,n", CASES)
@pytest.mark.parametrize("epi", ["plain", "bias_silu", "residual_relu"])
def test_decode_rows_give_the_engines_bits_on_any_threads(k, n, epi, threads_restored):
    """Rows 1..5 through the op (<= 4: the GEMV split; 5: the engine) on 1, 2 and 3 threads equal
    the engine's one-thread product of a 7-row batch, bit for bit, and float64 within fp32 error."""
    a, b = rnd(7, k, seed=1), rnd(n, k, seed=2)
    packed = pack(b, True)
    bias = rnd(n, seed=3) if epi == "bias_silu" else None
    c0 = rnd(7, n, seed=4) if epi == "residual_relu" else None
    act = {"plain": 0, "bias_silu": 4, "residual_relu": 1}[epi]
    alpha, beta = (0.75, 0.5) if epi == "residual_relu" else (1.0, 0.0)
    LIB.kiln_pool_set_threads(1)
    want = gemm(a, packed, n, None if c0 is None else c0.copy(), alpha=alpha, bias=bias, beta=beta, act=act)
    assert_close(want, a, b.T, reference(a, b.T, alpha=alpha, bias=bias, beta=beta, c0=c0, act=act), alpha)
    for t in (1, 2, 3):
        LIB.kiln_pool_set_threads(t)
        for split in (1, 0):
            LIB.kiln_matmul_set_gemv_split(split)
            for m in (1, 2, 4, 5):
                got = op_matmul(a[:m], packed, n, None if c0 is None else c0[:m].copy(), alpha=alpha, bias=bias,
                                beta=beta, act=act)
                assert np.array_equal(got, want[:m]), f"threads {t}, split {split}, M {m}"


def test_each_row_of_a_decode_batch_is_its_own_product(threads_restored):
    """A row's result does not depend on the other rows of the decode batch (serving batches requests)."""
    k, n = 576, 960
    a, packed = rnd(4, k, seed=5), pack(rnd(n, k, seed=6), True)
    for t in (1, 2):
        LIB.kiln_pool_set_threads(t)
        batch = op_matmul(a, packed, n)
        for i in range(4):
            assert np.array_equal(op_matmul(a[i:i + 1], packed, n)[0], batch[i]), f"threads {t}, row {i}"


@pytest.mark.parametrize("m,k,n", [(0, 5, 40), (1, 5, 0), (2, 0, 40)])
def test_empty_decode_products(m, k, n, threads_restored):
    """No rows, no columns, or K = 0 (the epilogue of a zero sum: bias + beta * C)."""
    a, b, c0 = rnd(m, k, seed=7), rnd(n, k, seed=8), rnd(m, n, seed=9)
    packed = np.concatenate([pack(b, True), np.zeros(1, np.float32)])  # never a NULL buffer
    for t in (1, 2):
        LIB.kiln_pool_set_threads(t)
        got = op_matmul(a, packed, n, c0.copy(), beta=0.5)
        assert got.shape == (m, n) and np.array_equal(got, (0.5 * c0.astype(np.float64)).astype(np.float32))


@pytest.mark.parametrize("n", [1, 100, (1 << 18) + 3, 3 << 20])
def test_read_probe_sums_every_float_once(n, threads_restored):
    """The bandwidth probe reads every element once, whatever the chunking and threads."""
    x = (np.arange(n, dtype=np.int64) % 7).astype(np.float32)
    for t in (1, 2, 3):
        LIB.kiln_pool_set_threads(t)
        assert LIB.kiln_read_probe(x.ctypes.data, n) == float(x.astype(np.float64).sum())
        for lines in (1, 16, 64):   # the prefetching probe reads the same floats
            assert LIB.kiln_read_probe_ahead(x.ctypes.data, n, lines) == float(x.astype(np.float64).sum())
    assert LIB.kiln_read_probe(None, 5) == 0.0 and LIB.kiln_read_probe(x.ctypes.data, 0) == 0.0
    assert LIB.kiln_read_probe_ahead(x.ctypes.data, n, -1) == 0.0


@pytest.mark.skipif(GENERIC or os.environ.get("KILN_LIB") is not None, reason="already the generic/custom build")
def test_generic_build_passes_the_same_cases():
    rerun_on_generic_build(__file__)
