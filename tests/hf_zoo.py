"""Small configurations of the real architectures (random weights), shared by model tests."""
from __future__ import annotations

import functools

import torch
from torch import nn


class LogitsOnly(nn.Module):
    """input_ids -> logits, without the HF cache machinery."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@functools.lru_cache(maxsize=None)
def hf_model(name: str, layers: int = 2) -> nn.Module:
    import transformers as tf
    torch.manual_seed(0)
    if name == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=layers))
    elif name == "qwen3":  # Qwen3-0.6B sizes
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(
            num_hidden_layers=layers, hidden_size=1024, intermediate_size=3072, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
            max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6))
    elif name == "llama":  # SmolLM2-135M sizes
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            num_hidden_layers=layers, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5,
            rope_theta=100000.0, max_position_embeddings=8192))
    else:
        raise ValueError(name)
    return LogitsOnly(model.eval()).eval()
