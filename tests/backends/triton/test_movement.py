"""Movement, gathers and the fused kernels (gated activation, rope); movement is exact."""
import numpy as np
import pytest

from kiln.errors import KilnError

from .util import check, run_triton


@pytest.fixture
def x(rng):
    return rng.standard_normal((3, 5, 7)).astype(np.float32)


def test_copy_and_reshape(x):
    check("copy", [x])
    check("reshape", [x], {"shape": (5, -1)})


@pytest.mark.parametrize("perm", [(2, 0, 1), (0, 2, 1), (1, 0, 2), (0, 1, 2)])
def test_permute(x, perm):
    check("permute", [x], {"perm": perm})


def test_permute_4d_int(rng):
    check("permute", [rng.integers(0, 99, (2, 3, 4, 5))], {"perm": (0, 2, 1, 3)})


@pytest.mark.parametrize("src,shape", [((3, 1, 7), (3, 4, 7)), ((1, 7), (2, 3, 5, 7)), ((5, 1), (-1, 6))])
def test_expand(src, shape, rng):
    check("expand", [rng.standard_normal(src).astype(np.float32)], {"shape": shape})


@pytest.mark.parametrize("axis,start,end,step", [(1, 1, 4, 1), (2, 0, 7, 3), (0, -2, 3, 1), (1, 2, 99, 2)])
def test_slice(x, axis, start, end, step):
    check("slice", [x], {"axis": axis, "start": start, "end": end, "step": step})


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_concat(x, axis, rng):
    other = list(x.shape)
    other[axis] = 2
    check("concat", [x, rng.standard_normal(other).astype(np.float32), x], {"axis": axis})


def test_embedding(rng):
    table = rng.standard_normal((11, 6)).astype(np.float32)
    check("embedding", [table, np.array([[0, 10, -1], [3, 3, 5]], np.int64)])
    check("embedding", [table, np.array([7], np.int32)])


def test_embedding_out_of_range(rng):
    with pytest.raises(KilnError, match="out of range"):
        run_triton("embedding", [np.zeros((4, 3), np.float32), np.array([1, 4], np.int64)])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_index_select(x, axis):
    idx = np.array([1, 0, -1, 1], np.int64)
    check("index_select", [x, idx], {"axis": axis})


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gather(x, axis, rng):
    shape = list(x.shape)
    shape[axis] = 4
    check("gather", [x, rng.integers(-x.shape[axis], x.shape[axis], shape)], {"axis": axis})


def test_gather_out_of_range(x):
    with pytest.raises(KilnError, match="out of range"):
        run_triton("gather", [x, np.full((1, 1, 1), 9, np.int64)], {"axis": 2})


@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh", "silu"])
def test_gated_act(act, rng):
    packed = rng.standard_normal((2, 3, 10)).astype(np.float32)
    check("gated_act", [packed], {"act": act}, tol=2e-6)
    g, u = packed[..., :5].copy(), packed[..., 5:].copy()
    check("gated_act", [g, u], {"act": act}, tol=2e-6)
    check("gated_act", [g, u], {"act": act}, tol=2e-6, inplace=True)


@pytest.mark.parametrize("d", [2, 16, 24])
def test_rope(d, rng):
    x = rng.standard_normal((2, 3, 5, d)).astype(np.float32)
    cos, sin = (rng.standard_normal((5, d)).astype(np.float32) for _ in range(2))
    check("rope", [x, cos, sin], tol=2e-6)
    check("rope", [x, cos, sin], tol=2e-6, inplace=True)
