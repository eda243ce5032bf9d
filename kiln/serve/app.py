"""The OpenAI-compatible ASGI app (FastAPI) over an Engine.

Routes: POST /v1/completions, POST /v1/chat/completions (both with ``stream`` as server-sent events),
GET /v1/models, GET /health, GET /metrics (Prometheus text). Errors are OpenAI-shaped JSON:
400 malformed JSON / wrong field types / prompt too long, 413 body too large, 429 + Retry-After when
the queue is full, 503 + Retry-After when the engine is stopped, 500 (a message, never a traceback).
A client that disconnects cancels its request, which frees its slot.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import KilnError
from ..models.sampling import SamplingConfig
from ..models.tokenizer import render_chat
from .engine import Engine, EngineStopped, QueueFull, RequestError, RequestHandle
from .limits import BodyLimit
from .metrics import CONTENT_TYPE_LATEST, attach
from .protocol import ChatRequest, CompletionRequest, error_body

RETRY_AFTER_S = 1


def _error(status: int, message: str, kind: str = "invalid_request_error", *, param: Optional[str] = None,
           headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param), status_code=status, headers=headers)


def create_app(engine: Engine, *, model_name: str, max_body_bytes: int = 1 << 20, manage_engine: bool = True) -> Any:
    """The ASGI app. With ``manage_engine`` the app's lifespan starts and shuts down the engine."""
    from contextlib import asynccontextmanager

    metrics = attach(engine)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app):
        if manage_engine:
            engine.start()
        try:
            yield
        finally:
            if manage_engine:
                engine.shutdown()

    app = FastAPI(title="kiln serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.metrics = engine, metrics

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON")
        return _error(400, f"{where or 'body'}: {first.get('msg', 'invalid value')}", param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception):
        return _error(500, f"internal error ({type(exc).__name__})", "server_error")

    @app.get("/health")
    async def health():
        s = engine.stats()
        return {"status": "ok", "model": model_name, **s}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "kiln"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        if isinstance(body.prompt, str):
            ids = _encode(engine, body.prompt, special=True)
        else:
            ids = list(body.prompt)
        return await _serve(engine, request, body, ids, chat=False, model_name=model_name)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _parse(request, ChatRequest)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        try:
            rendered = render_chat(engine.tokenizer, messages, add_generation_prompt=True)
        except KilnError as e:
            raise RequestError(f"messages: {e}") from None
        if body.max_completion_tokens is not None and body.max_tokens is None:
            body.max_tokens = body.max_completion_tokens
        return await _serve(engine, request, body, _encode(engine, rendered, special=False), chat=True,
                            model_name=model_name)

    @app.exception_handler(RequestError)
    async def refused(_request: Request, exc: RequestError):
        return _error(400, str(exc))

    @app.exception_handler(QueueFull)
    async def full(_request: Request, exc: QueueFull):
        return _error(429, str(exc), "rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(EngineStopped)
    async def stopped(_request: Request, exc: EngineStopped):
        return _error(503, str(exc), "server_error", headers={"Retry-After": str(RETRY_AFTER_S)})

    def observe(path: str, status: int) -> None:
        metrics.http(path if path in _ROUTES else "other", status)

    return BodyLimit(app, max_body_bytes, observe)


_ROUTES = {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"}


async def _parse(request: Request, model: type) -> Any:
    """The body as ``model``; any content type is read as JSON (as the OpenAI clients and curl -d send it)."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def _encode(engine: Engine, text: str, *, special: bool) -> list[int]:
    if engine.tokenizer is None:
        raise RequestError("this model has no tokenizer: send the prompt as a list of token ids")
    return list(engine.tokenizer(text, add_special_tokens=special)["input_ids"])


def _submit(engine: Engine, body: Any, ids: list[int]) -> RequestHandle:
    try:
        stops = body.stops()
        sampling = SamplingConfig(temperature=1.0 if body.temperature is None else body.temperature,
                                  top_k=body.top_k or 0, top_p=1.0 if body.top_p is None else body.top_p,
                                  seed=body.seed)
    except (ValueError, KilnError) as e:
        raise RequestError(str(e)) from None
    return engine.submit(ids, max_tokens=body.max_tokens, sampling=sampling, stop=stops,
                         loop=asyncio.get_running_loop())


async def _serve(engine: Engine, request: Request, body: Any, ids: list[int], *, chat: bool, model_name: str):
    handle = _submit(engine, body, ids)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(handle, rid, chat, model_name, usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    text, last = await _collect(handle, request)
    if last is None:  # the client went away; nobody reads this
        return Response(status_code=499)
    if last.finish_reason == "error":
        return _error(500, f"generation failed: {last.error}", "server_error")
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
               "finish_reason": last.finish_reason} if chat else
              {"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model_name, "choices": [choice], "usage": _usage(last)}


def _usage(ev: Any) -> dict:
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
            "total_tokens": ev.prompt_tokens + ev.completion_tokens}


async def _collect(handle: RequestHandle, request: Request):
    """All text of a non-streamed request, and its last Event (None if the client disconnected first:
    a watcher waiting for http.disconnect cancels the request, which frees its slot)."""
    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                handle.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    parts: list[str] = []
    try:
        async for ev in handle:
            parts.append(ev.text)
            if ev.finish_reason is not None:
                return "".join(parts), (None if ev.finish_reason == "cancelled" else ev)
        return "".join(parts), None
    finally:
        watcher.cancel()
        handle.cancel()  # a no-op once finished


async def _sse(handle: RequestHandle, rid: str, chat: bool, model_name: str, usage: bool) -> AsyncIterator[str]:
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: Optional[str], finish: Optional[str], role: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _data({"id": rid, "object": kind, "created": created, "model": model_name, "choices": [choice]})

    try:
        if chat:
            yield chunk(None, None, role=True)
        async for ev in handle:
            if ev.finish_reason == "error":
                yield _data(error_body(f"generation failed: {ev.error}", "server_error"))
                break
            if ev.finish_reason == "cancelled":
                break
            if ev.text:
                yield chunk(ev.text, None)
            if ev.finish_reason is not None:
                yield chunk(None, ev.finish_reason)
                if usage:
                    yield _data({"id": rid, "object": kind, "created": created, "model": model_name,
                                 "choices": [], "usage": _usage(ev)})
        yield "data: [DONE]\n\n"
    finally:  # the client disconnected (the generator is closed early) or we are done: free the slot
        handle.cancel()


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
