"""Tiny random models saved as real Hugging Face folders and GGUF files, so the loading code runs for real."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SENTENCES = [
    "The capital of France is Paris.", "What is the capital of France?", "Kiln compiles PyTorch models ahead of time.",
    "A small model answers questions about the weather, numbers like 2024 and 15, and cafés in Zürich.",
    "Hello world, how are you today? I am fine, thank you.", "The quick brown fox jumps over the lazy dog.",
    "Tokens are pieces of words; merges join bytes into tokens.", "Paris, London, Berlin and Madrid are cities.",
]
ARCHS = ("gpt2", "qwen3", "llama")


def executor_for_tests() -> str:
    """The default (compiled) executor when the C kernels are built, else the numpy reference."""
    from kiln.backends import clib
    return "compiled" if clib.available() else "reference"


@pytest.fixture(scope="session")
def executor() -> str:
    return executor_for_tests()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from kiln.models.tokenizer import train_bpe_tokenizer
    return train_bpe_tokenizer(SENTENCES, vocab_size=320)


def tiny_config(arch: str, vocab: int):
    import transformers as tf
    # initializer_range 0.2: 0.02 gives near-uniform logits, where greedy decoding is decided by noise.
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=2, pad_token_id=0, initializer_range=0.2)
    if arch == "gpt2":
        return tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, **common)
    if arch == "qwen3":
        return tf.Qwen3Config(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                              tie_word_embeddings=True, rope_theta=1000000.0, **common)
    if arch == "qwen2":  # q/k/v biases
        return tf.Qwen2Config(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                              **common)
    if arch == "llama":
        return tf.LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                              rms_norm_eps=1e-5, rope_theta=10000.0, **common)
    raise ValueError(arch)


def make_tiny_model(arch: str, vocab: int, seed: int = 0):
    import torch
    import transformers as tf
    torch.manual_seed(seed)
    cls = {"gpt2": tf.GPT2LMHeadModel, "qwen3": tf.Qwen3ForCausalLM, "qwen2": tf.Qwen2ForCausalLM,
           "llama": tf.LlamaForCausalLM}[arch]
    model = cls(tiny_config(arch, vocab)).eval()
    with torch.no_grad():  # norms start at exactly 1/0; perturb them so the loaders must carry them over
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, tiny_tokenizer):
    """arch -> folder written by save_pretrained (weights + tokenizer), cached for the session."""
    cache: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in cache:
            folder = tmp_path_factory.mktemp(f"hf-{arch}")
            make_tiny_model(arch, len(tiny_tokenizer)).save_pretrained(folder)
            tiny_tokenizer.save_pretrained(folder)
            cache[arch] = folder
        return cache[arch]

    return make


def tokenizer_metadata(tokenizer) -> dict:
    """tokens / merges / token types in llama.cpp's layout, from a byte-level BPE PreTrainedTokenizerFast."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return {"tokens": tokens, "merges": merges, "types": [3 if t in special else 1 for t in tokens]}


def write_gguf(path: Path, model, tokenizer, arch: str, qtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """Write ``model`` as llama.cpp would (names, Q/K permutation for llama, quantized 2-D weights).

    qtypes maps a substring of the GGUF tensor name to a ggml type name (first match wins; default F32).
    Returns what the file holds, per GGUF name, dequantized and in numpy order (what a loader must read).
    """
    import gguf
    from gguf.quants import dequantize, quantize

    from kiln.models.gguf import _BLOCK_NAMES, _TOP_NAMES, permute_qk

    cfg = model.config
    to_gguf = {f"{v}": k for k, v in _TOP_NAMES.items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if arch == "qwen3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    meta = tokenizer_metadata(tokenizer)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(meta["tokens"])
    w.add_token_merges(meta["merges"])
    w.add_token_types(meta["types"])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tokenizer.chat_template)

    held: dict[str, np.ndarray] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{dict((v, k) for k, v in _BLOCK_NAMES.items())[module]}.{kind}"
        else:
            module, kind = name.rsplit(".", 1)
            gname = f"{to_gguf[module]}.{kind}"
        data = tensor.detach().numpy().astype(np.float32)
        if arch == "llama" and (".attn_q." in gname or ".attn_k." in gname):
            data = permute_qk(data, cfg.num_attention_heads if ".attn_q." in gname else cfg.num_key_value_heads)
        qname = next((q for sub, q in qtypes.items() if sub in gname), "F32") if data.ndim == 2 else "F32"
        qtype = gguf.GGMLQuantizationType[qname]
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, data)
            held[gname] = data
        else:
            raw = quantize(data, qtype)
            w.add_tensor(gname, raw, raw_dtype=qtype)
            held[gname] = dequantize(raw, qtype).reshape(data.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


@pytest.fixture(scope="session")
def tiny_model():
    """make_tiny_model as a fixture (test modules here are not a package, so they don't import conftest)."""
    return make_tiny_model


@pytest.fixture(scope="session")
def gguf_writer():
    return write_gguf
