"""Startup cost of `kiln generate` (cold and warm compile cache) next to `llama-cli` on the same GGUF.

    python bench/startup.py [--model default] [--runs 3] [--new-tokens 8] [--llama-cli PATH] [--gguf PATH]

Each run is a fresh process under `/usr/bin/time -v`. Per run it records
  * wall time to the first token: from starting the process to the first byte of the answer on
    stdout (Kiln streams the answer to stdout and everything else to stderr). llama-cli prints
    its banner on stdout too, so there it is the process wall time minus the decode steps at the
    generation rate llama-cli reports (or its load + prompt eval times, where it prints them);
  * wall time of the whole answer (``--new-tokens``, default 8): the process's wall time;
  * peak RSS (``Maximum resident set size``);
  * for Kiln also its own time to first token (load + prefill, measured inside the process).
"cold" runs start with an empty compile cache (a fresh $KILN_CACHE_DIR), "warm" runs reuse the
entry the first cold run wrote. llama-cli is taken from --llama-cli, else PATH, else the llama.cpp
build under /work/llamacpp, and skipped when none exists; when it dies on a signal it is rerun
with `--no-repack` (some builds crash in weight repacking on some CPUs: SIGILL in libggml-cpu)
and the table says so. The machine's load is printed with the results: numbers from a busy
machine are not comparable (llama.cpp's OpenMP threads spin-wait and suffer most).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
LLAMA_BUILDS = sorted(Path("/work/llamacpp").glob("*/vendor/llama.cpp/build/bin/llama-cli"))
TIME = "/usr/bin/time"
LLAMA_FALLBACK = ["--no-repack"]


class RunFailed(Exception):
    def __init__(self, msg: str, signaled: bool = False):
        super().__init__(msg)
        self.signaled = signaled


def timed(cmd: list[str], env: dict) -> dict:
    """Run ``cmd`` under /usr/bin/time -v: wall seconds, seconds to the first stdout byte, peak RSS
    (MiB), stdout and stderr text."""
    use_time = Path(TIME).is_file()
    full = [TIME, "-v", *cmd] if use_time else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    first: list[float] = []
    chunks: list[bytes] = []

    def read_stdout() -> None:
        while True:
            b = proc.stdout.read1(4096)
            if not b:
                return
            if not first and b.strip():
                first.append(time.perf_counter() - t0)
            chunks.append(b)
    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        err = proc.stderr.read().decode(errors="replace")
        proc.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RunFailed(f"{' '.join(cmd)}: no answer in 1800 s") from None
    reader.join()
    wall = time.perf_counter() - t0
    signaled = "Command terminated by signal" in err or proc.returncode < 0
    if proc.returncode != 0:
        raise RunFailed(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-1500:]}", signaled)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    return {"wall_s": wall, "first_out_s": first[0] if first else float("nan"),
            "rss_mib": int(rss.group(1)) / 1024 if rss else float("nan"), "stderr": err,
            "stdout": b"".join(chunks).decode(errors="replace")}


def kiln_run(model: str, prompt: str, new_tokens: int, cache_dir: str) -> dict:
    env = dict(os.environ, KILN_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT))
    r = timed([sys.executable, "-m", "kiln.cli", "generate", prompt, "--model", model, "-n", str(new_tokens)], env)
    m = re.search(r"time to first token (\d+) ms", r["stderr"])
    r["inner_ttft_s"] = int(m.group(1)) / 1e3 if m else float("nan")
    r["ttft_s"] = r["first_out_s"]
    return r


def find_llama_cli(given: Optional[str]) -> Optional[str]:
    if given:
        if not Path(given).is_file():
            raise SystemExit(f"--llama-cli {given}: no such file")
        return given
    on_path = shutil.which("llama-cli")
    if on_path:
        return on_path
    return str(LLAMA_BUILDS[-1]) if LLAMA_BUILDS else None


def llama_run(exe: str, gguf: str, prompt: str, new_tokens: int, threads: int, extra: list[str]) -> dict:
    # -st: one chat turn (the chat template applied, as kiln generate does by default), then exit.
    r = timed([exe, "-m", gguf, "-p", prompt, "-n", str(new_tokens), "-t", str(threads), "-st",
               "--temp", "0", "--no-warmup", "--perf", "--simple-io", *extra], dict(os.environ))
    text = r["stdout"] + r["stderr"]
    load = re.search(r"load time\s*=\s*([\d.]+) ms", text)
    prompt_eval = re.search(r"prompt eval time\s*=\s*([\d.]+) ms", text)
    gen = re.search(r"Generation:\s*([\d.]+) t/s", text)
    if load and prompt_eval:  # older llama-cli: llama_perf lines
        r["ttft_s"] = (float(load.group(1)) + float(prompt_eval.group(1))) / 1e3
    elif gen and float(gen.group(1)) > 0:  # newer llama-cli prints only rates: wall minus the decode steps
        r["ttft_s"] = r["wall_s"] - (new_tokens - 1) / float(gen.group(1))
    else:
        r["ttft_s"] = float("nan")
    return r


def llama_runs(exe: str, gguf: str, prompt: str, new_tokens: int, threads: int, runs: int) -> tuple[list, str]:
    """(runs, the flags that worked): the plain command first, then LLAMA_FALLBACK after a crash."""
    extra: list[str] = []
    out = []
    for _ in range(runs):
        try:
            out.append(llama_run(exe, gguf, prompt, new_tokens, threads, extra))
        except RunFailed as e:
            if not e.signaled or extra:
                raise
            print(f"  llama-cli crashed ({str(e).splitlines()[0][:120]}); retrying with {' '.join(LLAMA_FALLBACK)}",
                  flush=True)
            extra = list(LLAMA_FALLBACK)
            out.append(llama_run(exe, gguf, prompt, new_tokens, threads, extra))
    return out, " ".join(extra)


def summarize(label: str, runs: list[dict]) -> str:
    med = {k: statistics.median(r.get(k, float("nan")) for r in runs)
           for k in ("ttft_s", "wall_s", "rss_mib", "inner_ttft_s")}
    inner = f"  (in-process {med['inner_ttft_s']:5.2f} s)" if runs and "inner_ttft_s" in runs[0] else ""
    return (f"{label:34s} runs {len(runs)}  first token {med['ttft_s']:6.2f} s  whole answer {med['wall_s']:6.2f} s  "
            f"peak RSS {med['rss_mib']:7.1f} MiB{inner}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="what kiln generate runs (default | HF folder | .gguf)")
    p.add_argument("--gguf", default=None, help="the GGUF llama-cli runs (default: the default model's)")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--runs", type=int, default=3, help="warm runs (and llama-cli runs)")
    p.add_argument("--cold-runs", type=int, default=1)
    p.add_argument("--llama-cli", default=None, help="path of llama-cli (default: PATH, then the llama.cpp build)")
    p.add_argument("--no-llama", action="store_true", help="skip llama-cli")
    args = p.parse_args(argv)
    if args.cold_runs < 1 or args.runs < 1:
        p.error("--cold-runs and --runs must be at least 1 (warm runs reuse the first cold run's entry)")
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs; wall times in seconds, medians", flush=True)
    cold, warm = [], []
    with tempfile.TemporaryDirectory(prefix="kiln-startup-") as tmp:
        for i in range(args.cold_runs):
            cache_dir = os.path.join(tmp, f"cold{i}")
            cold.append(kiln_run(args.model, args.prompt, args.new_tokens, cache_dir))
            print(f"  kiln cold run {i}: {cold[-1]['wall_s']:.2f} s", flush=True)
        for i in range(args.runs):
            warm.append(kiln_run(args.model, args.prompt, args.new_tokens, os.path.join(tmp, "cold0")))
            print(f"  kiln warm run {i}: {warm[-1]['wall_s']:.2f} s", flush=True)
    answer = warm[-1]["stdout"].strip().replace("\n", " ")[:80]
    lines = [summarize("kiln generate (cold cache)", cold), summarize("kiln generate (warm cache)", warm),
             f"  kiln's answer: {answer!r}"]
    exe = None if args.no_llama else find_llama_cli(args.llama_cli)
    if exe is None:
        lines.append("llama-cli: skipped" if args.no_llama else "llama-cli: not found (pass --llama-cli PATH)")
    else:
        gguf = args.gguf
        if gguf is None:
            sys.path.insert(0, str(ROOT))
            from kiln.models.default import default_model_path
            gguf = str(default_model_path())
        from kiln.config import num_threads
        try:
            runs, flags = llama_runs(exe, gguf, args.prompt, args.new_tokens, num_threads(), args.runs)
            lines.append(summarize(f"llama-cli{' ' + flags if flags else ''}", runs))
        except RunFailed as e:
            lines.append(f"llama-cli ({exe}): {str(e).splitlines()[0][:300]}")
    print("\n".join(lines))
    print(f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
