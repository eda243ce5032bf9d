"""A tied embedding / LM head kept in its GGUF blocks (SmolLM2's and Qwen3's layout): torch.export keeps
the tied parameter under one of its names (``lm_head.weight``), and the blocks must replace it under
that name; a stored weight found under none of its names is an error, never an uninitialized read."""
import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.models.gguf_quant import StoredWeight, attach
from kiln.models.loading import load_model

QTYPES = {"attn": "Q4_1", "ffn": "Q4_0", "token_embd": "Q8_0"}
IDS = np.array([[5, 9, 17, 33, 2, 70, 11]], np.int64)


@pytest.fixture(scope="module")
def tied_gguf(tmp_path_factory, tiny_model, tiny_tokenizer, gguf_writer):
    model = tiny_model("qwen3", len(tiny_tokenizer), seed=2)
    assert model.config.tie_word_embeddings
    path = tmp_path_factory.mktemp("tied") / "tiny-qwen3-tied.gguf"
    gguf_writer(path, model, tiny_tokenizer, "qwen3", QTYPES)
    return path


def test_tied_embedding_stays_in_blocks_and_matches_fp32(tied_gguf):
    nat = load_model(tied_gguf, max_len=32, cache=False, compile_cache=False)
    f32 = load_model(tied_gguf, max_len=32, cache=False, dtype="f32", compile_cache=False)
    g = nat.session.graph
    hist = g.op_histogram()
    assert hist.get("qembedding") == 1 and "embedding" not in hist and "dequantize" not in hist
    q8 = [n for n, t in g.tensors.items() if t.storage == "q8_0"]
    assert len(q8) == 1  # one copy of the blocks, read by the embedding and the LM head
    assert {n.op for n in g.users(q8[0])} == {"qembedding", "qmatmul"}
    a, b = nat.session(IDS)[0], f32.session(IDS)[0]
    assert np.abs(b).max() > 0
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_compare_with_torch_keeps_the_native_weights(tied_gguf, tmp_path, monkeypatch):
    """keep_torch (``kiln generate --compare-torch``) needs a transformers model with real weights; it
    used to compile Kiln's model in fp32 as well and store that under the native options' cache key,
    so every later run of the file got the fp32 model from the cache."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    cmp = load_model(tied_gguf, max_len=32, keep_torch=True)
    hist = cmp.cached_session.graph.op_histogram()
    assert "qembedding" in hist and "qmatmul" in hist
    import torch
    with torch.no_grad():
        ref = cmp.torch_model(torch.from_numpy(IDS)).logits.numpy()
    assert np.abs(ref).max() > 0  # real weights, not the placeholders
    got = cmp.decoder().prefill(IDS[0].tolist())  # the last position's logits
    assert np.abs(got - ref[0, -1]).max() <= 1e-4 * np.abs(ref).max()
    again = load_model(tied_gguf, max_len=32)  # from the compile cache
    assert again.cached_session.graph.op_histogram() == hist


def test_stored_weight_without_a_constant_is_an_error():
    from kiln.ir.graph import Graph
    w = StoredWeight(np.zeros((4, 34), np.uint8), "q8_0", (4, 32))
    with pytest.raises(KilnError, match="none of the exported graph's constants"):
        attach(Graph(), {"model.embed_tokens.weight": w}, prefix="model.",
               aliases={"model.embed_tokens.weight": ["model.embed_tokens.weight", "lm_head.weight"]})
