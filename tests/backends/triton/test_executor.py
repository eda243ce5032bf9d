"""TritonExecutor: the Plan's memory on the device; the triton backend behind kiln.Session.
(Whole models against PyTorch: test_models.py.)"""
import numpy as np
import pytest
import torch

import kiln
from kiln.backends.triton import runtime
from kiln.errors import BackendError, FeedError, ValidationError
from kiln.executor import triton as tex
from kiln.executor.reference import run_reference
from kiln.ir.graph import STATE, Graph
from kiln.ops import registry as ops
from kiln.planner import DEVICE
from kiln.planner import plan as make_plan
from tests.conftest import rel_err


def test_no_device_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendError, match="CUDA GPU.*TRITON_INTERPRET=1"):
        runtime.device()


def test_the_gpu_is_named_with_its_index(monkeypatch):
    # Tensors made on "cuda" report "cuda:0", and torch.device("cuda") != torch.device("cuda:0"):
    # an executor holding the bare name refused its own KV cache on a real GPU.
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert runtime.device() == torch.device("cuda:0")


def test_a_session_without_a_device_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    g = Graph()
    g.outputs = [g.add_node("exp", [g.add_input("x", (3,), "float32")])]
    with pytest.raises(BackendError, match="CUDA GPU.*TRITON_INTERPRET=1"):
        kiln.Session(g, backend="triton")


def _small_graph():
    g = Graph()
    g.add_input("x", (2, 3, 4), "float32")
    w = g.add_const("w", np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))
    r = g.add_node("reshape", ["x"], {"shape": (6, 4)})           # alias
    e = g.add_node("exp", [r])                                     # in place candidate
    m = g.add_node("matmul", [e, w])
    s = g.add_node("slice", [m], {"axis": 0, "start": 2, "end": 6})
    t = g.add_node("tanh", [s])
    g.outputs = [t, m]
    return g


def test_runs_the_plan_in_one_arena(rng):
    g = _small_graph()
    p = make_plan(g, memory=DEVICE)
    assert {s.memory for s in p.slots} == {DEVICE}
    with pytest.raises(ValidationError, match="allocates device memory, but this plan places slots in host"):
        tex.TritonExecutor(g, make_plan(g))
    ex = tex.TritonExecutor(g, p)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    got = ex.run({"x": x})
    want = run_reference(g, {"x": x})
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-6
    arena = ex._slots[0]
    lo, hi = arena.data_ptr(), arena.data_ptr() + arena.numel()
    for _, ins, out, _, node in ex._steps:              # every activation is a view of slot 0 or its own slot
        for t, name in zip(ins + [out], node.inputs + [node.output]):
            if p.placements[name].slot == 0:
                assert lo <= t.data_ptr() < hi
    assert ex.run({"x": x})[0].tolist() == got[0].tolist()      # a second run reuses the buffers
    with pytest.raises(FeedError):
        ex.run({"x": x[:1]})


def test_session_on_the_triton_backend_and_reset_state(rng):
    """A Session with backend="triton": state on the device, shared by its plans, reset in place."""
    g = Graph()
    x = g.add_input("x", (1, 2), "float32")
    pos = g.add_input("pos", (), "int64")
    cache = g.add_const("cache", np.zeros((1, 1, 4, 2), np.float32), kind=STATE)
    w = g.add_node("cache_write", [cache, g.add_node("reshape", [x], {"shape": (1, 1, 1, 2)}), pos])
    g.outputs = [g.add_node("sum", [w], {"axes": (0, 1, 2), "keepdim": False})]
    s = kiln.Session(g, backend="triton")
    assert (s.executor, s.backend) == ("triton", "triton") and "backend=triton" in repr(s)
    a, b = rng.standard_normal((2, 1, 2)).astype(np.float32)
    s.run({"x": a, "pos": np.array(0)})
    got = s.run({"x": b, "pos": np.array(1)})[0]
    np.testing.assert_allclose(got, (a + b)[0], rtol=1e-6)
    assert isinstance(s.state["cache"], torch.Tensor) and s.state["cache"].device.type == runtime.device().type
    s.reset_state()
    assert float(s.state["cache"].abs().sum()) == 0.0
    np.testing.assert_allclose(s.run({"x": b, "pos": np.array(2)})[0], b[0], rtol=1e-6)
    s.run({"x": b, "pos": np.array(2)}, profile=True)
    assert "cache_write" in s.last_profile


def test_a_missing_triton_kernel_is_a_compile_time_error():
    name = "test_triton_ref_only"
    ops.declare(name, inputs=("x",), infer=ops.same_as_first, ref=lambda xs, a: xs[0] * 2)
    try:
        g = Graph()
        g.outputs = [g.add_node(name, [g.add_node("exp", [g.add_input("x", (3,), "float32")])])]
        with pytest.raises(BackendError, match=rf"the triton backend has no kernel for: {name} on \(plain\)"):
            kiln.Session(g, backend="triton")
        assert kiln.Session(g, backend="numpy").run({"x": np.zeros(3, np.float32)})[0].tolist() == [2, 2, 2]
    finally:
        ops.REGISTRY.pop(name)
