"""ctypes mirrors of the C structs, built from the same field lists as the generated header."""
from __future__ import annotations

import ctypes
from typing import Optional

from ..ops import registry
from .c import codegen
from ..core.dtypes import DTYPES, ITEMSIZE

DTYPE_CODE = {d: i for i, d in enumerate(DTYPES)}
_SCALAR = {"ptr": ctypes.c_void_p, "i32": ctypes.c_int32, "i64": ctypes.c_int64, "f32": ctypes.c_float}


def _ctype(kind: str, tensor_type=None):
    base, n = codegen.split_kind(kind)
    t = tensor_type if base == "tensor" else _SCALAR[base]
    return t * n if n else t


class Tensor(ctypes.Structure):
    _fields_ = [(n, _ctype(k)) for n, k in codegen.TENSOR_FIELDS]


class Call(ctypes.Structure):
    _fields_ = [(n, _ctype(k, Tensor)) for n, k in codegen.CALL_FIELDS]


_PARAMS: dict[str, type] = {}


def params_type(op: str) -> Optional[type]:
    """The ctypes struct for an op's params (None for ops without params)."""
    if op not in _PARAMS:
        fields = codegen.params_of(op)
        _PARAMS[op] = type(codegen.param_struct(op), (ctypes.Structure,),
                           {"_fields_": [(n, _ctype(k)) for n, k in fields]}) if fields else None
    return _PARAMS[op]


def op_id(op: str) -> int:
    return _OP_IDS[op]


_OP_IDS = {op: i for i, op in enumerate(codegen.c_ops())}


def make_params(op: str, values: dict):
    """Pack typed params; floats stay floats, arrays are zero-padded."""
    t = params_type(op)
    if t is None:
        return None
    p = t()
    for name, kind in codegen.params_of(op):
        v = values[name]
        base, n = codegen.split_kind(kind)
        if n:
            arr = getattr(p, name)
            for i, x in enumerate(list(v)[:n]):
                arr[i] = int(x)
        else:
            setattr(p, name, float(v) if base == "f32" else int(v))
    return p


def fill_tensor(t: Tensor, *, slot: int, offset: int, shape, dtype: str) -> None:
    if len(shape) > registry.MAX_DIMS:
        from ..errors import KilnError
        raise KilnError(f"rank {len(shape)} exceeds the C limit of {registry.MAX_DIMS} dims")
    t.slot = slot
    t.offset = offset
    t.dtype = DTYPE_CODE[dtype]
    t.ndim = len(shape)
    n = 1
    for i, d in enumerate(shape):
        t.shape[i] = int(d)
        n *= int(d)
    t.nbytes = n * ITEMSIZE[dtype]
