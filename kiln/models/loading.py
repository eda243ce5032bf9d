"""Load a model (default, HF folder, .gguf), compile it with Kiln, add the KV cache → `LanguageModel`."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Union

from ..errors import KilnError
from .language_model import LanguageModel
from .sampling import defaults_from_generation_config

if TYPE_CHECKING:
    from ..ir.graph import Graph
    from ..session import Session
    from .hf import HFParts

Progress = Callable[[str], None]


def load_model(spec: Union[str, os.PathLike] = "default", *, executor: str = "compiled", max_len: Optional[int] = None,
               keep_torch: bool = False, progress: Optional[Progress] = None, last_only: bool = True,
               cache: bool = True, dtype: str = "native", quantize: Optional[str] = None,
               act: str = "exact") -> LanguageModel:
    """'default' (SmolLM2-135M-Instruct), a Hugging Face model folder, or a .gguf file → LanguageModel.

    ``dtype`` "native": a GGUF's quantized weights run in their own blocks (qmatmul); "f32":
    everything dequantized to fp32 at load. ``quantize`` ("int8", "q8_0", "q4_0", "q4_k")
    quantizes an fp32 model's matmul weights at compile time; ``act`` is the quantized
    matmuls' activation mode ("exact" or "int8").

    ``progress`` is called with the name of each step as it starts (loading, compiling, ...).
    ``cache`` decodes with a KV cache of ``max_len`` positions (else the prefix is recomputed).
    """
    from .hf import DEFAULT_MAX_LEN, compile_causal_lm, context_length, eos_token_ids
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if dtype not in ("native", "f32"):
        raise KilnError(f"dtype must be 'native' or 'f32', got {dtype!r}")
    # keep_torch compares against the torch model, which must then hold real fp32 weights
    parts, name, stored = load_parts_stored(spec, say, native=dtype == "native" and not quantize and not keep_torch)
    timings["load"] = time.perf_counter() - t0
    model = parts.model
    limit = context_length(model.config)
    max_len = min(limit, DEFAULT_MAX_LEN) if max_len is None else int(max_len)
    if not 2 <= max_len <= limit:
        raise KilnError(f"max_len must be in [2, {limit}] for this model, got {max_len}")
    say(f"exporting and compiling with Kiln (executor {executor}, sequence length 1..{max_len})")
    t0 = time.perf_counter()
    quant: dict = {"act": act}
    if stored:
        from .gguf_quant import attach
        quant["prepare"] = lambda g: attach(g, stored, prefix="model.")
    if quantize:
        quant["quantize"] = quantize
    compiled = compile_causal_lm(model, max_len=max_len, executor=executor, last_only=last_only, **quant)
    cached = None
    if cache:
        if not compiled.last_only:
            raise KilnError("the KV cache needs a graph that returns the last position's logits")
        say(f"adding a KV cache of {max_len} positions")
        cached = kv_cache_session(compiled.session.graph, max_len, executor=executor)
    timings["compile"] = time.perf_counter() - t0
    return LanguageModel(cached_session=cached, use_cache=cache,
        name=name, session=compiled.session, tokenizer=parts.tokenizer, config=model.config,
        eos_ids=eos_token_ids(model, parts.tokenizer, parts.generation_config),
        sampling=defaults_from_generation_config(parts.generation_config), min_len=compiled.min_len,
        max_len=compiled.max_len, last_only=compiled.last_only, torch_model=model if keep_torch else None,
        timings=timings)


def kv_cache_session(graph: Graph, max_len: int, *, executor: str = "compiled") -> Session:
    """A Session over ``graph`` (input_ids -> last position's logits) with a KV cache of ``max_len``
    positions as graph state; the single-token decode plan is made now, not on the first token."""
    from ..passes.kv_cache import add_kv_cache
    from ..session import Session
    cached = Session(add_kv_cache(graph, max_len), executor=executor)
    for sym in cached.graph.sym_sources:
        cached.plan(**{sym: 1})
    return cached


def load_parts(spec: Union[str, os.PathLike], say: Progress) -> tuple[HFParts, str]:
    """'default', a Hugging Face folder or a .gguf path → (the fp32 transformers model and what travels
    with it, a display name). ``say`` gets a line per step. Raises KilnError for anything else."""
    parts, name, _ = load_parts_stored(spec, say, native=False)
    return parts, name


def load_parts_stored(spec: Union[str, os.PathLike], say: Progress, *, native: bool):
    """load_parts, plus (``native``, a GGUF) the weights kept in their blocks: (parts, name, stored);
    stored is None otherwise (kiln/models/gguf_quant.py)."""
    from .hf import is_hf_folder, load_hf_folder
    if str(spec) == "default":
        from .default import NAME, default_model_path
        say("locating the default model")
        path = default_model_path()
        parts, stored = _read_gguf(path, say, native)
        return parts, NAME, stored
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise KilnError(f"GGUF file {str(path)!r} does not exist")
        parts, stored = _read_gguf(path, say, native)
        return parts, path.name, stored
    if path.is_dir():
        if not is_hf_folder(path):
            raise KilnError(f"{str(path)!r} is not a Hugging Face model folder (no config.json in it)")
        say(f"loading the Hugging Face model in {path}")
        return load_hf_folder(path), path.name, None
    if path.exists():
        raise KilnError(f"{str(path)!r} is neither a .gguf file nor a model folder")
    raise KilnError(f"unknown model {str(spec)!r}: expected 'default', a Hugging Face model folder or a .gguf file")


def _read_gguf(path: Path, say: Progress, native: bool = False):
    from .gguf import load_gguf
    if native:
        say(f"reading {path.name} (quantized weights stay in their blocks)")
        return load_gguf(path, native=True)
    say(f"reading {path.name} (dequantizing to fp32)")
    return load_gguf(path), None
