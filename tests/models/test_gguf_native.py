"""GGUF fixtures of every type load with their quantized weights in their blocks: no fp32
copy in the compiled session, weight bytes ≈ the file's, and logits equal to the
dequantized (fp32) model's. Decoding with the KV cache reads the same blocks."""
import glob
import os

import numpy as np
import pytest

from kiln.models.gguf import read_gguf
from kiln.models.gguf_quant import native_storage
from kiln.models.loading import load_model
from tests.shared_fixtures import FIXTURES_DIR

FIXTURES = sorted(glob.glob(str(FIXTURES_DIR / "tiny-llama-*.gguf")))
pytestmark = pytest.mark.skipif(not FIXTURES, reason="GGUF fixtures not present")
IDS = np.array([[1, 5, 17, 42, 7, 99, 250]], np.int64)


@pytest.mark.parametrize("path", FIXTURES, ids=[os.path.basename(p) for p in FIXTURES])
def test_native_blocks_no_fp32_copy_same_logits(path):
    nat = load_model(path, max_len=32, cache=False, compile_cache=False)
    f32 = load_model(path, max_len=32, cache=False, dtype="f32", compile_cache=False)
    g = nat.session.graph
    gf = read_gguf(path)
    kept = [t for t in gf.tensors.values() if native_storage(t)]
    hist = g.op_histogram()
    if "F32" in path:
        assert not kept and "qmatmul" not in hist
    else:
        # every kept tensor's blocks, read by a fused kernel (Q/K/V and gate/up of one storage
        # type merged into one qmatmul: kiln/passes/merge.py), and no other stored bytes
        readers = [n for n in g.nodes if n.op in ("qmatmul", "qembedding")]
        read = {n.inputs[1] if n.op == "qmatmul" else n.inputs[0] for n in readers}
        assert sum(g.constants[w].nbytes for w in read) == sum(int(t.n_bytes) for t in kept), hist
        assert hist.get("qembedding") == 1 and 0 < hist.get("qmatmul", 0) <= len(kept) - 1, hist
        assert "dequantize" not in hist
        stored = {t.storage for t in g.tensors.values() if t.storage != "plain"}
        assert stored == {native_storage(t) for t in kept}
    file_bytes = sum(int(t.n_bytes) for t in gf.tensors.values())
    assert file_bytes <= g.param_bytes() <= 1.05 * file_bytes, (g.param_bytes(), file_bytes)
    a, b = nat.session(IDS)[0], f32.session(IDS)[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


@pytest.mark.parametrize("path", [p for p in FIXTURES if "Q4_K" in p or "Q8_0" in p],
                         ids=lambda p: os.path.basename(p))
def test_native_decode_with_kv_cache_matches_fp32(path):
    nat = load_model(path, max_len=32)
    f32 = load_model(path, max_len=32, dtype="f32")
    def tokens(lm):
        out = []
        lm.generate(IDS[0].tolist(), max_new_tokens=6, temperature=0, on_token=lambda e: out.append(e.token_id))
        return out
    got, want = tokens(nat), tokens(f32)
    assert len(got) == 6
    assert got == want
    # the cached session's graph holds the blocks too
    assert any(t.storage != "plain" for t in nat.cached_session.graph.tensors.values())


def test_int8_activation_mode_close_to_exact():
    path = [p for p in FIXTURES if "Q8_0" in p][0]
    exact = load_model(path, max_len=32, cache=False, compile_cache=False).session(IDS)[0]
    int8 = load_model(path, max_len=32, cache=False, act="int8", compile_cache=False)
    assert all(n.attrs.mode == "int8" for n in int8.session.graph.nodes if n.op == "qmatmul")
    out = int8.session(IDS)[0]
    assert np.abs(out - exact).max() <= 0.05 * np.abs(exact).max()


def test_tied_embedding_table_stays_in_blocks_for_both_uses(tmp_path):
    """A GGUF without output.weight ties the LM head to token_embd. Export keeps that one table
    under the lm_head's name; it must get the file's blocks, not stay an (all-zero) placeholder."""
    from tests.fuzz.gguf_edit import DROP, rewrite_gguf
    path = tmp_path / "tied-Q8_0.gguf"
    rewrite_gguf([p for p in FIXTURES if "Q8_0" in p][0], path, tensors={"output.weight": DROP})
    nat = load_model(path, max_len=32, cache=False, compile_cache=False)
    f32 = load_model(path, max_len=32, cache=False, dtype="f32", compile_cache=False)
    assert f32.config.tie_word_embeddings
    a, b = nat.session(IDS)[0], f32.session(IDS)[0]
    assert np.abs(b).max() > 0 and np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    hist = nat.session.graph.op_histogram()  # both readers of the table read its blocks
    assert hist.get("qembedding") == 1 and "dequantize" not in hist
    vocab = f32.config.vocab_size
    assert not [n for n, t in nat.session.graph.tensors.items()
                if t.kind == "const" and t.storage == "plain" and vocab in tuple(t.shape)]


@pytest.mark.parametrize("qtype", ["Q5_0", "Q5_1"])
def test_q5_blocks_load_natively(tmp_path, qtype):
    """Q5_0 / Q5_1 (most of a llama.cpp Q4_K_M SmolLM2; no fixture holds them): the F32 fixture's
    matrices re-encoded by gguf's quantizer stay in their blocks and give the dequantized model's logits."""
    import gguf
    from tests.fuzz.gguf_edit import rewrite_gguf
    src = [p for p in FIXTURES if "F32" in p][0]
    t = gguf.GGMLQuantizationType[qtype]
    names = {x.name: t for x in gguf.GGUFReader(src).tensors if len(x.shape) == 2}
    path = tmp_path / f"tiny-llama-{qtype}.gguf"
    rewrite_gguf(src, path, quantize=names)
    nat = load_model(path, max_len=32, cache=False, compile_cache=False)
    f32 = load_model(path, max_len=32, cache=False, dtype="f32", compile_cache=False)
    stored = {x.storage for x in nat.session.graph.tensors.values() if x.storage != "plain"}
    assert stored == {qtype.lower()}
    hist = nat.session.graph.op_histogram()
    layers = sum(".attn_q." in n for n in names)
    # per layer Q/K/V -> one, gate/up -> one, O, down; and the head (all one storage type: merged)
    assert hist.get("qmatmul") == 4 * layers + 1 and hist.get("qembedding") == 1, hist
    assert "dequantize" not in hist
    a, b = nat.session(IDS)[0], f32.session(IDS)[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
