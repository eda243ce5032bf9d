"""One-file model format: safetensors layout (8-byte header length, JSON header, raw data).

The graph travels as JSON in the header's ``__metadata__`` under ``kiln.graph``;
weights and state are the file's tensors. Reading memory-maps the file and
checks every field (offsets inside the file, dtypes, sizes, op names, attrs,
shapes re-inferred) before anything can reach C: a damaged or hostile file is
a FileFormatError naming the field, never a crash. No pickle anywhere.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from typing import Any

import numpy as np

from ..errors import FileFormatError, KilnError
from ..core import buffers, dims
from ..core.dims import Sym
from .graph import ACT, CONST, INPUT, PLAIN, STATE, Graph, Tensor
from .kv_cache import KVCacheInfo
from .validate import validate
from ..core.dtypes import ITEMSIZE, np_dtype
from ..ops.schema import check_input_dtypes

FORMAT = "kiln-graph/2"     # /2: a constant may name a storage type (its bytes stored as U8)
READS = ("kiln-graph/1", FORMAT)
_ST_DTYPES = {"float32": "F32", "int64": "I64", "int32": "I32", "bool": "BOOL"}
_NP_DTYPES = {"F32": np.float32, "I64": np.int64, "I32": np.int32, "BOOL": np.bool_, "U8": np.uint8}
MAX_HEADER = 512 * 2**20
MAX_RANK = 8                 # registry.MAX_DIMS
MAX_ELEMENTS = 2**40         # per tensor; a declared shape beyond this is damage, not a model
MAX_STATE_BYTES = 2**36      # zero-initialized state made at load


# -- attrs <-> JSON ----------------------------------------------------------------
def _enc(v: Any) -> Any:
    if isinstance(v, Sym):
        return {"dim": repr(v)}
    if isinstance(v, (tuple, list)):
        return [_enc(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"dim"} and isinstance(v["dim"], str):
        return dims.parse(v["dim"])
    if isinstance(v, list):
        return tuple(_dec(x) for x in v)
    return v


def _shape_enc(shape) -> list:
    return [d if isinstance(d, int) else repr(d) for d in shape]


def _shape_dec(shape, where: str) -> tuple:
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise FileFormatError(f"{where}: shape must be a list of at most {MAX_RANK} sizes, got {shape!r}")
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            raise FileFormatError(f"{where}: bad dimension {d!r}")
        if isinstance(d, int) and not 0 <= d <= MAX_ELEMENTS:
            raise FileFormatError(f"{where}: dimension {d} outside [0, 2**40]")
        try:
            out.append(d if isinstance(d, int) else dims.parse(d))
        except KilnError as e:
            raise FileFormatError(f"{where}: {e}") from None
    static = [d for d in out if isinstance(d, int)]
    if math.prod(static) > MAX_ELEMENTS:
        raise FileFormatError(f"{where}: shape {shape} has more than 2**40 elements")
    return tuple(out)


def graph_to_json(g: Graph) -> dict:
    return {
        "format": FORMAT,
        "inputs": list(g.inputs), "outputs": list(g.outputs),
        "tensors": [dict({"name": t.name, "shape": _shape_enc(t.shape), "dtype": t.dtype, "kind": t.kind},
                         **({"init": "zeros"} if _zero_state(g, t) else {}),
                         **({"storage": t.storage} if t.storage != PLAIN else {}))
                    for t in g.tensors.values() if t.kind != ACT],
        "nodes": [{"op": n.op, "inputs": n.inputs, "output": n.output, "source": n.source,
                   "attrs": None if n.attrs is None else
                   {f.name: _enc(getattr(n.attrs, f.name)) for f in dataclasses.fields(n.attrs)}}
                  for n in g.nodes],
        "sym_sources": {k: list(v) for k, v in g.sym_sources.items()},
        "sym_ranges": {k: list(v) for k, v in g.sym_ranges.items()},
        **({"kv_cache": g.kv_cache.to_json()} if g.kv_cache is not None else {}),
    }


def _zero_state(g: Graph, t: Tensor) -> bool:
    return t.kind == STATE and not np.any(g.constants[t.name])


# -- writing -----------------------------------------------------------------------
def save(g: Graph, path: str | os.PathLike, extra: dict | None = None) -> None:
    meta = {"kiln.graph": json.dumps(graph_to_json(g))}
    if extra:
        meta["kiln.extra"] = json.dumps(extra)
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    arrays = []
    # Widest items first, so every tensor is aligned to its itemsize without padding (the
    # data section starts 64-aligned and safetensors allows no holes).
    order = sorted(g.constants, key=lambda k: -np.dtype(g.constants[k].dtype).itemsize)
    for name in order:
        arr = g.constants[name]
        if _zero_state(g, g.tensors[name]):
            continue  # a zero-initialized KV cache is recreated on load, not stored
        arr = np.require(arr, requirements="C")  # keeps a 0-d constant 0-d (ascontiguousarray makes it [1])
        stored = g.tensors[name].storage != PLAIN  # blocks as they are (uint8 rows)
        header[name] = {"dtype": "U8" if stored else _ST_DTYPES[g.tensors[name].dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 64)  # align the data section for vector loads from the mmap
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(memoryview(arr).cast("B"))
    os.replace(tmp, path)


# -- reading -----------------------------------------------------------------------
def load(path: str | os.PathLike, *, mmap: bool = True) -> tuple[Graph, dict]:
    """Read a model file. ``mmap=True`` maps the weights (the file must then stay as it is
    while the model is used); ``mmap=False`` copies them into memory. Raises FileFormatError."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FileFormatError(f"{path}: file too short for a Kiln model ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise FileFormatError(f"{path}: header length {n} exceeds the file size {size}")
            if n % 8:  # Kiln pads the header to 64; safetensors to 8: a shifted length is damage
                raise FileFormatError(f"{path}: header length {n} is not a multiple of 8 (damaged length field)")
            text = f.read(n).decode("utf-8")
            # The header is JSON followed only by space padding; anything else means the length lies.
            body = text.rstrip(" ")
            if not body.endswith("}"):
                raise FileFormatError(f"{path}: header does not end where its length says ({n} bytes)")
            header = json.loads(body)
    except FileFormatError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FileFormatError(f"{path}: not a readable Kiln model: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise FileFormatError(f"{path}: header has no __metadata__")
    meta = header.pop("__metadata__")
    try:
        gj = json.loads(meta["kiln.graph"])
        extra = json.loads(meta.get("kiln.extra", "{}"))
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise FileFormatError(f"{path}: field kiln.graph missing or not JSON ({e})") from None
    if not isinstance(extra, dict) or not isinstance(extra.get("meta", {}), dict):
        raise FileFormatError(f"{path}: field kiln.extra must be a JSON object with an object 'meta'")
    data_start = 8 + n
    arrays = _read_tensors(path, header, data_start, size, mmap)
    return graph_from_json(gj, arrays, str(path)), extra


def _read_tensors(path, header: dict, data_start: int, size: int, mmap: bool) -> dict[str, np.ndarray]:
    """The tensors of the safetensors header: each inside the data section, aligned to its
    itemsize, sized shape x itemsize; together they cover the data section without gap or overlap."""
    spans = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or info["dtype"] not in _NP_DTYPES:
            raise FileFormatError(f"{where}: bad dtype entry {info!r}")
        shape, offs = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(d) and 0 <= d < 2**40 for d in shape):
            raise FileFormatError(f"{where}: bad shape {shape!r}")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(x) for x in offs):
            raise FileFormatError(f"{where}: bad data_offsets {offs!r}")
        dt = np.dtype(_NP_DTYPES[info["dtype"]])
        lo, hi = offs
        if not 0 <= lo <= hi or data_start + hi > size:
            raise FileFormatError(f"{where}: data_offsets [{lo}, {hi}] outside the data section "
                                  f"({size - data_start} bytes)")
        if hi - lo != math.prod(shape) * dt.itemsize:
            raise FileFormatError(f"{where}: {hi - lo} bytes do not hold shape {shape} of {info['dtype']}")
        if (data_start + lo) % dt.itemsize:
            raise FileFormatError(f"{where}: data at byte {data_start + lo} is not aligned to {dt.itemsize}")
        spans.append((lo, hi, name, dt, tuple(shape)))
    spans.sort(key=lambda s: (s[0], s[1]))
    at = 0
    for lo, hi, name, _, _ in spans:
        if lo != at:
            raise FileFormatError(f"{path}: tensor {name!r}: data_offsets start at {lo}, expected {at} "
                                  f"({'overlap' if lo < at else 'gap'} in the data section)")
        at = hi
    if data_start + at != size:
        raise FileFormatError(f"{path}: the tensors cover {at} of the {size - data_start} data bytes")
    if size == data_start:
        mm = np.zeros(0, np.uint8)
    elif mmap:
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        # Into a write-once buffer (huge pages where the system allows: the GEMV streams these).
        mm = buffers.fresh(size)
        with open(path, "rb") as f:
            got = f.readinto(memoryview(mm))
        if got != size:
            raise FileFormatError(f"{path}: read {got} of its {size} bytes (the file changed while loading)")
        mm.flags.writeable = False  # as the mapped file's weights: a session's constants are not written
    arrays = {}
    for lo, hi, name, dt, shape in spans:
        raw = mm[data_start + lo: data_start + hi]
        arrays[name] = raw.view(dt).reshape(shape) if raw.size else np.zeros(shape, dt)
    return arrays


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def graph_from_json(gj: Any, arrays: dict[str, np.ndarray], where: str = "model") -> Graph:
    """Rebuild a Graph from its JSON and the file's tensors; every field is checked (types,
    ranges, attrs by the op schema, input dtypes, shapes re-inferred) and the result validated.
    Raises FileFormatError naming the field."""
    if not isinstance(gj, dict) or gj.get("format") not in READS:
        raise FileFormatError(f"{where}: field format is {gj.get('format') if isinstance(gj, dict) else gj!r}, "
                              f"expected {FORMAT!r}")
    g = Graph()
    field = "graph"
    try:
        field = "tensors"
        for i, t in enumerate(_list(gj, "tensors")):
            field = f"tensors[{i}]"
            _tensor_from_json(g, t, arrays, f"{where}: {field}")
        extra_data = sorted(set(arrays) - set(g.constants))
        if extra_data:
            raise FileFormatError(f"{where}: file data {extra_data[0]!r} belongs to no constant or state tensor")
        field = "inputs"
        for name in _list(gj, "inputs"):
            if not isinstance(name, str) or g.tensors.get(name) is None or g.tensors[name].kind != INPUT \
                    or name in g.inputs:
                raise FileFormatError(f"{where}: inputs lists {name!r}, which is not an input tensor (or twice)")
            g.inputs.append(name)
        unlisted = [n for n, t in g.tensors.items() if t.kind == INPUT and n not in g.inputs]
        if unlisted:
            raise FileFormatError(f"{where}: input tensor {unlisted[0]!r} is missing from inputs")
        for i, nj in enumerate(_list(gj, "nodes")):
            field = f"nodes[{i}]"
            _node_from_json(g, nj, f"{where}: node {i}")
        field = "outputs"
        for name in _list(gj, "outputs"):
            if not isinstance(name, str) or name not in g.tensors:
                raise FileFormatError(f"{where}: outputs lists unknown tensor {name!r}")
            g.outputs.append(name)
        field = "sym_sources"
        for k, v in _dict(gj, "sym_sources").items():
            if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and _is_int(v[1])):
                raise FileFormatError(f"{where}: sym_sources[{k!r}] must be [input name, axis], got {v!r}")
            g.sym_sources[k] = (v[0], v[1])
        field = "sym_ranges"
        for k, v in _dict(gj, "sym_ranges").items():
            if not (isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v) and 0 <= v[0] <= v[1] <= 2**40):
                raise FileFormatError(f"{where}: sym_ranges[{k!r}] must be [min, max] with 0 <= min <= max, got {v!r}")
            g.sym_ranges[k] = (v[0], v[1])
        field = "kv_cache"
        if gj.get("kv_cache") is not None:
            g.kv_cache = KVCacheInfo.from_json(gj["kv_cache"])
        field = "graph"
        validate(g)
    except FileFormatError:
        raise
    except KilnError as e:
        raise FileFormatError(f"{where}: field {field}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as e:
        raise FileFormatError(f"{where}: field {field}: malformed ({type(e).__name__}: {e})") from None
    return g


def _list(d: dict, key: str) -> list:
    v = d.get(key)
    if not isinstance(v, list):
        raise FileFormatError(f"field {key} must be a list, got {type(v).__name__}")
    return v


def _dict(d: dict, key: str) -> dict:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise FileFormatError(f"field {key} must be an object, got {type(v).__name__}")
    return v


def _tensor_from_json(g: Graph, t: Any, arrays: dict, where: str) -> None:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise FileFormatError(f"{where}: must be an object with a string name, got {t!r}")
    name, kind, dtype = t["name"], t.get("kind"), t.get("dtype")
    where = f"{where} ({name!r})"
    if kind not in (INPUT, CONST, STATE) or dtype not in _ST_DTYPES:
        raise FileFormatError(f"{where}: bad kind {kind!r} or dtype {dtype!r}")
    if name in g.tensors:
        raise FileFormatError(f"{where}: tensor defined twice")
    shape = _shape_dec(t.get("shape"), where)
    st = t.get("storage", PLAIN)
    if st != PLAIN:
        _stored_const(g, name, kind, dtype, shape, st, arrays, where)
        return
    if kind == STATE and t.get("init") == "zeros":
        if not dims.is_static(shape):
            raise FileFormatError(f"{where}: zero-initialized state has a symbolic shape")
        if name in arrays:
            raise FileFormatError(f"{where}: zero-initialized state also has data in the file")
        if math.prod(shape) * ITEMSIZE[dtype] > MAX_STATE_BYTES:
            raise FileFormatError(f"{where}: state of shape {list(shape)} exceeds {MAX_STATE_BYTES} bytes")
        try:
            g.constants[name] = np.zeros(tuple(shape), dtype=np_dtype(dtype))
        except MemoryError:
            raise FileFormatError(f"{where}: no memory for state of shape {list(shape)}") from None
    elif kind in (CONST, STATE):
        if name not in arrays:
            raise FileFormatError(f"{where}: data missing from the file")
        arr = arrays[name]
        if tuple(arr.shape) != shape or arr.dtype != np_dtype(dtype):
            raise FileFormatError(f"{where}: data {arr.dtype}{list(arr.shape)} does not match the graph's "
                                  f"{dtype}{list(shape)}")
        g.constants[name] = arr
    elif name in arrays:
        raise FileFormatError(f"{where}: an input tensor has data in the file (a constant's kind changed?)")
    g._add_tensor(Tensor(name, shape, dtype, kind))


def _stored_const(g: Graph, name, kind, dtype, shape, st, arrays, where) -> None:
    """A constant in a storage type: its U8 bytes, checked against the table, kept mapped."""
    if kind != CONST or dtype != "float32" or not isinstance(st, str) or not dims.is_static(shape):
        raise FileFormatError(f"{where}: storage {st!r} needs a static float32 constant")
    if name not in arrays:
        raise FileFormatError(f"{where}: data missing from the file")
    try:
        g.add_stored_const(name, arrays[name], shape, st)
    except KilnError as e:
        raise FileFormatError(f"{where}: {e}") from None


def _node_from_json(g: Graph, nj: Any, where: str) -> None:
    from ..ops import registry
    if not isinstance(nj, dict):
        raise FileFormatError(f"{where}: must be an object, got {nj!r}")
    op, inputs, output, attrs = nj.get("op"), nj.get("inputs"), nj.get("output"), nj.get("attrs")
    if not isinstance(op, str) or op not in registry.REGISTRY:
        raise FileFormatError(f"{where}: unknown op {op!r}")
    where = f"{where} ({op})"
    if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
        raise FileFormatError(f"{where}: inputs must be a list of tensor names, got {inputs!r}")
    if not isinstance(output, str):
        raise FileFormatError(f"{where}: output must be a tensor name, got {output!r}")
    if attrs is not None and not isinstance(attrs, dict):
        raise FileFormatError(f"{where}: attrs must be an object or null, got {attrs!r}")
    for x in inputs:
        if x not in g.tensors:
            raise FileFormatError(f"{where}: input {x!r} is not defined before use")
    try:
        attrs = None if attrs is None else {k: _dec(v) for k, v in attrs.items()}
        opdef = registry.get(op)
        opdef.check_arity(len(inputs))
        check_input_dtypes(op, [g.tensors[x].dtype for x in inputs])
        out = g.add_node(op, inputs, attrs, name=output, source=str(nj.get("source", "")))
    except (KilnError, TypeError, ValueError, OverflowError, ZeroDivisionError) as e:
        raise FileFormatError(f"{where}: {e}") from None
    if out != output:
        raise FileFormatError(f"{where}: output name {output!r} is reused")
