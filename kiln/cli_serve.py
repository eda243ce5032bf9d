"""`kiln serve --model X`: an OpenAI-compatible HTTP server (uvicorn), or Ray Serve replicas with --ray.

Binds 127.0.0.1 unless --host says otherwise. See docs/serving.md.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli_options import add_weight_options
from .errors import KilnError
from .executor.registry import DEFAULT, EXECUTORS


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API (continuous batching)",
        description="Serve MODEL ('default', a Hugging Face folder or a .gguf file) with the OpenAI API: "
                    "/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics.")
    p.add_argument("--model", "-m", default="default", help="default | PATH-TO-HF-FOLDER | PATH.gguf")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--parallel", "-np", type=int, default=4, help="sequence slots decoded together (default 4)")
    p.add_argument("--ctx", type=int, default=None,
                   help="context per slot in tokens (prompt + answer; default min(model context, 2048))")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429 (default 64)")
    p.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask (default: ctx)")
    p.add_argument("--prefill-chunk", type=int, default=64, help="prompt tokens prefilled per step (power of two)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    add_weight_options(p)
    p.add_argument("--runner", default="batched", choices=["batched", "per-slot"],
                   help="batched: one graph call per step for all slots (default); per-slot: slot by slot")
    p.add_argument("--executor", default=DEFAULT, help=f"one of {', '.join(EXECUTORS)} (default {DEFAULT})")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (the `ray` extra) instead of uvicorn")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(fn=run)
    return p


def _check(args: argparse.Namespace) -> None:
    for name, low in (("parallel", 1), ("port", 0), ("max_queue", 0), ("replicas", 1), ("max_body_bytes", 1)):
        if getattr(args, name) < low:
            raise KilnError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.port > 65535:
        raise KilnError(f"--port must be <= 65535, got {args.port}")


def engine_options(args: argparse.Namespace) -> dict:
    return {"parallel": args.parallel, "max_queue": args.max_queue, "prefill_chunk": args.prefill_chunk,
            "max_tokens_limit": args.max_tokens, "runner": args.runner,
            "dtype": args.dtype, "quantize": args.quantize, "act": args.act}


def run(args: argparse.Namespace) -> int:
    _check(args)
    if args.ray:
        from .serve.ray_app import serve_forever
        return serve_forever(model=args.model, replicas=args.replicas, host=args.host, port=args.port,
                             ctx=args.ctx, executor=args.executor, max_body_bytes=args.max_body_bytes,
                             **engine_options(args))
    try:
        import uvicorn
    except ImportError:
        raise KilnError("kiln serve needs the `serve` extra: pip install 'kiln-runtime[serve]'") from None
    from .cli_progress import Progress
    from .serve.build import build_app
    app = build_app(args.model, ctx=args.ctx, executor=args.executor, max_body_bytes=args.max_body_bytes,
                    progress=Progress(sys.stderr), **engine_options(args))
    print(f"kiln serve: http://{args.host}:{args.port}/v1 ({args.parallel} slots)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
