"""Rewrite a GGUF file with some metadata or tensors changed (for tests and the fuzzer).

Fields keep their GGUF value types unless replaced; a replacement's type follows its Python
type (bool, int -> INT64 or UINT64, float -> FLOAT32, str, or a list of one of those).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

DROP = object()  # a value in `metadata` / `tensors` that removes the entry


def _vtype(value: Any):
    from gguf import GGUFValueType as T
    if isinstance(value, bool):
        return T.BOOL
    if isinstance(value, int):
        return T.INT64 if value < 0 else T.UINT64
    if isinstance(value, float):
        return T.FLOAT32
    if isinstance(value, str):
        return T.STRING
    raise TypeError(f"no GGUF type for {type(value).__name__}")


def rewrite_gguf(src: str | Path, dst: str | Path, metadata: Optional[Mapping[str, Any]] = None,
                 tensors: Optional[Mapping[str, Any]] = None, quantize: Optional[Mapping[str, Any]] = None) -> None:
    """Copy `src` to `dst`, replacing/adding/dropping (DROP) metadata keys and tensors (float32 arrays);
    `quantize` maps F32 tensor names to a gguf.GGMLQuantizationType they are re-encoded in (gguf's quantizer)."""
    import gguf
    from gguf import GGUFValueType as T

    from kiln.models.gguf import _field_value
    metadata, tensors = dict(metadata or {}), dict(tensors or {})
    reader = gguf.GGUFReader(str(src))
    arch = _field_value(reader.fields["general.architecture"])
    w = gguf.GGUFWriter(str(dst), metadata.pop("general.architecture", arch))
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name in metadata:
            continue
        value = _field_value(f)
        if f.types[0] == T.ARRAY:
            w.add_key_value(name, value, T.ARRAY, sub_type=f.types[-1] if len(f.types) > 1 else T.INT32)
        else:
            w.add_key_value(name, value, f.types[0])
    for name, value in metadata.items():
        if value is DROP:
            continue
        if isinstance(value, list):
            w.add_key_value(name, value, T.ARRAY, sub_type=_vtype(value[0]) if value else T.INT32)
        else:
            w.add_key_value(name, value, _vtype(value))
    for t in reader.tensors:
        if t.name in tensors:
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if t.tensor_type == gguf.GGMLQuantizationType.F32 and t.name in (quantize or {}):
            q = gguf.quants.quantize(np.array(t.data, dtype=np.float32).reshape(shape), quantize[t.name])
            w.add_tensor(t.name, q, raw_dtype=quantize[t.name])
        elif t.tensor_type == gguf.GGMLQuantizationType.F32:
            w.add_tensor(t.name, np.array(t.data, dtype=np.float32).reshape(shape))
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for name, value in tensors.items():
        if value is not DROP:
            w.add_tensor(name, np.asarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
