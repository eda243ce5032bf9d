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
