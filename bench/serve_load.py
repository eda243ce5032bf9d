"""Load test for `kiln serve` (and optionally llama-server on the same GGUF), loopback only, bounded.

    python bench/serve_load.py                       # default model, 1/2/4/8 concurrent streams
    python bench/serve_load.py --chaos               # also: overflow, hang-ups, malformed requests
    python bench/serve_load.py --runner per-slot     # kiln serve without batched decoding, to compare

Per concurrency level: completion tokens/s of all streams (end to end, including prefill), aggregate
decode tokens/s (tokens after each request's first / wall time) and its ratio to the single-stream level,
time to first token and inter-token latency p50/p99 (client side, from the SSE chunks), and errors.
kiln serve gets as many slots as the largest level (--parallel to override). When `llama-server` is on
PATH (or --llama-server names it) the same load runs against `llama-server --parallel 4` on the same GGUF
(--llama-parallel to change, --no-llama to skip).
Chaos mode checks that the server keeps serving: greedy streams running next to hang-ups, malformed
requests and a queue overflow give the same text as alone, 400/429 come back as they should, and every
slot is free afterwards. Exit status 1 if a chaos check fails.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a refrigerator works.",
           "List five facts about the Moon.", "What is the capital of France, and why is it famous?",
           "Describe a walk through a forest in autumn.", "How do airplanes stay in the air?",
           "Give three tips for learning a new language.", "What happens when water boils?"]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {url} did not become healthy in {timeout:.0f} s")


def start_kiln(model: str, parallel: int, ctx: int, max_queue: int, log, runner: str = "batched",
               dtype: str = "native") -> tuple[str, subprocess.Popen]:
    port = free_port()
    cmd = [sys.executable, "-m", "kiln.cli", "serve", "--model", model, "--port", str(port), "--parallel",
           str(parallel), "--ctx", str(ctx), "--max-queue", str(max_queue),
           "--runner", runner, "--dtype", dtype,
           "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return f"http://127.0.0.1:{port}", subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)


def start_llama(binary: str, gguf: str, parallel: int, ctx: int, log) -> tuple[str, subprocess.Popen]:
    port = free_port()
    cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "--parallel", str(parallel),
           "-c", str(ctx * parallel)]
    return f"http://127.0.0.1:{port}", subprocess.Popen(cmd, stdout=log, stderr=log)


def post(url: str, body: bytes, timeout: float = 300) -> tuple[int, dict, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), data


def stream(url: str, prompt: str, max_tokens: int, hang_up_after: int = 0, timeout: float = 300) -> dict:
    """One streamed greedy chat request: text, token count, TTFT and the gaps between chunks (seconds)."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    out = {"status": r.status, "text": "", "tokens": 0, "ttft": None, "gaps": [], "chunks": 0}
    if r.status != 200:
        out["error"] = r.read().decode(errors="replace")
        conn.close()
        return out
    last = None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            if line == b"data: [DONE]":
                break
            continue
        msg = json.loads(line[6:])
        if msg.get("usage"):
            out["tokens"] = msg["usage"]["completion_tokens"]
        for c in msg.get("choices", []):
            piece = (c.get("delta") or {}).get("content") or ""
            if piece:
                now = time.perf_counter()
                if last is None:
                    out["ttft"] = now - t0
                else:
                    out["gaps"].append(now - last)
                last = now
                out["text"] += piece
                out["chunks"] += 1
        if hang_up_after and out["chunks"] >= hang_up_after:
            conn.sock.close()   # hang up mid-stream
            out["hung_up"] = True
            break
    conn.close()
    out["tokens"] = out["tokens"] or out["chunks"]
    return out


def stream_retrying(url: str, prompt: str, max_tokens: int, tries: int = 60) -> dict:
    """stream(), retried after Retry-After while the server answers 429."""
    for _ in range(tries):
        r = stream(url, prompt, max_tokens)
        if r["status"] != 429:
            return r
        time.sleep(1.0)
    return r


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def load_level(url: str, streams: int, per_stream: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        jobs = [pool.submit(lambda i: [stream(url, PROMPTS[(i + k) % len(PROMPTS)], max_tokens)
                                       for k in range(per_stream)], i) for i in range(streams)]
        results = [r for j in jobs for r in j.result()]
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    decode = sum(max(0, r["tokens"] - 1) for r in ok)
    return {"streams": streams, "requests": len(results), "errors": len(results) - len(ok),
            "tok_s": sum(r["tokens"] for r in ok) / wall, "decode_tok_s": decode / wall,
            "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
            "itl_p50": pct(gaps, 50), "itl_p99": pct(gaps, 99)}


def run_table(name: str, url: str, levels: list[int], per_stream: int, max_tokens: int) -> list[dict]:
    """Print the table a row at a time (a slow level still leaves the earlier rows on screen). A short
    unreported warm-up at each level first: the server plans each new batch shape once, on first use."""
    for c in levels:
        load_level(url, c, 1, 4)
    print(f"\n{name}\n{'streams':>7} {'reqs':>5} {'err':>4} {'tok/s':>8} {'decode':>8} {'x1':>5} {'TTFT p50':>9} "
          f"{'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}", flush=True)
    base = None
    rows = []
    for c in levels:
        r = load_level(url, c, per_stream, max_tokens)
        rows.append(r)
        base = r["decode_tok_s"] if base is None and c == 1 else base
        ratio = r["decode_tok_s"] / base if base else float("nan")
        print(f"{r['streams']:>7} {r['requests']:>5} {r['errors']:>4} {r['tok_s']:>8.1f} {r['decode_tok_s']:>8.1f} "
              f"{ratio:>5.2f} "
              f"{1e3 * r['ttft_p50']:>7.0f}ms {1e3 * r['ttft_p99']:>7.0f}ms "
              f"{1e3 * r['itl_p50']:>6.1f}ms {1e3 * r['itl_p99']:>6.1f}ms", flush=True)
    return rows


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        return json.loads(r.read())


def chaos(url: str, parallel: int, max_tokens: int) -> list[str]:
    """Returns the failed checks (empty: all passed). The server must run with a small --max-queue."""
    failures: list[str] = []
    good = PROMPTS[:parallel]
    alone = [stream(url, p, max_tokens)["text"] for p in good]
    bad_bodies = [b"{oops", b"[]", json.dumps({"messages": "hi"}).encode(),
                  json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}).encode()]
    flood_body = json.dumps({"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": max_tokens,
                             "temperature": 0}).encode()
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        goods = [pool.submit(stream_retrying, url, p, max_tokens) for p in good]
        hangups = [pool.submit(stream, url, PROMPTS[-1 - i % 4], max_tokens, 2) for i in range(parallel)]
        bads = [pool.submit(post, url, b) for b in bad_bodies * 3]
        floods = [pool.submit(post, url, flood_body) for _ in range(4 * parallel + 8)]
        together = [g.result()["text"] for g in goods]
        bad_status = [b.result()[0] for b in bads]
        flood = [f.result() for f in floods]
        [h.result() for h in hangups]
    if together != alone:
        failures.append("greedy streams next to chaos differ from their output alone")
    if any(s != 400 for s in bad_status):
        failures.append(f"malformed requests got {sorted(set(bad_status))}, expected 400")
    codes = sorted({s for s, _, _ in flood})
    if 429 not in codes:
        failures.append(f"no 429 under overflow (status codes {codes})")
    if any(s == 429 and h.get("retry-after", h.get("Retry-After")) is None for s, h, _ in flood):
        failures.append("a 429 without Retry-After")
    if any(s not in (200, 429) for s in codes):
        failures.append(f"unexpected status under overflow: {codes}")
    end = time.monotonic() + 60
    while time.monotonic() < end and (health(url)["active"] or health(url)["queued"]):
        time.sleep(0.2)
    h = health(url)
    if h["active"] or h["queued"]:
        failures.append(f"slots not all free after the chaos: {h}")
    if stream(url, good[0], max_tokens)["text"] != alone[0]:
        failures.append("the server answers differently after the chaos")
    return failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="what `kiln serve --model` gets (default: SmolLM2-135M GGUF)")
    ap.add_argument("--url", default=None, help="use a running kiln server instead of starting one")
    ap.add_argument("--parallel", type=int, default=None, help="kiln serve slots (default: the largest level)")
    ap.add_argument("--runner", default="batched", choices=["batched", "per-slot"], help="kiln serve --runner")
    ap.add_argument("--dtype", default="native", choices=["native", "f32"], help="kiln serve --dtype (GGUF weights)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--levels", default="1,2,4,8", help="concurrent streams per level")
    ap.add_argument("--per-stream", type=int, default=2, help="sequential requests per stream and level")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--chaos", action="store_true")
    ap.add_argument("--llama-server", default=shutil.which("llama-server"),
                    help="path to llama-server (default: the one on PATH): run the same load on it")
    ap.add_argument("--llama-parallel", type=int, default=4, help="llama-server --parallel (default 4)")
    ap.add_argument("--no-llama", action="store_true", help="skip llama-server even when it is on PATH")
    ap.add_argument("--startup-timeout", type=float, default=900)
    ap.add_argument("--log", default="/tmp/serve_load.log")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    args.parallel = args.parallel or max(levels)
    procs: list[subprocess.Popen] = []
    failures: list[str] = []
    with open(args.log, "a") as log:
        try:
            url = args.url
            if url is None:
                url, proc = start_kiln(args.model, args.parallel, args.ctx, max_queue=2 * max(levels), log=log,
                                       runner=args.runner, dtype=args.dtype)
                procs.append(proc)
                wait_health(url, proc, args.startup_timeout)
            run_table(f"kiln serve --parallel {args.parallel} --runner {args.runner} ({health(url)['model']})", url,
                      levels,
                      args.per_stream, args.max_tokens)
            if args.chaos:
                for p in procs:
                    p.terminate()
                    p.wait(30)
                url, proc = start_kiln(args.model, args.parallel, args.ctx, max_queue=2, log=log, runner=args.runner,
                                       dtype=args.dtype)
                procs.append(proc)
                wait_health(url, proc, args.startup_timeout)
                failures = chaos(url, args.parallel, args.max_tokens)
                print("\nchaos: " + ("all checks passed" if not failures else "FAILED: " + "; ".join(failures)),
                      flush=True)
            if args.llama_server and not args.no_llama:
                gguf = args.model
                if gguf == "default":
                    from kiln.models.default import default_model_path
                    gguf = str(default_model_path())
                lurl, lproc = start_llama(args.llama_server, gguf, args.llama_parallel, args.ctx, log)
                procs.append(lproc)
                try:
                    wait_health(lurl, lproc, 300)
                except SystemExit as e:   # a llama-server that cannot run here is a row of its own, not the end
                    print(f"\nllama-server did not start ({e}; its output is in {args.log})", flush=True)
                    return 1 if failures else 0
                run_table(f"llama-server --parallel {args.llama_parallel} ({Path(gguf).name})", lurl, levels,
                          args.per_stream, args.max_tokens)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
