"""Every registered op: numpy reference vs PyTorch, and symbolic shape inference vs the reference."""
import numpy as np
import pytest
import torch

from kiln.core import dims
from kiln.core.dims import Sym
from kiln.ir.graph import Tensor
from kiln.ops import registry
from tests.conftest import rel_err
from tests.op_cases import CASES

ALL_CASES = [(op, i) for op in sorted(CASES) for i in range(len(CASES[op][0]))]


# Ops whose weight input is in a storage type (bytes, not the array a case holds): their
# reference, inference and kernels are tested in tests/passes/test_quantize.py.
STORED_WEIGHT_OPS = {"dequantize", "qmatmul", "qembedding"}


def test_every_op_has_cases():
    missing = sorted(set(registry.REGISTRY) - set(CASES) - STORED_WEIGHT_OPS)
    assert not missing, f"ops without reference/shape tests: {missing}"
    assert all(len(CASES[op][0]) >= 1 for op in CASES)


def _tensor(a: np.ndarray, name="x", shape=None) -> Tensor:
    dt = "bool" if a.dtype == np.bool_ else str(a.dtype)
    return Tensor(name, tuple(a.shape) if shape is None else shape, dt)


def _case(op, i):
    """(declaration, inputs, attrs as given, typed attrs, the reference's output) of one case."""
    opdef = registry.get(op)
    inputs, attrs = CASES[op][0][i]
    a = opdef.make_attrs(attrs)
    return opdef, inputs, attrs, a, opdef.evaluate([x.copy() for x in inputs], a)


@pytest.mark.parametrize("op,i", ALL_CASES)
def test_reference_matches_torch(op, i):
    _, inputs, attrs, _, got = _case(op, i)
    want = CASES[op][1]([torch.from_numpy(x.copy()) for x in inputs], attrs).numpy()
    assert got.shape == want.shape
    if want.dtype == np.bool_ or want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want)
    else:
        assert rel_err(got, want) < 2e-6, rel_err(got, want)


@pytest.mark.parametrize("op,i", ALL_CASES)
def test_shape_inference(op, i):
    """Static inference equals the reference's output; symbolic inference evaluates to it."""
    opdef, inputs, _, a, out = _case(op, i)
    shape, dtype = opdef.infer([_tensor(x) for x in inputs], a)
    assert tuple(shape) == out.shape
    assert dtype == ("bool" if out.dtype == np.bool_ else str(out.dtype))
    # Symbolic: one size (input 0's leading axis) becomes a symbol wherever it occurs.
    if op in SIZE_IN_ATTRS or not inputs or not inputs[0].shape or inputs[0].shape[0] < 2:
        return
    size = inputs[0].shape[0]
    sym = Sym.var("s")
    sym_ins = [_tensor(x, f"x{k}", tuple(sym if d == size else d for d in x.shape)) for k, x in enumerate(inputs)]
    sshape, sdtype = opdef.infer(sym_ins, a)
    assert dims.resolve_shape(sshape, {"s": size}) == out.shape
    assert sdtype == dtype


SIZE_IN_ATTRS = {"reshape", "expand", "slice", "arange", "full"}  # their attrs hold sizes; covered by frontend tests
