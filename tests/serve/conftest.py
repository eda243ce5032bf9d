"""Fixtures for the serving tests: a tiny random llama (HF folder + tokenizer), loaded once, and a live
uvicorn server on a free loopback port (in-process, or the real `kiln serve` subprocess)."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CTX = 128


def _models_conftest():
    spec = importlib.util.spec_from_file_location("kiln_serve_tests_models", ROOT / "tests" / "models" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    m = _models_conftest()
    from kiln.models.tokenizer import train_bpe_tokenizer
    tok = train_bpe_tokenizer(m.SENTENCES, vocab_size=320)
    folder = tmp_path_factory.mktemp("serve-tiny")
    m.make_tiny_model("llama", len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    from kiln.models import load_model
    return load_model(str(tiny_dir), max_len=CTX, executor=_executor())


def _executor() -> str:
    from kiln.backends import clib
    return "compiled" if clib.available() else "reference"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_until(pred, timeout: float = 10.0, every: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return pred()


class LiveServer:
    """uvicorn serving ``app`` in a thread on 127.0.0.1 (stop() shuts it down and runs the lifespan end)."""

    def __init__(self, app):
        import uvicorn
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        if not wait_until(lambda: self.server.started, timeout=30):
            raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_server():
    servers: list[LiveServer] = []

    def start(app) -> LiveServer:
        servers.append(LiveServer(app))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def kiln_serve(tiny_dir):
    """The real `kiln serve` command in a subprocess (2 slots, queue 8): yields its base URL."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), KILN_NUM_THREADS="2")
    proc = subprocess.Popen([sys.executable, "-m", "kiln.cli", "serve", "--model", str(tiny_dir), "--port", str(port),
                             "--parallel", "2", "--ctx", str(CTX), "--max-queue", "8", "--prefill-chunk", "16",
                             "--max-body-bytes", "65536", "--executor", _executor(), "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"kiln serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            return get_json(url + "/health", timeout=1)["status"] == "ok"
        except OSError:
            return False

    try:
        if not wait_until(up, timeout=180, every=0.25):
            raise RuntimeError("kiln serve did not come up in 180 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
