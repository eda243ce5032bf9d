"""The same OpenAI-compatible app as Ray Serve replicas (the `ray` extra).

    from ray import serve
    from kiln.serve.ray_app import build
    serve.run(build(model="default", replicas=2, parallel=4), route_prefix="/")

Each replica loads the model, owns one Engine (its own slots and engine thread) and serves the routes of
kiln.serve.app; Ray Serve's HTTP proxy (one per node) spreads requests over the replicas of the whole
cluster. A replica asks Ray for ``num_cpus`` CPUs, so Ray places replicas where cores are free.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from ..errors import KilnError


def _serve_module():
    try:
        from ray import serve
    except ImportError:
        raise KilnError("--ray needs the `ray` extra: pip install 'kiln-runtime[ray]'") from None
    return serve


def build(*, model: str = "default", replicas: int = 1, num_cpus: float = 1.0, max_body_bytes: int = 1 << 20,
          max_ongoing_requests: Optional[int] = None, **engine_kwargs: Any) -> Any:
    """A bound Ray Serve application (pass it to ``serve.run``). ``engine_kwargs`` go to
    kiln.serve.build.build_engine (ctx, executor, parallel, max_queue, prefill_chunk, max_tokens_limit)."""
    serve = _serve_module()
    if replicas < 1:
        raise KilnError(f"replicas must be >= 1, got {replicas}")
    parallel = int(engine_kwargs.get("parallel", 4))
    queue = int(engine_kwargs.get("max_queue", 64))

    @serve.deployment(name="kiln", num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
                      max_ongoing_requests=max_ongoing_requests or (parallel + queue))
    @serve.ingress()
    class KilnDeployment:
        def __init__(self, model: str, max_body_bytes: int, engine_kwargs: dict):
            from .build import build_engine
            self.engine, self.name = build_engine(model, **engine_kwargs)
            self.engine.start()  # Ray Serve does not run the app's lifespan for us on every version
            self.max_body_bytes = max_body_bytes

        def __serve_build_asgi_app__(self):
            from .app import create_app
            return create_app(self.engine, model_name=self.name, max_body_bytes=self.max_body_bytes,
                              manage_engine=False)

        def __del__(self):
            engine = getattr(self, "engine", None)
            if engine is not None:
                engine.shutdown(timeout=1.0)

    return KilnDeployment.bind(model, max_body_bytes, dict(engine_kwargs))


def serve_forever(*, model: str, replicas: int, host: str, port: int, **kwargs: Any) -> int:
    """`kiln serve --ray`: join the Ray cluster of RAY_ADDRESS (else start a local one), deploy, and wait."""
    import os

    import ray
    serve = _serve_module()
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(model=model, replicas=replicas, **kwargs), name="kiln", route_prefix="/")
    print(f"kiln serve (Ray Serve, {replicas} replicas): http://{host}:{port}/v1", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        return 0
