"""Mutators: each takes a numpy Generator and a valid input and returns a damaged one.

Byte mutations find parser bugs; structure-aware ones keep the container valid (JSON that parses,
a GGUF the reader accepts) and make the content lie: types changed, shapes and offsets shifted,
attrs of the wrong JSON type, counts that disagree, hostile chat templates.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

INTS = [0, 1, -1, 2, 3, 7, 2**31 - 1, 2**31, -2**31, 2**32, 2**63 - 1, -2**63, 10**9]
ODD = [None, True, False, 0.5, -0.0, 1e308, float("nan"), float("inf"), "", "0", "1", "x" * 3, [], {}, [1, 2], {"a": 1},
       {"dim": "S"}, {"dim": "(("}, "S", "S+1"]


def flip_bytes(rng: np.random.Generator, data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    b = bytearray(data)
    hi = len(b) if hi is None else min(hi, len(b))
    for _ in range(int(rng.integers(1, 9))):
        if hi > lo:
            i = int(rng.integers(lo, hi))
            b[i] = int(rng.integers(0, 256)) if rng.random() < 0.5 else b[i] ^ (1 << int(rng.integers(0, 8)))
    return bytes(b)


def mutate_bytes(rng: np.random.Generator, data: bytes, header_end: int) -> bytes:
    r = rng.random()
    if r < 0.15:
        return data[:int(rng.integers(0, len(data)))]                       # truncated
    if r < 0.25:
        return data + bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    if r < 0.7:
        return flip_bytes(rng, data, 0, header_end)                         # header / metadata region
    return flip_bytes(rng, data)


def _value(rng: np.random.Generator, old: Any) -> Any:
    """A plausible lie for `old`: a nearby number, another JSON type, a shape of another length."""
    r = rng.random()
    if isinstance(old, bool) or r < 0.3:
        return ODD[int(rng.integers(len(ODD)))]
    if isinstance(old, int):
        return old + int(rng.choice([-2, -1, 1, 2, 4, 64])) if r < 0.6 else INTS[int(rng.integers(len(INTS)))]
    if isinstance(old, float):
        return float(rng.choice([0.0, -1.0, 1e-30, 1e30, old * 2, -old]))
    if isinstance(old, str):
        return str(rng.choice(["float32", "int64", "int32", "bool", "F32", "I64", "float16", "input", "state",
                               "const", "matmul", "attention", "gather", "reshape", "S", old + "x", old[:-1]]))
    if isinstance(old, list):
        if old and r < 0.55:
            i = int(rng.integers(len(old)))
            return old[:i] + [_value(rng, old[i])] + old[i + 1:]
        if r < 0.7:
            return old[:-1]
        if r < 0.85:
            return old + [old[-1] if old else 1]
        return list(reversed(old))
    if isinstance(old, dict):
        return {}
    return INTS[int(rng.integers(len(INTS)))]


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, prefix + (i,))
    return out


def mutate_tree(rng: np.random.Generator, tree: Any, n: int = 1) -> Any:
    """Replace (or, in a dict, drop) `n` random nodes of a JSON tree; the result still serializes."""
    for _ in range(n):
        paths = [p for p in _paths(tree) if p]
        if not paths:
            return tree
        path = paths[int(rng.integers(len(paths)))]
        parent = tree
        for k in path[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and rng.random() < 0.1:
            del parent[path[-1]]
        else:
            parent[path[-1]] = _value(rng, parent[path[-1]])
    return tree


def _split_kiln(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join_kiln(header: dict, body: bytes) -> bytes:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 64)
    return struct.pack("<Q", len(blob)) + blob + body


def mutate_kiln(rng: np.random.Generator, seed: Path) -> bytes:
    """A .kiln file (safetensors layout, graph JSON in __metadata__['kiln.graph']) made to lie."""
    data = seed.read_bytes()
    header, body = _split_kiln(data)
    r = rng.random()
    if r < 0.25:
        return mutate_bytes(rng, data, 8 + struct.unpack("<Q", data[:8])[0])
    if r < 0.45:  # the safetensors entries: dtype, shape, data_offsets
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        mutate_tree(rng, entries, int(rng.integers(1, 3)))
        header = {"__metadata__": header["__metadata__"], **entries}
        return _join_kiln(header, body)
    graph = json.loads(header["__metadata__"]["kiln.graph"])
    if r < 0.6 and graph.get("nodes"):  # attrs, where Python and C read values differently
        node = graph["nodes"][int(rng.integers(len(graph["nodes"])))]
        if isinstance(node.get("attrs"), dict) and node["attrs"]:
            key = list(node["attrs"])[int(rng.integers(len(node["attrs"])))]
            node["attrs"][key] = _value(rng, node["attrs"][key])
        else:
            node["op"] = _value(rng, node["op"])
    elif r < 0.7 and len(graph.get("nodes", [])) > 1:  # structure: swap, drop or duplicate nodes
        nodes = graph["nodes"]
        i, j = (int(x) for x in rng.integers(0, len(nodes), 2))
        choice = rng.random()
        if choice < 0.4:
            nodes[i], nodes[j] = nodes[j], nodes[i]
        elif choice < 0.7:
            del nodes[i]
        else:
            nodes.insert(j, dict(nodes[i]))
    else:
        mutate_tree(rng, graph, int(rng.integers(1, 4)))
    header["__metadata__"]["kiln.graph"] = json.dumps(graph)
    return _join_kiln(header, body)


HOSTILE_TEMPLATES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('true') }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'a' * 10**9 }}",
    "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{{ messages[0]['content'] * 10**8 }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ raise_exception('refused') }}",
    "{% for m in messages %}{{ m.content|center(10**9) }}{% endfor %}",
    "{{ messages|tojson|length }}{{ 1/0 }}",
    "{% if %}",
]


def mutate_gguf(rng: np.random.Generator, seed: Path, out: Path) -> None:
    """Write a damaged copy of the GGUF `seed` to `out`."""
    from kiln.models.gguf import read_gguf

    from .gguf_edit import DROP, rewrite_gguf
    r = rng.random()
    if r < 0.3:
        data = seed.read_bytes()
        out.write_bytes(mutate_bytes(rng, data, min(len(data), 16384)))
        return
    gf = read_gguf(seed)
    meta: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    keys = sorted(gf.metadata)
    if r < 0.75:
        for _ in range(int(rng.integers(1, 3))):
            key = keys[int(rng.integers(len(keys)))]
            old = gf.metadata[key]
            if rng.random() < 0.15:
                meta[key] = DROP
            elif isinstance(old, list) and old and rng.random() < 0.5:
                meta[key] = old[:int(rng.integers(0, len(old)))]  # shorter list (token list vs embedding)
            elif isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.3:
                meta[key] = [old] * 2 + [old + 1]                # a per-layer array that disagrees
            else:
                v = _value(rng, old)
                meta[key] = v if isinstance(v, (bool, int, float, str)) and not (isinstance(v, int) and
                                                                                 not -2**63 <= v < 2**64) else 1
    elif r < 0.85:
        meta["tokenizer.chat_template"] = HOSTILE_TEMPLATES[int(rng.integers(len(HOSTILE_TEMPLATES)))]
    elif r < 0.92:
        arch = gf.architecture
        meta[str(rng.choice([f"{arch}.expert_count", f"{arch}.rope.scaling.type", f"{arch}.attention.sliding_window",
                             f"{arch}.block_count"]))] = int(rng.choice([8, 10**6, 2**40]))
    else:
        names = sorted(gf.tensors)
        name = names[int(rng.integers(len(names)))]
        shape = tuple(int(d) for d in reversed(gf.tensors[name].shape.tolist()))
        tensors[name] = DROP if rng.random() < 0.4 else np.zeros(tuple(max(1, d + int(rng.choice([-1, 1])))
                                                                      for d in shape), np.float32)
    rewrite_gguf(seed, out, meta, tensors)


def mutate_feeds(rng: np.random.Generator, graph) -> dict:
    """Feeds for `graph`'s inputs with one or two things wrong (dtype, shape, layout, values, names)."""
    feeds: dict[str, Any] = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        shape = tuple(int(d) for d in t.shape)
        a = (rng.standard_normal(shape) * 3).astype(t.dtype) if t.dtype == "float32" else \
            rng.integers(0, 4, shape).astype(t.dtype)
        feeds[name] = a
    name = graph.inputs[int(rng.integers(len(graph.inputs)))]
    a = feeds[name]
    r = rng.random()
    if r < 0.12:
        feeds[name] = a.astype(rng.choice([np.float64, np.int32, np.bool_, np.float16, np.int64, np.float32]))
    elif r < 0.24:
        shape = list(a.shape) or [1]
        i = int(rng.integers(len(shape)))
        shape[i] = int(rng.choice([0, 1, shape[i] + 1, max(shape[i] - 1, 0), 10**6]))
        feeds[name] = np.zeros(tuple(shape) if np.prod(shape) < 10**7 else (1,), a.dtype)
    elif r < 0.32:
        feeds[name] = np.asfortranarray(a) if a.ndim > 1 else np.repeat(a, 2)[::2]
    elif r < 0.5:
        if a.dtype.kind == "f":
            feeds[name] = np.full(a.shape, rng.choice([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45]), a.dtype)
        else:
            feeds[name] = np.full(a.shape, rng.choice([-1, -(2**31), 2**31 - 1, 10**6, -(2**62), 2**62]), a.dtype)
    elif r < 0.6:
        feeds[name] = a.tolist()
    elif r < 0.66:
        feeds[name] = rng.choice([None, 3, "ids", 1.5])
    elif r < 0.72:
        del feeds[name]
    elif r < 0.78:
        feeds["not_an_input"] = a
    elif r < 0.84:
        feeds[name] = a.reshape(-1) if a.ndim > 1 else a.reshape(1, -1)
    elif r < 0.9:
        ro = a.copy()
        ro.setflags(write=False)
        feeds[name] = ro
    else:
        feeds[name] = np.array(["x"] * max(a.size, 1), dtype=object).reshape(a.shape) if a.size else a.astype(object)
    return feeds
