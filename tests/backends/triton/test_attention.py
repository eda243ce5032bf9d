"""Flash attention and cached attention against the numpy references.

Tolerance: 1e-5 x max(1, max|ref|) (online softmax in float32, IEEE dots)."""
import numpy as np
import pytest

from kiln.errors import KilnError

from .util import check, run_triton

TOL = 1e-5


def qkv(rng, b, hq, hk, sq, sk, d, dv=None):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return f(b, hq, sq, d), f(b, hk, sk, d), f(b, hk, sk, dv or d)


@pytest.mark.parametrize("hq,hk", [(4, 4), (4, 2), (6, 1)])         # MHA, GQA, MQA
@pytest.mark.parametrize("sq,sk", [(1, 9), (7, 7), (5, 70), (40, 33)])  # decode row, square, many key tiles
@pytest.mark.parametrize("causal", [False, True])
def test_attention(hq, hk, sq, sk, causal, rng):
    check("attention", list(qkv(rng, 2, hq, hk, sq, sk, 16)), {"causal": causal}, tol=TOL)


@pytest.mark.parametrize("d,dv", [(8, 8), (24, 24), (16, 40)])   # head dims below/between powers of two
def test_head_dims(d, dv, rng):
    check("attention", list(qkv(rng, 1, 2, 1, 6, 11, d, dv)), {"causal": True, "scale": 0.3}, tol=TOL)


@pytest.mark.parametrize("mask_shape", [(5, 11), (2, 1, 5, 11), (1, 4, 1, 11), (11,)])
@pytest.mark.parametrize("kind", ["bool", "float32"])
def test_masks(mask_shape, kind, rng):
    q, k, v = qkv(rng, 2, 4, 2, 5, 11, 16)
    if kind == "bool":
        mask = rng.standard_normal(mask_shape) > -0.5
    else:
        mask = np.where(rng.standard_normal(mask_shape) > -0.5, rng.standard_normal(mask_shape), -np.inf)
        mask = mask.astype(np.float32)
    check("attention", [q, k, v, mask], {"causal": len(mask_shape) == 2}, tol=TOL)


def test_fully_masked_rows_give_zero(rng):
    q, k, v = qkv(rng, 1, 2, 2, 4, 6, 16)
    mask = np.ones((4, 6), bool)
    mask[1] = False
    got = check("attention", [q, k, v, mask], tol=TOL)
    assert not np.isnan(got).any() and np.all(got[:, :, 1] == 0)


@pytest.mark.parametrize("pos,sq", [(0, 5), (3, 1), (11, 1), (6, 6)])
@pytest.mark.parametrize("hq,hk", [(4, 2), (2, 2)])
def test_cached_attention(pos, sq, hq, hk, rng):
    q, kc, vc = qkv(rng, 1, hq, hk, sq, 12, 16)
    kc[:, :, pos + sq:] = np.nan            # rows past the valid prefix must never be read
    vc[:, :, pos + sq:] = np.nan
    check("cached_attention", [q, kc, vc, np.array(pos, np.int64)], tol=TOL)


def test_cached_attention_bad_position(rng):
    q, kc, vc = qkv(rng, 1, 2, 2, 3, 8, 16)
    with pytest.raises(KilnError, match="out of range"):
        run_triton("cached_attention", [q, kc, vc, np.array(6, np.int64)])   # 6 + 3 > 8


@pytest.mark.parametrize("pos,s", [(0, 3), (5, 1), (4, 4)])
def test_cache_write(pos, s, rng):
    cache = rng.standard_normal((2, 3, 8, 16)).astype(np.float32)
    new = rng.standard_normal((2, 3, s, 16)).astype(np.float32)
    check("cache_write", [cache, new, np.array(pos, np.int64)])
    check("cache_write", [cache, new, np.array(pos, np.int64)], inplace=True)


def test_cache_write_bad_position(rng):
    cache, new = np.zeros((1, 1, 4, 16), np.float32), np.ones((1, 1, 2, 16), np.float32)
    with pytest.raises(KilnError, match="out of range"):
        run_triton("cache_write", [cache, new, np.array(3, np.int64)], out_over_input0=True)
