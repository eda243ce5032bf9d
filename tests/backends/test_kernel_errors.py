"""Kernels refuse what they cannot compute (issue 16): a bad index, param, shape or tensor
descriptor is a status from C (clib.KernelError, named by node in the compiled executor),
never an unwritten output or an out-of-bounds read; plus the softmax family at large logits."""
from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

import kiln.ops  # noqa: F401  (registers the ops)
from kiln.backends import cabi, clib
from kiln.errors import BackendError, ShapeError
from kiln.ops import registry
from tests.backends.test_kernels import pytestmark, rnd  # noqa: F401  (same skip rule: no library built)


@pytest.mark.parametrize("bad", [10, -11, 2**40, -(2**40)])
def test_embedding_out_of_range_id_is_an_error_and_writes_nothing(bad):
    w = rnd(10, 4)
    ids = np.array([0, bad, 9], dtype=np.int64)
    out = np.full((3, 4), 7, np.float32)
    with pytest.raises(clib.KernelError, match="index") as e:
        clib.run_op("embedding", [w, ids], None, out)
    assert e.value.code == -7 and e.value.index == 0
    np.testing.assert_array_equal(out, 7)  # checked before any row is copied
    with pytest.raises(ShapeError, match="out of range"):  # the reference agrees
        registry.get("embedding").ref([w, ids], registry.get("embedding").make_attrs(None))


def test_negative_ids_count_from_the_end():
    w, ids = rnd(10, 4), np.array([-1, -10, 3], np.int32)
    out = np.empty((3, 4), np.float32)
    clib.run_op("embedding", [w, ids], None, out)
    np.testing.assert_array_equal(out, w[[9, 0, 3]])


@pytest.mark.parametrize("op,index,out_shape", [
    ("index_select", np.array([1, 99, -99], np.int64), (5, 3)),
    ("index_select", np.array([6], np.int32), (5, 1)),
    ("gather", np.full((5, 6), 1000, np.int64), (5, 6)),
    ("gather", np.full((5, 6), -7, np.int32), (5, 6)),
])
def test_index_select_and_gather_out_of_range_is_an_error(op, index, out_shape):
    x = rnd(5, 6)
    out = np.full(out_shape, 7, np.float32)
    with pytest.raises(clib.KernelError, match="index"):
        clib.run_op(op, [x, index], {"axis": 1}, out)
    np.testing.assert_array_equal(out, 7)
    with pytest.raises(ShapeError, match="out of range"):
        registry.get(op).ref([x, index], registry.get(op).make_attrs({"axis": 1}))


@pytest.mark.parametrize("op,inputs,attrs,out_shape", [
    ("concat", [rnd(2, 3), rnd(2, 3)], {"axis": -1}, (2, 6)),
    ("index_select", [rnd(4, 3), np.array([0, 1], np.int64)], {"axis": -1}, (4, 2)),
    ("gather", [rnd(4, 3), np.zeros((4, 3), np.int64)], {"axis": -1}, (4, 3)),
])
def test_param_out_of_range_is_an_error_not_an_unwritten_output(op, inputs, attrs, out_shape):
    out = np.full(out_shape, 7, np.float32)
    with pytest.raises(ShapeError, match="out of range"):  # Python's shape inference refuses these now
        clib.run_op(op, inputs, attrs, out)
    call, slots = _raw_call(op, inputs, out, attrs)       # and C, reached directly, refuses them too
    with pytest.raises(clib.KernelError, match="parameter out of range") as e:
        clib.run_calls(call, 1, slots)
    assert e.value.code == -6
    np.testing.assert_array_equal(out, 7)


def _raw_call(op, arrays, out, params=None, n_in=None):
    """One call built by hand, bypassing run_op's Python checks (what a lying file could produce)."""
    call = (cabi.Call * 1)()
    c = call[0]
    c.op = cabi.op_id(op)
    c.n_in = len(arrays) if n_in is None else n_in
    slots = (ctypes.c_void_p * (len(arrays) + 1))()
    for i, a in enumerate(list(arrays) + [out]):
        t = c.out if i == len(arrays) else getattr(c, "in")[i]
        cabi.fill_tensor(t, slot=i, offset=0, shape=a.shape, dtype="bool" if a.dtype == np.bool_ else str(a.dtype))
        slots[i] = a.ctypes.data
    if params is not None:
        p = cabi.make_params(op, params)
        c.params = ctypes.cast(ctypes.pointer(p), ctypes.c_void_p)
        call._keep = p
    return call, slots


@pytest.mark.parametrize("op,arrays,out,params,code", [
    # shapes C cannot combine (a file whose shapes lie): refused, nothing read out of bounds
    ("add", [rnd(4, 3), rnd(5, 3)], np.full((4, 3), 7, np.float32), None, -5),
    ("exp", [rnd(2, 3)], np.full((4, 3), 7, np.float32), None, -5),
    ("matmul", [rnd(4, 3), rnd(5, 6)], np.full((4, 6), 7, np.float32),
     {"transpose_b": 0, "alpha": 1.0, "beta": 0.0, "act": 0}, -5),
    ("matmul", [rnd(4, 3), rnd(3, 6)], np.full((4, 6), 7, np.float32),
     {"transpose_b": 2, "alpha": 1.0, "beta": 0.0, "act": 0}, -6),
    ("matmul", [rnd(4, 3), rnd(3, 6)], np.full((4, 6), 7, np.float32),
     {"transpose_b": 0, "alpha": 1.0, "beta": 0.0, "act": 99}, -6),
    ("permute", [rnd(2, 3)], np.full((3, 2), 7, np.float32), {"perm": [1, 1]}, -6),
    ("slice", [rnd(4, 3)], np.full((3, 3), 7, np.float32), {"axis": 0, "start": 2, "step": 1}, -6),
    ("slice", [rnd(4, 3)], np.full((2, 3), 7, np.float32), {"axis": 0, "start": 0, "step": 0}, -6),
    ("sum", [rnd(4, 3)], np.full((4,), 7, np.float32), {"axes_mask": 1 << 5}, -6),
    ("softmax", [rnd(4, 3)], np.full((4, 3), 7, np.float32), {"axis": 2}, -6),
    ("rms_norm", [rnd(4, 3), rnd(2)], np.full((4, 3), 7, np.float32), {"eps": 1e-6}, -5),
    ("rope", [rnd(2, 3), rnd(2, 3), rnd(2, 3)], np.full((2, 3), 7, np.float32), None, -5),
    ("gated_act", [rnd(2, 6)], np.full((2, 4), 7, np.float32), {"act": 4}, -5),
    ("gated_act", [rnd(2, 6)], np.full((2, 3), 7, np.float32), {"act": 17}, -6),
    ("attention", [rnd(1, 2, 3, 4), rnd(1, 2, 3, 4), rnd(1, 2, 5, 4)], np.full((1, 2, 3, 4), 7, np.float32),
     {"causal": 0, "scale": 0.5, "group": 1}, -5),
    ("attention", [rnd(1, 2, 3, 4)] * 3, np.full((1, 2, 3, 4), 7, np.float32),
     {"causal": 2, "scale": 0.5, "group": 1}, -6),
    ("attention", [rnd(1, 2, 3, 4)] * 3 + [np.ones((3, 4, 4), np.bool_)], np.full((1, 2, 3, 4), 7, np.float32),
     {"causal": 0, "scale": 0.5, "group": 1}, -5),
    ("cache_write", [rnd(1, 1, 4, 2), rnd(1, 1, 2, 2), np.array([3], np.int64)], np.full((1, 1, 4, 2), 7, np.float32),
     None, -7),
    ("cached_attention", [rnd(1, 1, 1, 2), rnd(1, 1, 4, 2), rnd(1, 1, 4, 2), np.array([-1], np.int64)],
     np.full((1, 1, 1, 2), 7, np.float32), {"scale": 1.0, "group": 1}, -7),
    ("slot_cache_write", [rnd(2, 1, 4, 2), rnd(1, 1, 2, 2), np.array([0, 2], np.int64), np.array([0, 1], np.int64)],
     np.full((2, 1, 4, 2), 7, np.float32), None, -7),
    ("slot_cache_write", [rnd(2, 1, 4, 2), rnd(1, 1, 2, 2), np.array([0, 1], np.int64), np.array([4, 1], np.int64)],
     np.full((2, 1, 4, 2), 7, np.float32), None, -7),
    ("slot_cache_write", [rnd(2, 1, 4, 2), rnd(1, 1, 2, 2), np.array([0], np.int64), np.array([0], np.int64)],
     np.full((2, 1, 4, 2), 7, np.float32), None, -5),
    ("slot_cached_attention", [rnd(1, 1, 2, 2), rnd(2, 1, 4, 2), rnd(2, 1, 4, 2), np.array([1, -1], np.int64),
                               np.array([0, 1], np.int64)], np.full((1, 1, 2, 2), 7, np.float32),
     {"scale": 1.0, "group": 1}, -7),
    ("slot_cached_attention", [rnd(1, 1, 2, 2), rnd(2, 1, 4, 2), rnd(2, 1, 4, 2), np.array([1, 0], np.int64),
                               np.array([0, -3], np.int64)], np.full((1, 1, 2, 2), 7, np.float32),
     {"scale": 1.0, "group": 1}, -7),
    ("embedding", [rnd(4, 3), np.array([1.0], np.float32)], np.full((1, 3), 7, np.float32), None, -5),
    ("concat", [rnd(2, 3), rnd(3, 3)], np.full((4, 3), 7, np.float32), {"axis": 0}, -5),
    ("copy", [rnd(2, 3)], np.full((3, 3), 7, np.float32), None, -5),
])
def test_kernels_check_what_they_read_through(op, arrays, out, params, code):
    call, slots = _raw_call(op, arrays, out, params)
    with pytest.raises(clib.KernelError) as e:
        clib.run_calls(call, 1, slots)
    assert e.value.code == code, str(e.value)
    np.testing.assert_array_equal(out, 7)


def test_tensor_descriptor_that_lies_about_its_bytes_is_refused():
    x, out = rnd(4, 3), np.full((4, 3), 7, np.float32)
    call, slots = _raw_call("exp", [x], out)
    getattr(call[0], "in")[0].nbytes = 4  # shape says 48 bytes
    with pytest.raises(clib.KernelError, match="byte size"):
        clib.run_calls(call, 1, slots)
    getattr(call[0], "in")[0].nbytes = 48
    call[0].out.ndim = 99
    with pytest.raises(clib.KernelError, match="byte size"):
        clib.run_calls(call, 1, slots)
    np.testing.assert_array_equal(out, 7)


def test_run_stops_at_the_failing_call_and_names_it():
    x = rnd(4, 8)
    bufs = [x, np.full_like(x, 7), np.full_like(x, 7)]
    calls = (cabi.Call * 2)()
    for i, (op, src, dst) in enumerate((("exp", 0, 1), ("neg", 1, 2))):
        calls[i].op = cabi.op_id(op)
        calls[i].n_in = 1
        cabi.fill_tensor(getattr(calls[i], "in")[0], slot=src, offset=0, shape=x.shape, dtype="float32")
        cabi.fill_tensor(calls[i].out, slot=dst, offset=0, shape=(4, 4) if i == 0 else x.shape, dtype="float32")
    slots = (ctypes.c_void_p * 3)(*[b.ctypes.data for b in bufs])
    with pytest.raises(clib.KernelError, match=r"call 0 \(exp\)") as e:
        clib.run_calls(calls, 2, slots)
    assert e.value.index == 0
    np.testing.assert_array_equal(bufs[2], 7)  # the second call never ran


def test_compiled_executor_names_the_node_whose_kernel_failed():
    from kiln.executor.compiled import CompiledExecutor
    from kiln.ir.graph import Graph
    from kiln.planner import plan
    g = Graph()
    ids = g.add_input("ids", (3,), "int64")
    w = g.add_const("table", rnd(10, 4))
    g.outputs = [g.add_node("embedding", [w, ids], name="tok_embed")]
    ex = CompiledExecutor(g, plan(g))
    np.testing.assert_array_equal(ex.run({"ids": np.array([1, 2, -1])})[0], g.constants[w][[1, 2, 9]])
    with pytest.raises(BackendError, match="tok_embed.*index or position out of range"):
        ex.run({"ids": np.array([1, 10, 2])})


def test_library_op_table_matches_the_c_registrations():
    from kiln.backends.c import codegen
    lib = clib.lib()
    assert [lib.kiln_op_name(i).decode() for i in range(lib.kiln_num_ops())] == codegen.c_ops()
    assert lib.kiln_op_name(-1) is None and lib.kiln_op_name(lib.kiln_num_ops()) is None


def test_stale_op_table_is_a_clear_error(monkeypatch):
    lib = clib.lib()
    from kiln.backends.c import codegen
    monkeypatch.setattr(codegen, "c_ops", lambda: ["zzz"] + sorted(registry.REGISTRY)[1:])
    with pytest.raises(BackendError, match="rebuild the C library"):
        clib._check_library(lib, "libkiln.so")


# -- softmax family: no cancellation at large logits --------------------------------------
@pytest.mark.parametrize("offset", [1e8, -1e7, 1e4, 0.0])
@pytest.mark.parametrize("layout", ["row", "cols"])
def test_softmax_family_at_large_offsets_vs_float64(offset, layout):
    base = np.array([[0.0, 0.0], [0.0, -1.0], [2.0, 0.5]], np.float64)
    x64 = base + offset
    x = x64.astype(np.float32)
    x64 = x.astype(np.float64)  # compare against the exact value of the float32 input
    axis = 1 if layout == "row" else 0
    if layout == "cols":
        x, x64 = np.ascontiguousarray(x.T), np.ascontiguousarray(x64.T)
    m = x64.max(axis=axis, keepdims=True)
    want_log = (x64 - m) - np.log(np.exp(x64 - m).sum(axis=axis, keepdims=True))
    for op, want in (("log_softmax", want_log), ("softmax", np.exp(want_log))):
        out = np.empty_like(x)
        clib.run_op(op, [x], {"axis": axis}, out)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6, err_msg=f"{op} C")
        ref = registry.get(op).ref([x], registry.get(op).make_attrs({"axis": axis}))
        np.testing.assert_allclose(ref, want, rtol=1e-6, atol=1e-6, err_msg=f"{op} ref")
    if offset == 1e8 and layout == "row":
        out = np.empty((1, 2), np.float32)
        clib.run_op("log_softmax", [np.array([[1e8, 1e8]], np.float32)], {"axis": 1}, out)
        np.testing.assert_allclose(out, -math.log(2), rtol=1e-6)
