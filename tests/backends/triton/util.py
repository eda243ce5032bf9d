"""Run one op through its Triton launcher and through its numpy reference."""
from __future__ import annotations

import numpy as np
import torch

from kiln.backends.triton import registry, runtime
from kiln.ir.graph import Tensor
from kiln.ops import registry as ops


def run_triton(op: str, arrays, attrs=None, ctx=None, out_over_input0: bool = False):
    """The op's Triton launcher on `arrays` (numpy); returns (triton result, numpy reference)."""
    opdef = ops.get(op)
    attrs = opdef.make_attrs(attrs)
    arrays = [np.asarray(a, order="C") for a in arrays]  # (ascontiguousarray makes 0-d 1-d)
    shape, dtype = opdef.infer([Tensor(f"x{i}", a.shape, "bool" if a.dtype == np.bool_ else str(a.dtype))
                                for i, a in enumerate(arrays)], attrs)
    ctx = ctx or runtime.Context()
    ins = [torch.from_numpy(a.copy()).to(ctx.device) for a in arrays]
    if out_over_input0:
        out = ins[0]
    else:
        out = torch.full(tuple(shape), 7, dtype=runtime.TORCH_DTYPES[dtype], device=ctx.device)
    registry.get(op)(ins, out, attrs, ctx)
    ctx.check()
    return out.cpu().numpy(), opdef.evaluate(arrays, attrs)


def assert_close(got, ref, tol: float, what: str = "") -> None:
    """max |got - ref| <= tol * max(1, max |ref|), NaN/inf positions equal; shapes and dtypes equal."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype} != {ref.dtype}"
    if got.dtype.kind in "biu":
        np.testing.assert_array_equal(got, ref, err_msg=what)
        return
    g, r = got.astype(np.float64), ref.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(r), err_msg=f"{what}: NaN positions differ")
    fin = np.isfinite(r)
    np.testing.assert_array_equal(g[~fin & ~np.isnan(r)], r[~fin & ~np.isnan(r)], err_msg=f"{what}: infinities differ")
    if fin.any():
        err = np.abs(g[fin] - r[fin]).max()
        scale = max(1.0, float(np.abs(r[fin]).max()))
        assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.1e} x {scale:.3g}"


def check(op: str, arrays, attrs=None, tol: float = 1e-6, ctx=None, inplace: bool = False):
    got, ref = run_triton(op, arrays, attrs, ctx, out_over_input0=inplace)
    assert_close(got, ref, tol, f"{op} {[np.shape(a) for a in arrays]} {attrs}")
    return got
