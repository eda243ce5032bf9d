"""Fused ops produced by the rewrite passes (never by the frontend)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .elementwise import UNARY_REFS
from .registry import FUSED, INPLACE, declare
from ..errors import ShapeError

# Activation codes shared with C (emitted into the generated header as enum kiln_act).
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")


def apply_act(x: np.ndarray, act: str) -> np.ndarray:
    return x if act == "none" else UNARY_REFS[act](x)


@dataclass(frozen=True)
class GatedAttrs:
    act: str = "silu"


def _gated_infer(ins, a):
    if a.act not in ACTIVATIONS[1:]:
        raise ShapeError(f"gated_act: unknown activation {a.act!r}")
    g = ins[0]
    if len(ins) == 2:
        if tuple(ins[1].shape) != tuple(g.shape):
            raise ShapeError(f"gated_act: gate {list(g.shape)} and up {list(ins[1].shape)} differ")
        return g.shape, "float32"
    last = g.shape[-1]
    if isinstance(last, int) and last % 2:
        raise ShapeError(f"gated_act: packed input's last axis {last} is odd")
    return tuple(g.shape[:-1]) + (last // 2,), "float32"


def _gated_ref(xs, a):
    if len(xs) == 2:
        gate, up = xs
    else:
        half = xs[0].shape[-1] // 2
        gate, up = xs[0][..., :half], xs[0][..., half:]
    return (apply_act(gate, a.act) * up).astype(np.float32)


declare("gated_act", inputs=("gate", "up?"), attrs=GatedAttrs, infer=_gated_infer, ref=_gated_ref,
        props=(FUSED, INPLACE),
        doc="act(gate) * up; with one input, gate and up are the halves of its last axis")


def _rope_infer(ins, a):
    x, cos, sin = ins
    if len(x.shape) < 2 or tuple(cos.shape) != tuple(x.shape[-2:]) or tuple(sin.shape) != tuple(cos.shape):
        raise ShapeError(f"rope: cos/sin must be [S, D] = {list(x.shape[-2:])}, got {list(cos.shape)}, {list(sin.shape)}")
    d = x.shape[-1]
    if isinstance(d, int) and d % 2:
        raise ShapeError(f"rope: head dim {d} is odd")
    return x.shape, "float32"


def _rope_ref(xs, a):
    x, cos, sin = xs
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(np.float32)


declare("rope", inputs=("x", "cos", "sin"), infer=_rope_infer, ref=_rope_ref, props=(FUSED, INPLACE),
        doc="rotary embedding, rotate-half form: x*cos + rotate_half(x)*sin over [.., S, D]")
