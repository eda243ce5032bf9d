"""Session API: feeds are checked, files round-trip, loading never needs torch, damage is reported."""
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.export import Dim

import kiln
from kiln.errors import FeedError, FileFormatError, KilnError
from kiln.models.tiny import TinyTransformer
from tests.conftest import rel_err


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyTransformer(layers=1).eval()
    sess = kiln.compile(model, (torch.randint(0, 512, (1, 8)),), executor="reference",
                        dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=128)}})
    return model, sess


def test_names(tiny):
    _, sess = tiny
    assert sess.input_names == ["input_ids"]
    assert len(sess.output_names) == 1
    assert "input_ids: int64[1, s" in sess.summary()


def test_save_load_round_trip(tiny, tmp_path):
    model, sess = tiny
    path = tmp_path / "tiny.kiln"
    sess.save(path)
    loaded = kiln.load(path, executor="reference")
    ids = np.random.default_rng(0).integers(0, 512, (1, 13))
    assert loaded.input_names == sess.input_names and loaded.output_names == sess.output_names
    np.testing.assert_array_equal(loaded.run({"input_ids": ids})[0], sess.run({"input_ids": ids})[0])
    assert rel_err(loaded.run({"input_ids": ids})[0], model(torch.from_numpy(ids)).detach().numpy()) < 1e-4


def test_load_and_run_without_torch(tiny, tmp_path):
    _, sess = tiny
    path = tmp_path / "tiny.kiln"
    sess.save(path)
    ids = np.arange(10).reshape(1, 10) % 512
    want = sess.run({"input_ids": ids})[0]
    np.save(tmp_path / "want.npy", want)
    code = f"""
import sys, numpy as np, kiln
sess = kiln.load({str(path)!r})
out = sess.run({{"input_ids": np.arange(10).reshape(1, 10) % 512}})[0]
want = np.load({str(tmp_path / "want.npy")!r})
assert np.abs(out - want).max() <= 1e-4 * np.abs(want).max(), np.abs(out - want).max()
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("feeds,match", [
    ({"ids": np.zeros((1, 4), np.int64)}, "unknown input 'ids'"),
    ({}, "missing input 'input_ids'"),
    ({"input_ids": np.zeros((1, 4), np.float32)}, "input 'input_ids': expected dtype int64, got float32"),
    ({"input_ids": np.zeros((4,), np.int64)}, r"input 'input_ids': expected shape \[1, s\d+\] \(rank 2\), got \[4\]"),
    ({"input_ids": np.zeros((2, 4), np.int64)}, r"axis 0 must be 1"),
    ({"input_ids": np.zeros((1, 1000), np.int64)}, r"outside the range \[2, 128\]"),
    ({"input_ids": [[1, 2, 3]]}, "expected a numpy array"),
])
def test_bad_feeds(tiny, feeds, match):
    _, sess = tiny
    with pytest.raises(FeedError, match=match):
        sess.run(feeds)


def test_symbolic_dims_bound_inconsistently():
    class Add(torch.nn.Module):
        def forward(self, a, b):
            return a + b
    s = Dim("s", min=2, max=64)
    sess = kiln.compile(Add(), (torch.randn(1, 4), torch.randn(1, 4)), executor="reference",
                        dynamic_shapes={"a": {1: s}, "b": {1: s}})
    assert sess.run({"a": np.ones((1, 5), np.float32), "b": np.ones((1, 5), np.float32)})[0].shape == (1, 5)
    with pytest.raises(FeedError, match=r"input 'b': axis 1 is 6, but dimension s\d+ was bound to 5 by input 'a'"):
        sess.run({"a": np.ones((1, 5), np.float32), "b": np.ones((1, 6), np.float32)})


def test_bad_executor_name():
    with pytest.raises(KilnError, match="executor must be one of"):
        kiln.compile(torch.nn.ReLU(), (torch.randn(3),), executor="gpu")


# -- damaged files -------------------------------------------------------------------------
def _saved(tiny, tmp_path):
    path = tmp_path / "m.kiln"
    tiny[1].save(path)
    return path


def _rewrite_header(path, fn):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    fn(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 64)  # as Kiln writes it: the data section stays 64-aligned
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def _graph_edit(fn):
    def edit(header):
        g = json.loads(header["__metadata__"]["kiln.graph"])
        fn(g)
        header["__metadata__"]["kiln.graph"] = json.dumps(g)
    return edit


def _first_const(header):
    return next(k for k in header if k != "__metadata__")


DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]), "data_offsets"),
    "tiny": (lambda p: p.write_bytes(b"\x01\x02"), "too short"),
    "huge header length": (lambda p: p.write_bytes(struct.pack("<Q", 2**40) + p.read_bytes()[8:]), "header length"),
    "garbage json": (lambda p: p.write_bytes(p.read_bytes()[:8] + b"{" * 40 + p.read_bytes()[48:]), "not a readable"),
    "no metadata": (lambda p: _rewrite_header(p, lambda h: h.pop("__metadata__")), "__metadata__"),
    "wrong format": (lambda p: _rewrite_header(p, _graph_edit(lambda g: g.update(format="x/9"))), "field format"),
    "unknown op": (lambda p: _rewrite_header(p, _graph_edit(lambda g: g["nodes"][0].update(op="evil"))), "unknown op 'evil'"),
    "dangling input": (lambda p: _rewrite_header(p, _graph_edit(lambda g: g["nodes"][3].update(inputs=["nope"]))),
                       "input 'nope' is not defined"),
    "bad attrs": (lambda p: _rewrite_header(p, _graph_edit(
        lambda g: next(n for n in g["nodes"] if n["op"] == "matmul")["attrs"].update(bogus=1))), "unknown attr 'bogus'"),
    "bad shape": (lambda p: _rewrite_header(p, _graph_edit(lambda g: g["tensors"][0].update(shape=[-3]))), r"dimension -3 outside \[0, 2\*\*40\]"),
    "offsets out of file": (lambda p: _rewrite_header(p, lambda h: h[_first_const(h)].update(data_offsets=[0, 10**12])),
                            "outside the data section"),
    "size mismatch": (lambda p: _rewrite_header(p, lambda h: h[_first_const(h)].update(shape=[3])), "do not hold"),
    "bad dtype": (lambda p: _rewrite_header(p, lambda h: h[_first_const(h)].update(dtype="F64")), "bad dtype"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_file(tiny, tmp_path, damage):
    path = _saved(tiny, tmp_path)
    fn, match = DAMAGE[damage]
    fn(path)
    with pytest.raises(FileFormatError, match=match):
        kiln.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileFormatError, match="not a readable Kiln model"):
        kiln.load(tmp_path / "nope.kiln")


def test_kv_cache_state_round_trip(tmp_path):
    """A graph with KV-cache state saves without the zero cache and continues a sequence after load."""
    import transformers as tf
    from kiln.frontend.torch import export
    from kiln.passes import optimize
    from kiln.passes.kv_cache import add_kv_cache
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=50)).eval()

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits

    g = add_kv_cache(optimize(export(Step(), (torch.randint(0, 50, (1, 4)),),
                                     dynamic_shapes={"input_ids": {1: Dim("s", min=2, max=16)}})), 16)
    path = tmp_path / "cached.kiln"
    kiln.Session(g).save(path)
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert g.state and not set(g.state) & set(header)  # zero caches are not stored, only declared
    ids = torch.randint(0, 50, (1, 6))
    want = model(ids).logits[0, -1].detach().numpy()
    sess = kiln.load(path)
    info = sess.graph.kv_cache
    assert info == g.kv_cache and info.token_input == "input_ids" and info.position_input == "cache_position"
    assert info.max_len == 16 and set(info.state_names) == set(g.state)
    sess.run({"input_ids": ids[:, :5].numpy(), "cache_position": np.array(0)})
    got = sess.run({"input_ids": ids[:, 5:].numpy(), "cache_position": np.array(5)})[0][0, -1]
    assert rel_err(got, want) < 1e-4
    sess.reset_state()
    assert not any(a.any() for a in sess.state.values())
    with pytest.raises(FeedError, match=r"positions \[15, 17\) do not fit the KV cache of 16 positions"):
        sess.run({"input_ids": ids[:, :2].numpy(), "cache_position": np.array(15)})
    with pytest.raises(FeedError, match="do not fit"):
        sess.run({"input_ids": ids[:, :1].numpy(), "cache_position": np.array(-1)})
