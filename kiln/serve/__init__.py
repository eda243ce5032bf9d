"""Serving: an engine with continuous batching (engine, scheduler, runner), an OpenAI-compatible ASGI
app on top of it (app), and deployment as uvicorn (kiln.cli_serve) or Ray Serve replicas (ray_app).

Only the engine layer is imported here; the HTTP layers need the `serve` extra (FastAPI, uvicorn,
prometheus-client) and Ray needs the `ray` extra.
"""
from .engine import Engine, EngineStopped, QueueFull, RequestError, RequestHandle
from .request import Event
from .runner import BatchedRunner, ModelRunner, PerSlotRunner, SlotWork

__all__ = ["BatchedRunner", "Engine", "EngineStopped", "Event", "ModelRunner", "PerSlotRunner", "QueueFull",
           "RequestError", "RequestHandle", "SlotWork"]
