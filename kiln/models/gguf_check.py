"""GGUF metadata checked against itself and against the tensors before anything is built.

Every ``{arch}.*`` key either changes nothing Kiln computes, is honoured (read into ``GGUFDims``),
or is refused by name: a key Kiln does not know may change the math (MoE, soft-capping, sliding
windows, rope scaling) and silently ignoring it would give a model that runs but answers wrong.
Per-layer arrays (llama.cpp writes e.g. ``head_count_kv`` per layer for some models) are honoured
when every layer agrees and refused otherwise. Then every tensor the transformers model will hold
is checked by name and shape (numpy order), and the token list against the embedding rows, so a
file that lies fails here with a ``FileFormatError`` naming the key or tensor, never with a raw
TypeError from transformers or a size mismatch from torch, and never after building a model with
``block_count`` = 10**9 layers. Key names follow llama.cpp's gguf-py ``Keys`` (constants.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import FileFormatError

# {arch}.* keys read below; anything else under {arch}. is refused (see _refuse_unknown).
_HONOURED = {"context_length", "embedding_length", "block_count", "feed_forward_length", "vocab_size",
             "attention.head_count", "attention.head_count_kv", "attention.key_length", "attention.value_length",
             "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.dimension_count", "rope.scaling.type",
             "rope.scaling.factor"}
MAX_LAYERS = 4096  # far above any released model; a larger count is a damaged file


@dataclass(frozen=True)
class GGUFDims:
    """The model's sizes as the (checked) metadata and tensors state them."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    context: int
    rms_eps: float
    rope_theta: float
    qkv_bias: bool
    tied: bool


def check_gguf(gf: Any) -> GGUFDims:
    """Check a read GGUFFile (kiln.models.gguf.GGUFFile); returns its dims or raises FileFormatError."""
    arch, where = gf.architecture, gf.path
    _refuse_unknown(gf)
    hidden = _int(gf, "embedding_length")
    layers = _int(gf, "block_count", hi=MAX_LAYERS)
    heads = _int(gf, "attention.head_count")
    kv = _int(gf, "attention.head_count_kv", default=heads)
    ffn = _int(gf, "feed_forward_length")
    context = _int(gf, "context_length", default=2048)
    if heads % kv:
        raise FileFormatError(f"{where}: {arch}.attention.head_count ({heads}) is not a multiple of "
                              f"{arch}.attention.head_count_kv ({kv})")
    head_dim = _int(gf, "attention.key_length", default=0)
    if not head_dim:
        if hidden % heads:
            raise FileFormatError(f"{where}: {arch}.embedding_length ({hidden}) is not a multiple of "
                                  f"{arch}.attention.head_count ({heads}) and {arch}.attention.key_length is absent")
        head_dim = hidden // heads
    if arch == "qwen2" and head_dim * heads != hidden:
        raise FileFormatError(f"{where}: qwen2 needs head_count * key_length == embedding_length "
                              f"({heads} * {head_dim} != {hidden})")
    for key in ("attention.value_length", "rope.dimension_count"):  # Kiln has one head size, full rotary
        v = _int(gf, key, default=head_dim)
        if v != head_dim:
            raise FileFormatError(f"{where}: {arch}.{key} = {v} differs from the head size {head_dim} "
                                  "(unsupported)")
    if head_dim % 2:
        raise FileFormatError(f"{where}: head size {head_dim} is odd; rotary embedding needs an even size")
    scaling = gf.arch_key("rope.scaling.type")
    factor = gf.arch_key("rope.scaling.factor", 1.0)
    if scaling not in (None, "none") or (not isinstance(factor, (int, float)) or factor not in (0, 1)):
        raise FileFormatError(f"{where}: rope scaling ({arch}.rope.scaling.type={scaling!r}, "
                              f"factor={factor!r}) is not supported")
    dims = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv, head_dim=head_dim, ffn=ffn, context=context,
                rms_eps=_float(gf, "attention.layer_norm_rms_epsilon", 1e-6),
                rope_theta=_float(gf, "rope.freq_base", 10000.0))
    vocab, qkv_bias, tied = _check_tensors(gf, dims)
    declared = _int(gf, "vocab_size", default=vocab)
    if declared != vocab:
        raise FileFormatError(f"{where}: {arch}.vocab_size = {declared} but token_embd.weight has {vocab} rows")
    _check_tokenizer(gf, vocab)
    return GGUFDims(vocab=vocab, qkv_bias=qkv_bias, tied=tied, **dims)


def _refuse_unknown(gf: Any) -> None:
    prefix = f"{gf.architecture}."
    unknown = sorted(k for k in gf.metadata if k.startswith(prefix) and k[len(prefix):] not in _HONOURED)
    if unknown:
        raise FileFormatError(f"{gf.path}: metadata {', '.join(unknown[:5])} may change the model's math and "
                              "Kiln does not support it")


def _uniform(gf: Any, key: str, value: Any) -> Any:
    """A per-layer array whose entries all agree stands for that one value; otherwise it is refused."""
    if isinstance(value, list):
        if not value or any(v != value[0] for v in value):
            raise FileFormatError(f"{gf.path}: {gf.architecture}.{key} differs per layer ({value[:8]}...): "
                                  "per-layer sizes are not supported")
        return value[0]
    return value


def _int(gf: Any, key: str, default: Optional[int] = None, hi: int = 1 << 24) -> int:
    v = _uniform(gf, key, gf.arch_key(key))
    if v is None:
        if default is None:
            raise FileFormatError(f"{gf.path}: metadata {gf.architecture}.{key} is missing")
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= hi:
        raise FileFormatError(f"{gf.path}: metadata {gf.architecture}.{key} = {v!r} is not an integer in [1, {hi}]")
    return v


def _float(gf: Any, key: str, default: float) -> float:
    v = _uniform(gf, key, gf.arch_key(key, default))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise FileFormatError(f"{gf.path}: metadata {gf.architecture}.{key} = {v!r} is not a positive number")
    return float(v)


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists dims fastest-first


def _check_tensors(gf: Any, d: dict) -> tuple[int, bool, bool]:
    """Every tensor's shape against the dims; returns (vocab rows, q/k/v biases?, tied embeddings?)."""
    t = gf.tensors
    if "token_embd.weight" not in t:
        raise FileFormatError(f"{gf.path}: tensor token_embd.weight is missing")
    emb = _shape(t["token_embd.weight"])
    if len(emb) != 2 or emb[1] != d["hidden"] or emb[0] < 1:
        raise FileFormatError(f"{gf.path}: token_embd.weight is {list(emb)}, expected [vocab, {d['hidden']}]")
    vocab = emb[0]
    h, q, kv, f = d["hidden"], d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"], d["ffn"]
    qkv_bias = "blk.0.attn_q.bias" in t
    block = {"attn_norm.weight": (h,), "ffn_norm.weight": (h,), "attn_q.weight": (q, h), "attn_k.weight": (kv, h),
             "attn_v.weight": (kv, h), "attn_output.weight": (h, q), "ffn_gate.weight": (f, h),
             "ffn_up.weight": (f, h), "ffn_down.weight": (h, f)}
    if gf.architecture == "qwen3":
        block.update({"attn_q_norm.weight": (d["head_dim"],), "attn_k_norm.weight": (d["head_dim"],)})
    if gf.architecture == "qwen2" or qkv_bias:
        block.update({"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)})
    if gf.architecture == "llama" and qkv_bias:  # transformers' attention_bias covers o_proj too
        block["attn_output.bias"] = (h,)
    want = {"token_embd.weight": emb, "output_norm.weight": (h,)}
    if "output.weight" in t:
        want["output.weight"] = (vocab, h)
    for i in range(d["layers"]):
        want.update({f"blk.{i}.{k}": s for k, s in block.items()})
    for name, shape in want.items():
        if name not in t:
            raise FileFormatError(f"{gf.path}: tensor {name} is missing ({gf.architecture}.block_count = "
                                  f"{d['layers']})")
        if _shape(t[name]) != shape:
            raise FileFormatError(f"{gf.path}: tensor {name} is {list(_shape(t[name]))}, the metadata says "
                                  f"{list(shape)}")
    extra = sorted(n for n in t if n not in want)
    if extra:
        beyond = [n for n in extra if (m := re.match(r"blk\.(\d+)\.", n)) and int(m.group(1)) >= d["layers"]]
        what = (f"beyond {gf.architecture}.block_count = {d['layers']}" if beyond
                else f"that a {gf.architecture} model does not have")
        raise FileFormatError(f"{gf.path}: tensors {what}: {(beyond or extra)[:5]}"
                              + (" (llama3-style rope_freqs scaling is not supported)" if "rope_freqs.weight" in extra
                                 else ""))
    return vocab, qkv_bias, "output.weight" not in t


def _check_tokenizer(gf: Any, vocab: int) -> None:
    md, where = gf.metadata, gf.path
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is None:
        return  # build_tokenizer refuses a file without one; the weights alone are still usable
    if not isinstance(tokens, list) or not all(isinstance(s, str) for s in tokens):
        raise FileFormatError(f"{where}: tokenizer.ggml.tokens is not a list of strings")
    if len(tokens) != vocab:
        raise FileFormatError(f"{where}: tokenizer.ggml.tokens has {len(tokens)} tokens but token_embd.weight "
                              f"has {vocab} rows")
    types = md.get("tokenizer.ggml.token_type")
    if types is not None and (not isinstance(types, list) or len(types) != len(tokens)
                              or not all(isinstance(x, int) for x in types)):
        raise FileFormatError(f"{where}: tokenizer.ggml.token_type is not one integer per token")
    merges = md.get("tokenizer.ggml.merges")
    if merges is not None:
        if not isinstance(merges, list) or not all(isinstance(m, str) and " " in m for m in merges):
            raise FileFormatError(f"{where}: tokenizer.ggml.merges is not a list of 'a b' strings")
        known = set(tokens)
        for i, m in enumerate(merges):  # a BPE merge joins two tokens into a third, all in the vocabulary
            a, b = m.split(" ", 1)
            if a not in known or b not in known or a + b not in known:
                raise FileFormatError(f"{where}: tokenizer.ggml.merges[{i}] = {m!r} joins tokens not in "
                                      "tokenizer.ggml.tokens")
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"):
        i = md.get(f"tokenizer.ggml.{key}")
        if i is not None and (isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab):
            raise FileFormatError(f"{where}: tokenizer.ggml.{key} = {i!r} is not a token id in [0, {vocab})")
    template = md.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise FileFormatError(f"{where}: tokenizer.chat_template is not a string")
