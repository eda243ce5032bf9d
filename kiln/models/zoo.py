"""The architectures Kiln is measured on, at their real sizes, built from transformers configs.

Random weights (no checkpoint can be downloaded here); ``layers`` shrinks a model to a body
of that many layers. Used by `kiln inspect`, the benchmarks and the tests.
"""
from __future__ import annotations

from typing import Any

from .architectures import causal_lm_class, config_class

FAMILIES = {"gpt2": ("GPT-2", 12), "qwen3": ("Qwen3-0.6B", 28), "llama": ("SmolLM2-135M", 30)}

# family -> keyword arguments of its transformers config at the real model's sizes ("layers" is filled in)
_SIZES = {
    "gpt2": dict(),
    "qwen3": dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=40960,
                  rope_theta=1000000.0, rms_norm_eps=1e-6),
    "llama": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                  vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
                  max_position_embeddings=8192),
}


def config(family: str, layers: int) -> Any:
    """The transformers config of ``family`` at its real sizes with ``layers`` layers."""
    if family not in FAMILIES:
        from ..errors import KilnError
        raise KilnError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    layer_key = "n_layer" if family == "gpt2" else "num_hidden_layers"
    return config_class(family)(**{layer_key: layers}, **_SIZES[family])


def causal_lm(family: str, layers: int, seed: int = 0) -> Any:
    """The transformers model (fp32, eval) with random weights."""
    return from_config(config(family, layers), seed)


def from_config(cfg: Any, seed: int = 0) -> Any:
    """The causal LM for a transformers config (fp32, eval), random weights drawn from ``seed``."""
    import torch
    torch.manual_seed(seed)
    return causal_lm_class(cfg.model_type)(cfg).eval()


def logits_model(family: str, layers: int, seed: int = 0, last_only: bool = False) -> Any:
    """input_ids -> logits, without the HF cache machinery."""
    from .hf import logits_module
    return logits_module(causal_lm(family, layers, seed), last_only)
