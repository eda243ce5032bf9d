"""Startup cost of `kiln generate` (cold and warm compile cache) next to `llama-cli`.

    python bench/startup.py [--model default] [--runs 3] [--new-tokens 8] [--llama-cli PATH] [--gguf PATH]

For each run it starts a fresh process under `/usr/bin/time -v` and reports wall time, time to first
token (Kiln: its summary line, load + prefill; llama-cli: its load time + prompt eval time, or, where it
prints only rates, wall time minus the decode steps at its generation rate) and peak
RSS. "cold" runs start with an empty compile cache (a fresh $KILN_CACHE_DIR), "warm" runs reuse the
entry the first cold run wrote. llama-cli is taken from --llama-cli, else PATH, else the llama.cpp
build under /work/llamacpp; it is skipped when none exists. The machine's load is printed with the
results: numbers from a busy machine are not comparable.
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
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
LLAMA_BUILDS = sorted(Path("/work/llamacpp").glob("*/vendor/llama.cpp/build/bin/llama-cli"))
TIME = "/usr/bin/time"


class RunFailed(Exception):
    pass


def timed(cmd: list[str], env: dict) -> dict:
    """Run ``cmd`` under /usr/bin/time -v: wall seconds, peak RSS (MiB), stderr text."""
    use_time = Path(TIME).is_file()
    full = [TIME, "-v", *cmd] if use_time else cmd
    t0 = time.perf_counter()
    done = subprocess.run(full, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RunFailed(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-1500:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {"wall_s": wall, "rss_mib": int(rss.group(1)) / 1024 if rss else float("nan"), "stderr": done.stderr,
            "stdout": done.stdout}


def kiln_run(model: str, prompt: str, new_tokens: int, cache_dir: str) -> dict:
    env = dict(os.environ, KILN_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT))
    r = timed([sys.executable, "-m", "kiln.cli", "generate", prompt, "--model", model, "-n", str(new_tokens)], env)
    m = re.search(r"time to first token (\d+) ms", r["stderr"])
    r["ttft_s"] = int(m.group(1)) / 1e3 if m else float("nan")
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


def llama_run(exe: str, gguf: str, prompt: str, new_tokens: int, threads: int) -> dict:
    # -st: one chat turn (the chat template applied, as kiln generate does by default), then exit.
    r = timed([exe, "-m", gguf, "-p", prompt, "-n", str(new_tokens), "-t", str(threads), "-st",
               "--temp", "0", "--no-warmup", "--perf", "--simple-io"], dict(os.environ))
    load = re.search(r"load time\s*=\s*([\d.]+) ms", r["stderr"])
    prompt_eval = re.search(r"prompt eval time\s*=\s*([\d.]+) ms", r["stderr"])
    gen = re.search(r"Generation:\s*([\d.]+) t/s", r["stdout"] + r["stderr"])
    if load and prompt_eval:  # older llama-cli: llama_perf lines
        r["ttft_s"] = (float(load.group(1)) + float(prompt_eval.group(1))) / 1e3
    elif gen and float(gen.group(1)) > 0:  # newer llama-cli prints only rates: wall minus the decode steps
        r["ttft_s"] = r["wall_s"] - (new_tokens - 1) / float(gen.group(1))
    else:
        r["ttft_s"] = float("nan")
    return r


def summarize(label: str, runs: list[dict]) -> str:
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "ttft_s", "rss_mib")}
    return (f"{label:28s} runs {len(runs)}  wall {med['wall_s']:6.2f} s  time to first token "
            f"{med['ttft_s']:6.2f} s  peak RSS {med['rss_mib']:7.1f} MiB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="what kiln generate runs (default | HF folder | .gguf)")
    p.add_argument("--gguf", default=None, help="the GGUF llama-cli runs (default: the default model's)")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--runs", type=int, default=3, help="warm runs (and llama-cli runs)")
    p.add_argument("--cold-runs", type=int, default=1)
    p.add_argument("--llama-cli", default=None, help="path of llama-cli (default: PATH, then the llama.cpp build)")
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    cold, warm = [], []
    with tempfile.TemporaryDirectory(prefix="kiln-startup-") as tmp:
        for i in range(args.cold_runs):
            cache_dir = os.path.join(tmp, f"cold{i}")
            cold.append(kiln_run(args.model, args.prompt, args.new_tokens, cache_dir))
            print(f"  cold run {i}: {cold[-1]['wall_s']:.2f} s", flush=True)
        for i in range(args.runs):
            warm.append(kiln_run(args.model, args.prompt, args.new_tokens, os.path.join(tmp, "cold0")))
            print(f"  warm run {i}: {warm[-1]['wall_s']:.2f} s", flush=True)
    lines = [summarize("kiln generate (cold cache)", cold), summarize("kiln generate (warm cache)", warm)]
    exe = find_llama_cli(args.llama_cli)
    if exe is None:
        lines.append("llama-cli: not found (pass --llama-cli PATH)")
    else:
        gguf = args.gguf
        if gguf is None:
            from kiln.models.default import default_model_path
            gguf = str(default_model_path())
        from kiln.config import num_threads
        try:
            runs = [llama_run(exe, gguf, args.prompt, args.new_tokens, num_threads()) for _ in range(args.runs)]
            lines.append(summarize("llama-cli", runs))
        except RunFailed as e:
            lines.append(f"llama-cli ({exe}): {str(e).splitlines()[0][:300]}")
    print("\n".join(lines))
    print(f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
