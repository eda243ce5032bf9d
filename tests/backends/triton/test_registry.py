"""The kernel registry: every executable op has a Triton kernel; gaps are listed per graph."""
import numpy as np
import pytest

from kiln.backends.triton import registry
from kiln.errors import KilnError
from kiln.ir.graph import Graph
from kiln.ops import registry as ops


def test_every_executable_op_has_a_kernel():
    # no Triton kernels read stored (quantized) weights yet, nor the batched KV cache's slot ops
    # (kiln serve's BatchedRunner, CPU): such a graph is refused by name
    assert registry.missing_ops(ops.executable_ops()) == ["dequantize", "qembedding", "qmatmul", "slot_cache_write",
                                                          "slot_cached_attention"]


def test_missing_ops_lists_what_a_graph_lacks(monkeypatch):
    g = Graph()
    g.add_input("x", (2, 3), "float32")
    y = g.add_node("exp", ["x"])
    g.outputs = [g.add_node("tanh", [y])]
    assert registry.missing_ops(g) == []
    monkeypatch.delitem(registry.BACKEND.kernels, ("tanh", "plain"))
    assert registry.missing_ops(g) == ["tanh"]
    assert registry.BACKEND.missing(g) == [("tanh", ("plain",))]
    with pytest.raises(KilnError, match="no kernel for op 'tanh'"):
        registry.get("tanh")
    with pytest.raises(KilnError, match=r"triton backend has no kernel for: tanh on \(plain\)"):
        registry.BACKEND.check(g)


def test_register_rejects_duplicates_and_unknown_ops():
    with pytest.raises(KilnError, match="registered twice"):
        registry.register("matmul")(lambda *a: None)
    with pytest.raises(KilnError, match="unknown op"):
        registry.register("no_such_op")(lambda *a: None)


def test_fold_only_ops_are_not_required():
    assert registry.missing_ops(["arange", "eq"]) == []
    assert np.all([ops.get(n).has(ops.FOLD_ONLY) for n in ("arange", "eq")])


def test_interpreter_setting_does_not_leak():
    import os

    from kiln.backends.triton import runtime

    from . import conftest
    if not conftest._had:
        assert "TRITON_INTERPRET" not in os.environ       # other tests and subprocesses never see it
    assert runtime.device().type == ("cpu" if runtime.INTERPRETED else "cuda")
