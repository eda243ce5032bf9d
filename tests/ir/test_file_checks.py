"""Saved files: every field a file declares is checked at load, and each lie is a FileFormatError
naming the field (issue 16, "saved files"). No torch: the graphs are built directly."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import kiln
from kiln.errors import FileFormatError
from kiln.executor.reference import run_reference
from kiln.ir import serialize
from kiln.ir.graph import STATE, Graph
from kiln.ir.kv_cache import KVCacheInfo
from tests.ir.test_kv_cache_info import cached_graph


def mlp() -> Graph:
    """ids -> embedding -> layer_norm -> matmul(+bias) -> softmax, plus a 0-d scale and a bool mask."""
    rng = np.random.default_rng(0)
    g = Graph()
    ids = g.add_input("ids", (1, 5), "int64")
    emb = g.add_node("embedding", [g.add_const("table", rng.standard_normal((11, 4)).astype(np.float32)), ids])
    h = g.add_node("layer_norm", [emb, g.add_const("lnw", np.ones(4, np.float32)),
                                  g.add_const("lnb", np.zeros(4, np.float32))], {"eps": 1e-5})
    h = g.add_node("mul", [h, g.add_const("scale", np.array(2.0, np.float32))])      # a 0-d constant
    h = g.add_node("matmul", [h, g.add_const("w", rng.standard_normal((4, 6)).astype(np.float32)),
                              g.add_const("b", rng.standard_normal(6).astype(np.float32))])
    mask = g.add_const("mask", np.array([True, False, True]))                          # 3 bytes: odd-sized
    g.outputs = [g.add_node("softmax", [h], {"axis": 1}), mask]
    return g


FEEDS = {"ids": np.array([[1, 2, 3, 10, 0]])}


def _parts(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, n, json.loads(raw[8:8 + n])


def _write(path, header, body, pad=True):
    blob = json.dumps(header).encode()
    if pad:
        blob += b" " * (-len(blob) % 64)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)


def edit_header(path, fn):
    raw, n, header = _parts(path)
    fn(header)
    _write(path, header, raw[8 + n:])


def edit_graph(path, fn):
    def f(header):
        g = json.loads(header["__metadata__"]["kiln.graph"])
        fn(g)
        header["__metadata__"]["kiln.graph"] = json.dumps(g)
    edit_header(path, f)


def node(g, op):
    return next(n for n in g["nodes"] if n["op"] == op)


def tensor(g, name):
    return next(t for t in g["tensors"] if t["name"] == name)


def _set(d, **kv):
    d.update(kv)


# -- round trips -------------------------------------------------------------------------
def test_zero_d_constants_and_odd_sized_bools_round_trip(tmp_path):
    g = mlp()
    serialize.save(g, tmp_path / "m.kiln")
    loaded, _ = serialize.load(tmp_path / "m.kiln")
    assert loaded.constants["scale"].shape == () and loaded.tensors["scale"].shape == ()
    for name, arr in g.constants.items():  # widest first keeps every tensor aligned, no copies needed
        assert loaded.constants[name].ctypes.data % arr.itemsize == 0
        np.testing.assert_array_equal(loaded.constants[name], arr)
    for executor in ("compiled", "reference"):
        got = kiln.load(tmp_path / "m.kiln", executor=executor).run(FEEDS)
        want = run_reference(g, FEEDS)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_zero_d_state_round_trips(tmp_path):
    g = Graph()
    x = g.add_input("x", (), "float32")
    s = g.add_const("count", np.array(3.0, np.float32), kind=STATE)
    g.outputs = [g.add_node("add", [x, s])]
    serialize.save(g, tmp_path / "s.kiln")
    loaded, _ = serialize.load(tmp_path / "s.kiln")
    assert loaded.constants["count"].shape == () and float(loaded.constants["count"]) == 3.0
    assert float(kiln.load(tmp_path / "s.kiln").run({"x": np.array(1.0, np.float32)})[0]) == 4.0


# -- lies in the file ---------------------------------------------------------------------
def _arange(g):
    g["nodes"].append({"op": "arange", "inputs": [], "output": "ar", "source": "",
                       "attrs": {"start": 0, "end": 4, "step": 0, "dtype": "int64"}})


GRAPH_LIES = {
    # attrs of the wrong JSON type or range: one schema, whatever the op
    "bool attr 0.5": (lambda g: node(g, "matmul")["attrs"].update(transpose_b=0.5), "attr transpose_b must be a bool"),
    "bool attr '0'": (lambda g: node(g, "matmul")["attrs"].update(transpose_b="0"), "attr transpose_b must be a bool"),
    "float attr inf": (lambda g: node(g, "matmul")["attrs"].update(alpha=float("inf")), "alpha must be finite"),
    "float attr nan": (lambda g: node(g, "matmul")["attrs"].update(beta=float("nan")), "beta must be finite"),
    "float attr beyond float32": (lambda g: node(g, "matmul")["attrs"].update(alpha=1e308), "finite as a float32"),
    "float attr null": (lambda g: node(g, "matmul")["attrs"].update(alpha=None), "alpha must be a number"),
    "float attr string": (lambda g: node(g, "layer_norm")["attrs"].update(eps="1e-5"), "eps must be a number"),
    "negative eps": (lambda g: node(g, "layer_norm")["attrs"].update(eps=-1.0), "eps is -1.0; it must be >= 0"),
    "string not in set": (lambda g: node(g, "matmul")["attrs"].update(act="evil"), "expected one of none, relu"),
    "int attr string": (lambda g: node(g, "softmax")["attrs"].update(axis="1"), "attr axis must be an integer"),
    "int attr float": (lambda g: node(g, "softmax")["attrs"].update(axis=1.0), "attr axis must be an integer"),
    "int attr bool": (lambda g: node(g, "softmax")["attrs"].update(axis=True), "attr axis must be an integer"),
    "int attr huge": (lambda g: node(g, "softmax")["attrs"].update(axis=2**63), r"outside \[-2\*\*62, 2\*\*62\]"),
    "int attr symbolic": (lambda g: node(g, "softmax")["attrs"].update(axis={"dim": "S"}), "must be an integer"),
    "unknown attr": (lambda g: node(g, "softmax")["attrs"].update(bogus=1), "unknown attr 'bogus'"),
    "attrs a list": (lambda g: _set(node(g, "softmax"), attrs=[1]), "attrs must be an object"),
    "arange step 0": (_arange, "attr step is 0; it must be nonzero"),
    "bool attr null": (lambda g: node(g, "matmul")["attrs"].update(transpose_b=None), "transpose_b must be a bool"),
    "float attr symbolic text": (lambda g: node(g, "matmul")["attrs"].update(alpha="S+1"), "alpha must be a number"),
    "axes of sizes": (lambda g: node(g, "softmax")["attrs"].update(axis=[1]), "axis must be an integer"),
    "input not listed": (lambda g: _set(g, inputs=[]), "input tensor 'ids' is missing from inputs"),
    "input listed twice": (lambda g: _set(g, inputs=["ids", "ids"]), "inputs lists 'ids'"),
    # input dtypes the kernels do not read
    "matmul bias int32": (lambda g: _set(tensor(g, "b"), dtype="int32"), "does not match|input 2 has dtype int32"),
    # tensors
    "constant kind changed to input": (lambda g: _set(tensor(g, "w"), kind="input"),
                                       "an input tensor has data in the file"),
    "huge dimension": (lambda g: _set(tensor(g, "ids"), shape=[1, 2**50]), r"dimension 1125899906842624 outside"),
    "huge element count": (lambda g: _set(tensor(g, "ids"), shape=[2**30, 2**30]), "more than 2\\*\\*40 elements"),
    "shape not a list": (lambda g: _set(tensor(g, "ids"), shape="1,5"), "shape must be a list"),
    "tensors not a list": (lambda g: _set(g, tensors={}), "field tensors must be a list"),
    # symbols
    "sym_ranges short": (lambda g: _set(g, sym_ranges={"s0": [1]}), r"sym_ranges\['s0'\] must be \[min, max\]"),
    "sym_ranges min > max": (lambda g: _set(g, sym_ranges={"s0": [5, 2]}), r"0 <= min <= max, got \[5, 2\]"),
    "sym_sources bad": (lambda g: _set(g, sym_sources={"s0": ["ids"]}), r"sym_sources\['s0'\]"),
}


@pytest.mark.parametrize("lie", sorted(GRAPH_LIES))
def test_graph_lies_are_refused(lie, tmp_path):
    path = tmp_path / "m.kiln"
    serialize.save(mlp(), path)
    fn, match = GRAPH_LIES[lie]
    edit_graph(path, fn)
    with pytest.raises(FileFormatError, match=match):
        kiln.load(path)


def test_matmul_bias_declared_int32_is_refused_by_dtype(tmp_path):
    """Same bytes, other dtype: before, a kernel read int32 bits as float32 (past the end for bool)."""
    path = tmp_path / "m.kiln"
    serialize.save(mlp(), path)
    edit_graph(path, lambda g: _set(tensor(g, "b"), dtype="int32"))
    edit_header(path, lambda h: h["b"].update(dtype="I32"))
    with pytest.raises(FileFormatError, match="op matmul: input 2 has dtype int32; its kernels accept float32"):
        kiln.load(path)
    serialize.save(mlp(), path)
    edit_graph(path, lambda g: _set(tensor(g, "lnw"), dtype="int32"))
    edit_header(path, lambda h: h["lnw"].update(dtype="I32"))
    with pytest.raises(FileFormatError, match="op layer_norm: input 1 has dtype int32"):
        kiln.load(path)


def _shift(h, name, by):
    lo, hi = h[name]["data_offsets"]
    h[name]["data_offsets"] = [lo + by, hi + by]


HEADER_LIES = {
    "data_offsets shifted": (lambda h: _shift(h, "w", 4), "gap|overlap|outside"),
    "data_offsets overlap": (lambda h: h["lnb"].update(data_offsets=h["lnw"]["data_offsets"]), "overlap"),
    "extra not an object": (lambda h: h["__metadata__"].update({"kiln.extra": "[1, 2]"}), "kiln.extra must be"),
    "extra meta not an object": (lambda h: h["__metadata__"].update({"kiln.extra": '{"meta": 3}'}), "kiln.extra"),
    "shape of floats": (lambda h: h["w"].update(shape=[4.0, 6]), "bad shape"),
    "offsets of strings": (lambda h: h["w"].update(data_offsets=["0", "96"]), "bad data_offsets"),
    "unused data": (lambda h: h.update(extra_t={"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}),
                    "belongs to no constant"),
}


@pytest.mark.parametrize("lie", sorted(HEADER_LIES))
def test_header_lies_are_refused(lie, tmp_path):
    path = tmp_path / "m.kiln"
    serialize.save(mlp(), path)
    fn, match = HEADER_LIES[lie]
    edit_header(path, fn)
    with pytest.raises(FileFormatError, match=match):
        kiln.load(path)


def test_header_length_must_end_where_the_json_does(tmp_path):
    path = tmp_path / "m.kiln"
    serialize.save(mlp(), path)
    raw, n, _ = _parts(path)
    path.write_bytes(struct.pack("<Q", n - 1) + raw[8:])         # one byte short: the data would shift by one
    with pytest.raises(FileFormatError, match="not a multiple of 8"):
        kiln.load(path)
    path.write_bytes(struct.pack("<Q", n - 8) + raw[8:])         # 8 short: into the padding, then data shifts
    with pytest.raises(FileFormatError, match="cover|gap|outside"):
        kiln.load(path)
    blob = raw[8:8 + n].rstrip(b" ") + b"x"                        # JSON, then garbage before the data
    blob += b" " * (-len(blob) % 64)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    with pytest.raises(FileFormatError, match="does not end where its length says"):
        kiln.load(path)


def test_misaligned_tensor_is_refused(tmp_path):
    path = tmp_path / "m.kiln"
    serialize.save(mlp(), path)
    raw, n, header = _parts(path)
    body = raw[8 + n:]
    # put the 3-byte bool mask first: every float32 after it would sit at an odd address
    order = ["mask"] + [k for k in header if k not in ("__metadata__", "mask")]
    at, chunks = 0, []
    for k in order:
        lo, hi = header[k]["data_offsets"]
        chunks.append(body[lo:hi])
        header[k]["data_offsets"] = [at, at + hi - lo]
        at += hi - lo
    _write(path, header, b"".join(chunks))
    with pytest.raises(FileFormatError, match="is not aligned to 4"):
        kiln.load(path)


# -- KV-cache state and metadata ------------------------------------------------------------
CACHE_LIES = {
    "state shorter than the graph": (lambda g: _set(tensor(g, "k"), shape=[1, 2, 4, 4]), r"\[B, H, 8, D\]|does not match"),
    "cache lengthened in metadata": (lambda g: g["kv_cache"].update(max_len=16), r"must be a \[B, H, 16, D\]"),
    "max_len a string": (lambda g: g["kv_cache"].update(max_len="8"), "max_len must be an integer"),
    "max_len zero": (lambda g: g["kv_cache"].update(max_len=0), "max_len must be an integer in"),
    "state_names not a list": (lambda g: g["kv_cache"].update(state_names="k"), "state_names must be a list"),
    "state named twice": (lambda g: g["kv_cache"].update(state_names=["k", "k"]), "each cache state tensor once"),
    "kv_cache a list": (lambda g: _set(g, kv_cache=[1]), "kv_cache must be an object"),
    "huge zero state": (lambda g: _set(tensor(g, "k"), shape=[2**20, 2**10, 8, 4]), "exceeds"),
}


@pytest.mark.parametrize("lie", sorted(CACHE_LIES))
def test_kv_cache_lies_are_refused(lie, tmp_path):
    path = tmp_path / "c.kiln"
    serialize.save(cached_graph(), path)
    fn, match = CACHE_LIES[lie]
    edit_graph(path, fn)
    with pytest.raises(FileFormatError, match=match):
        kiln.load(path)


def test_stored_state_shorter_than_the_graph_is_refused(tmp_path):
    g = cached_graph()
    g.constants["k"] = np.ones((1, 2, 8, 4), np.float32)  # stored, not zero-initialized
    path = tmp_path / "c.kiln"
    serialize.save(g, path)
    raw, n, header = _parts(path)
    lo, hi = header["k"]["data_offsets"]
    header["k"].update(shape=[1, 2, 4, 4], data_offsets=[0, (hi - lo) // 2])
    _write(path, header, raw[8 + n:][lo:lo + (hi - lo) // 2])
    with pytest.raises(FileFormatError, match=r"'k'.*does not match the graph's float32\[1, 2, 8, 4\]"):
        kiln.load(path)


@pytest.mark.parametrize("executor", ["compiled", "interpreted", "numpy", "reference"])
def test_cache_position_overrun_refused_before_running(executor, tmp_path):
    path = tmp_path / "c.kiln"
    serialize.save(cached_graph(), path)
    sess = kiln.load(path, executor=executor)
    sess.run({"ids": np.zeros((1, 3), np.int64), "pos": np.array(5)})
    before = sess.state["k"].copy()
    with pytest.raises(kiln.errors.FeedError, match=r"positions \[6, 9\) do not fit the KV cache of 8"):
        sess.run({"ids": np.ones((1, 3), np.int64), "pos": np.array(6)})
    np.testing.assert_array_equal(sess.state["k"], before)


# -- a file changed after kiln.load --------------------------------------------------------
_CHANGE_SCRIPT = r"""
import os, sys, time, numpy as np, kiln
from kiln.errors import FileFormatError
path, how, mmap = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
sess = kiln.load(path, executor="compiled", mmap=mmap)
feeds = {"ids": np.array([[1, 2, 3, 10, 0]])}
before = sess.run(feeds)[0]
time.sleep(0.05)  # past the file system's timestamp granularity
size = os.path.getsize(path)
if how == "truncate":
    os.truncate(path, size // 2)
else:  # overwrite the weights in place, same size
    with open(path, "r+b") as f:
        f.seek(size - 256)
        f.write(os.urandom(256))
try:
    after = sess.run(feeds)[0]
    print("SAME" if np.array_equal(before, after) else "DIFFERENT")
except FileFormatError as e:
    print("REFUSED", e)
"""


@pytest.mark.parametrize("how", ["truncate", "overwrite"])
@pytest.mark.parametrize("mmap", [True, False])
def test_a_file_changed_after_load(how, mmap, tmp_path):
    """mmap=True: the next run is refused (a truncated mapping would be SIGBUS, an overwritten one other
    outputs); mmap=False: the weights were copied, the session runs on unchanged."""
    import subprocess
    import sys
    path = tmp_path / "m.kiln"
    serialize.save(mlp(), path)
    r = subprocess.run([sys.executable, "-c", _CHANGE_SCRIPT, str(path), how, "1" if mmap else "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    if mmap:
        assert r.stdout.startswith("REFUSED") and "changed after kiln.load" in r.stdout, r.stdout
    else:
        assert r.stdout.strip() == "SAME", r.stdout


def test_a_file_replaced_by_rename_leaves_the_loaded_session_running(tmp_path):
    path = tmp_path / "m.kiln"
    serialize.save(mlp(), path)
    sess = kiln.load(path)
    before = sess.run(FEEDS)[0]
    g = mlp()
    g.constants["w"] = g.constants["w"] * 2
    serialize.save(g, path)  # writes a temp file and renames it over: the mapped inode is untouched
    np.testing.assert_array_equal(sess.run(FEEDS)[0], before)
