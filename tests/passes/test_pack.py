"""Packed fp32 weights (storage f32_p16, the "pack-weights" stage, the packed matmul kernel).

The layout round trip (numpy pack == C pack, unpack == original, save → load keeps the
bytes), the stage and its near misses, the packed matmul on every host executor against
float64 numpy for every M bucket (GEMV, few rows, register-blocked), odd N / K and each
epilogue, row independence, and the portable build (KILN_FORCE_GENERIC=1, in a subprocess).
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

import kiln
from kiln.core import storage
from kiln.errors import ShapeError
from kiln.executor.registry import EXECUTORS as ALL_EXECUTORS
from kiln.ir.graph import Graph
from kiln.ir.validate import validate
from kiln.ops.fused import ACTIVATIONS
from kiln.passes import pack
from kiln.planner.plan import HOST

EXECUTORS = [name for name, spec in ALL_EXECUTORS.items() if spec.memory == HOST]
ST = storage.get("f32_p16")
GENERIC = os.environ.get("KILN_FORCE_GENERIC") == "1"


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("n,k", [(1, 1), (16, 3), (17, 5), (5, 300), (48, 129), (100, 37)])
def test_numpy_pack_is_the_c_layout_and_unpacks_exactly(n, k):
    from kiln.backends import clib
    w = rnd(n, k, seed=n + k)
    raw = ST.quantize(w)
    assert raw.dtype == np.uint8 and raw.shape == (n, 4 * k) and raw.nbytes == storage.nbytes("f32_p16", (n, k))
    np.testing.assert_array_equal(ST.dequantize(raw, (n, k)), w)
    lib = clib.lib()
    lib.kiln_gemm_pack_b.restype = ctypes.c_int
    lib.kiln_gemm_pack_b.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
                                     ctypes.c_void_p]
    c = np.zeros(n * k, np.float32)
    assert lib.kiln_gemm_pack_b(k, n, w.ctypes.data, k, 1, c.ctypes.data) == 0
    np.testing.assert_array_equal(c.view(np.uint8).reshape(n, 4 * k), raw)


def test_bad_packed_input_is_a_kiln_error():
    with pytest.raises(kiln.KilnError, match="only a 2-D"):
        ST.quantize(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(kiln.KilnError, match="bytes given"):
        ST.dequantize(np.zeros(7, np.uint8), (1, 2))
    g = Graph()
    x = g.add_input("x", (2, 4), "float32")
    w = g.add_stored_const("w", ST.quantize(rnd(3, 4)), (3, 4), "f32_p16")
    with pytest.raises(ShapeError, match="transpose_b"):
        g.add_node("matmul", [x, w], {"transpose_b": False})


def _graph(m, k, n, *, bias=None, trans=True, alpha=1.0, beta=1.0, act="none", batch=()):
    g = Graph()
    x = g.add_input("x", batch + (m, k), "float32")
    w = rnd(n, k, seed=11)
    wc = g.add_const("w", w if trans else np.ascontiguousarray(w.T))
    ins = [x, wc]
    if bias is not None:
        ins.append(g.add_const("b", bias))
    g.outputs = [g.add_node("matmul", ins, {"transpose_b": trans, "alpha": alpha, "beta": beta, "act": act})]
    return g, w


def _want(x, w, *, bias=None, alpha=1.0, beta=1.0, act="none"):
    from kiln.ops.fused import apply_act
    out = alpha * (x.astype(np.float64) @ w.T.astype(np.float64))
    if bias is not None:
        out = out + beta * bias
    return apply_act(out.astype(np.float32), act)


def _run(g, x, executor="compiled"):
    return kiln.Session(g, executor=executor).run({"x": x})[0]


def _packed(g):
    g = g.copy()
    assert pack.pack_weights(g) == 1
    validate(g)
    return g


M_BUCKETS = [1, 2, 5, 6, 7, 16, 33, 64, 65, 200]


@pytest.mark.parametrize("m", M_BUCKETS)
@pytest.mark.parametrize("k,n", [(64, 48), (129, 37), (300, 17), (5, 100), (130, 1100)])  # > 64 panels: chunked N
def test_packed_matmul_every_m_bucket_odd_sizes(m, k, n):
    g, w = _graph(m, k, n)
    gp = _packed(g)
    x = rnd(m, k, seed=m)
    want = _want(x, w)
    tol = 3e-6 * np.sqrt(k) * max(1.0, np.abs(want).max())
    for ex in EXECUTORS if m in (1, 7, 65) else ["compiled"]:
        np.testing.assert_allclose(_run(gp, x, ex), want, rtol=0, atol=tol, err_msg=ex)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("case", ["bias", "bias-beta", "residual", "alpha", "kn"])
@pytest.mark.parametrize("m", [1, 7, 65])
def test_packed_matmul_epilogues(case, act, m):
    k, n = 70, 33
    bias = {"bias": rnd(n, seed=3), "bias-beta": rnd(n, seed=3), "residual": rnd(m, n, seed=4)}.get(case)
    kw = dict(bias=bias, beta=-0.5 if case in ("bias-beta", "residual") else 1.0, act=act,
              alpha=0.75 if case == "alpha" else 1.0)
    g, w = _graph(m, k, n, trans=case != "kn", **kw)
    gp = _packed(g)
    assert all(n_.attrs.transpose_b for n_ in gp.nodes)
    x = rnd(m, k, seed=9)
    want = _want(x, w, **kw)
    for ex in EXECUTORS:
        np.testing.assert_allclose(_run(gp, x, ex), want, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(want).max()),
                                   err_msg=ex)


def test_batched_activations_run_as_one_gemm():
    g, w = _graph(5, 40, 21, batch=(3,), bias=rnd(21, seed=2))
    x = rnd(3, 5, 40, seed=1)
    got = _run(_packed(g), x)
    np.testing.assert_allclose(got, _want(x, w, bias=rnd(21, seed=2)), rtol=1e-5, atol=1e-5)


def test_a_row_is_the_same_at_every_m():
    """The serve engine batches rows of different requests: row i must not depend on M."""
    k, n = 200, 1077   # > 64 panels: several column chunks
    x = rnd(70, k, seed=5)
    rows = {}
    for m in (1, 3, 6, 7, 16, 64, 70):
        g, _ = _graph(m, k, n, bias=rnd(n, seed=6), act="gelu")
        rows[m] = _run(_packed(g), x[:m])
    for m, out in rows.items():
        np.testing.assert_array_equal(out[0], rows[1][0], err_msg=f"M={m}")
        if m >= 3:
            np.testing.assert_array_equal(out[2], rows[3][2], err_msg=f"M={m}")


def test_stage_near_misses_stay_plain():
    g = Graph()
    x = g.add_input("x", (2, 8), "float32")
    tied = g.add_const("tied", rnd(8, 8))
    used_twice = g.add_node("matmul", [x, tied], {"transpose_b": True})
    emb = g.add_node("add", [tied, tied])                # another op reads it: stays plain
    w3 = g.add_const("w3", rnd(4, 8, 8))                  # 3-D: stays plain
    bmm = g.add_node("matmul", [x, w3], {"transpose_b": True})
    g.outputs = [used_twice, emb, bmm]
    assert pack.pack_weights(g) == 0
    assert all(t.storage == "plain" for t in g.tensors.values())


def test_a_tied_embedding_table_is_packed_once_and_gathered_from_the_panels():
    v, d = 37, 24
    g = Graph()
    ids = g.add_input("ids", (2, 5), "int64")
    table = g.add_const("table", rnd(v, d, seed=3))
    h = g.add_node("embedding", [table, ids])
    logits = g.add_node("matmul", [h, table], {"transpose_b": True})
    g.outputs = [h, logits]
    only_embedding = g.add_const("emb_only", rnd(v, d, seed=4))
    g.outputs.append(g.add_node("embedding", [only_embedding, ids]))
    want = kiln.Session(g, executor="reference").run({"ids": np.array([[0, 36, 16, 5, 7], [3, 3, 0, 32, 1]])})
    gp = g.copy()
    assert pack.pack_weights(gp) == 1                     # the table an embedding alone reads stays plain
    validate(gp)
    assert {n: t.storage for n, t in gp.tensors.items() if t.kind == "const"} == {
        "table.f32_p16": "f32_p16", "emb_only": "plain"}
    feeds = {"ids": np.array([[0, 36, 16, 5, 7], [3, 3, 0, 32, 1]])}
    for ex in EXECUTORS:
        got = kiln.Session(gp, executor=ex).run(feeds)
        np.testing.assert_array_equal(got[0], want[0], err_msg=ex)
        np.testing.assert_array_equal(got[2], want[2], err_msg=ex)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5, err_msg=ex)
    with pytest.raises(kiln.KilnError):
        kiln.Session(gp).run({"ids": np.array([[0, 37, 1, 1, 1], [0, 0, 0, 0, 0]])})


def test_ablation_env_turns_the_stage_off(monkeypatch):
    g, _ = _graph(2, 16, 16)
    monkeypatch.setenv("KILN_PACK_WEIGHTS", "0")
    assert pack.pack_weights(g.copy()) == 0
    monkeypatch.delenv("KILN_PACK_WEIGHTS")
    assert pack.pack_weights(g.copy()) == 1


def _many_weights():
    """Plain transposed-B weights, a [K, N] one, and a merged stack (concat of three parts)."""
    g = Graph()
    x = g.add_input("x", (3, 40), "float32")
    outs = [g.add_node("matmul", [x, g.add_const(f"w{i}", rnd(17 + 9 * i, 40, seed=i))], {"transpose_b": True})
            for i in range(5)]
    outs.append(g.add_node("matmul", [x, g.add_const("kn", rnd(40, 33, seed=9))]))
    parts = [g.add_const(f"p{i}", rnd(n, 40, seed=20 + i)) for i, n in enumerate((24, 7, 7))]
    outs.append(g.add_node("matmul", [x, g.add_node("concat", parts, {"axis": 0})], {"transpose_b": True}))
    g.outputs = outs
    return g


def test_packing_on_threads_gives_the_same_graph(monkeypatch):
    """pack-weights copies on KILN_NUM_THREADS threads; names, storage and bytes do not depend on it."""
    g = _many_weights()
    want = kiln.Session(g, executor="reference").run({"x": rnd(3, 40, seed=5)})
    got = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("KILN_NUM_THREADS", threads)
        gp = g.copy()
        assert pack.pack_weights(gp) == 7
        validate(gp)
        got[threads] = gp
    one, three = got["1"], got["3"]
    assert [n.op for n in one.nodes] == [n.op for n in three.nodes] and "concat" not in [n.op for n in one.nodes]
    assert {k: (t.storage, tuple(t.shape)) for k, t in one.tensors.items() if t.kind == "const"} == \
        {k: (t.storage, tuple(t.shape)) for k, t in three.tensors.items() if t.kind == "const"}
    for k in one.constants:
        np.testing.assert_array_equal(np.asarray(one.constants[k]), np.asarray(three.constants[k]), err_msg=k)
    for ex in EXECUTORS:
        for o, w in zip(kiln.Session(three, executor=ex).run({"x": rnd(3, 40, seed=5)}), want):
            np.testing.assert_allclose(o, w, rtol=1e-5, atol=1e-5, err_msg=ex)


@pytest.mark.parametrize("mmap", [True, False])
def test_a_loaded_model_has_the_saved_weights_read_only(tmp_path, mmap):
    """mmap=False reads the file into a write-once buffer (huge pages where allowed); either
    way the weights are the saved bytes and cannot be written through the session."""
    gp = _many_weights()
    pack.pack_weights(gp)
    path = tmp_path / "m.kiln"
    kiln.Session(gp).save(path)
    s = kiln.load(path, mmap=mmap)
    for k, v in gp.constants.items():
        got = s.graph.constants[k]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(v), err_msg=k)
        assert not got.flags.writeable, k
    x = rnd(3, 40, seed=6)
    for o, w in zip(s.run({"x": x}), kiln.Session(gp).run({"x": x})):
        np.testing.assert_array_equal(o, w)


def test_save_load_keeps_the_packed_bytes_and_unpacks_to_the_original(tmp_path):
    g, w = _graph(3, 40, 37, bias=rnd(37, seed=1))
    gp = _packed(g)
    name = next(t for t, v in gp.tensors.items() if v.storage == "f32_p16")
    path = tmp_path / "m.kiln"
    kiln.Session(gp).save(path)
    s = kiln.load(path)
    t = s.graph.tensors[name]
    assert t.storage == "f32_p16" and tuple(t.shape) == (37, 40)
    raw = s.graph.constants[name]
    np.testing.assert_array_equal(np.asarray(raw), np.asarray(gp.constants[name]))
    np.testing.assert_array_equal(ST.dequantize(raw, (37, 40)), w)
    x = rnd(3, 40, seed=2)
    np.testing.assert_allclose(s.run({"x": x})[0], _run(gp, x), rtol=0, atol=0)
    back = s.graph.copy()
    assert pack.unpack_weights(back) == 1
    np.testing.assert_array_equal(back.constants[name.removesuffix(".f32_p16")], w)


def test_a_backend_without_the_packed_kernel_gets_the_weights_unpacked():
    from kiln.backends.kernels import Backend
    g, w = _graph(2, 16, 16)
    gp = _packed(g)
    bare = Backend("bare")
    out = pack.for_backend(gp, lambda: bare)
    assert out is not gp and all(t.storage == "plain" for t in out.tensors.values())
    from kiln.backends.kernels import get
    assert pack.for_backend(gp, lambda: get("c")) is gp


@pytest.mark.skipif(GENERIC, reason="this is the portable run")
def test_generic_build_passes_the_same_cases():
    env = dict(os.environ, KILN_FORCE_GENERIC="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "every_m_bucket or epilogues or same_at_every_m"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# -- merged weights: packed straight from their parts ------------------------------------------
PART_ROWS = [(16, 32), (5, 11), (20, 7, 30), (3, 20, 40, 1), (33, 2, 7), (2048 // 64, 1024 // 64, 17)]


@pytest.mark.parametrize("rows", PART_ROWS, ids=["-".join(map(str, r)) for r in PART_ROWS])
@pytest.mark.parametrize("k", [1, 24])
def test_parts_pack_as_their_concatenation(rows, k):
    """Panels that straddle two parts, whole panels inside one and the N % 16 tail alike."""
    parts = [rnd(n, k, seed=n + 7 * i) for i, n in enumerate(rows)]
    whole = np.concatenate(parts)
    raw = storage.pack_f32_p16(parts)
    np.testing.assert_array_equal(raw, ST.quantize(whole))
    np.testing.assert_array_equal(ST.dequantize(raw, whole.shape), whole)
    assert raw.flags.writeable and raw.shape == (whole.shape[0], 4 * k)


def test_pack_of_parts_refuses_bad_input():
    with pytest.raises(kiln.KilnError, match="nothing to pack"):
        storage.pack_f32_p16([])
    with pytest.raises(kiln.KilnError, match="do not stack"):
        storage.pack_f32_p16([rnd(4, 3), rnd(4, 5)])


def test_a_fresh_buffer_is_writable_at_every_size():
    from kiln.core import buffers
    for n in (0, 7, 4 << 20, (4 << 20) + 3):
        b = buffers.fresh(n)
        assert b.dtype == np.uint8 and b.shape == (n,) and b.flags.writeable
        b[:] = 1
        assert int(b.sum()) == n


def _three_projections(rows=(20, 7, 30), k=24, bias=False):
    g = Graph()
    x = g.add_input("x", (3, k), "float32")
    outs = []
    for i, n in enumerate(rows):
        ins = [x, g.add_const(f"w{i}", rnd(n, k, seed=i))]
        if bias:
            ins.append(g.add_const(f"b{i}", rnd(n, seed=10 + i)))
        outs.append(g.add_node("matmul", ins, {"transpose_b": True, "beta": 1.0 if bias else 0.0}))
    g.outputs = outs
    return g


@pytest.mark.parametrize("bias", [False, True])
def test_merged_weights_are_packed_from_their_parts(bias):
    from kiln.passes import optimize
    g = _three_projections(bias=bias)
    x = rnd(3, 24, seed=5)
    want = kiln.Session(g, executor="reference").run({"x": x})
    merged = optimize(g, stages=["merge-matmuls"])
    assert [n.op for n in merged.nodes].count("concat") == 1   # the stacked weight, not a new constant
    packed = optimize(g, stages=["merge-matmuls", "pack-weights", "cleanup"])
    assert "concat" not in [n.op for n in packed.nodes]
    consts = {n: t.storage for n, t in packed.tensors.items() if t.kind == "const"}
    assert sorted(consts.values()) == ["f32_p16"] + ["plain"] * bias   # the parts are gone
    w = next(n for n, s in consts.items() if s == "f32_p16")
    np.testing.assert_array_equal(ST.dequantize(packed.constants[w], (57, 24)),
                                  np.concatenate([g.constants[f"w{i}"] for i in range(3)]))
    for graph in (merged, packed):
        for ex in EXECUTORS:
            got = kiln.Session(graph, executor=ex).run({"x": x})
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=ex)


def test_unpacked_merged_weights_are_folded_by_cleanup(monkeypatch):
    from kiln.passes import optimize
    monkeypatch.setenv("KILN_PACK_WEIGHTS", "0")
    g = _three_projections()
    out = optimize(g, stages=["merge-matmuls", "pack-weights", "cleanup"])
    assert "concat" not in [n.op for n in out.nodes]
    consts = [n for n, t in out.tensors.items() if t.kind == "const"]
    assert len(consts) == 1 and out.tensors[consts[0]].storage == "plain"
    np.testing.assert_array_equal(out.constants[consts[0]], np.concatenate([g.constants[f"w{i}"] for i in range(3)]))


def test_a_part_another_op_reads_stays():
    from kiln.passes import optimize
    g = _three_projections()
    g.outputs.append(g.add_node("add", ["w0", "w0"]))
    out = optimize(g, stages=["merge-matmuls", "pack-weights"])
    assert "w0" in out.constants and "w1" not in out.constants and "w2" not in out.constants
