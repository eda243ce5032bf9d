"""The open op model: backends register kernels per (op, input storage types); the Executor
registry pairs an executor with a backend; a missing kernel is a compile-time error."""
from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.backends import kernels
from kiln.backends.c import codegen
from kiln.errors import BackendError, KilnError, ValidationError
from kiln.executor.registry import EXECUTORS, resolve
from kiln.ir.graph import Graph
from kiln.ops import registry as ops
from kiln.planner import DEVICE, HOST, plan


def test_generated_header_is_current():
    assert codegen.stale() == [], "run `python -m kiln.backends.c.codegen` and rebuild the C library"


def test_the_c_backend_covers_every_executable_op_and_nothing_fold_only():
    c = kernels.get("c")
    assert c.ops() == ops.executable_ops() == codegen.c_ops()
    assert c.memory == HOST


def test_the_numpy_backend_has_every_declared_op_from_its_reference():
    ref = kernels.get("numpy")
    for name, d in ops.REGISTRY.items():
        assert ref.kernel(name).fn is d.ref
    with pytest.raises(BackendError, match=r"no kernel for op 'matmul' on inputs \(q8_0, plain\)"):
        ref.kernel("matmul", ("q8_0", kernels.PLAIN))


def test_declarations_carry_no_backend_facts():
    d = ops.get("matmul")
    for field in ("params", "c_params", "scratch"):
        assert not hasattr(d, field), f"OpDef.{field} belongs to a backend"


def test_kernel_lookup_by_storage_types():
    b = kernels.Backend("test")
    plain = b.register("matmul", params=(("alpha", "f32"),))
    q8 = b.register("matmul", storage=("plain", "q8_0"), lower=lambda a, i, o: {"alpha": 2.0})
    assert b.kernel("matmul", ("plain", "plain")) is plain
    assert b.kernel("matmul", ("plain", "q8_0")) is q8
    assert q8.param_values(None, [], ()) == {"alpha": 2.0}
    with pytest.raises(BackendError, match=r"test backend has no kernel for op 'matmul' on inputs \(q8_0, q8_0\)"):
        b.kernel("matmul", ("q8_0", "q8_0"))
    with pytest.raises(BackendError, match="registered twice"):
        b.register("matmul")
    with pytest.raises(KilnError, match="unknown op"):
        b.register("no_such_op")


@pytest.fixture
def ref_only_op():
    """An op declared with only a reference: the numpy backend runs it, C has no kernel."""
    name = "test_ref_only_double"
    ops.declare(name, inputs=("x",), infer=ops.same_as_first, ref=lambda xs, a: xs[0] * 2)
    try:
        yield name
    finally:
        ops.REGISTRY.pop(name)


def _graph(op: str) -> Graph:
    g = Graph()
    x = g.add_input("x", (2, 3), "float32")
    g.outputs = [g.add_node(op, [g.add_node("relu", [x])])]
    return g


@pytest.mark.parametrize("executor", ["compiled", "interpreted"])
def test_a_missing_c_kernel_is_a_compile_time_error_naming_the_op(ref_only_op, executor):
    with pytest.raises(BackendError, match=rf"the c backend has no kernel for: {ref_only_op} on \(plain\)"):
        kiln.Session(_graph(ref_only_op), executor=executor)


@pytest.mark.parametrize("executor", ["numpy", "reference"])
def test_the_numpy_backend_runs_an_op_with_only_a_reference(ref_only_op, executor):
    s = kiln.Session(_graph(ref_only_op), executor=executor)
    assert s.backend == "numpy"
    x = np.array([[-1, 2, 3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(s.run({"x": x})[0], np.maximum(x, 0) * 2)


def test_executor_and_backend_resolve():
    assert [(s.name, b) for s, b in (resolve(), resolve(backend="numpy"), resolve("interpreted", "numpy"),
                                      resolve("reference"), resolve(backend="triton"))] == \
        [("compiled", "c"), ("numpy", "numpy"), ("interpreted", "numpy"), ("reference", "numpy"), ("triton", "triton")]
    with pytest.raises(KilnError, match="executor 'compiled' cannot drive the triton backend.*executor='triton'"):
        resolve("compiled", "triton")
    with pytest.raises(KilnError, match="backend must be one of c, numpy, triton, got 'cuda'"):
        resolve(backend="cuda")
    assert {s.memory for s in EXECUTORS.values()} == {HOST, DEVICE}


def test_plans_carry_memory_spaces_and_executors_refuse_another(rng=np.random.default_rng(0)):
    from kiln.executor.compiled import CompiledExecutor
    from kiln.executor.planned import PlannedExecutor
    g = _graph("neg")
    host, dev = plan(g), plan(g, memory=DEVICE)
    assert {s.memory for s in host.slots} == {HOST} and {s.memory for s in dev.slots} == {DEVICE}
    for make in (lambda: CompiledExecutor(g, dev), lambda: PlannedExecutor(g, dev)):
        with pytest.raises(ValidationError, match="allocates host memory, but this plan places slots in device"):
            make()
    with pytest.raises(ValidationError, match="memory must be one of host, device"):
        plan(g, memory="gpu")


def test_the_planner_asks_the_backend_for_scratch():
    g = Graph()
    q = g.add_input("q", (1, 2, 40, 8), "float32")
    g.outputs = [g.add_node("attention", [q, q, q], name="att")]
    c = plan(g, scratch_rule=kernels.get("c").scratch_rule)
    none = plan(g, scratch_rule=kernels.get("numpy").scratch_rule)
    want = kernels.get("c").kernel("attention").scratch_bytes([(1, 2, 40, 8)] * 3, (1, 2, 40, 8),
                                                               g.nodes[0].attrs)
    assert want > 0 and c.steps[0].scratch.nbytes == want and none.steps[0].scratch is None
    # a session on the C backend plans with it
    s = kiln.Session(g)
    assert s.plan().steps[0].scratch.nbytes == want


def test_session_reset_state_and_profile_type_are_shared():
    from kiln.executor.planned import Profile
    g = _graph("neg")
    for executor in EXECUTORS:
        if EXECUTORS[executor].memory != HOST:
            continue
        s = kiln.Session(g, executor=executor)
        s.run({"x": np.ones((2, 3), np.float32)}, profile=True)
        assert isinstance(s.last_profile, Profile) and "neg" in s.last_profile, executor


def test_storage_of_a_tensor():
    from types import SimpleNamespace as NS
    g = NS(tensors={"w": NS(storage="q8_0"), "x": NS(storage="f32"), "y": NS()})
    assert [kernels.storage_of(g, n) for n in ("w", "x", "y")] == ["q8_0", kernels.PLAIN, kernels.PLAIN]
