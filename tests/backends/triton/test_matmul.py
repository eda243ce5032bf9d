"""The GEMM and its epilogues against the numpy reference (float64 products).

Tolerance: 1e-5 x max(1, max|ref|): float32 accumulation over K <= 70 (IEEE products,
no TF32)."""
import numpy as np
import pytest

from .util import check

TOL = 1e-5


@pytest.mark.parametrize("m,k,n", [(1, 3, 7), (5, 16, 1), (17, 70, 33), (64, 9, 65)])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_shapes(m, k, n, transpose_b, rng):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if transpose_b else (k, n)).astype(np.float32)
    check("matmul", [a, b], {"transpose_b": transpose_b}, tol=TOL)


@pytest.mark.parametrize("sa,sb", [((2, 3, 5, 7), (7, 4)), ((2, 1, 5, 7), (3, 7, 4)), ((5, 7), (2, 7, 4)),
                                   ((3, 5, 7), (3, 7, 4))])
def test_batch_broadcast(sa, sb, rng):
    check("matmul", [rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)], tol=TOL)


@pytest.mark.parametrize("bias_shape", [(9,), (5, 9), (2, 1, 1, 9), (5, 1), ()])
@pytest.mark.parametrize("act", ["none", "relu", "gelu", "gelu_tanh", "silu"])
def test_epilogue(bias_shape, act, rng):
    a = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    b = rng.standard_normal((9, 7)).astype(np.float32)
    bias = rng.standard_normal(bias_shape).astype(np.float32)
    check("matmul", [a, b, bias], {"transpose_b": True, "alpha": 0.25, "beta": -1.5, "act": act}, tol=TOL)


def test_no_bias_with_act(rng):
    check("matmul", [rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((8, 6)).astype(np.float32)],
          {"alpha": 2.0, "act": "gelu"}, tol=TOL)
