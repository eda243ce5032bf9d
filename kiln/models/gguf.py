"""GGUF files → fp32 transformers model + tokenizer, through the `gguf` package's reader.

Weights are dequantized to fp32 once at load (gguf.quants.dequantize: Q4_0, Q4_1, Q8_0, K-quants, F16, ...),
renamed to the transformers layout, and llama.cpp's Q/K row permutation is undone for 'llama' files (its
converter interleaves the rotary halves so ggml can rotate adjacent pairs; transformers rotates halves).
The tokenizer is rebuilt from the tokenizer.ggml.* metadata with the `tokenizers` library.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import FileFormatError, KilnError
from .gguf_check import GGUFDims, check_gguf
from .hf import HFParts

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")

# GGUF tensor name (after "blk.N.") → transformers name (after "model.layers.N.").
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Pre-tokenizer split patterns by tokenizer.ggml.pre (llama.cpp's names); others use GPT-2's own regex.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
           "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


@dataclass
class GGUFFile:
    """A GGUF file's metadata (scalars and strings decoded; big arrays kept as lists) and raw tensors."""

    path: str
    architecture: str
    metadata: dict[str, Any]
    tensors: dict[str, Any] = field(repr=False)   # name → gguf ReaderTensor (memory-mapped, not yet decoded)

    def arch_key(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def tensor_types(self) -> dict[str, str]:
        return {name: t.tensor_type.name for name, t in self.tensors.items()}


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    from gguf import GGUFReader
    p = Path(path)
    if not p.is_file():
        raise KilnError(f"GGUF file {str(p)!r} does not exist")
    try:
        reader = GGUFReader(p)
    except Exception as e:  # the reader raises ValueError / struct errors / IndexError on junk
        raise FileFormatError(f"{str(p)!r} is not a readable GGUF file ({p.stat().st_size:,} bytes; truncated or "
                              f"damaged?): {e}") from e
    metadata = {name: _field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise FileFormatError(f"{str(p)!r} has no general.architecture")
    return GGUFFile(str(p), arch, metadata, {t.name: t for t in reader.tensors})


def _field_value(f: Any) -> Any:
    """Decode one metadata field from the reader's raw parts (stable across gguf versions)."""
    from gguf import GGUFValueType
    if not f.types:
        return None

    def one(part: np.ndarray, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        return part.tolist()[0]

    if f.types[0] == GGUFValueType.ARRAY:
        if len(f.types) < 2:
            return []
        return [one(f.parts[i], f.types[-1]) for i in f.data]
    return one(f.parts[f.data[0]], f.types[0])


def dequantize(tensor: Any) -> np.ndarray:
    """One tensor as an owned fp32 array in numpy/torch order (GGUF lists dims fastest-first)."""
    from gguf.quants import dequantize as gguf_dequantize
    try:
        data = gguf_dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise KilnError(f"tensor {tensor.name!r}: GGUF type {tensor.tensor_type.name} cannot be dequantized: {e}")
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    return np.array(data, dtype=np.float32, copy=True).reshape(shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf `permute` (rows of each head: interleaved pairs → two halves)."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's own permutation (transformers layout → GGUF); the inverse of unpermute_qk."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> Optional[str]:
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def hf_state_dict(gf: GGUFFile, skip: frozenset = frozenset()) -> dict[str, np.ndarray]:
    """Every tensor dequantized, renamed, and (llama arch) with Q/K rows back in transformers order.
    ``skip``: transformers names left out (weights kept in their blocks, kiln/models/gguf_quant.py)."""
    dims = checked(gf)
    heads, kv_heads = dims.heads, dims.kv_heads
    unknown = [n for n in gf.tensors if hf_name(n) is None]
    if unknown:
        raise KilnError(f"{gf.path}: tensors Kiln cannot place in a {gf.architecture} model: {unknown[:5]}"
                        + (" (llama3-style rope_freqs scaling is not supported)" if "rope_freqs.weight" in unknown
                           else ""))
    out: dict[str, np.ndarray] = {}
    for name, tensor in gf.tensors.items():
        if hf_name(name) in skip:
            continue
        w = dequantize(tensor)
        if gf.architecture == "llama" and re.search(r"\.attn_[qk]\.", name):
            w = unpermute_qk(w, heads if ".attn_q." in name else kv_heads)
        out[hf_name(name)] = w
    return out


def _check_arch(gf: GGUFFile) -> None:
    if gf.architecture not in SUPPORTED_ARCHS:
        raise KilnError(f"{gf.path}: GGUF architecture {gf.architecture!r} is not supported "
                        f"(supported: {', '.join(SUPPORTED_ARCHS)})")


def checked(gf: GGUFFile) -> GGUFDims:
    """The architecture, then every metadata key and tensor shape (kiln.models.gguf_check), before any build."""
    _check_arch(gf)
    if "_checked" not in gf.__dict__:  # once per read file: the token and merge lists are long
        gf.__dict__["_checked"] = check_gguf(gf)
        _check_byte_level_bpe(gf.metadata, gf.path)
    return gf.__dict__["_checked"]


def _check_byte_level_bpe(md: dict, where: str) -> None:
    """Tokenizer keys that change how text splits: refused unless build_tokenizer honours them."""
    if md.get("tokenizer.ggml.model") != "gpt2":
        return
    pre = md.get("tokenizer.ggml.pre")
    if pre not in (None, "default", "gpt2", "smollm", *_SPLITS):  # another split would tokenize differently
        raise FileFormatError(f"{where}: tokenizer.ggml.pre = {pre!r} is not a pre-tokenizer Kiln knows "
                              f"(known: gpt2, smollm, {', '.join(_SPLITS)})")
    if md.get("tokenizer.ggml.add_space_prefix"):
        raise FileFormatError(f"{where}: tokenizer.ggml.add_space_prefix is set; Kiln's byte-level BPE "
                              "does not add one")


def build_config(gf: GGUFFile) -> Any:
    """The transformers config the file's {arch}.* metadata describes (checked first: FileFormatError)."""
    import transformers as tf
    d = checked(gf)
    common = dict(
        vocab_size=d.vocab, hidden_size=d.hidden, intermediate_size=d.ffn, num_hidden_layers=d.layers,
        num_attention_heads=d.heads, num_key_value_heads=d.kv_heads, max_position_embeddings=d.context,
        rms_norm_eps=d.rms_eps, rope_theta=d.rope_theta, tie_word_embeddings=d.tied,
        bos_token_id=gf.metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=gf.metadata.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=gf.metadata.get("tokenizer.ggml.padding_token_id"),
    )
    if gf.architecture == "llama":
        return tf.LlamaConfig(head_dim=d.head_dim, attention_bias=d.qkv_bias, **common)
    if gf.architecture == "qwen2":
        return tf.Qwen2Config(**common)
    return tf.Qwen3Config(head_dim=d.head_dim, **common)


def build_model(gf: GGUFFile, state: Optional[dict[str, np.ndarray]] = None) -> Any:
    """A fp32 eval transformers model holding the file's weights (dequantized)."""
    import torch

    from .architectures import causal_lm_class
    config = build_config(gf)
    state = hf_state_dict(gf) if state is None else state
    cls = causal_lm_class(gf.architecture)
    with _no_init():  # every parameter is overwritten below; random init would cost seconds
        model = cls(config)
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise KilnError(f"{gf.path}: weights do not fit a {gf.architecture} model: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.float().eval()


def _no_init():
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # transformers 4.x
        except ImportError:
            import contextlib
            return contextlib.nullcontext()
    return no_init_weights()


def build_tokenizer(gf: GGUFFile) -> Any:
    """A PreTrainedTokenizerFast from tokenizer.ggml.* (byte-level BPE files are built here directly)."""
    import transformers as tf
    md = gf.metadata
    kind = md.get("tokenizer.ggml.model")
    tokens: Optional[list[str]] = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise KilnError(f"{gf.path}: no tokenizer in the file (tokenizer.ggml.tokens missing)")
    if kind != "gpt2":
        return _transformers_tokenizer(gf, kind)
    checked(gf)  # tokens, merges, token types and special ids (FileFormatError naming the key)
    try:
        backend = _byte_level_bpe(tokens, md.get("tokenizer.ggml.merges") or [], md.get("tokenizer.ggml.token_type"),
                                  md.get("tokenizer.ggml.pre"))
    except Exception as e:  # the tokenizers library raises a bare Exception on a vocabulary it refuses
        raise FileFormatError(f"{gf.path}: the tokenizer.ggml.* metadata does not make a BPE tokenizer: {e}") from None

    def tok(key: str) -> Optional[str]:
        i = md.get(f"tokenizer.ggml.{key}")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    if md.get("tokenizer.ggml.add_bos_token") and tok("bos_token_id"):
        from tokenizers import processors
        bos = tok("bos_token_id")
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, md["tokenizer.ggml.bos_token_id"])])
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok("bos_token_id"), eos_token=tok("eos_token_id"),
        unk_token=tok("unknown_token_id"), pad_token=tok("padding_token_id"),
        chat_template=md.get("tokenizer.chat_template"), clean_up_tokenization_spaces=False)


def _byte_level_bpe(tokens: list[str], merges: list[str], token_types: Optional[list[int]], pre: Optional[str]):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    if pre in _SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre == "smollm":  # llama.cpp: each digit alone, then GPT-2's regex (as SmolLM2's tokenizer.json)
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    types = list(token_types or [])
    # Control tokens (<|im_start|>, ...) must match whole in text, or chat templates would be cut apart.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == _CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
    return backend


def _transformers_tokenizer(gf: GGUFFile, kind: Optional[str]) -> Any:
    """SentencePiece-style vocabularies: let transformers' own GGUF tokenizer conversion do it (offline)."""
    import transformers as tf
    p = Path(gf.path)
    try:
        return tf.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name, local_files_only=True)
    except Exception as e:
        raise KilnError(f"{gf.path}: cannot build a {kind!r} tokenizer from the GGUF metadata: {e}") from e


def load_gguf(path: str | os.PathLike, *, native: bool = False, torch_weights: bool = False):
    """The file as HFParts (fp32 transformers model, tokenizer, generation config). With
    ``native`` returns (parts, stored): the weights with a quantized kernel stay in their
    blocks (gguf_quant.StoredWeight) and the model holds uninitialized placeholders for them,
    or (``torch_weights``, for comparisons with transformers) their fp32 dequantization."""
    import transformers as tf
    gf = read_gguf(path)
    checked(gf)
    stored = None
    if native:
        from .gguf_quant import placeholders, stored_weights
        stored = stored_weights(gf)
        if torch_weights:
            model = build_model(gf)
        else:
            state = hf_state_dict(gf, skip=frozenset(stored))
            state.update(placeholders(stored))
            model = build_model(gf, state)
    else:
        model = build_model(gf)
    md = gf.metadata
    gen = tf.GenerationConfig(bos_token_id=md.get("tokenizer.ggml.bos_token_id"),
                              eos_token_id=md.get("tokenizer.ggml.eos_token_id"),
                              pad_token_id=md.get("tokenizer.ggml.padding_token_id"))
    parts = HFParts(model=model, tokenizer=build_tokenizer(gf), generation_config=gen, source=gf.path)
    return (parts, stored) if native else parts
