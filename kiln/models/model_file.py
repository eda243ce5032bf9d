"""Language-model files: one `.kiln` file that generates without PyTorch or transformers.

The file is a Kiln graph file (kiln/ir/serialize.py: safetensors layout, weights memory-mapped on
load) whose graph is the model *with its KV cache* (prefill and decode are two plans of it; the
no-cache path re-prefills it from position 0). Everything else generation needs travels in the
file's ``extra`` metadata under ``"kiln.lm"``:

    format         "kiln-lm/1" (this module's version; a file with another is refused)
    name           display name
    tokenizer      {"tokenizer": the `tokenizers` JSON, "special_tokens": {...}, "chat_template": ...}
    eos_ids        every id that ends a generation
    generation     the model's generation_config (transformers' to_diff_dict), or {}
    config         the model's transformers config as a dict (architecture, sizes), for inspection
    defaults       {"threads": N or null}
    provenance     {"source", "source_sha256", "kiln_version", "options", "cpu", "cache_key", "created"}

The decode plan (every symbolic dim 1) travels beside it under ``"kiln.plans"``, as
{"format": "kiln-plans/1", "plans": {binding key: plan}} (kiln/planner/stored.py), so a warm start
does not plan it again; it is checked against the graph before use and planned afresh when it
was made for other kernels. Prefill plans depend on the prompt length and are made at run time.

Reading needs numpy, `tokenizers` and jinja2 (chat templates) only.
"""
from __future__ import annotations

import json
import os
import time
import types
from typing import Any, Optional

from ..errors import FileFormatError, KilnError

FORMAT = "kiln-lm/1"
KEY = "kiln.lm"
PLANS_KEY, PLANS_FORMAT = "kiln.plans", "kiln-plans/1"


def kiln_version() -> str:
    from .. import __version__
    return __version__


def _json_safe(d: Any) -> dict:
    """A dict as JSON sees it (drops what JSON cannot hold rather than failing on it)."""
    return json.loads(json.dumps(d, default=lambda _x: None)) if d else {}


def lm_metadata(*, name: str, tokenizer: Any, eos_ids: Any, generation_config: Any, config: Any,
                provenance: dict, threads: Optional[int] = None) -> dict:
    """The ``"kiln.lm"`` entry for a model whose tokenizer is a KilnTokenizer (or None)."""
    gen = generation_config.to_diff_dict() if hasattr(generation_config, "to_diff_dict") else generation_config
    cfg = config.to_dict() if hasattr(config, "to_dict") else config
    return {"format": FORMAT, "name": str(name),
            "tokenizer": None if tokenizer is None else tokenizer.to_json(),
            "eos_ids": [int(i) for i in eos_ids], "generation": _json_safe(gen), "config": _json_safe(cfg),
            "defaults": {"threads": threads}, "provenance": dict(provenance)}


def provenance(*, source: str, source_sha256: str, options: dict, cpu: str, cache_key: Optional[str] = None) -> dict:
    return {"source": source, "source_sha256": source_sha256, "kiln_version": kiln_version(), "options": options,
            "cpu": cpu, "cache_key": cache_key, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save(path: str | os.PathLike, session: Any, lm: dict) -> None:
    """Write ``session``'s graph (which must have a KV cache) and ``lm`` atomically to ``path``."""
    from ..cache import write_atomic
    from ..ir import serialize
    if session.graph.kv_cache is None:
        raise KilnError("a language-model file holds the graph with its KV cache; this graph has none")
    extra = {"meta": session.meta, KEY: lm, PLANS_KEY: stored_plans(session)}
    write_atomic(path, lambda tmp: serialize.save(session.graph, tmp, extra=extra))


def decode_binding(graph: Any) -> dict:
    """The binding of the decode plan: one new token (every symbolic dim 1)."""
    return {sym: 1 for sym in graph.sym_sources}


def stored_plans(session: Any) -> dict:
    """The ``"kiln.plans"`` entry: ``session``'s decode plan (planned now if it has none yet)."""
    from ..planner.stored import binding_key, dump_plan
    binding = decode_binding(session.graph)
    plan = session.plan(**binding)
    return {"format": PLANS_FORMAT, "plans": {} if plan is None else {binding_key(binding): dump_plan(plan)}}


def read(path: str | os.PathLike) -> tuple[Any, dict, dict]:
    """(graph, the "kiln.lm" entry, the session meta) of a language-model file; the weights are mapped.

    Raises FileFormatError for a damaged file, one that is not a language-model file, or one written
    in another format version (the message names what to do). ``meta["_source"]`` (not saved) is the
    mapped file's guard, which `language_model` hands to the Session (as kiln.load does): a run after
    the file was changed in place is a FileFormatError, not a SIGBUS."""
    from ..ir import serialize
    from ..session import _MappedFile
    try:
        f = open(path, "rb")
    except OSError as e:
        raise FileFormatError(f"{path}: not a readable Kiln model: {e}") from None
    source = _MappedFile(path, f)
    graph, extra = serialize.load(path)
    lm = extra.get(KEY) if isinstance(extra, dict) else None
    if not isinstance(lm, dict):
        raise FileFormatError(f"{path}: a Kiln graph file but not a language-model file (no {KEY!r} metadata); "
                              f"make one with `kiln compile`")
    if lm.get("format") != FORMAT:
        raise FileFormatError(f"{path}: language-model format {lm.get('format')!r}, this Kiln reads {FORMAT!r}; "
                              f"recompile it with `kiln compile`")
    if graph.kv_cache is None:
        raise FileFormatError(f"{path}: the graph has no KV cache")
    for field, kind in (("eos_ids", list), ("generation", dict), ("provenance", dict), ("defaults", dict)):
        if not isinstance(lm.get(field), kind):
            raise FileFormatError(f"{path}: field {KEY}.{field} is missing or not a {kind.__name__}")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in lm["eos_ids"]):
        raise FileFormatError(f"{path}: field {KEY}.eos_ids must hold integers")
    meta = dict(extra.get("meta") if isinstance(extra.get("meta"), dict) else {})
    plans = extra.get(PLANS_KEY, {"format": PLANS_FORMAT, "plans": {}})  # absent: plan at load
    if not isinstance(plans, dict) or plans.get("format") != PLANS_FORMAT or not isinstance(plans.get("plans"), dict):
        raise FileFormatError(f"{path}: field {PLANS_KEY} is not a {PLANS_FORMAT!r} entry; recompile it")
    source.check()  # changed while loading
    meta["_source"] = source
    meta["_plans"] = plans["plans"]
    return graph, lm, meta


def language_model(graph: Any, lm: dict, meta: dict, *, executor: Optional[str] = None,
                   backend: Optional[str] = None, use_cache: bool = True,
                   where: str = "model file", session: Any = None) -> Any:
    """A LanguageModel over a KV-cache graph and its "kiln.lm" entry (what `read` returns).

    ``session`` reuses an existing Session of that graph (the compile path keeps the one it planned)."""
    from ..session import Session
    from .language_model import LanguageModel
    from .sampling import defaults_from_generation_config
    from .text_tokenizer import KilnTokenizer
    _apply_threads(lm["defaults"].get("threads"))
    tokenizer = None if lm.get("tokenizer") is None else KilnTokenizer.from_json(lm["tokenizer"], where)
    if session is None:
        meta = dict(meta)
        source = meta.pop("_source", None)
        session = Session(graph, executor=executor, backend=backend, meta=meta,
                          stored_plans=meta.pop("_plans", None), where=f"{where}: stored plan")
        session._source = source  # each run checks the mapped file is unchanged (kiln/session.py)
        session.plan(**decode_binding(graph))  # the decode plan, before the first token
    max_len = graph.kv_cache.max_len
    return LanguageModel(name=str(lm.get("name", where)), session=None, tokenizer=tokenizer,
                         config=lm.get("config", {}), eos_ids=tuple(lm["eos_ids"]),
                         sampling=defaults_from_generation_config(types.SimpleNamespace(**lm["generation"])),
                         min_len=1, max_len=max_len, last_only=True, cached_session=session, use_cache=use_cache,
                         provenance=dict(lm["provenance"]))


def load(path: str | os.PathLike, *, executor: Optional[str] = None, use_cache: bool = True) -> Any:
    """A `.kiln` language-model file → LanguageModel, without importing torch or transformers."""
    graph, lm, meta = read(path)
    return language_model(graph, lm, meta, executor=executor, use_cache=use_cache, where=str(path))


def _apply_threads(threads: Any) -> None:
    """The file's thread count, unless KILN_NUM_THREADS says otherwise (the environment wins)."""
    if threads is None or os.environ.get("KILN_NUM_THREADS"):
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise FileFormatError(f"field {KEY}.defaults.threads must be a positive integer, got {threads!r}")
    from ..backends import clib
    if clib.available():
        clib.set_num_threads(threads)


def describe(path: str | os.PathLike) -> str:
    """Everything a language-model file holds, as `kiln inspect FILE.kiln` prints it."""
    graph, lm, meta = read(path)
    size = os.path.getsize(path)
    weights = sum(a.nbytes for n, a in graph.constants.items() if n not in graph.state)
    kv = sum(graph.constants[n].nbytes for n in graph.state)
    prov, tok, gen = lm["provenance"], lm.get("tokenizer") or {}, lm["generation"]
    cfg = lm.get("config") or {}
    lines = [f"{path}: Kiln language model ({lm['format']}), {size / 2**20:.1f} MiB",
             f"  name          {lm.get('name')}",
             f"  architecture  {cfg.get('model_type', '?')}; {len(graph.nodes)} graph nodes; "
             f"weights {weights / 2**20:.1f} MiB; KV cache {graph.kv_cache.max_len} positions, "
             f"{kv / 2**20:.1f} MiB ({len(graph.state)} state tensors, zero on load)",
             f"  source        {prov.get('source')}",
             f"  source sha256 {prov.get('source_sha256')}",
             f"  made by       Kiln {prov.get('kiln_version')} on {prov.get('created')}",
             f"  options       {json.dumps(prov.get('options', {}), sort_keys=True)}",
             f"  CPU features  {prov.get('cpu')}",
             f"  cache key     {prov.get('cache_key') or '(not a cache entry)'}",
             f"  eos ids       {lm['eos_ids']}",
             f"  generation    {json.dumps(gen, sort_keys=True) if gen else '(none: greedy)'}",
             f"  defaults      {json.dumps(lm['defaults'], sort_keys=True)}"]
    if tok:
        from .text_tokenizer import KilnTokenizer
        t = KilnTokenizer.from_json(tok, str(path))
        model = json.loads(tok["tokenizer"]).get("model", {}).get("type", "?")
        lines.append(f"  tokenizer     {model}, {len(t)} tokens; special {json.dumps(t.special_tokens_map)}")
        template = t.chat_template if isinstance(t.chat_template, str) else json.dumps(t.chat_template)
        lines.append("  chat template " + ("(none)" if not template else
                                          f"{len(template)} chars: {template[:160]!r}{' ...' if len(template) > 160 else ''}"))
    else:
        lines.append("  tokenizer     (none: feed token ids)")
    meta.pop("_source", None)
    plans = meta.pop("_plans", {})
    lines.append(f"  stored plans  {', '.join(plans) or '(none)'}")
    if meta.get("compile_ms"):
        lines.append(f"  compile ms    {json.dumps(meta['compile_ms'])}")
    lines.append(f"\n{graph.summary()}")
    return "\n".join(lines)
