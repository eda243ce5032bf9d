"""The attr schema: every op attr checked against its dataclass field type and declared range.

``OpDef.make_attrs`` calls :func:`check_attrs` for every node, whether the attrs come from
the frontend, a rewrite rule or a saved file, so Python (the reference, shape inference) and
C (the params struct) read the same checked values. The field's annotation is the type:

- ``bool``: a real bool (``0.5``, ``"0"``, ``1`` are refused, not truthy-converted);
- ``int``: an integer, not a bool, float or string, within ``±INT_LIMIT`` (C reads int64);
- ``float``: an int or float, not a bool; finite in float32 where :data:`FINITE` says so;
- ``Optional[float]``: None or a float as above;
- ``str``: a string, one of :data:`CHOICES` where listed;
- ``Dim``: an int or a symbolic size; ``tuple`` (of Dim): a tuple of those;
- ``tuple[int, ...]``: a tuple of ints.

numpy scalars are accepted and returned as Python values; lists become tuples. A violation
is a KilnError naming the op, the field and the value.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from ..core.dims import Sym
from ..core.dtypes import DTYPES
from ..errors import KilnError

INT_LIMIT = 2**62          # sizes and offsets far beyond any real tensor still fit int64 with headroom
F32_MAX = float(np.finfo(np.float32).max)
MAX_TUPLE = 8              # registry.MAX_DIMS: shapes, perms and axis lists

# (op, field) -> what the value must satisfy beyond its type, and the words for the error.
_ACTS = ("none", "relu", "gelu", "gelu_tanh", "silu")   # kiln.ops.fused.ACTIVATIONS (checked by a test)
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("matmul", "act"): _ACTS,
    ("gated_act", "act"): _ACTS[1:],
    ("cast", "dtype"): DTYPES,
    ("arange", "dtype"): DTYPES,
    ("full", "dtype"): DTYPES,
    # quantized weights (kiln/ops/quant.py): storage names are checked against the table by inference
    ("qmatmul", "act"): _ACTS,
    ("qmatmul", "mode"): ("exact", "int8"),
}
FINITE = {("matmul", "alpha"), ("matmul", "beta"), ("layer_norm", "eps"), ("rms_norm", "eps"),
          ("attention", "scale"), ("cached_attention", "scale"),
          ("slot_cached_attention", "scale")}
RANGES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("layer_norm", "eps"): (lambda v: v >= 0, ">= 0"),
    ("rms_norm", "eps"): (lambda v: v >= 0, ">= 0"),
    ("arange", "step"): (lambda v: v != 0, "nonzero"),
    ("slice", "step"): (lambda v: v >= 1, ">= 1"),
}


def check_attrs(op: str, cls: type, values: dict) -> dict:
    """Return ``values`` checked and normalized for ``cls``'s fields. Raises KilnError."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise KilnError(f"op {op}: attrs must be an object of name -> value, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise KilnError(f"op {op}: unknown attr {unknown[0]!r}; its attrs are {', '.join(fields)}")
    out = {}
    for name, v in values.items():
        where = f"op {op}: attr {name}"
        v = _check_type(str(fields[name].type), v, where, (op, name) in FINITE)
        choices = CHOICES.get((op, name))
        if choices is not None and v not in choices:
            raise KilnError(f"{where} is {v!r}; expected one of {', '.join(choices)}")
        rng = RANGES.get((op, name))
        if rng is not None and not rng[0](v):
            raise KilnError(f"{where} is {v!r}; it must be {rng[1]}")
        out[name] = v
    return out


def _check_type(kind: str, v: Any, where: str, finite: bool) -> Any:
    if kind == "bool":
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        raise KilnError(f"{where} must be a bool, got {v!r}")
    if kind == "int":
        return _int(v, where)
    if kind == "float":
        return _float(v, where, finite)
    if kind == "Optional[float]":
        return None if v is None else _float(v, where, finite)
    if kind == "str":
        if isinstance(v, str):
            return v
        raise KilnError(f"{where} must be a string, got {v!r}")
    if kind == "Dim":
        return _dim(v, where)
    if kind in ("tuple", "tuple[int, ...]"):
        if not isinstance(v, (tuple, list)) or len(v) > MAX_TUPLE:
            raise KilnError(f"{where} must be a list of at most {MAX_TUPLE} "
                            f"{'ints' if kind != 'tuple' else 'sizes'}, got {v!r}")
        item = _int if kind != "tuple" else _dim
        return tuple(item(x, f"{where}[{i}]") for i, x in enumerate(v))
    raise KilnError(f"{where}: no schema for field type {kind!r}")  # a declaration this module must learn


def _int(v: Any, where: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise KilnError(f"{where} must be an integer, got {v!r}")
    if not -INT_LIMIT <= int(v) <= INT_LIMIT:
        raise KilnError(f"{where} = {int(v)} is outside [-2**62, 2**62]")
    return int(v)


def _float(v: Any, where: str, finite: bool) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise KilnError(f"{where} must be a number, got {v!r}")
    try:
        f = float(v)
    except OverflowError:
        raise KilnError(f"{where} = {v} does not fit a float") from None
    if finite and not (math.isfinite(f) and abs(f) <= F32_MAX):
        raise KilnError(f"{where} must be finite as a float32 (C reads it as one), got {f}")
    return f


def _dim(v: Any, where: str):
    if isinstance(v, Sym):
        if any(not -INT_LIMIT <= c <= INT_LIMIT for c in v.terms.values()):
            raise KilnError(f"{where}: symbolic size {v} has a coefficient outside [-2**62, 2**62]")
        return v
    return _int(v, where)


# -- input dtypes -------------------------------------------------------------------
# Inputs whose kernels read float32 only (a weight or bias of another dtype would be read as
# float32 past the end of its bytes); the other ops' infer functions check their own dtypes.
_F = ("float32",)
INPUT_DTYPES: dict[str, tuple[tuple[str, ...], ...]] = {
    "matmul": (_F, _F, _F),
    "layer_norm": (_F, _F, _F),
    "rms_norm": (_F, _F),
    "attention": (_F, _F, _F, ("float32", "bool")),
    "cached_attention": (_F, _F, _F, ("int64",)),
    "cache_write": (_F, _F, ("int64",)),
    "slot_cached_attention": (_F, _F, _F, ("int64",), ("int64",)),
    "slot_cache_write": (_F, _F, ("int64",), ("int64",)),
    "rope": (_F, _F, _F),
    "gated_act": (_F, _F),
    "softmax": (_F,),
    "log_softmax": (_F,),
    "embedding": (("float32", "int64", "int32", "bool"), ("int64", "int32")),
}


def check_input_dtypes(op: str, dtypes) -> None:
    """Raise KilnError when an input's dtype is not one ``op``'s kernels accept."""
    allowed = INPUT_DTYPES.get(op)
    if allowed is None:
        return
    for i, (dt, ok) in enumerate(zip(dtypes, allowed)):
        if dt not in ok:
            raise KilnError(f"op {op}: input {i} has dtype {dt}; its kernels accept {', '.join(ok)}")
