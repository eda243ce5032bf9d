"""Model spec → loaded model → Engine → ASGI app: the one construction path for uvicorn and Ray replicas."""
from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import KilnError


def build_engine(model: str, *, ctx: Optional[int] = None, executor: str = "compiled", parallel: int = 4,
                 max_queue: int = 64, prefill_chunk: int = 64, max_tokens_limit: Optional[int] = None,
                 runner: str = "batched", dtype: str = "native", quantize: Optional[str] = None,
                 act: str = "exact", progress: Optional[Callable[[str], None]] = None) -> tuple[Any, str]:
    """(an Engine, not started, the model's display name). ``ctx`` is the KV cache length per slot;
    ``runner``: "batched" or "per-slot" (kiln.serve.runner.runner_for); ``dtype``, ``quantize``, ``act``:
    how the weights are stored and multiplied (kiln.models.load_model)."""
    from ..models import load_model
    from .engine import Engine
    if parallel < 1:
        raise KilnError(f"parallel must be >= 1, got {parallel}")
    lm = load_model(model, executor=executor, max_len=ctx, progress=progress, dtype=dtype,
                    quantize=quantize, act=act)
    if lm.tokenizer is None:
        raise KilnError(f"model {model!r} has no tokenizer; serving needs one")
    if progress is not None:
        progress(f"preparing {runner} decoding for {parallel} slots")
    engine = Engine.from_model(lm, parallel=parallel, max_queue=max_queue, prefill_chunk=prefill_chunk,
                               max_tokens_limit=max_tokens_limit, runner=runner, notice=progress)
    return engine, lm.name


def build_app(model: str, *, max_body_bytes: int = 1 << 20, **engine_kwargs: Any) -> Any:
    """The OpenAI-compatible ASGI app for ``model``; its lifespan starts and stops the engine."""
    from .app import create_app
    engine, name = build_engine(model, **engine_kwargs)
    return create_app(engine, model_name=name, max_body_bytes=max_body_bytes)
