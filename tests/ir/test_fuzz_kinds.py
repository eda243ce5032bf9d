"""Kinds of raw exception the fuzzer found (tests/fuzz), each now a KilnError; and the cases where
the numpy reference and the C kernels must agree (on a value or on refusing)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from kiln.errors import KilnError, ShapeError
from kiln.ir.graph import Graph
from kiln.ops import registry, schema


def _graph(op, shapes, attrs, dtypes=None):
    g = Graph()
    names = [g.add_input(f"x{i}", s, (dtypes or {}).get(i, "float32")) for i, s in enumerate(shapes)]
    g.outputs = [g.add_node(op, names, attrs)]
    return g


@pytest.mark.parametrize("op,shapes,attrs,dtypes", [
    ("concat", [(2, 3), (2, 3)], {"axis": 2}, None),
    ("concat", [(2, 3), (2, 3)], {"axis": -1}, None),
    ("index_select", [(2, 3), (4,)], {"axis": 5}, {1: "int64"}),
    ("gather", [(2, 3), (2, 3)], {"axis": 2}, {1: "int64"}),
    ("gather", [(2, 3), (2, 4)], {"axis": 0}, {1: "int64"}),          # index larger than x off the axis
    ("layer_norm", [()], {"eps": 1e-5}, None),                        # a scalar has no last axis
    ("softmax", [(2, 3)], {"axis": "1"}, None),
    ("sum", [(2, 3)], {"axes": ({"dim": "S"},)}, None),
    ("matmul", [(2, 3), (3, 4)], {"alpha": float("inf")}, None),
    ("matmul", [(2, 3), (3, 4)], {"transpose_b": 1}, None),
    ("attention", [(1, 1, 2, 4)] * 3, {"causal": "0"}, None),
    ("slice", [(4,)], {"axis": 0, "start": 0, "end": 4, "step": 0}, None),
])
def test_bad_attrs_and_axes_are_kiln_errors(op, shapes, attrs, dtypes):
    with pytest.raises(KilnError):
        _graph(op, shapes, attrs, dtypes)


def test_schema_knows_every_declared_field_type_and_activation_list():
    from kiln.ops.fused import ACTIVATIONS
    assert schema._ACTS == ACTIVATIONS
    import dataclasses
    for name, d in registry.REGISTRY.items():
        if d.attrs is not None:  # every default must pass its own schema
            defaults = {f.name: f.default for f in dataclasses.fields(d.attrs) if f.default is not dataclasses.MISSING}
            schema.check_attrs(name, d.attrs, defaults)


def test_gather_with_an_index_smaller_than_x_matches_torch_in_reference_and_c():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    idx = np.array([[0, 3, 1], [2, 2, 0]])
    for axis in (0, 1):
        g = _graph("gather", [(4, 6), (2, 3)], {"axis": axis}, {1: "int64"})
        want = torch.gather(torch.tensor(x), axis, torch.tensor(idx)).numpy()
        for executor in ("reference", "compiled"):
            got, = kiln.Session(g, executor=executor).run({"x0": x, "x1": idx})
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("executor", ["reference", "compiled", "interpreted", "numpy"])
def test_constant_index_out_of_range_is_an_error_in_every_executor(executor):
    """An embedding whose ids are a constant (so no feed check sees them): reference and C agree on refusing."""
    g = Graph()
    x = g.add_input("x", (1,), "float32")
    table = g.add_const("table", np.ones((5, 2), np.float32))
    emb = g.add_node("embedding", [table, g.add_const("ids", np.array([1, 5]))])
    g.outputs = [g.add_node("add", [emb, x])]
    with pytest.raises(KilnError, match="out of range|outside"):
        kiln.Session(g, executor=executor).run({"x": np.zeros(1, np.float32)})


def test_norm_of_a_scalar_is_a_shape_error():
    with pytest.raises(ShapeError, match="rank >= 1"):
        _graph("rms_norm", [()], {"eps": 1e-5})


class _EveryOther(torch.nn.Module):
    def forward(self, x):
        return x[:, ::2] * 2


def test_strided_slice_on_a_symbolic_axis():
    """x[:, ::2] over a dynamic length n: ceil(n/2) has no symbolic form, so compile refuses it clearly;
    over a length declared as 2*n it is exact, and runs for every n."""
    from torch.export import Dim

    from kiln.errors import FeedError, UnsupportedOpError
    with pytest.raises(UnsupportedOpError, match=r"slice with step 2 over a symbolic length .* make this axis static"):
        kiln.compile(_EveryOther(), (torch.randn(2, 9),), dynamic_shapes={"x": {1: Dim("n", min=3, max=64)}})
    sess = kiln.compile(_EveryOther(), (torch.randn(2, 10),), dynamic_shapes={"x": {1: 2 * Dim("n", min=2, max=32)}})
    for length in (4, 10, 30):
        x = torch.randn(2, length)
        np.testing.assert_array_equal(sess.run({"x": x.numpy()})[0], (x[:, ::2] * 2).numpy())
    with pytest.raises(FeedError, match=r"axis 1 is 7, but the model needs 2\*s\d+"):
        sess.run({"x": np.zeros((2, 7), np.float32)})
