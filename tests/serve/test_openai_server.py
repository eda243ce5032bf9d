"""The real `kiln serve` command, driven by the official openai client and raw HTTP (loopback only)."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import urllib.parse

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from tests.serve.conftest import CTX, get_json  # noqa: E402

PROMPTS = ["The capital of France is", "Hello world, how are you", "Tokens are pieces of words;",
           "The quick brown fox", "Paris, London, Berlin and"]


@pytest.fixture(scope="module")
def client(kiln_serve):
    return openai.OpenAI(base_url=kiln_serve + "/v1", api_key="unused", timeout=60, max_retries=0)


def _raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), data


def _complete(client, prompt, stream=False, max_tokens=16):
    if not stream:
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0)
        return r.choices[0].text, r.choices[0].finish_reason
    text, finish = "", None
    for ch in client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                        stream=True):
        text += ch.choices[0].text
        finish = ch.choices[0].finish_reason or finish
    return text, finish


def test_models_and_health(client, kiln_serve):
    assert [m.id for m in client.models.list().data] == [get_json(kiln_serve + "/health")["model"]]
    assert get_json(kiln_serve + "/health")["slots"] == 2
    assert get_json(kiln_serve + "/health")["runner"] == "batched"     # these tests run batched decoding


def test_completion_matches_generate(client, tiny_lm):
    r = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, temperature=0)
    ref = tiny_lm.generate(PROMPTS[0], 12, temperature=0, chat=False)
    assert r.choices[0].text == ref.text
    assert r.usage.prompt_tokens == len(tiny_lm.encode(PROMPTS[0], chat=False))
    assert r.usage.completion_tokens == len(ref.ids)
    assert r.choices[0].finish_reason == ("stop" if ref.stats.stop_reason == "eos" else "length")


def test_stream_equals_non_stream(client):
    for p in PROMPTS[:2]:
        assert _complete(client, p, stream=True) == _complete(client, p, stream=False)


def test_chat_stream_and_non_stream(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    text, finish, usage = "", None, None
    for ch in client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True,
                                             stream_options={"include_usage": True}):
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == r.choices[0].message.content and finish == r.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens


def test_concurrent_greedy_requests_equal_their_single_stream_output(client):
    alone = [_complete(client, p, stream=bool(i % 2)) for i, p in enumerate(PROMPTS)]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:   # 5 requests on 2 slots: some queue
        together = list(pool.map(lambda ip: _complete(client, ip[1], stream=bool(ip[0] % 2)), enumerate(PROMPTS)))
    assert together == alone


def test_sampling_with_a_seed_is_reproducible(client):
    kw = dict(model="tiny", prompt=PROMPTS[1], max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_stop_strings(client):
    full, _ = _complete(client, PROMPTS[0], max_tokens=24)
    if len(full) < 4:
        pytest.skip("the tiny model's answer is too short to pick a stop string from")
    stop = full[2:4]
    r = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"prompt": "hi", "max_tokens": "5"}).encode(), "max_tokens"),
    (json.dumps({"prompt": "hi", "temperature": "hot"}).encode(), "temperature"),
    (json.dumps({"prompt": 5}).encode(), "prompt"),
    (json.dumps({"max_tokens": 3}).encode(), "prompt"),
    (json.dumps({"prompt": "hi", "n": 2}).encode(), "n"),
    (json.dumps({"prompt": list(range(1, CTX + 5))}).encode(), "context"),
    (json.dumps({"prompt": [1, 2, 99999]}).encode(), "vocabulary"),
    (json.dumps({"prompt": "hi", "max_tokens": 10 * CTX}).encode(), "max_tokens"),
])
def test_bad_completion_requests_are_400(kiln_serve, body, needle):
    status, headers, data = _raw(kiln_serve, "POST", "/v1/completions", body)
    err = json.loads(data)["error"]
    assert status == 400 and needle in err["message"] and err["type"] == "invalid_request_error"


def test_bad_chat_requests_are_400(kiln_serve):
    for body in ({"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]}, {"messages": "hi"},
                 {"messages": [{"role": "user", "content": 3}]}):
        status, _, data = _raw(kiln_serve, "POST", "/v1/chat/completions", json.dumps(body).encode())
        assert status == 400 and "error" in json.loads(data), body


def test_oversized_body_is_413_and_unknown_route_404(kiln_serve):
    status, _, data = _raw(kiln_serve, "POST", "/v1/completions", b'{"prompt": "' + b"a" * 70000 + b'"}')
    assert status == 413 and "larger than" in json.loads(data)["error"]["message"]
    status, _, data = _raw(kiln_serve, "GET", "/v1/nothing")
    assert status == 404 and "error" in json.loads(data)


def test_metrics_parse_as_prometheus_text(kiln_serve, client):
    from prometheus_client.parser import text_string_to_metric_families
    client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=4, temperature=0)
    status, headers, data = _raw(kiln_serve, "GET", "/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(data.decode())}
    for name in ("kiln_requests", "kiln_prompt_tokens", "kiln_generation_tokens", "kiln_time_to_first_token_seconds",
                 "kiln_inter_token_latency_seconds", "kiln_queue_depth", "kiln_active_slots"):
        assert name in fams, name
    gen = sum(s.value for s in fams["kiln_generation_tokens"].samples if s.name == "kiln_generation_tokens_total")
    assert gen >= 4
    ok = [s for s in fams["kiln_requests"].samples
          if s.name == "kiln_requests_total" and s.labels == {"route": "/v1/completions", "status": "200"}]
    assert ok and ok[0].value >= 1
