"""Unary, broadcast binary, where and cast kernels against the ops' numpy references.

Tolerance: 1e-6 x max(1, max|ref|) (float32 rounding of one op; tanh/erf/pow are
computed from exp/log, within a few ulp)."""
import numpy as np
import pytest

from kiln.backends.triton.elementwise import BINARY_OPS, UNARY_OPS

from .util import check

POSITIVE = {"log", "sqrt", "rsqrt"}


@pytest.mark.parametrize("op", UNARY_OPS)
def test_unary(op, rng):
    x = (rng.standard_normal((3, 37)) * 3).astype(np.float32)
    x[0, :5] = [0.0, -0.0, 1e-4, -1e-3, 20.0]          # tanh's series/exp switch, large args
    if op in POSITIVE:
        x = np.abs(x) + 0.01
    check(op, [x], tol=2e-6)


def test_unary_in_place_and_large(rng):
    x = rng.standard_normal(2500).astype(np.float32)     # more than one block
    check("silu", [x], inplace=True)


@pytest.mark.parametrize("op", BINARY_OPS)
@pytest.mark.parametrize("sa,sb", [((3, 5, 7), (5, 1)), ((1, 4), (3, 1)), ((2, 1, 6), (2, 3, 1)), ((5,), ())])
def test_binary_broadcast(op, sa, sb, rng):
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    if op == "pow":
        a = np.abs(a) + 0.1
    check(op, [a, b], tol=2e-6)


def test_pow_numpy_semantics():
    a = np.array([-2.0, -2.0, -2.0, 0.0, 0.0, 3.0], np.float32)
    b = np.array([2.0, 3.0, 0.5, 0.0, 2.0, -1.0], np.float32)
    check("pow", [a, b], tol=2e-6)   # even/odd integral powers of negatives, NaN, 0^0 = 1


def test_binary_nan_and_in_place(rng):
    a = rng.standard_normal((4, 6)).astype(np.float32)
    a[1, 2] = np.nan
    for op in ("maximum", "minimum"):
        check(op, [a, np.zeros(6, np.float32)])
    check("add", [a, rng.standard_normal((6,)).astype(np.float32)], inplace=True)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum"])
def test_binary_int64(op, rng):
    a = rng.integers(-50, 50, (3, 4)).astype(np.int64)
    b = rng.integers(1, 9, (4,)).astype(np.int64)
    check(op, [a, b])


def test_mixed_dtype_promotes(rng):
    check("mul", [rng.standard_normal((2, 3)).astype(np.float32), np.arange(3, dtype=np.int64)])


def test_where(rng):
    c = rng.standard_normal((2, 1, 5)) > 0
    check("where", [c, rng.standard_normal((3, 1)).astype(np.float32), np.float32(-1.5) * np.ones(5, np.float32)])


@pytest.mark.parametrize("src,dst", [("float32", "int64"), ("int64", "float32"), ("bool", "float32"),
                                     ("float32", "bool"), ("int64", "int32")])
def test_cast(src, dst, rng):
    x = (rng.standard_normal((3, 7)) * 4).astype(src) if src != "bool" else rng.standard_normal((3, 7)) > 0
    x.flat[0] = 0
    check("cast", [x], {"dtype": dst})
