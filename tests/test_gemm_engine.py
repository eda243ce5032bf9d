"""Kiln's own GEMM engine (csrc/gemm*.c) and thread pool (csrc/pool.c) against float64 numpy.

Every kernel set the CPU supports is tested (the AVX-512, AVX2 and portable kernels all
live in one library, chosen by CPUID), on 1 and 2 threads, over row counts that hit the
GEMV, few-row and register-blocked paths and odd N / K (partial panels, K not a multiple
of the K block). The whole file re-runs against the portable build in a subprocess
(KILN_FORCE_GENERIC=1), where the default kernel set must be the portable one.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from kiln.backends import clib
from kiln.errors import BackendError
from kiln.ops.fused import ACTIVATIONS, apply_act

GENERIC = os.environ.get("KILN_FORCE_GENERIC") == "1"
NR, KC = 16, 128  # csrc/gemm.h: panel width, K block
ISA_NAMES = {0: "generic", 1: "avx2", 2: "avx512"}
I64, PTR, F32, INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
POOL_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int)


def _load():
    try:
        lib = clib.lib()
    except BackendError as e:
        pytest.skip(f"C kernels not loadable: {e}", allow_module_level=True)
    sigs = {
        "kiln_gemm_packed_bytes": (I64, [I64, I64]),
        "kiln_gemm_pack_b": (INT, [I64, I64, PTR, I64, INT, PTR]),
        "kiln_gemm_unpack_b": (INT, [I64, I64, PTR, INT, PTR, I64]),
        "kiln_gemm_scratch_bytes": (I64, [I64, I64, I64, INT]),
        "kiln_gemm_packed": (INT, [I64, I64, I64, PTR, I64, PTR, PTR, I64, F32, PTR, F32, INT, PTR, I64]),
        "kiln_gemm_isa": (INT, []),
        "kiln_gemm_set_isa": (INT, [INT]),
        "kiln_gemm_tile_count": (INT, []),
        "kiln_gemm_tile_name": (ctypes.c_char_p, [INT]),
        "kiln_gemm_tile_isa": (INT, [INT]),
        "kiln_gemm_tile": (INT, []),
        "kiln_gemm_set_tile": (INT, [INT]),
        "kiln_gemm_tuning": (INT, []),
        "kiln_gemm_set_tuning": (INT, [INT]),
        "kiln_pool_set_threads": (None, [INT]),
        "kiln_pool_threads": (INT, []),
        "kiln_pool_parallel": (None, [I64, POOL_FN, PTR]),
        "kiln_pool_in_parallel": (INT, []),
        "kiln_pool_region": (INT, [POOL_FN, PTR]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


LIB = _load()
DEFAULT_ISA = LIB.kiln_gemm_isa()
SUPPORTED = [i for i in (0, 1, 2) if LIB.kiln_gemm_set_isa(i) == 0]
LIB.kiln_gemm_set_isa(DEFAULT_ISA)
# The portable build re-runs its default (portable) kernels and its best target-attribute
# kernels (compiled there without -march); the native run covers every set.
TESTED = sorted({0, max(SUPPORTED)}) if GENERIC else SUPPORTED
DEFAULT_TILE = LIB.kiln_gemm_tile()
# every large-M register tile of every tested kernel set: (isa, tile index, name)
TILES = [(LIB.kiln_gemm_tile_isa(t), t, LIB.kiln_gemm_tile_name(t).decode()) for t in range(LIB.kiln_gemm_tile_count())]
TILES = [x for x in TILES if x[0] in TESTED]


def _p(a):
    return None if a is None else a.ctypes.data


def pack(b: np.ndarray, trans: bool) -> np.ndarray:
    """Pack a float32 weight given as [K, N] (trans=False) or [N, K] (trans=True)."""
    k, n = (b.shape[1], b.shape[0]) if trans else b.shape
    out = np.empty(LIB.kiln_gemm_packed_bytes(k, n) // 4 + 1, np.float32)  # +1: never a NULL buffer
    assert LIB.kiln_gemm_pack_b(k, n, _p(b), b.shape[1], int(trans), _p(out)) == 0
    return out


def gemm(a, packed, n, c=None, *, alpha=1.0, bias=None, beta=0.0, act=0, scratch=True):
    """scratch=True: the bytes kiln_gemm_scratch_bytes asks for (as the planner gives them), filled
    with NaN; False: none (each chunk packs its own rows of A); an int: that many bytes."""
    m, k = a.shape
    if c is None:
        c = np.full((m, n), np.nan, np.float32)  # beta = 0 must not read C
    nbytes = LIB.kiln_gemm_scratch_bytes(m, n, k, LIB.kiln_pool_threads()) if scratch is True else int(scratch)
    buf = np.full(nbytes // 4 + 1, np.nan, np.float32)
    assert LIB.kiln_gemm_packed(m, n, k, _p(a), a.strides[0] // 4, _p(packed), _p(c), c.strides[0] // 4, alpha,
                                _p(bias), beta, act, _p(buf) if nbytes else None, nbytes) == 0
    return c


def reference(a, b_kn, *, alpha=1.0, bias=None, beta=0.0, c0=None, act=0):
    r = alpha * (a.astype(np.float64) @ b_kn.astype(np.float64))
    if bias is not None:
        r += bias
    if beta != 0.0:
        r += beta * c0.astype(np.float64)
    return apply_act(r, ACTIVATIONS[act])


def assert_close(got, a, b_kn, want, alpha=1.0):
    # fp32 accumulation: error bounded by ~K ulp of the sum of |terms|
    scale = abs(alpha) * (np.abs(a.astype(np.float64)) @ np.abs(b_kn.astype(np.float64))) + np.abs(want) + 1e-30
    tol = 4 * (a.shape[1] + 4) * np.finfo(np.float32).eps * scale
    bad = ~(np.abs(got - want) <= tol)
    assert not bad.any(), f"{bad.sum()} of {bad.size} wrong, first at {np.argwhere(bad)[0]}: " \
                          f"{got[bad][0]} vs {want[bad][0]}"


@pytest.fixture(params=TESTED, ids=[ISA_NAMES[i] for i in TESTED])
def isa(request):
    assert LIB.kiln_gemm_set_isa(request.param) == 0
    yield request.param
    LIB.kiln_gemm_set_isa(DEFAULT_ISA)


@pytest.fixture(params=TILES, ids=[name for _, _, name in TILES])
def tile(request):
    isa_, t, _ = request.param
    assert LIB.kiln_gemm_set_isa(isa_) == 0 and LIB.kiln_gemm_set_tile(t) == 0 and LIB.kiln_gemm_tile() == t
    yield t
    LIB.kiln_gemm_set_isa(DEFAULT_ISA)
    assert LIB.kiln_gemm_tile() == DEFAULT_TILE


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    saved = LIB.kiln_pool_threads()
    LIB.kiln_pool_set_threads(request.param)
    yield request.param
    LIB.kiln_pool_set_threads(saved)


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


SIZES = (1, 5, 17, 63, 257, 768)


@pytest.mark.parametrize("trans", [False, True], ids=["KN", "NK"])
@pytest.mark.parametrize("k,n", [(1, 1), (5, 17), (63, 257), (17, 768), (257, 5), (768, 63)])
def test_pack_layout_and_unpack_round_trip(k, n, trans):
    b_kn = rnd(k, n, seed=k * 1000 + n)
    b = np.ascontiguousarray(b_kn.T) if trans else b_kn
    packed = pack(b, trans)
    full = n // NR * NR
    assert LIB.kiln_gemm_packed_bytes(k, n) == k * n * 4   # the last panel is not padded
    head = b_kn[:, :full].reshape(k, full // NR, NR).transpose(1, 0, 2).ravel()
    want = np.concatenate([head, b_kn[:, full:].ravel()])   # then the N % 16 tail columns, K-major
    np.testing.assert_array_equal(packed[:want.size], want)
    back = np.full(b.shape, np.nan, np.float32)
    assert LIB.kiln_gemm_unpack_b(k, n, _p(packed), int(trans), _p(back), b.shape[1]) == 0
    np.testing.assert_array_equal(back, b)


@pytest.mark.parametrize("trans", [False, True], ids=["KN", "NK"])
@pytest.mark.parametrize("m", [1, 2, 3, 7, 16, 33, 64, 65, 200])
def test_gemm_matches_float64(m, trans, isa, threads):
    for k in SIZES:
        for n in SIZES:
            if m * k * n > 4e7 and (k, n) != (768, 768):
                continue  # keep the largest row counts to the one layer-sized case
            a, b_kn = rnd(m, k, seed=1), rnd(k, n, seed=2)
            packed = pack(np.ascontiguousarray(b_kn.T) if trans else b_kn, trans)
            assert_close(gemm(a, packed, n), a, b_kn, reference(a, b_kn))


@pytest.mark.parametrize("act", range(len(ACTIVATIONS)), ids=ACTIVATIONS)
@pytest.mark.parametrize("alpha,beta,has_bias", [(1.0, 0.0, True), (-0.75, 0.0, False), (1.0, 1.0, False),
                                                 (0.5, -2.0, True)])
@pytest.mark.parametrize("m,k,n", [(1, 300, 37), (7, 17, 63), (65, 257, 100)])
def test_gemm_epilogues(m, k, n, alpha, beta, has_bias, act, isa, threads):
    a, b_kn = rnd(m, k, seed=3), rnd(k, n, seed=4)
    bias = rnd(n, seed=5) if has_bias else None
    c0 = rnd(m, n, seed=6)
    got = gemm(a, pack(b_kn, False), n, c0.copy() if beta else None, alpha=alpha, bias=bias, beta=beta, act=act)
    want = reference(a, b_kn, alpha=alpha, bias=bias, beta=beta, c0=c0, act=act)
    # the epilogue's own error (activation approximations) on top of the product's
    assert_close(got, a, b_kn, want, alpha)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(want).max()))


def test_strided_operands_leave_the_rest_alone(isa):
    m, k, n = 9, 70, 40
    big_a = rnd(m, k + 5, seed=7)
    a = big_a[:, :k]
    b_kn = rnd(k, n, seed=8)
    big_c = np.full((m, n + 3), 123.0, np.float32)
    c = big_c[:, :n]
    gemm(a, pack(b_kn, False), n, c)
    assert_close(c, a, b_kn, reference(a, b_kn))
    assert (big_c[:, n:] == 123.0).all()


def test_empty_k_gives_the_epilogue_of_zero():
    bias, c0 = rnd(20, seed=9), rnd(3, 20, seed=10)
    got = gemm(np.zeros((3, 0), np.float32), pack(np.zeros((0, 20), np.float32), False), 20, c0.copy(),
               bias=bias, beta=0.5, act=1)
    np.testing.assert_allclose(got, np.maximum(bias + 0.5 * c0, 0), rtol=1e-6)


@pytest.mark.parametrize("k", [5, 300, 768])
def test_row_result_is_independent_of_the_batch_and_threads(k, isa):
    """Row i of an M-row product equals, bit for bit, the product of row i alone (serving relies on it)."""
    n = 100
    a, b_kn, bias, c0 = rnd(200, k, seed=11), rnd(k, n, seed=12), rnd(n, seed=13), rnd(200, n, seed=14)
    packed = pack(b_kn, False)
    saved = LIB.kiln_pool_threads()
    try:
        for t in (1, 2, 3):
            LIB.kiln_pool_set_threads(t)
            for m in (7, 200):
                batch = gemm(a[:m], packed, n, c0[:m].copy(), bias=bias, beta=0.5, act=4, alpha=0.9)
                for i in range(m):
                    one = gemm(a[i:i + 1], packed, n, c0[i:i + 1].copy(), bias=bias, beta=0.5, act=4, alpha=0.9)
                    assert np.array_equal(one[0], batch[i]), f"threads {t}, M {m}, row {i}"
    finally:
        LIB.kiln_pool_set_threads(saved)


@pytest.mark.parametrize("n", [2048, 65536])
@pytest.mark.parametrize("m", [1, 7, 13, 16, 64, 300])
def test_tuning_choices_change_no_bit(m, n, threads):
    """A streamed weight (2 and 64 MB; from 1 MB the few-row tiles prefetch it and walk the
    next block) gives the same bits under every per-CPU tuning choice (kiln_gemm_set_tuning:
    1 walk the next B block, 2 prefetch C, 4 prefetch the weight into L1 rather than L2, 8 run
    13-16 rows in the taller few-row tiles), and the right ones; unknown flags are refused."""
    k = 256
    a, b_kn = rnd(m, k, seed=21), rnd(k, n, seed=22)
    packed = pack(b_kn, False)
    saved = LIB.kiln_gemm_tuning()
    try:
        got = {}
        for flags in range(16):
            assert LIB.kiln_gemm_set_tuning(flags) == 0 and LIB.kiln_gemm_tuning() == flags
            got[flags] = gemm(a, packed, n)
        assert LIB.kiln_gemm_set_tuning(16) == -1 and LIB.kiln_gemm_tuning() == 15
    finally:
        LIB.kiln_gemm_set_tuning(saved)
    for flags in range(1, 16):
        assert np.array_equal(got[0], got[flags]), flags
    assert_close(got[0], a, b_kn, reference(a, b_kn))


@pytest.mark.parametrize("n", [1, 17, 48, 100, 576, 2304])
def test_tall_few_row_tiles_match_the_others_at_every_row_count(n, threads):
    """The taller few-row tiles (KILN_GEMM_FEW_TALL, 13-16 rows) against the 6-row ones at the
    row counts around their range: the same bits, every row and column (narrow last panels,
    chunk splits in 3-panel multiples, bias, beta, activation) and the right values."""
    k = 300
    a, b_kn = rnd(20, k, seed=31), rnd(k, n, seed=32)
    bias, c0 = rnd(n, seed=33), rnd(20, n, seed=34)
    packed = pack(b_kn, False)
    saved = LIB.kiln_gemm_tuning()
    try:
        for m in range(11, 19):
            got = {}
            for tall in (0, 8):
                LIB.kiln_gemm_set_tuning((saved & ~8) | tall)
                got[tall] = gemm(a[:m], packed, n, c0[:m].copy(), bias=bias, beta=0.5, act=4, alpha=0.9)
            assert np.array_equal(got[0], got[8]), m
            want = reference(a[:m], b_kn, alpha=0.9, bias=bias, beta=0.5, c0=c0[:m], act=4)
            assert_close(got[8], a[:m], b_kn, want, alpha=0.9)
    finally:
        LIB.kiln_gemm_set_tuning(saved)


def test_concurrent_callers_get_their_own_results(threads):
    """Two Python threads in the GEMM at once (ctypes drops the GIL): one gets the pool, the other
    runs inline; both results are exact (equal bit for bit to a lone call)."""
    import threading
    k, n = 257, 300
    b_kn = rnd(k, n, seed=15)
    packed = pack(b_kn, False)
    inputs = [rnd(33, k, seed=16 + i) for i in range(2)]
    want = [gemm(a, packed, n) for a in inputs]
    bad = []

    def hammer(i):
        for _ in range(30):
            if not np.array_equal(gemm(inputs[i], packed, n), want[i]):
                bad.append(i)

    ts = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad
    assert_close(want[0], inputs[0], b_kn, reference(inputs[0], b_kn))


# row counts from 128 (csrc/gemm.c LARGE_M_MIN: fewer rows run the direct tiles) around every
# tile height (4, 6, 8, 14), a chunk's rows (256, rounded to whole tiles) and more than one chunk
TILE_ROWS = (128, 129, 135, 141, 142, 257, 300)


@pytest.mark.parametrize("m", TILE_ROWS)
def test_every_tile_matches_float64(m, tile, threads):
    for k, n in ((1, 1), (130, 17), (257, 100), (64, 161), (300, 48)):  # K across the K block, N % 48, tails
        if m > 200 and k * n > 20000:
            continue
        a, b_kn = rnd(m, k, seed=m + k), rnd(k, n, seed=n)
        assert_close(gemm(a, pack(b_kn, False), n), a, b_kn, reference(a, b_kn))


@pytest.mark.parametrize("act", [0, 1, 4])
def test_every_tile_gives_the_few_row_kernels_bits(tile, act):
    """Each large-M tile sums every element exactly as the few-row kernel does (gemm.h): a row of a
    tall product equals that row computed alone, bit for bit, epilogue included."""
    m, k, n = 143, 300, 117
    a, b_kn, bias, c0 = rnd(m, k, seed=20), rnd(k, n, seed=21), rnd(n, seed=22), rnd(m, n, seed=23)
    packed = pack(b_kn, False)
    batch = gemm(a, packed, n, c0.copy(), alpha=0.7, bias=bias, beta=0.5, act=act)
    for i in (0, 13, 142):
        one = gemm(a[i:i + 1], packed, n, c0[i:i + 1].copy(), alpha=0.7, bias=bias, beta=0.5, act=act)
        assert np.array_equal(one[0], batch[i]), f"row {i}"
    want = reference(a, b_kn, alpha=0.7, bias=bias, beta=0.5, c0=c0, act=act)
    np.testing.assert_allclose(batch, want, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("m", [1030, 2049])
def test_every_tile_at_large_m_is_row_exact_on_any_thread_count(m, tile):
    """Prefill-sized M: several row chunks (256 rows) and panel chunks (the L2 budget, csrc/gemm.c)
    with K across partial K blocks and an N % 16 tail; every row equals, bit for bit, that row
    computed alone, on 1 and 2 threads, and the product matches float64."""
    k, n = 300, 805
    a, b_kn, bias, c0 = rnd(m, k, seed=30), rnd(k, n, seed=31), rnd(n, seed=32), rnd(m, n, seed=33)
    packed = pack(b_kn, False)
    saved = LIB.kiln_pool_threads()
    try:
        results = []
        for t in (1, 2):
            LIB.kiln_pool_set_threads(t)
            results.append(gemm(a, packed, n, c0.copy(), alpha=0.7, bias=bias, beta=0.5, act=1))
        assert np.array_equal(results[0], results[1])
        for i in (0, 255, 256, 777, m - 1):
            one = gemm(a[i:i + 1], packed, n, c0[i:i + 1].copy(), alpha=0.7, bias=bias, beta=0.5, act=1)
            assert np.array_equal(one[0], results[0][i]), f"row {i}"
    finally:
        LIB.kiln_pool_set_threads(saved)
    want = reference(a, b_kn, alpha=0.7, bias=bias, beta=0.5, c0=c0, act=1)
    np.testing.assert_allclose(results[0], want, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("m", [128, 143, 300, 1030])
def test_a_packed_once_gives_the_per_chunk_packing_bits(m, tile, threads):
    """With the scratch kiln_gemm_scratch_bytes asks for, A is packed once for every chunk of
    panels (csrc/gemm.c); with none, or one float too few, each chunk packs its own rows. All
    three give the same bits, epilogue included, and the bytes asked for match the planner's
    rule (kiln/backends/c/kernels.py)."""
    from kiln.backends.c.kernels import packed_matmul_scratch
    k, n = 300, 2000  # K across partial K blocks, N % 16 and N % 48 tails, many panel chunks
    a, b_kn, bias, c0 = rnd(m, k, seed=40), rnd(k, n, seed=41), rnd(n, seed=42), rnd(m, n, seed=43)
    packed = pack(b_kn, False)
    need = LIB.kiln_gemm_scratch_bytes(m, n, k, threads)
    assert need == packed_matmul_scratch([(m, k), (n, k)], (m, n), None) == 4 * (m + 16) * k
    runs = [gemm(a, packed, n, c0.copy(), alpha=0.7, bias=bias, beta=0.5, act=1, scratch=s)
            for s in (True, False, need - 4)]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    want = reference(a, b_kn, alpha=0.7, bias=bias, beta=0.5, c0=c0, act=1)
    np.testing.assert_allclose(runs[0], want, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(want).max()))


def test_scratch_is_asked_for_from_the_large_m_rows_only():
    from kiln.backends.c.kernels import GEMM_LARGE_M_MIN, packed_matmul_scratch
    assert LIB.kiln_gemm_scratch_bytes(GEMM_LARGE_M_MIN - 1, 768, 768, 2) == 0
    assert LIB.kiln_gemm_scratch_bytes(GEMM_LARGE_M_MIN, 768, 768, 2) == 4 * (GEMM_LARGE_M_MIN + 16) * 768
    assert LIB.kiln_gemm_scratch_bytes(GEMM_LARGE_M_MIN, 768, 0, 2) == 0
    assert LIB.kiln_gemm_scratch_bytes(1 << 40, 8, 1 << 40, 2) == 0  # overflow: none, never a wrapped size
    assert packed_matmul_scratch([(2, 64, 768), (50257, 768)], (2, 64, 50257), None) == 4 * (128 + 16) * 768
    assert packed_matmul_scratch([(1, 127, 768), (50257, 768)], (1, 127, 50257), None) == 0


def test_tile_table_and_hooks():
    names = [LIB.kiln_gemm_tile_name(t).decode() for t in range(LIB.kiln_gemm_tile_count())]
    assert len(set(names)) == len(names) and LIB.kiln_gemm_tile_name(len(names)) is None
    assert LIB.kiln_gemm_tile_isa(DEFAULT_TILE) == DEFAULT_ISA
    for t in range(len(names)):
        if LIB.kiln_gemm_tile_isa(t) != DEFAULT_ISA:
            assert LIB.kiln_gemm_set_tile(t) == -2  # another kernel set's tile is refused
    assert LIB.kiln_gemm_set_tile(-1) == -2 and LIB.kiln_gemm_tile() == DEFAULT_TILE


@pytest.mark.skipif(GENERIC or os.environ.get("KILN_LIB") is not None, reason="the default build's tiles")
def test_tile_forced_by_environment():
    """KILN_GEMM_TILE picks a tile of the kernel set in use at load; an unknown or foreign name is ignored."""
    code = "from tests.test_gemm_engine import LIB; print(LIB.kiln_gemm_tile_name(LIB.kiln_gemm_tile()).decode())"
    ours = [name for isa_, _, name in TILES if isa_ == DEFAULT_ISA]
    for name, want in ((ours[-1], ours[-1]), ("no-such-tile", LIB.kiln_gemm_tile_name(DEFAULT_TILE).decode())):
        r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, KILN_GEMM_TILE=name),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == want, r.stderr[-2000:]


def test_bad_arguments_are_refused():
    a, packed, c = rnd(2, 4), pack(rnd(4, 3), False), np.zeros((2, 3), np.float32)
    call = LIB.kiln_gemm_packed
    assert call(-1, 3, 4, _p(a), 4, _p(packed), _p(c), 3, 1.0, None, 0.0, 0, None, 0) == -1
    assert call(2, 3, 4, _p(a), 3, _p(packed), _p(c), 3, 1.0, None, 0.0, 0, None, 0) == -1  # lda < K
    assert call(2, 3, 4, _p(a), 4, _p(packed), _p(c), 2, 1.0, None, 0.0, 0, None, 0) == -1  # ldc < N
    assert call(2, 3, 4, None, 4, _p(packed), _p(c), 3, 1.0, None, 0.0, 0, None, 0) == -1
    assert call(2, 3, 4, _p(a), 4, _p(packed), _p(c), 3, 1.0, None, 0.0, 99, None, 0) == -1  # unknown act
    assert LIB.kiln_gemm_pack_b(4, 3, _p(a), 2, 0, _p(packed)) == -1  # ldb < N
    assert LIB.kiln_gemm_pack_b(4, 3, _p(a), 3, 2, _p(packed)) == -1  # layout code
    assert LIB.kiln_gemm_packed_bytes(-1, 3) == -1
    assert LIB.kiln_gemm_set_isa(7) == -2
    assert LIB.kiln_gemm_scratch_bytes(200, 768, 768, 2) >= 0


def test_default_kernel_set():
    if GENERIC:
        assert DEFAULT_ISA == 0
    else:
        assert DEFAULT_ISA == max(SUPPORTED)


def test_default_tuning_choice_follows_the_cpu():
    """gemm.c's per-CPU table: AMD walks the next block and streams weights into L2, and the Zen 4
    (family 0x19) also runs 13-16 rows in the tall few-row tiles; other CPUs prefetch C, stream
    weights into L1 and run the tall few-row tiles."""
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the choice is made from x86 CPUID")
    info = open("/proc/cpuinfo").read()
    flags = LIB.kiln_gemm_tuning()
    family = re.search(r"^cpu family\s*:\s*(\d+)", info, re.M)
    if "AuthenticAMD" in info:
        assert flags == (1 | 8 if family and int(family.group(1)) == 0x19 else 1)
    else:
        assert flags == 2 | 4 | 8


# -- the pool ---------------------------------------------------------------------------------

def _run_pool(n_chunks, body):
    """Run body(chunk, thread) on the pool. ctypes swallows a callback's exceptions, so they are
    collected and re-raised here."""
    errors = []

    def call(ctx, chunk, thread):
        try:
            body(chunk, thread)
        except BaseException as e:  # noqa: BLE001 (re-raised below)
            errors.append(e)

    LIB.kiln_pool_parallel(n_chunks, POOL_FN(call), None)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("t", [1, 2, 4])
def test_pool_runs_every_chunk_once(t):
    saved = LIB.kiln_pool_threads()
    LIB.kiln_pool_set_threads(t)
    try:
        assert LIB.kiln_pool_threads() == t
        for n in (0, 1, 2, 7, 100):
            for _ in range(50 if n < 10 else 5):
                hits, seen = np.zeros(max(n, 1), np.int64), set()

                def body(chunk, thread):
                    assert LIB.kiln_pool_in_parallel() == 1
                    hits[chunk] += 1
                    seen.add(thread)

                _run_pool(n, body)
                assert (hits[:n] == 1).all() and all(0 <= s < t for s in seen)
        assert LIB.kiln_pool_in_parallel() == 0
    finally:
        LIB.kiln_pool_set_threads(saved)


def test_pool_nested_calls_run_inline():
    saved = LIB.kiln_pool_threads()
    LIB.kiln_pool_set_threads(2)
    try:
        inner = np.zeros((8, 5), np.int64)

        def outer(chunk, thread):
            def body(c, th):
                assert th == 0  # inline: the calling thread, scratch slot 0
                assert LIB.kiln_pool_in_parallel() == 1
                inner[chunk, c] += 1
            _run_pool(5, body)

        _run_pool(8, outer)
        assert (inner == 1).all()
    finally:
        LIB.kiln_pool_set_threads(saved)


@pytest.mark.parametrize("t", [1, 3])
def test_pool_region_seats_share_work_dynamically(t):
    """A region runs each seat at most once, on distinct threads; seats that share a chunk counter
    (as a whole-graph run loop would, per op) together run every chunk exactly once."""
    import itertools
    saved = LIB.kiln_pool_threads()
    LIB.kiln_pool_set_threads(t)
    try:
        for _ in range(20):
            seats, hits, counter = [], np.zeros(200, np.int64), itertools.count()

            def seat(ctx, s, thread):
                seats.append((s, thread, LIB.kiln_pool_in_parallel()))
                for c in iter(lambda: next(counter), None):  # next() on a count is atomic under the GIL
                    if c >= hits.size:
                        break
                    hits[c] += 1

            fn = POOL_FN(seat)
            assert LIB.kiln_pool_region(fn, None) == t
            assert (hits == 1).all()
            assert 1 <= len(seats) <= t and (0, 0, 1) in seats
            assert len({s for s, _, _ in seats}) == len(seats) == len({th for _, th, _ in seats})
    finally:
        LIB.kiln_pool_set_threads(saved)


@pytest.mark.skipif(GENERIC or os.environ.get("KILN_LIB") is not None, reason="already the generic/custom build")
def test_generic_build_passes_the_same_cases():
    env = dict(os.environ, KILN_FORCE_GENERIC="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "not generic_build"], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
