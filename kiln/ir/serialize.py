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
import os
import struct
from typing import Any

import numpy as np

from ..errors import FileFormatError, KilnError
from ..core import dims
from ..core.dims import Sym
from .graph import ACT, CONST, INPUT, PLAIN, STATE, Graph, Tensor
from .kv_cache import KVCacheInfo

FORMAT = "kiln-graph/2"     # /2: a constant may name a storage type (its bytes stored as U8)
READS = ("kiln-graph/1", FORMAT)
_ST_DTYPES = {"float32": "F32", "int64": "I64", "int32": "I32", "bool": "BOOL"}
_NP_DTYPES = {"F32": np.float32, "I64": np.int64, "I32": np.int32, "BOOL": np.bool_, "U8": np.uint8}
MAX_HEADER = 512 * 2**20


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
    if isinstance(v, dict) and set(v) == {"dim"}:
        return dims.parse(v["dim"])
    if isinstance(v, list):
        return tuple(_dec(x) for x in v)
    return v


def _shape_enc(shape) -> list:
    return [d if isinstance(d, int) else repr(d) for d in shape]


def _shape_dec(shape, where: str) -> tuple:
    if not isinstance(shape, list):
        raise FileFormatError(f"{where}: shape must be a list")
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            raise FileFormatError(f"{where}: bad dimension {d!r}")
        if isinstance(d, int) and d < 0:
            raise FileFormatError(f"{where}: negative dimension {d}")
        out.append(d if isinstance(d, int) else dims.parse(d))
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
    for name, arr in g.constants.items():
        if _zero_state(g, g.tensors[name]):
            continue  # a zero-initialized KV cache is recreated on load, not stored
        arr = np.ascontiguousarray(arr)
        stored = g.tensors[name].storage != PLAIN
        if stored:  # blocks as they are, 64-byte aligned in the file (so in the memory map)
            pad = -offset % 64
            if pad:
                arrays.append(np.zeros(pad, np.uint8))
                offset += pad
        header[name] = {"dtype": "U8" if stored else _ST_DTYPES[g.tensors[name].dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header).encode()
    blob += b" " * (-(8 + len(blob)) % 64)  # data section 64-byte aligned in the file (vector loads from the mmap)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(memoryview(arr).cast("B"))
    os.replace(tmp, path)


# -- reading -----------------------------------------------------------------------
def load(path: str | os.PathLike) -> tuple[Graph, dict]:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FileFormatError(f"{path}: file too short for a Kiln model ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise FileFormatError(f"{path}: header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
    except FileFormatError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}: not a readable Kiln model: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise FileFormatError(f"{path}: header has no __metadata__")
    meta = header.pop("__metadata__")
    try:
        gj = json.loads(meta["kiln.graph"])
        extra = json.loads(meta.get("kiln.extra", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise FileFormatError(f"{path}: field kiln.graph missing or not JSON ({e})") from None
    data_start = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    arrays = {}
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        try:
            dt = _NP_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            lo, hi = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FileFormatError(f"{where}: bad dtype/shape/data_offsets entry {info!r}") from None
        if any(d < 0 for d in shape) or not 0 <= lo <= hi or data_start + hi > size:
            raise FileFormatError(f"{where}: data_offsets [{lo}, {hi}] outside the file ({size - data_start} data bytes)")
        if hi - lo != int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize:
            raise FileFormatError(f"{where}: {hi - lo} bytes do not hold shape {list(shape)} of {info['dtype']}")
        raw = mm[data_start + lo: data_start + hi]
        arr = raw.view(dt).reshape(shape) if raw.size else np.zeros(shape, dt)
        if (data_start + lo) % np.dtype(dt).itemsize:
            arr = arr.copy()
        arrays[name] = arr
    return graph_from_json(gj, arrays, str(path)), extra


def _stored_const(g: Graph, name, kind, dtype, shape, st, arrays, where) -> None:
    """A constant in a storage type: its U8 bytes, checked against the table, kept mapped."""
    if kind != CONST or dtype != "float32" or not isinstance(st, str) or not dims.is_static(shape):
        raise FileFormatError(f"{where}: tensor {name!r}: storage {st!r} needs a static float32 constant")
    raw = arrays.get(name)
    if raw is None:
        raise FileFormatError(f"{where}: tensor {name!r}: data missing from the file")
    try:
        g.add_stored_const(name, raw, shape, st)
    except KilnError as e:
        raise FileFormatError(f"{where}: tensor {name!r}: {e}") from None


def graph_from_json(gj: Any, arrays: dict[str, np.ndarray], where: str = "model") -> Graph:
    from ..ops import registry
    if not isinstance(gj, dict) or gj.get("format") not in READS:
        raise FileFormatError(f"{where}: field format is {gj.get('format') if isinstance(gj, dict) else gj!r}, "
                              f"expected {FORMAT!r}")
    g = Graph()
    try:
        for t in gj["tensors"]:
            name, kind, dtype = t["name"], t["kind"], t["dtype"]
            if kind not in (INPUT, CONST, STATE) or dtype not in _ST_DTYPES:
                raise FileFormatError(f"{where}: tensor {name!r}: bad kind {kind!r} or dtype {dtype!r}")
            shape = _shape_dec(t["shape"], f"{where}: tensor {name!r}")
            st = t.get("storage", PLAIN)
            if st != PLAIN:
                _stored_const(g, name, kind, dtype, shape, st, arrays, where)
                continue
            if kind == STATE and t.get("init") == "zeros":
                if not dims.is_static(shape):
                    raise FileFormatError(f"{where}: state {name!r} has a symbolic shape")
                g.constants[name] = np.zeros(tuple(shape), dtype=np.bool_ if dtype == "bool" else dtype)
            elif kind in (CONST, STATE):
                if name not in arrays:
                    raise FileFormatError(f"{where}: tensor {name!r}: data missing from the file")
                if tuple(arrays[name].shape) != shape or arrays[name].dtype != np.dtype(
                        np.bool_ if dtype == "bool" else dtype):
                    raise FileFormatError(f"{where}: tensor {name!r}: data {arrays[name].dtype}{list(arrays[name].shape)}"
                                          f" does not match the graph's {dtype}{list(shape)}")
                g.constants[name] = arrays[name]
            g._add_tensor(Tensor(name, shape, dtype, kind))
        for name in gj["inputs"]:
            if g.tensors.get(name) is None or g.tensors[name].kind != INPUT:
                raise FileFormatError(f"{where}: inputs lists {name!r}, which is not an input tensor")
            g.inputs.append(name)
        for i, nj in enumerate(gj["nodes"]):
            op = nj["op"]
            if op not in registry.REGISTRY:
                raise FileFormatError(f"{where}: node {i}: unknown op {op!r}")
            for x in nj["inputs"]:
                if x not in g.tensors:
                    raise FileFormatError(f"{where}: node {i} ({op}): input {x!r} is not defined before use")
            attrs = None if nj["attrs"] is None else {k: _dec(v) for k, v in nj["attrs"].items()}
            try:
                registry.get(op).check_arity(len(nj["inputs"]))
                out = g.add_node(op, nj["inputs"], attrs, name=nj["output"], source=nj.get("source", ""))
            except FileFormatError:
                raise
            except (KilnError, TypeError, ValueError) as e:
                raise FileFormatError(f"{where}: node {i} ({op}): {e}") from None
            if out != nj["output"]:
                raise FileFormatError(f"{where}: node {i} ({op}): output name {nj['output']!r} is reused")
        for name in gj["outputs"]:
            if name not in g.tensors:
                raise FileFormatError(f"{where}: outputs lists unknown tensor {name!r}")
            g.outputs.append(name)
        g.sym_sources = {k: (str(v[0]), int(v[1])) for k, v in gj.get("sym_sources", {}).items()}
        g.sym_ranges = {k: (int(v[0]), int(v[1])) for k, v in gj.get("sym_ranges", {}).items()}
        if gj.get("kv_cache") is not None:
            g.kv_cache = KVCacheInfo.from_json(gj["kv_cache"])
    except FileFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FileFormatError(f"{where}: malformed graph JSON ({type(e).__name__}: {e})") from None
    return g
