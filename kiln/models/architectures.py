"""The one table from architecture name to its transformers classes.

The keys are what both a transformers config's ``model_type`` and a GGUF file's
``general.architecture`` call the architecture (they agree for these four).
Classes are looked up by name so that importing this module imports no transformers.
"""
from __future__ import annotations

from typing import Any

from ..errors import KilnError

# architecture -> (config class, causal-LM class), names in the transformers package
ARCHITECTURES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def _entry(arch: str) -> tuple[str, str]:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise KilnError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}") from None


def config_class(arch: str) -> Any:
    """The transformers config class for ``arch`` (e.g. ``LlamaConfig`` for "llama")."""
    import transformers
    return getattr(transformers, _entry(arch)[0])


def causal_lm_class(arch: str) -> Any:
    """The transformers causal-LM class for ``arch`` (e.g. ``LlamaForCausalLM`` for "llama")."""
    import transformers
    return getattr(transformers, _entry(arch)[1])
