"""GGUF: files written with gguf.GGUFWriter from tiny random models (F32 and quantized, llama Q/K permutation)
load back to the same weights, the same tokenizer, and the same logits through Kiln."""
import os

import numpy as np
import pytest
import torch

from kiln.errors import FileFormatError, KilnError
from kiln.models.gguf import build_model, build_tokenizer, hf_name, hf_state_dict, permute_qk, read_gguf, unpermute_qk
from kiln.models.hf import compile_causal_lm
from tests.conftest import rel_err

QTYPES = {"attn_q": "Q8_0", "attn_k": "Q4_0", "attn_v": "Q4_1", "ffn_gate": "Q4_1", "ffn_up": "Q8_0",
          "ffn_down": "Q4_0", "token_embd": "Q8_0", "output.": "Q4_1"}


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory, tiny_model, tiny_tokenizer, gguf_writer):
    """(arch, quantized?) -> (path, torch model it came from, what the file holds per GGUF name)."""
    cache = {}

    def make(arch: str, quantized: bool):
        key = (arch, quantized)
        if key not in cache:
            model = tiny_model(arch, len(tiny_tokenizer), seed=1)
            path = tmp_path_factory.mktemp("gguf") / f"tiny-{arch}-{'q' if quantized else 'f32'}.gguf"
            held = gguf_writer(path, model, tiny_tokenizer, arch, QTYPES if quantized else {})
            cache[key] = (path, model, held)
        return cache[key]

    return make


def test_qk_permutation_inverts():
    w = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8 * 6, 3)
    assert np.array_equal(unpermute_qk(permute_qk(w, 6), 6), w)
    assert not np.array_equal(permute_qk(w, 6), w)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2"])
def test_f32_weights_exact(arch, gguf_files):
    path, model, _ = gguf_files(arch, quantized=False)
    state = hf_state_dict(read_gguf(path))
    want = {k: v for k, v in model.state_dict().items() if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    assert set(state) == set(want)
    for k, v in want.items():
        assert np.array_equal(state[k], v.numpy()), k  # exact, including the un-permuted Q/K rows


def test_quantized_weights_match_gguf_dequantize(gguf_files):
    path, model, held = gguf_files("llama", quantized=True)
    gf = read_gguf(path)
    assert {"Q8_0", "Q4_0", "Q4_1", "F32"} <= set(gf.tensor_types().values())
    state = hf_state_dict(gf)
    cfg = model.config
    for gname, data in held.items():
        if ".attn_q." in gname:
            data = unpermute_qk(data, cfg.num_attention_heads)
        elif ".attn_k." in gname:
            data = unpermute_qk(data, cfg.num_key_value_heads)
        assert np.array_equal(state[hf_name(gname)], data), gname
    # Quantization moved the weights, but not by much (guards against a wrong block layout).
    q = state["model.layers.0.self_attn.k_proj.weight"]
    ref = model.state_dict()["model.layers.0.self_attn.k_proj.weight"].numpy()
    assert 0 < np.abs(q - ref).max() < 0.2 * np.abs(ref).max()


@pytest.mark.parametrize("arch,quantized", [("llama", False), ("llama", True), ("qwen3", False),
                                                   ("qwen2", False)])
def test_logits_through_kiln(arch, quantized, gguf_files, executor):
    path, model, _ = gguf_files(arch, quantized)
    gf = read_gguf(path)
    built = build_model(gf)
    assert type(built) is type(model)
    ids = torch.tensor([[5, 9, 17, 33, 2, 70, 11]])
    with torch.inference_mode():
        ref = built(input_ids=ids, use_cache=False).logits.numpy()
        if not quantized:  # F32 file: the rebuilt model is the original model
            assert rel_err(ref, model(input_ids=ids, use_cache=False).logits.numpy()) < 1e-6
    compiled = compile_causal_lm(built, max_len=32, executor=executor, last_only=False)
    out = compiled.session.run({compiled.session.input_names[0]: ids.numpy()})[0]
    assert rel_err(out, ref) <= 1e-4


def test_matches_transformers_gguf_loader(gguf_files):
    """An independent check of names and the Q/K un-permutation: transformers' own GGUF loading."""
    import transformers as tf
    path, _, _ = gguf_files("llama", quantized=True)
    ours = build_model(read_gguf(path)).state_dict()
    theirs = tf.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                     dtype=torch.float32).state_dict()
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k].float()), k


def test_tokenizer_from_metadata(gguf_files, tiny_tokenizer):
    path, _, _ = gguf_files("llama", quantized=False)
    tok = build_tokenizer(read_gguf(path))
    for text in ["The capital of France is Paris.", "cafés in Zürich, 2024!", "<|im_start|>user\nHi<|im_end|>\n"]:
        assert tok(text)["input_ids"] == tiny_tokenizer(text)["input_ids"], text
        assert tok.decode(tok(text)["input_ids"]) == text
    assert (tok.bos_token, tok.eos_token) == (tiny_tokenizer.bos_token, tiny_tokenizer.eos_token)
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == tiny_tokenizer.apply_chat_template(msgs, tokenize=False)


def test_gguf_errors(tmp_path):
    with pytest.raises(KilnError, match="does not exist"):
        read_gguf(tmp_path / "nope.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(FileFormatError):
        read_gguf(junk)


def test_load_model_from_gguf_path(gguf_files, executor):
    from kiln.models import load_model, torch_greedy
    path, _, _ = gguf_files("llama", quantized=True)
    lm = load_model(path, executor=executor, keep_torch=True, max_len=48)
    assert lm.name == path.name and lm.eos_ids == (2,) and lm.has_chat_template
    lm.eos_ids = ()  # random weights: compare all 16 tokens
    prompt = lm.encode("Paris is")
    assert lm.generate(prompt, 16).ids == torch_greedy(lm, prompt, 16)[0]


# -- metadata that lies (issue 16): refused by name before anything is built --------------------
def _lying_cases():
    a = "llama."
    return [
        ({a + "attention.head_count_kv": [2, 2, 1]}, {}, "head_count_kv differs per layer"),
        ({a + "feed_forward_length": "DROP"}, {}, "feed_forward_length is missing"),
        ({a + "attention.head_count": "DROP"}, {}, "head_count is missing"),
        ({a + "attention.head_count": 3}, {}, "is not a multiple of"),
        ({a + "attention.head_count_kv": 3}, {}, "is not a multiple of"),
        ({a + "block_count": 10**9}, {}, r"block_count = 1000000000 is not an integer in \[1, 4096\]"),
        ({a + "block_count": 3}, {}, "tensor blk.2.attn_norm.weight is missing"),
        ({a + "block_count": 1}, {}, "beyond llama.block_count = 1"),
        ({a + "embedding_length": 2.5}, {}, "embedding_length = 2.5 is not an integer"),
        ({a + "embedding_length": -4}, {}, "embedding_length = -4 is not an integer"),
        ({a + "rope.freq_base": -1.0}, {}, "rope.freq_base = -1.0 is not a positive number"),
        ({a + "rope.scaling.type": "yarn"}, {}, "rope scaling"),
        ({a + "rope.dimension_count": 8}, {}, "rope.dimension_count = 8 differs from the head size"),
        ({a + "expert_count": 8}, {}, "llama.expert_count may change the model's math"),
        ({a + "attn_logit_softcapping": 30.0}, {}, "attn_logit_softcapping may change"),
        ({a + "vocab_size": 7}, {}, "vocab_size = 7 but token_embd.weight has"),
        ({"tokenizer.ggml.eos_token_id": 10**6}, {}, "eos_token_id = 1000000 is not a token id"),
        ({"tokenizer.ggml.merges": [1, 2]}, {}, "merges is not a list"),
        ({"tokenizer.ggml.pre": "some-new-model"}, {}, "tokenizer.ggml.pre = 'some-new-model' is not"),
        ({"tokenizer.ggml.add_space_prefix": True}, {}, "add_space_prefix"),
        ({}, {"blk.0.ffn_up.weight": "DROP"}, "tensor blk.0.ffn_up.weight is missing"),
        ({}, {"blk.0.attn_k.weight": np.zeros((3, 5), np.float32)}, r"blk.0.attn_k.weight is \[3, 5\]"),
        ({}, {"rope_freqs.weight": np.ones(8, np.float32)}, "rope_freqs"),
    ]


@pytest.mark.parametrize("meta,tensors,match", _lying_cases())
def test_lying_metadata_is_a_clear_error_before_building(meta, tensors, match, gguf_files, tmp_path, monkeypatch):
    from kiln.models import gguf as kg
    from tests.fuzz.gguf_edit import DROP, rewrite_gguf
    path, _, _ = gguf_files("llama", quantized=False)
    bad = tmp_path / "bad.gguf"
    fix = lambda d: {k: DROP if isinstance(v, str) and v == "DROP" else v for k, v in d.items()}
    rewrite_gguf(path, bad, fix(meta), fix(tensors))
    built = []
    monkeypatch.setattr(kg, "hf_state_dict", lambda *a: built.append(1))  # nothing may be decoded or built
    with pytest.raises(FileFormatError, match=match):
        kg.build_model(read_gguf(bad))
    with pytest.raises(FileFormatError, match=match):
        kg.load_gguf(bad)
    assert not built


def test_token_list_shorter_than_the_embedding_is_refused(gguf_files, tmp_path):
    from kiln.models.gguf import load_gguf
    from tests.fuzz.gguf_edit import rewrite_gguf
    path, _, _ = gguf_files("qwen2", quantized=False)
    gf = read_gguf(path)
    tokens, types = gf.metadata["tokenizer.ggml.tokens"], gf.metadata["tokenizer.ggml.token_type"]
    bad = tmp_path / "short.gguf"
    rewrite_gguf(path, bad, {"tokenizer.ggml.tokens": tokens[:-3], "tokenizer.ggml.token_type": types[:-3],
                             "qwen2.vocab_size": len(tokens) - 3})
    with pytest.raises(FileFormatError, match="vocab_size = .* but token_embd.weight has"):
        load_gguf(bad)
    rewrite_gguf(path, bad, {"tokenizer.ggml.tokens": tokens[:-3], "tokenizer.ggml.token_type": types[:-3]})
    with pytest.raises(FileFormatError, match=f"has {len(tokens) - 3} tokens but token_embd.weight has {len(tokens)}"):
        load_gguf(bad)


def test_uniform_per_layer_array_is_honoured(gguf_files, tmp_path):
    from kiln.models.gguf import build_config
    from tests.fuzz.gguf_edit import rewrite_gguf
    path, model, _ = gguf_files("llama", quantized=False)
    kv = model.config.num_key_value_heads
    ok = tmp_path / "perlayer.gguf"
    rewrite_gguf(path, ok, {"llama.attention.head_count_kv": [kv] * model.config.num_hidden_layers})
    assert build_config(read_gguf(ok)).num_key_value_heads == kv
