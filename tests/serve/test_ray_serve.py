"""Ray Serve: two replicas of the tiny model behind Ray's HTTP proxy on loopback, same routes as uvicorn."""
from __future__ import annotations

import json
import urllib.request

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")

from tests.serve.conftest import CTX, ROOT, free_port, get_json  # noqa: E402


@pytest.mark.slow
def test_two_replicas_behind_the_proxy(tiny_dir, tiny_lm):
    from kiln.serve.ray_app import build
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT),
                                                                            "KILN_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(model=str(tiny_dir), replicas=2, num_cpus=1, parallel=2, ctx=CTX), name="kiln",
                  route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        assert get_json(url + "/health")["status"] == "ok"
        body = json.dumps({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}).encode()
        texts = set()
        for _ in range(6):   # requests spread over both replicas: each must give the same greedy answer
            req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                texts.add(json.loads(r.read())["choices"][0]["text"])
        assert texts == {tiny_lm.generate("The capital of France is", 8, temperature=0, chat=False).text}
        req = urllib.request.Request(url + "/v1/completions", data=b"{bad", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 400
        status = serve.status().applications["kiln"]
        assert status.deployments["kiln"].replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()
