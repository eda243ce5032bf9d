"""Load a model (a `.kiln` file, default, HF folder, .gguf) → `LanguageModel`, through the compile cache.

A `.kiln` language-model file loads without torch or transformers (kiln/models/model_file.py). A
source model (default, HF folder, GGUF) is looked up in the compile cache (kiln/cache.py) first; on a
miss it is read, exported, optimized and given its KV cache once, the result saved to the cache, and
the in-memory session kept (the cold run does not reload what it just wrote).
"""
from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

from ..errors import FileFormatError, KilnError
from .language_model import LanguageModel

if TYPE_CHECKING:
    from ..ir.graph import Graph
    from ..session import Session
    from .hf import HFParts

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def begin(say: Progress, steps: int) -> None:
    """Tell a progress display (kiln/cli_progress.py) that a job of ``steps`` messages starts."""
    getattr(say, "begin", _quiet)(steps)


def end(say: Progress) -> None:
    getattr(say, "end", lambda: None)()


COMPILE_STEPS = 3   # read, export + optimize, KV cache + decode plan (saving is one more)


@dataclass(frozen=True)
class CompileOptions:
    """What `kiln compile` and the compile cache compile a source model with. Every field is recorded in
    the file's provenance and is part of the cache key, so a new option (e.g. a weight quantization)
    is one field here plus its use in `compile_language_model`."""

    max_len: Optional[int] = None      # KV-cache positions (None: min(context, 2048))
    threads: Optional[int] = None      # default kernel threads stored in the file (None: the cores available)
    dtype: str = "native"              # "native": a GGUF's quantized weights stay in their blocks; "f32"
    quantize: Optional[str] = None     # quantize an fp32 model's matmul weights ("int8", "q8_0", "q4_0", "q4_k")
    act: str = "exact"                 # quantized matmul activations: "exact" (fp32) or "int8"

    def as_dict(self) -> dict:
        from ..passes.pack import enabled as packed   # KILN_PACK_WEIGHTS=0 (the BLAS ablation) is another entry
        return {"max_len": self.max_len, "threads": self.threads, "last_only": True, "dtype": self.dtype,
                "quantize": self.quantize, "act": self.act, "pack_weights": packed()}


@contextmanager
def library_warnings_hidden() -> Iterator[None]:
    """torch.export and transformers warn about their own deprecations (FutureWarning, UserWarning):
    nothing a Kiln user can act on, so they are hidden where Kiln calls those libraries, not globally."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        yield


def load_model(spec: Union[str, os.PathLike] = "default", *, executor: Optional[str] = None,
               backend: Optional[str] = None, max_len: Optional[int] = None,
               keep_torch: bool = False, progress: Optional[Progress] = None, last_only: bool = True,
               cache: bool = True, compile_cache: bool = True, dtype: str = "native",
               quantize: Optional[str] = None, act: str = "exact") -> LanguageModel:
    """A `.kiln` file, 'default' (SmolLM2-135M-Instruct), a Hugging Face model folder or a .gguf → LanguageModel.

    ``progress`` is called with the name of each step as it starts (loading, compiling, ...).
    ``cache`` decodes with a KV cache of ``max_len`` positions (else the prefix is recomputed).
    ``compile_cache`` looks the source up in the compile cache and stores it there after compiling
    (kiln/cache.py); a damaged or stale entry is reported through ``progress`` and rebuilt.
    ``keep_torch`` also keeps the transformers model (for comparisons; not possible from a .kiln file).
    """
    say = progress or _quiet
    t0 = time.perf_counter()
    if dtype not in ("native", "f32"):
        raise KilnError(f"dtype must be 'native' or 'f32', got {dtype!r}")
    quant = {"dtype": dtype, "quantize": quantize, "act": act}
    if is_model_file(spec):
        if keep_torch:
            raise KilnError(f"{str(spec)!r} is a compiled Kiln file and holds no PyTorch model to compare with; "
                            f"pass the source model (default, an HF folder or a .gguf) instead")
        asked = [f"{k} {v}" for k, v in (("--dtype", dtype), ("--quantize", quantize), ("--act", act))
                 if v not in ("native", None, "exact")]
        if asked:
            raise KilnError(f"{str(spec)!r} is a compiled Kiln file: its weights and activation mode were fixed "
                            f"when it was compiled, so {', '.join(asked)} cannot apply; pass them to "
                            f"`kiln compile` (or `kiln generate`) with the source model")
        say(f"loading {spec}")
        lm = load_model_file(spec, executor=executor, backend=backend, use_cache=cache, max_len=max_len)
        lm.timings["load"] = time.perf_counter() - t0
        return lm
    if not last_only or not compile_cache:
        begin(say, COMPILE_STEPS)
        lm, _ = compile_language_model(spec, executor=executor, backend=backend, max_len=max_len, keep_torch=keep_torch, say=say,
                                       last_only=last_only, cache=cache, **quant)
        end(say)
        return lm
    from .. import cache as compile_cache_dir
    path, _name = resolve_source(spec)
    source_digest = compile_cache_dir.source_hash(path)
    options = CompileOptions(max_len=max_len, **quant).as_dict()
    cpu = compile_cache_dir.cpu_features()
    from .model_file import kiln_version, provenance
    key = compile_cache_dir.entry_key(source_digest, kiln_version(), options, cpu)
    entry = compile_cache_dir.entry_path(key)
    if entry.is_file():
        try:
            lm = load_model_file(entry, executor=executor, backend=backend, use_cache=cache, expect_key=key)
        except FileFormatError as e:
            say(f"compile cache entry {entry.name} is unusable, rebuilding it: {e}")
        else:
            say(f"loaded {lm.name} from the compile cache ({entry})")
            lm.timings["load"] = time.perf_counter() - t0
            if keep_torch:
                with library_warnings_hidden():
                    lm.torch_model = load_parts(spec, say)[0].model
            return lm
    begin(say, COMPILE_STEPS + 1)
    lm, meta = compile_language_model(spec, executor=executor, backend=backend, max_len=max_len, keep_torch=keep_torch, say=say,
                                      cache=cache, **quant, provenance_info=provenance(
                                          source=str(path), source_sha256=source_digest, options=options, cpu=cpu,
                                          cache_key=key))
    if meta is not None:
        from .model_file import save
        say(f"saving to the compile cache: {entry}")
        t1 = time.perf_counter()
        save(entry, lm.cached_session, meta)
        lm.timings["save"] = time.perf_counter() - t1
    end(say)
    return lm


def is_model_file(spec: Union[str, os.PathLike]) -> bool:
    return str(spec).lower().endswith(".kiln")


def load_model_file(path: Union[str, os.PathLike], *, executor: Optional[str] = None, backend: Optional[str] = None,
                    use_cache: bool = True,
                    max_len: Optional[int] = None, expect_key: Optional[str] = None) -> LanguageModel:
    """A `.kiln` language-model file → LanguageModel (torch-free). ``expect_key`` checks a cache entry's
    key and Kiln version (FileFormatError if stale)."""
    from . import model_file
    if not Path(path).is_file():
        raise KilnError(f"model file {str(path)!r} does not exist")
    graph, lm_meta, meta = model_file.read(path)
    if expect_key is not None:
        prov = lm_meta["provenance"]
        if prov.get("cache_key") != expect_key or prov.get("kiln_version") != model_file.kiln_version():
            raise FileFormatError(f"stale: made by Kiln {prov.get('kiln_version')} for key {prov.get('cache_key')}")
    lm = model_file.language_model(graph, lm_meta, meta, executor=executor, backend=backend, use_cache=use_cache,
                                   where=str(path))
    if max_len is not None:
        if not 2 <= int(max_len) <= lm.max_len:
            raise KilnError(f"max_len must be in [2, {lm.max_len}] for {str(path)!r} (compiled for {lm.max_len}), "
                            f"got {max_len}")
        lm.max_len = int(max_len)
    return lm


def compile_language_model(spec: Union[str, os.PathLike], *, executor: Optional[str] = None,
                           backend: Optional[str] = None,
                           max_len: Optional[int] = None, keep_torch: bool = False, say: Progress = _quiet,
                           last_only: bool = True, cache: bool = True, provenance_info: Optional[dict] = None,
                           threads: Optional[int] = None, dtype: str = "native", quantize: Optional[str] = None,
                           act: str = "exact") -> tuple[LanguageModel, Optional[dict]]:
    """Read, export, optimize and add the KV cache: (the LanguageModel, its model-file metadata, or None
    when it cannot travel in a file: full-sequence logits, or a tokenizer without a `tokenizers` form)."""
    from .hf import DEFAULT_MAX_LEN, compile_causal_lm, context_length, eos_token_ids
    from .sampling import defaults_from_generation_config
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with library_warnings_hidden():
        # keep_torch compares against the torch model, which must then hold real fp32 weights; Kiln still
        # compiles what was asked for (the compile cache keys it by the same options either way)
        parts, name, stored = load_parts_stored(spec, say, native=dtype == "native" and not quantize,
                                                torch_weights=keep_torch, quantize=quantize)
    timings["load"] = time.perf_counter() - t0
    model = parts.model
    limit = context_length(model.config)
    max_len = min(limit, DEFAULT_MAX_LEN) if max_len is None else int(max_len)
    if not 2 <= max_len <= limit:
        raise KilnError(f"max_len must be in [2, {limit}] for this model, got {max_len}")
    say(f"exporting and optimizing with Kiln (executor {executor or 'default'}, backend {backend or 'default'}, "
        f"sequence length 1..{max_len})")
    t0 = time.perf_counter()
    with library_warnings_hidden():
        quant: dict = {"act": act}
        if stored:
            from .gguf_quant import attach, tied_names
            aliases = tied_names(model)
            quant["prepare"] = lambda g: attach(g, stored, prefix="model.", aliases=aliases)
        if quantize:
            quant["quantize"] = quantize
        compiled = compile_causal_lm(model, max_len=max_len, executor="reference", last_only=last_only, **quant)
    _report_quantized(compiled.session.graph, quantize, act, say)
    from ..session import Session
    session = Session(compiled.session.graph, executor=executor, backend=backend, meta=compiled.session.meta)
    cached = None
    if cache or provenance_info is not None:
        if not compiled.last_only:
            raise KilnError("the KV cache needs a graph that returns the last position's logits")
        say(f"adding a KV cache of {max_len} positions and planning decode")
        cached = cache_or_notice(compiled.session.graph, max_len, executor, None if say is _quiet else say,
                                 backend=backend)
    timings["compile"] = time.perf_counter() - t0
    tokenizer, portable = parts.tokenizer, compiled.last_only and cached is not None
    if tokenizer is not None:
        from .text_tokenizer import KilnTokenizer
        try:
            tokenizer = KilnTokenizer.from_transformers(tokenizer)
        except KilnError as e:
            say(f"keeping the transformers tokenizer: {e}")
            portable = False
    eos = eos_token_ids(model, parts.tokenizer, parts.generation_config)
    lm = LanguageModel(cached_session=cached, use_cache=cache and cached is not None,
        name=name, session=session, tokenizer=tokenizer, config=model.config, eos_ids=eos,
        sampling=defaults_from_generation_config(parts.generation_config), min_len=compiled.min_len,
        max_len=compiled.max_len, last_only=compiled.last_only, torch_model=model if keep_torch else None,
        timings=timings, provenance=dict(provenance_info or {}))
    if not portable or provenance_info is None:
        return lm, None
    from .model_file import lm_metadata
    return lm, lm_metadata(name=name, tokenizer=tokenizer, eos_ids=eos, generation_config=parts.generation_config,
                           config=model.config, provenance=provenance_info, threads=threads)


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


def resolve_source(spec: Union[str, os.PathLike], say: Progress = _quiet) -> tuple[Path, str]:
    """'default', a .gguf path or an HF folder → (the file or folder, a display name), without reading it.
    Raises KilnError for anything else."""
    from .hf import is_hf_folder
    if str(spec) == "default":
        from .default import NAME, default_model_path
        return default_model_path(), NAME
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise KilnError(f"GGUF file {str(path)!r} does not exist")
        return path, path.name
    if path.is_dir():
        if not is_hf_folder(path):
            raise KilnError(f"{str(path)!r} is not a Hugging Face model folder (no config.json in it)")
        return path, path.name
    if path.exists():
        raise KilnError(f"{str(path)!r} is neither a .gguf file, a .kiln file nor a model folder")
    raise KilnError(f"unknown model {str(spec)!r}: expected 'default', a Hugging Face model folder, a .gguf "
                    f"or a .kiln file")


def load_parts(spec: Union[str, os.PathLike], say: Progress) -> tuple[HFParts, str]:
    """'default', a Hugging Face folder or a .gguf path → (the fp32 transformers model and what travels
    with it, a display name). ``say`` gets a line per step. Raises KilnError for anything else."""
    parts, name, _ = load_parts_stored(spec, say, native=False)
    return parts, name


def _report_quantized(graph, quantize: Optional[str], act: str, say: Progress) -> None:
    """Say how many matmuls --quantize reached (a weight whose K is not whole blocks, or that
    another op reads, stays fp32); refuse --act int8 where no matmul reads quantized weights."""
    from ..ir.graph import CONST
    n_q = sum(n.op == "qmatmul" for n in graph.nodes)
    n_f = sum(n.op == "matmul" and graph.tensors[n.inputs[1]].kind == CONST for n in graph.nodes)
    if quantize and n_f:
        from ..core import storage
        block = storage.get("i8_row" if quantize == "int8" else quantize).block_size
        say(f"--quantize {quantize}: {n_q} matmuls read quantized weights, {n_f} keep fp32 weights "
            f"(K not a multiple of the {block}-element block, or the weight has other readers)")
    if act == "int8" and not n_q:
        raise KilnError("--act int8 applies to matmuls over quantized weights, and this model has none: "
                        "pass --quantize, or a GGUF file in a quantized type")


def load_parts_stored(spec: Union[str, os.PathLike], say: Progress, *, native: bool, torch_weights: bool = False,
                      quantize: Optional[str] = None):
    """load_parts, plus (``native``, a GGUF) the weights kept in their blocks: (parts, name, stored);
    stored is None otherwise (kiln/models/gguf_quant.py). ``torch_weights``: the transformers model
    holds real fp32 weights even where Kiln keeps the blocks (comparisons against transformers)."""
    path, name = resolve_source(spec, say)
    if path.is_dir():
        from .hf import load_hf_folder
        say(f"loading the Hugging Face model in {path}")
        return load_hf_folder(path), name, None
    from .gguf import load_gguf
    if native:
        say(f"reading {path.name} (quantized weights stay in their blocks)")
        parts, stored = load_gguf(path, native=True, torch_weights=torch_weights)
        return parts, name, stored
    from .gguf import read_gguf
    types: dict = {}
    for t in read_gguf(path).tensors.values():
        if t.tensor_type.name not in ("F32", "F16", "BF16"):
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    listed = ", ".join(f"{k}×{v}" for k, v in types.items())
    say(f"reading {path.name}" + (f" (dequantizing its {listed} tensors to fp32)" if types else ""))
    if quantize and types:
        say(f"note: {path.name} is already quantized ({listed}); --quantize {quantize} re-quantizes the "
            f"dequantized weights, adding error to theirs (without --quantize its own blocks run as they are)")
    return load_gguf(path), name, None
