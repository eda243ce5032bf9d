"""Matrix multiply: batched, broadcast batch dims, optional transposed B, alpha, and a bias via beta.

B may be a constant held packed (storage ``f32_p16``, kiln/core/storage.py; made by
kiln/passes/pack.py): then it is a 2-D [N, K] weight read with ``transpose_b``, and the
reference unpacks it (its array is the layout's bytes, uint8 [N, 4K])."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fused import ACTIVATIONS, apply_act
from .registry import broadcast_shapes, declare
from ..core import storage
from ..errors import ShapeError

PACKED = "f32_p16"   # the one storage type matmul reads its B in (besides plain float32)



@dataclass(frozen=True)
class MatmulAttrs:
    transpose_b: bool = False   # B is stored [.., N, K]
    alpha: float = 1.0          # out = act(alpha * A @ B (+ beta * bias))
    beta: float = 1.0
    act: str = "none"           # fused epilogue activation (one of fused.ACTIVATIONS)


def _infer(ins, attrs):
    a, b = ins[0], ins[1]
    if a.dtype != "float32" or b.dtype != "float32":
        raise ShapeError(f"matmul expects float32, got {a.dtype} and {b.dtype}")
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise ShapeError(f"matmul needs rank >= 2 operands, got {list(a.shape)} and {list(b.shape)}")
    if getattr(b, "storage", "plain") not in ("plain", "f32"):
        if b.storage != PACKED or len(b.shape) != 2 or not attrs.transpose_b:
            raise ShapeError(f"matmul: B {b.name!r} in storage {b.storage} must be a 2-D {PACKED} weight "
                             f"read with transpose_b, got {list(b.shape)}, transpose_b={attrs.transpose_b}")
    m, k = a.shape[-2:]
    n, kb = (b.shape[-2], b.shape[-1]) if attrs.transpose_b else (b.shape[-1], b.shape[-2])
    if k != kb:
        raise ShapeError(f"matmul inner dims differ: A {list(a.shape)}, B {list(b.shape)}"
                         f"{' (transposed)' if attrs.transpose_b else ''}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    out = tuple(batch) + (m, n)
    if attrs.act not in ACTIVATIONS:
        raise ShapeError(f"matmul: unknown activation {attrs.act!r} (known: {', '.join(ACTIVATIONS)})")
    if len(ins) == 3:
        broadcast_shapes(out, ins[2].shape)
        if broadcast_shapes(out, ins[2].shape) != out:
            raise ShapeError(f"matmul bias {list(ins[2].shape)} does not broadcast to {list(out)}")
    return out, "float32"


def _ref(xs, attrs):
    a, b = xs[0], xs[1]
    if b.dtype == np.uint8:   # a packed weight: its bytes [N, 4K] (infer admits no other stored B)
        b = storage.get(PACKED).dequantize(b, (b.shape[0], b.shape[1] // 4))
    if attrs.transpose_b:
        b = np.swapaxes(b, -1, -2)
    out = np.matmul(a.astype(np.float64), b.astype(np.float64)) * attrs.alpha
    if len(xs) == 3:
        out = out + attrs.beta * xs[2]
    return apply_act(out.astype(np.float32), attrs.act)


declare("matmul", inputs=("a", "b", "bias?"), attrs=MatmulAttrs, infer=_infer, ref=_ref,
        doc="act(alpha * A @ B(^T) + beta * bias), batch dims broadcast")
