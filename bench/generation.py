"""Generation speed (issue 12): decode tok/s and prefill tok/s at 16/64/256 for Kiln (each weight
format, each activation mode), transformers (fp32) and llama.cpp (`llama-bench`), same weights.

    python -m bench.generation [--formats f32,q8_0,q4_0,q4_1,q4_k_m,int8] [--modes exact,int8]
                               [--prefill 16,64,256] [--new-tokens 64] [--rounds 3] [--threads N]
                               [--peers kiln,transformers,llama.cpp] [--out DIR]
    kiln bench --generation [--quick]            # the same, through the kiln command

Weights: the default model's shipped Q4_1 GGUF (SmolLM2-135M-Instruct) and files made from it
with llama.cpp's quantizer (``llama-quantize --allow-requantize``: F32, Q8_0, Q4_0, Q4_K_M),
kept in ``$KILN_CACHE_DIR/bench-gguf`` (made once). Without ``llama-quantize`` (PATH or
--llama-quantize) only the shipped Q4_1 file is measured, and the others are skipped with a
message. Kiln runs each file's own blocks (``f32``: the F32 file), in the exact (fp32
activations) and int8 (VNNI) modes; ``int8`` is the fp32 model with ``--quantize int8``
(per-channel, no GGUF counterpart). transformers runs the fp32 model (its own KV cache).
llama.cpp runs through ``llama-bench`` (--llama-bench, else the one ``make bench`` builds for
this CPU from the llama-cpp-python source package into build/llamacpp/bin, else PATH), same
files, same threads; it is skipped with a message when absent or when it fails (a SIGILL means
a binary built for another CPU).

Order: format by format, Kiln's modes then llama.cpp on the same file, then transformers.
Method: prefill tok/s = n / (time of a prefill of n tokens into an empty KV cache), each round's
sample the mean of back-to-back prefills filling >= 0.2 s (one 16-token prefill lasts ~20 ms,
where one hiccup of the shared machine moved a single-call sample by half); decode tok/s
= tokens / time of single-token steps after a 16-token prefill; median of --rounds rounds after a
warm-up (llama-bench: its mean of -r repetitions, random tokens, the same lengths). Timings are
only meaningful on a quiet machine. Writes generation.json and generation.md into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Optional

import numpy as np

from .output import log

GGUF_TYPES = {"f32": "F32", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "q4_k_m": "Q4_K_M"}
FORMATS = ("f32", "q8_0", "q4_0", "q4_1", "q4_k_m", "int8")
MODES = ("exact", "int8")
PEERS = ("kiln", "transformers", "llama.cpp")
REPO = Path(__file__).resolve().parents[1]
LOCAL_LLAMA = REPO / "build" / "llamacpp" / "bin"   # where `make bench` builds llama-bench/llama-quantize


def find_tool(name: str, given: Optional[str]) -> Optional[str]:
    if given:
        if not Path(given).is_file():
            raise SystemExit(f"--{name} {given}: no such file")
        return given
    local = LOCAL_LLAMA / name  # built here for this CPU by `make bench`: preferred over PATH
    return str(local) if local.is_file() else shutil.which(name)


def gguf_files(formats, quantize_exe: Optional[str]) -> dict[str, Path]:
    """format → GGUF path: the shipped Q4_1 file and the others requantized from it (made once)."""
    from kiln.cache import cache_dir
    from kiln.models.default import default_model_path
    src = default_model_path()
    out: dict[str, Path] = {}
    for fmt in formats:
        if fmt not in GGUF_TYPES:
            continue
        if fmt == "q4_1":
            out[fmt] = src
            continue
        target = cache_dir() / "bench-gguf" / f"{src.stem.rsplit('.', 1)[0]}.{GGUF_TYPES[fmt]}.gguf"
        if not target.is_file():
            if quantize_exe is None:
                log(f"skipping {GGUF_TYPES[fmt]}: no llama-quantize on PATH (or --llama-quantize) to make it from {src.name}")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            log(f"making {target.name} with {quantize_exe}")
            done = subprocess.run([quantize_exe, "--allow-requantize", str(src), str(tmp), GGUF_TYPES[fmt]],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                log(f"skipping {GGUF_TYPES[fmt]}: llama-quantize failed: {failure(done)}")
                continue
            tmp.replace(target)
        out[fmt] = target
    return out


def failure(done: subprocess.CompletedProcess) -> str:
    """Why a llama.cpp tool failed: its stderr's tail, or the signal that killed it."""
    if done.returncode < 0:
        sig = signal.Signals(-done.returncode).name
        hint = " (built for another CPU? rebuild it here: sh bench/build_llamacpp.sh)" if sig == "SIGILL" else ""
        return f"killed by {sig}{hint}"
    return done.stderr.strip()[-300:] or f"exit status {done.returncode}"


# -- Kiln ---------------------------------------------------------------------------------
def kiln_rows(files: dict[str, Path], formats, modes, prefill, new_tokens, rounds, max_len) -> list[dict]:
    from kiln.models.loading import load_model
    rows = []
    for fmt in formats:
        for mode in modes:
            if fmt == "int8":
                spec, kw, weights = "default", {"dtype": "f32", "quantize": "int8", "act": mode}, "int8 per-channel"
            elif fmt in files:
                spec, kw, weights = files[fmt], {"act": mode}, GGUF_TYPES[fmt]
                if fmt == "f32":
                    if mode != "exact":
                        continue  # no quantized matmul: the mode changes nothing
                    kw = {"dtype": "f32"}
            else:
                continue
            log(f"kiln: {weights}, {mode} activations")
            lm = load_model(spec, max_len=max_len, **kw)
            rows.append({"runtime": "kiln", "weights": weights, "mode": mode,
                         **kiln_speed(lm, prefill, new_tokens, rounds)})
            log(f"  {rows[-1]}")
            del lm
    return rows


def prompt(n: int, vocab: int) -> list[int]:
    return np.random.default_rng(n).integers(100, vocab, n).tolist()


SAMPLE_SECONDS = 0.2


def per_call(fn, min_seconds: float = SAMPLE_SECONDS) -> float:
    """Seconds per call of ``fn``: the mean over back-to-back calls filling ``min_seconds``."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


def kiln_speed(lm, prefill, new_tokens, rounds) -> dict:
    vocab = int(lm.cached_session.graph.tensors[lm.cached_session.graph.outputs[0]].shape[-1])
    out = {"prefill_tok_s": {}}
    dec = lm.decoder()  # one decoder holds the KV cache; each prefill starts it at position 0
    for n in prefill:
        ids = prompt(n, vocab)
        dec.prefill(ids)  # warm-up (plans this length)
        times = [per_call(lambda: dec.prefill(ids)) for _ in range(rounds)]
        out["prefill_tok_s"][n] = n / median(times)
    rates = []
    for r in range(rounds + 1):
        tok = int(np.argmax(dec.prefill(prompt(16, vocab))))
        tok = int(np.argmax(dec.step(tok)))  # warm-up step
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            tok = int(np.argmax(dec.step(tok)))
        if r:
            rates.append(new_tokens / (time.perf_counter() - t0))
    out["decode_tok_s"] = median(rates)
    return out


# -- transformers -------------------------------------------------------------------------
def transformers_row(prefill, new_tokens, rounds, threads) -> dict:
    import torch

    from kiln.models.loading import library_warnings_hidden, load_parts
    torch.set_num_threads(threads)
    with library_warnings_hidden():
        model = load_parts("default", lambda _m: None)[0].model
    vocab = model.config.vocab_size
    out = {"runtime": "transformers", "weights": "F32", "mode": "exact", "prefill_tok_s": {}}
    with torch.inference_mode(), library_warnings_hidden():
        for n in prefill:
            ids = torch.tensor([prompt(n, vocab)])
            model(input_ids=ids, use_cache=True)  # warm-up
            times = [per_call(lambda: model(input_ids=ids, use_cache=True)) for _ in range(rounds)]
            out["prefill_tok_s"][n] = n / median(times)
        rates = []
        for r in range(rounds + 1):
            res = model(input_ids=torch.tensor([prompt(16, vocab)]), use_cache=True)
            past, tok = res.past_key_values, res.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                res = model(input_ids=tok, past_key_values=past, use_cache=True)
                past, tok = res.past_key_values, res.logits[:, -1:].argmax(-1)
            if r:
                rates.append(new_tokens / (time.perf_counter() - t0))
        out["decode_tok_s"] = median(rates)
    return out


# -- llama.cpp ----------------------------------------------------------------------------
def llama_rows(exe: str, files: dict[str, Path], prefill, new_tokens, rounds, threads) -> list[dict]:
    rows = []
    for fmt, path in files.items():
        cmd = [exe, "-m", str(path), "-p", ",".join(map(str, prefill)), "-n", str(new_tokens), "-t", str(threads),
               "-r", str(max(rounds, 1)), "-o", "json"]
        log(f"llama.cpp: {' '.join(cmd)}")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            log(f"  llama-bench failed on {path.name}: {failure(done)}")
            continue
        row = {"runtime": "llama.cpp", "weights": GGUF_TYPES[fmt], "mode": "int8 (its kernels)" if fmt != "f32"
               else "exact", "prefill_tok_s": {}}
        for test in json.loads(done.stdout):
            if int(test["n_gen"]) > 0:
                row["decode_tok_s"] = float(test["avg_ts"])
            else:
                row["prefill_tok_s"][int(test["n_prompt"])] = float(test["avg_ts"])
        rows.append(row)
        log(f"  {row}")
    return rows


def markdown(rows: list[dict], prefill, info: dict) -> str:
    llama = {r["weights"]: r.get("decode_tok_s") for r in rows if r["runtime"] == "llama.cpp"}
    lines = [f"threads {info['threads']}, {info['new_tokens']} decode tokens, {info['rounds']} rounds; "
             f"{info['when']}; {info['cpu']}", "",
             "| runtime | weights | activations | decode tok/s | vs llama.cpp | prefill tok/s at "
             + " / ".join(map(str, prefill)) + " |", "|---|---|---|---:|---:|---|"]
    for r in rows:
        ref = llama.get(r["weights"]) if r["runtime"] == "kiln" else None
        ratio = f"{r['decode_tok_s'] / ref:.2f}×" if ref else ""
        pre = " / ".join(f"{r['prefill_tok_s'].get(n, float('nan')):.0f}" for n in prefill)
        lines.append(f"| {r['runtime']} | {r['weights']} | {r['mode']} | {r.get('decode_tok_s', float('nan')):.1f} "
                     f"| {ratio} | {pre} |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """Options; ``prefix`` ("gen-") keeps them apart from `kiln bench`'s own."""
    p.add_argument(f"--{prefix}formats", default=",".join(FORMATS), help=f"weight formats (of {', '.join(FORMATS)})")
    p.add_argument(f"--{prefix}modes", default=",".join(MODES), help="Kiln activation modes (exact, int8)")
    p.add_argument(f"--{prefix}prefill", default="16,64,256", help="prefill lengths")
    p.add_argument(f"--{prefix}new-tokens", type=int, default=64, help="decode steps timed per round")
    p.add_argument(f"--{prefix}peers", default=",".join(PEERS), help="runtimes (kiln, transformers, llama.cpp)")
    p.add_argument("--llama-bench", default=None, help="llama-bench (default: build/llamacpp/bin, then PATH)")
    p.add_argument("--llama-quantize", default=None, help="llama-quantize (default: build/llamacpp/bin, then PATH)")


def run(args: argparse.Namespace, *, prefix: str = "") -> int:
    get = lambda name: getattr(args, (prefix + name).replace("-", "_"))  # noqa: E731
    formats, modes = get("formats").split(","), get("modes").split(",")
    peers = get("peers").split(",")
    prefill = [int(x) for x in get("prefill").split(",")]
    new_tokens, rounds = get("new-tokens"), max(1, args.rounds or 3)
    for bad in set(formats) - set(FORMATS):
        raise SystemExit(f"unknown format {bad!r}: one of {', '.join(FORMATS)}")
    threads = int(args.threads or os.environ.get("KILN_NUM_THREADS") or len(os.sched_getaffinity(0)))
    os.environ["KILN_NUM_THREADS"] = str(threads)
    files = gguf_files(formats, find_tool("llama-quantize", args.llama_quantize))
    max_len = max(prefill + [16 + new_tokens + 2]) + 8
    exe = None
    if "llama.cpp" in peers:
        exe = find_tool("llama-bench", args.llama_bench)
        if exe is None:
            log("skipping llama.cpp: no llama-bench on PATH, in build/llamacpp/bin (`make bench`) or --llama-bench")
    # format by format, Kiln then llama.cpp on the same file right after it: on a shared
    # machine whose speed drifts over the run, a pair minutes apart compares better than
    # all of Kiln followed by all of llama.cpp (the table keeps that grouping)
    kiln, llama = [], []
    for fmt in formats:
        if "kiln" in peers:
            kiln += kiln_rows(files, [fmt], modes, prefill, new_tokens, rounds, max_len)
        if exe is not None and fmt in files:
            llama += llama_rows(exe, {fmt: files[fmt]}, prefill, new_tokens, rounds, threads)
    rows: list[dict] = kiln
    if "transformers" in peers:
        log("transformers: fp32")
        rows.append(transformers_row(prefill, new_tokens, rounds, threads))
    rows += llama
    from bench import machine
    info = {"threads": threads, "new_tokens": new_tokens, "rounds": rounds,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": machine.cpu().get("model", "")}
    out = Path(args.out or REPO / "bench" / "out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    table = markdown(rows, prefill, info)
    (out / "generation.md").write_text(table)
    print(table)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: all cores)")
    p.add_argument("--out", default=None, help="output directory (default bench/out)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
