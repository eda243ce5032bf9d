"""Reductions, softmax/log_softmax and the norms against the numpy references.

Tolerance: 1e-6 x max(1, max|ref|) for max/softmax, 2e-6 for sums, means and norms
(float32 accumulation against the float64 reference)."""
import numpy as np
import pytest

from .util import check


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@pytest.mark.parametrize("axes,keepdim", [((2,), False), ((0, 2), True), ((1,), False), ((0, 1, 2), False)])
def test_reduce(op, axes, keepdim, rng):
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    check(op, [x], {"axes": axes, "keepdim": keepdim}, tol=2e-6)


def test_reduce_long_row_and_int(rng):
    check("sum", [rng.standard_normal((2, 1500)).astype(np.float32)], {"axes": (1,)}, tol=2e-6)  # > one block
    check("max", [rng.integers(-9, 9, (4, 3)).astype(np.int64)], {"axes": (0,)})
    check("sum", [rng.integers(-9, 9, (4, 3)).astype(np.int64)], {"axes": (1,)})


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,axis", [((3, 5, 7), 2), ((3, 5, 7), 1), ((4, 6), 0), ((2, 1500), 1)])
def test_softmax(op, shape, axis, rng):
    x = (rng.standard_normal(shape) * 30).astype(np.float32) + 1e3   # large, shifted: needs the max trick
    check(op, [x], {"axis": axis}, tol=2e-6)


def test_softmax_in_place_with_neg_inf(rng):
    x = rng.standard_normal((3, 9)).astype(np.float32)
    x[:, 4:] = -np.inf                                  # masked positions
    check("softmax", [x], {"axis": 1}, inplace=True)


@pytest.mark.parametrize("op,params", [("layer_norm", 0), ("layer_norm", 1), ("layer_norm", 2), ("rms_norm", 0),
                                       ("rms_norm", 1)])   # rms_norm declares (x, weight?)
@pytest.mark.parametrize("n", [1, 7, 64, 2100])       # 2100: more than one block per row
def test_norms(op, params, n, rng):
    x = (rng.standard_normal((3, n)) * 2 + 5).astype(np.float32)     # a large mean: stability
    ps = [rng.standard_normal(n).astype(np.float32) for _ in range(params)]
    check(op, [x] + ps, {"eps": 1e-5}, tol=4e-6)


def test_norm_in_place(rng):
    x = rng.standard_normal((4, 33)).astype(np.float32)
    check("layer_norm", [x, rng.standard_normal(33).astype(np.float32)], {"eps": 1e-6}, tol=4e-6, inplace=True)
