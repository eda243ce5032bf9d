"""A pure ASGI middleware: request bodies are size-limited (413) and every response's status is counted.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, so streamed responses and client-disconnect
messages pass through untouched. The body is read here (at most ``max_bytes``) and replayed to the app.
"""
from __future__ import annotations

import json
from typing import Any, Callable


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int, observe: Callable[[str, int], None]):
        self.app, self.max_bytes, self.observe = app, int(max_bytes), observe

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.observe(path, int(message["status"]))
            await send(message)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(counted_send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._too_large(counted_send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # later calls wait for http.disconnect

        await self.app(scope, replay, counted_send)

    async def _too_large(self, send: Callable) -> None:
        payload = json.dumps({"error": {"message": f"the request body is larger than {self.max_bytes} bytes",
                                        "type": "invalid_request_error", "param": None, "code": None}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
