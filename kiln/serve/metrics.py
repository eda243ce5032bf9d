"""Prometheus metrics for a server (prometheus-client), one registry per app so apps never collide.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). The queue depth and
active slots are read from the engine at scrape time, so they are never stale.
"""
from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Records what the engine's scheduler reports (see kiln.serve.scheduler.NullMetrics) and HTTP outcomes."""

    def __init__(self, stats: Callable[[], dict]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("kiln_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.finished_requests = Counter("kiln_finished_requests", "engine requests by finish reason",
                                         ["reason"], registry=r)
        self.prompt_tokens = Counter("kiln_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("kiln_generation_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("kiln_time_to_first_token_seconds", "time from submission to the first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("kiln_inter_token_latency_seconds", "time between a request's successive tokens",
                             buckets=_LATENCY_BUCKETS, registry=r)
        queue = Gauge("kiln_queue_depth", "requests waiting for a slot", registry=r)
        queue.set_function(lambda: stats()["queued"])
        active = Gauge("kiln_active_slots", "slots running a request", registry=r)
        active.set_function(lambda: stats()["active"])
        slots = Gauge("kiln_slots", "slots (--parallel)", registry=r)
        slots.set_function(lambda: stats()["slots"])

    # -- scheduler hooks (engine thread; prometheus-client is thread-safe) --------------------
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(completion)

    def finished(self, reason: str) -> None:
        self.finished_requests.labels(reason=reason).inc()

    # -- HTTP ---------------------------------------------------------------------------------
    def http(self, route: str, status: int) -> None:
        self.requests.labels(route=route, status=str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def attach(engine: Any) -> Metrics:
    """A Metrics for ``engine``, installed as its scheduler's reporter."""
    m = Metrics(engine.stats)
    engine.scheduler.metrics = m
    return m
