"""Device index math shared by kernels: a flat index to an operand's element offset.

Kernels get their shapes and strides as one small int64 ``meta`` tensor of rows of
``runtime.MAX_DIMS`` ints (``runtime.padded``): a shape row, then one stride row per operand
(0 on broadcast axes). ``offset`` decomposes a flat index over a shape row and dots the
coordinates with a stride row, the step every strided kernel (elementwise broadcasting,
movement copies, batched matmul, reductions) takes.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def offset(idx, meta, SHAPE_ROW: tl.constexpr, ROW: tl.constexpr, RANK: tl.constexpr):
    """Element offset of flat index ``idx`` (any int64 tensor or scalar) over the shape in meta
    row ``SHAPE_ROW`` (its first ``RANK`` entries), in the operand whose strides are row ``ROW``."""
    off = idx * 0
    rem = idx
    for i in tl.static_range(RANK):
        d = RANK - 1 - i
        size = tl.load(meta + SHAPE_ROW * 8 + d)
        off += (rem % size) * tl.load(meta + ROW * 8 + d)
        rem = rem // size
    return off
