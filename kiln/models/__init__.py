"""Model loaders (Hugging Face folders, GGUF, the default SmolLM2) and text generation.

    lm = kiln.models.load_model("default", executor="compiled")
    print(lm.generate("What is the capital of France?", max_new_tokens=32).text)

Names are imported lazily: `import kiln.models` stays free of torch/transformers until a loader runs.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "load_model": "loading", "load_parts": "loading", "kv_cache_session": "loading",
    "load_model_file": "loading", "compile_language_model": "loading", "CompileOptions": "loading",
    "KilnTokenizer": "text_tokenizer",
    "LanguageModel": "language_model",
    "Generation": "generation", "GenerationStats": "generation", "TokenEvent": "generation",
    "Decoder": "decoders", "CachedDecoder": "decoders", "RecomputeDecoder": "decoders",
    "torch_greedy": "compare", "hf_greedy": "compare",
    "causal_lm_class": "architectures", "config_class": "architectures",
    "SamplingConfig": "sampling", "sample": "sampling",
    "load_hf_folder": "hf", "compile_causal_lm": "hf",
    "load_gguf": "gguf", "read_gguf": "gguf",
    "default_model_path": "default",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.models' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{module}", __name__), name)
