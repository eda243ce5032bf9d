"""Benchmark models: real architectures at their real sizes, random weights, input_ids -> logits.

The configurations are kiln.models.zoo's (plus a tiny smoke model), with the analytic FLOP
and weight-byte counts that the roofline floor needs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    key: str          # "gpt2-2L", "qwen3-28L", ...
    family: str       # gpt2 | qwen3 | llama | tiny
    layers: int
    label: str        # human name

    @property
    def max_seq(self) -> int:
        return 1024


TINY = "tiny"  # a bench-only GPT-2 smoke model; the real families are kiln.models.zoo's


def spec(key: str) -> ModelSpec:
    """"FAMILY-<N>L" (e.g. gpt2-2L) -> its ModelSpec; ValueError for anything else."""
    from kiln.models.zoo import FAMILIES
    fam, _, lay = key.rpartition("-")
    if not lay.endswith("L") or not lay[:-1].isdigit():
        raise ValueError(f"model key {key!r} must look like FAMILY-<N>L, e.g. gpt2-2L")
    n = int(lay[:-1])
    families = dict(FAMILIES, **{TINY: ("tiny GPT-2", None)})
    if fam not in families:
        raise ValueError(f"unknown model family {fam!r} (one of {', '.join(families)})")
    name, whole = families[fam]
    label = f"{name} {'whole (' + str(n) + ' layers)' if n == whole else str(n) + '-layer body'}"
    return ModelSpec(key, fam, n, label)


# Full-benchmark configurations and the seq lengths each runs.
FULL = {
    "gpt2-2L": [16, 64, 256, 1024],
    "qwen3-2L": [16, 64, 256, 1024],
    "llama-30L": [16, 64, 256, 1024],
    "gpt2-12L": [16, 64, 256, 1024],
    "qwen3-28L": [16, 64, 256, 1024],
}
QUICK = {
    "gpt2-2L": [16, 256],
    "qwen3-2L": [16, 256],
    "llama-30L": [64],
}


def hf_config(family: str, layers: int):
    """The real architectures come from kiln.models.zoo; "tiny" is a bench-only smoke model."""
    if family == TINY:
        import transformers as tf
        return tf.GPT2Config(n_layer=layers, n_embd=64, n_head=4, n_inner=256, vocab_size=512, n_positions=1024)
    from kiln.models import zoo
    return zoo.config(family, layers)


def build_model(s: ModelSpec):
    """The torch module (eval mode, seeded random weights): input_ids -> logits, and its config."""
    from kiln.models import zoo
    from kiln.models.hf import logits_module
    cfg = hf_config(s.family, s.layers)
    return logits_module(zoo.from_config(cfg, seed=0)), cfg


def vocab_size(cfg) -> int:
    return int(cfg.vocab_size)


def dims_of(cfg) -> dict:
    """d, q_dim, kv_dim, ff, gated, vocab, layers from a transformers config."""
    if cfg.model_type == "gpt2":
        d = cfg.n_embd
        return dict(d=d, q=d, kv=d, ff=cfg.n_inner or 4 * d, gated=False, vocab=cfg.vocab_size,
                    layers=cfg.n_layer)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return dict(d=cfg.hidden_size, q=cfg.num_attention_heads * hd, kv=cfg.num_key_value_heads * hd,
                ff=cfg.intermediate_size, gated=True, vocab=cfg.vocab_size, layers=cfg.num_hidden_layers)


def flops(cfg, seq: int, batch: int = 1) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass: projections, MLP, causal attention
    (QK^T and PV over the lower triangle only: 2*S*S*q_dim per layer) and the LM head over all
    S positions. Norms, activations and softmax are not counted (they are O(S*d))."""
    m = dims_of(cfg)
    d, q, kv, ff = m["d"], m["q"], m["kv"], m["ff"]
    per_tok_layer = 2 * d * (q + 2 * kv) + 2 * q * d + (3 if m["gated"] else 2) * 2 * d * ff
    attn_layer = 2 * seq * seq * q  # 4*S^2*q for full QK^T+PV, halved for the causal triangle
    head = 2 * d * m["vocab"]
    return int(batch * (m["layers"] * (seq * per_tok_layer + attn_layer) + seq * head))


def weight_bytes(module) -> int:
    """Unique parameter + buffer bytes of the torch module (tied weights counted once)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = t.data_ptr()
        if key in seen or not t.is_floating_point():
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total
