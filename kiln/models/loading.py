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


def load_model(spec: Union[str, os.PathLike] = "default", *, executor: Optional[str] = None,
               backend: Optional[str] = None, max_len: Optional[int] = None,
               keep_torch: bool = False, progress: Optional[Progress] = None, last_only: bool = True,
               cache: bool = True) -> LanguageModel:
    """'default' (SmolLM2-135M-Instruct), a Hugging Face model folder, or a .gguf file → LanguageModel.

    ``progress`` is called with the name of each step as it starts (loading, compiling, ...).
    ``cache`` decodes with a KV cache of ``max_len`` positions (else the prefix is recomputed).
    ``backend``/``executor``: which kernels and how they are driven (``kiln.Session``; default:
    compiled C), e.g. ``backend="triton"`` keeps the weights and the KV cache on the GPU.
    """
    from ..session import Session
    from .hf import DEFAULT_MAX_LEN, compile_causal_lm, context_length, eos_token_ids
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    parts, name = load_parts(spec, say)
    timings["load"] = time.perf_counter() - t0
    model = parts.model
    limit = context_length(model.config)
    max_len = min(limit, DEFAULT_MAX_LEN) if max_len is None else int(max_len)
    if not 2 <= max_len <= limit:
        raise KilnError(f"max_len must be in [2, {limit}] for this model, got {max_len}")
    say(f"exporting and compiling with Kiln (executor {executor or 'default'}, backend {backend or 'default'}, "
        f"sequence length 1..{max_len})")
    t0 = time.perf_counter()
    compiled = compile_causal_lm(model, max_len=max_len, executor="reference", last_only=last_only)
    session = Session(compiled.session.graph, executor=executor, backend=backend, meta=compiled.session.meta)
    cached = None
    if cache:
        if not compiled.last_only:
            raise KilnError("the KV cache needs a graph that returns the last position's logits")
        say(f"adding a KV cache of {max_len} positions")
        cached = cache_or_notice(compiled.session.graph, max_len, executor, progress, backend=backend)
        cache = cached is not None
    timings["compile"] = time.perf_counter() - t0
    return LanguageModel(cached_session=cached, use_cache=cache,
        name=name, session=session, tokenizer=parts.tokenizer, config=model.config,
        eos_ids=eos_token_ids(model, parts.tokenizer, parts.generation_config),
        sampling=defaults_from_generation_config(parts.generation_config), min_len=compiled.min_len,
        max_len=compiled.max_len, last_only=compiled.last_only, torch_model=model if keep_torch else None,
        timings=timings)


def kv_cache_session(graph: Graph, max_len: int, *, executor: Optional[str] = None,
                     backend: Optional[str] = None) -> Session:
    """A Session over ``graph`` (input_ids -> last position's logits) with a KV cache of ``max_len``
    positions as graph state; the single-token decode plan is made now, not on the first token."""
    from ..passes.kv_cache import add_kv_cache
    from ..session import Session
    cached = Session(add_kv_cache(graph, max_len), executor=executor, backend=backend)
    for sym in cached.graph.sym_sources:
        cached.plan(**{sym: 1})
    return cached


def cache_or_notice(graph: Graph, max_len: int, executor: Optional[str], progress: Optional[Progress], *,
                    backend: Optional[str] = None) -> Optional[Session]:
    """kv_cache_session, or None with a one-line notice (to ``progress``, else a warning) saying why
    this model decodes without the cache (it then recomputes the prefix: slower, same tokens)."""
    try:
        return kv_cache_session(graph, max_len, executor=executor, backend=backend)
    except KilnError as e:
        notice = f"no KV cache, decoding recomputes the prefix: {str(e).splitlines()[0]}"
        if progress is not None:
            progress(notice)
        else:
            import warnings
            warnings.warn(notice, stacklevel=3)
        return None


def load_parts(spec: Union[str, os.PathLike], say: Progress) -> tuple[HFParts, str]:
    """'default', a Hugging Face folder or a .gguf path → (the fp32 transformers model and what travels
    with it, a display name). ``say`` gets a line per step. Raises KilnError for anything else."""
    from .hf import is_hf_folder, load_hf_folder
    if str(spec) == "default":
        from .default import NAME, default_model_path
        say("locating the default model")
        path = default_model_path()
        return _read_gguf(path, say), NAME
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise KilnError(f"GGUF file {str(path)!r} does not exist")
        return _read_gguf(path, say), path.name
    if path.is_dir():
        if not is_hf_folder(path):
            raise KilnError(f"{str(path)!r} is not a Hugging Face model folder (no config.json in it)")
        say(f"loading the Hugging Face model in {path}")
        return load_hf_folder(path), path.name
    if path.exists():
        raise KilnError(f"{str(path)!r} is neither a .gguf file nor a model folder")
    raise KilnError(f"unknown model {str(spec)!r}: expected 'default', a Hugging Face model folder or a .gguf file")


def _read_gguf(path: Path, say: Progress) -> HFParts:
    say(f"reading {path.name} (dequantizing to fp32)")
    from .gguf import load_gguf
    return load_gguf(path)
