"""Device math shared by kernels: activations and the functions tl lacks portably.

``tl.extra.libdevice`` is not available under Triton's interpreter, so tanh and pow are
written from exp/log here (one definition, used on GPU and interpreter alike)."""
from __future__ import annotations

import triton
import triton.language as tl

ACT_CODES = ("none", "relu", "gelu", "gelu_tanh", "silu")   # kiln.ops.fused.ACTIVATIONS


@triton.jit
def tanh(x):
    # Series near 0 (where 1 - exp(-2|x|) cancels), the exp form elsewhere; |rel err| ~1e-7.
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = a * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    r = tl.where(a < 0.0625, small, big)
    return tl.where(x < 0, -r, r)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def pow_(a, b):
    # numpy semantics for float32: negative bases need integral exponents (else NaN).
    mag = tl.exp2(b * tl.log2(tl.abs(a)))
    integral = b == tl.floor(b)
    odd = integral & ((b - 2.0 * tl.floor(b * 0.5)) == 1.0)
    neg = tl.where(odd, -mag, mag)
    neg = tl.where(integral, neg, float("nan"))
    r = tl.where(a < 0, neg, mag)
    return tl.where(b == 0.0, 1.0, r)


@triton.jit
def act(x, ACT: tl.constexpr):
    """ACT is an index into ACT_CODES."""
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif ACT == 3:
        x = 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif ACT == 4:
        x = x * sigmoid(x)
    return x
