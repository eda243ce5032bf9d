"""In-process uvicorn over a slowed-down engine: disconnects free slots, a full queue is 429, a stopped
engine is 503. Each step sleeps DELAY, so a long request surely outlives the client's actions."""
from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

pytest.importorskip("fastapi")

from tests.serve.conftest import get_json, wait_until  # noqa: E402
from kiln.serve import Engine, PerSlotRunner  # noqa: E402

DELAY = 0.05


class SlowRunner:
    def __init__(self, inner):
        self.inner, self.n_slots, self.max_len = inner, inner.n_slots, inner.max_len

    def step(self, batch):
        time.sleep(DELAY)
        return self.inner.step(batch)


def _app(lm, parallel=2, max_queue=4):
    from kiln.serve.app import create_app
    runner = SlowRunner(PerSlotRunner.from_model(lm, parallel))
    engine = Engine(runner, tokenizer=lm.tokenizer, eos_ids=[], vocab_size=lm.config.vocab_size,
                    max_queue=max_queue)
    return create_app(engine, model_name="tiny"), engine


def _body(stream: bool, max_tokens: int = 100) -> bytes:
    return json.dumps({"prompt": "The capital of France is", "max_tokens": max_tokens, "temperature": 0,
                       "stream": stream}).encode()


def _post(port: int, body: bytes, path: str = "/v1/completions"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def _cancelled(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    import urllib.request
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "kiln_finished_requests_total" and s.labels.get("reason") == "cancelled")


def test_stream_disconnect_frees_the_slot(tiny_lm, live_server):
    app, engine = _app(tiny_lm)
    srv = live_server(app)
    conn, resp = _post(srv.port, _body(stream=True))
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")        # generation is under way
    assert engine.stats()["active"] == 1
    t0 = time.monotonic()
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert wait_until(lambda: engine.stats()["active"] == 0, timeout=3)
    assert time.monotonic() - t0 < 100 * DELAY / 2          # well before it would have finished
    assert _cancelled(srv.url) == 1
    assert get_json(srv.url + "/health")["active"] == 0


def test_non_stream_disconnect_frees_the_slot(tiny_lm, live_server):
    app, engine = _app(tiny_lm)
    srv = live_server(app)
    s = socket.create_connection(("127.0.0.1", srv.port))
    body = _body(stream=False)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert wait_until(lambda: engine.stats()["active"] == 1, timeout=5)
    s.close()
    assert wait_until(lambda: engine.stats()["active"] == 0, timeout=3)
    assert _cancelled(srv.url) == 1


def test_full_queue_is_429_with_retry_after(tiny_lm, live_server):
    app, engine = _app(tiny_lm, parallel=1, max_queue=0)
    srv = live_server(app)
    conn, resp = _post(srv.port, _body(stream=True))
    assert resp.readline().startswith(b"data: ")
    conn2, resp2 = _post(srv.port, _body(stream=False, max_tokens=2))
    err = json.loads(resp2.read())["error"]
    assert resp2.status == 429 and resp2.getheader("Retry-After") == "1" and err["type"] == "rate_limit_error"
    conn.close()
    conn2.close()
    assert wait_until(lambda: engine.stats()["active"] == 0, timeout=3)
    conn3, resp3 = _post(srv.port, _body(stream=False, max_tokens=2))   # served again once the slot is free
    assert resp3.status == 200 and json.loads(resp3.read())["usage"]["completion_tokens"] == 2


def test_stopped_engine_is_503(tiny_lm, live_server):
    app, engine = _app(tiny_lm)
    srv = live_server(app)
    engine.shutdown()
    conn, resp = _post(srv.port, _body(stream=False, max_tokens=2))
    assert resp.status == 503 and resp.getheader("Retry-After") == "1"
    assert "error" in json.loads(resp.read())
