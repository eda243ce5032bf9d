"""Decode-shaped GEMV (M = 1) through the quantized kernels vs Kiln's fp32 matmul.

    python -m bench.quant_gemv [--threads 1,2] [--reps 5] [--json out.json]

Shapes are SmolLM2-135M's (hidden 576, FFN 1536, 30 layers, vocabulary 49152, tied head).
Each per-layer shape rotates over 30 distinct weight copies, as a decode step does, so the
weights come from memory / the last-level cache rather than L2; the LM head is one copy.

Per format, shape, activation mode and thread count: median µs per GEMV (Python call
overhead, measured on a tiny call of the same kind, subtracted), GB/s of weight bytes read,
and, where the format can hold every layer (K = 576 is not a multiple of the 256-element
K-quant block), the tokens/s-equivalent of all of a decode step's matmuls:
1 / (30 · Σ_layer-matmuls t + t_head). "as shipped" is the default GGUF's mix: Q4_1 layers
and a Q8_0 head. One-thread rows also give CPU-time µs (time.thread_time), which other
processes on a shared machine disturb less than wall time.

Weights are valid blocks: quantized by kiln.core.storage / gguf, or (Q5_K, Q6_K) blocks sampled
from the llama.cpp-quantized fixtures; speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import glob
import statistics
import sys
import time

import numpy as np

from kiln.core import storage
from kiln.backends import clib
from kiln.backends import qmm as Q

from .output import log, write_json

LAYERS = 30
# (label, K, N, matmuls of this shape per layer; 0 = once per model)
SHAPES = [("attn q,o", 576, 576, 2), ("attn k,v", 576, 192, 2), ("ffn gate,up", 576, 1536, 2),
          ("ffn down", 1536, 576, 1), ("lm head", 576, 49152, 0)]
FORMATS = ["f32", "q8_0", "q4_0", "q4_1", "i8_row", "q4_k", "q5_k", "q6_k"]
FIXTURES = "/work/shared/fixtures/*.gguf"


def _block_pool(fmt: str, rng) -> np.ndarray:
    """Valid blocks of ``fmt`` as uint8 [n, block_bytes]."""
    st = storage.get(fmt)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    if st.quantize is not None:
        raw = st.quantize(x)
    elif fmt == "q4_1":
        import gguf
        raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_1)
    else:
        import gguf
        parts = [np.asarray(t.data).reshape(-1) for p in sorted(glob.glob(FIXTURES))
                 for t in gguf.GGUFReader(p).tensors if int(t.tensor_type) == st.gguf_type]
        if not parts:
            raise SystemExit(f"no {fmt} blocks in {FIXTURES}")
        raw = np.concatenate(parts)
    return np.ascontiguousarray(raw).reshape(-1, st.block_bytes)


def make_weights(fmt: str, n: int, k: int, copies: int, rng):
    """``copies`` distinct weight arrays [n, K] in ``fmt`` (raw bytes), or None when K does not fit."""
    st = storage.get(fmt)
    if k % st.block_size:
        return None
    if fmt == "f32":
        one = rng.standard_normal((n, k)).astype(np.float32)
    elif fmt == "i8_row":
        one = st.quantize(rng.standard_normal((n, k)).astype(np.float32))
    else:
        pool = _block_pool(fmt, rng)
        one = pool[rng.integers(0, len(pool), n * (k // st.block_size))].reshape(n, -1)
    return [one.copy() for _ in range(copies)]


def _median_call_time(calls, reps: int, clock) -> float:
    """Median over ``reps`` of the mean time of one call, cycling through ``calls``."""
    rounds = max(1, 30 // len(calls))
    for c in calls:
        c()
    samples = []
    for _ in range(reps):
        t0 = clock()
        for _ in range(rounds):
            for c in calls:
                c()
        samples.append((clock() - t0) / (rounds * len(calls)))
    return statistics.median(samples)


def _fp32_calls(ws, a, threads):
    clib.set_num_threads(threads)
    outs = [np.empty((1, w.shape[0]), np.float32) for w in ws]
    return [lambda w=w, o=o: clib.run_op("matmul", [a, w], {"transpose_b": True}, o) for w, o in zip(ws, outs)]


def _q_calls(fmt, mode, ws, a, n, k, threads):
    return [Q.Qmm(fmt, mode, a, w, n, k, threads=threads) for w in ws]


def measure(threads_list, reps: int):
    rng = np.random.default_rng(0)
    rows = []
    # per-call overhead of each calling path and clock, from a tiny call (1 x 32 . 32 x 4)
    a0, w0 = np.ones((1, 32), np.float32), np.ones((4, 32), np.float32)
    overhead = {}
    for threads in threads_list:
        for clock_name, clock in (("wall", time.perf_counter), ("cpu", time.thread_time)):
            overhead[("f32", threads, clock_name)] = _median_call_time(_fp32_calls([w0], a0, threads), reps, clock)
            overhead[("q", threads, clock_name)] = _median_call_time(
                _q_calls("q8_0", "exact", [storage.get("q8_0").quantize(w0)], a0, 4, 32, threads), reps, clock)
    for label, k, n, per_layer in SHAPES:
        copies = LAYERS if per_layer else 1
        a = rng.standard_normal((1, k)).astype(np.float32)
        for fmt in FORMATS:
            ws = make_weights(fmt, n, k, copies, rng)
            if ws is None:
                continue
            nbytes = ws[0].nbytes
            for mode in (["-"] if fmt == "f32" else ["exact", "int8"]):
                for threads in threads_list:
                    calls = _fp32_calls(ws, a, threads) if fmt == "f32" else _q_calls(fmt, mode, ws, a, n, k, threads)
                    path = "f32" if fmt == "f32" else "q"
                    wall = max(_median_call_time(calls, reps, time.perf_counter) - overhead[(path, threads, "wall")], 1e-9)
                    cpu = (max(_median_call_time(calls, reps, time.thread_time) - overhead[(path, threads, "cpu")], 1e-9)
                           if threads == 1 else None)
                    rows.append(dict(shape=label, K=k, N=n, fmt=fmt, mode=mode, threads=threads, bytes=nbytes,
                                     us=wall * 1e6, cpu_us=None if cpu is None else cpu * 1e6,
                                     gbps=nbytes / wall / 1e9))
                    log(f"{label:12} {fmt:6} {mode:5} t={threads} {wall * 1e6:9.1f} us {nbytes / wall / 1e9:6.2f} GB/s")
            del ws
    clib.set_num_threads(max(threads_list))
    return rows, {f"{p} t={t} {c}": v * 1e6 for (p, t, c), v in overhead.items()}


def tokens_per_s(rows, layer_fmt, head_fmt, mode, threads, key="us"):
    """Tokens/s-equivalent of one decode step's matmuls, or None if a shape is missing."""
    def t(label, fmt):
        m = "-" if fmt == "f32" else mode
        hit = [r for r in rows if r["shape"] == label and r["fmt"] == fmt and r["mode"] == m and r["threads"] == threads]
        return hit[0][key] * 1e-6 if hit and hit[0][key] is not None else None
    total = 0.0
    for label, _, _, per_layer in SHAPES:
        v = t(label, head_fmt if per_layer == 0 else layer_fmt)
        if v is None:
            return None
        total += v * (LAYERS * per_layer if per_layer else 1)
    return 1.0 / total


def report(rows, threads_list, overhead) -> str:
    out = ["Decode GEMV (M = 1), SmolLM2-135M shapes; µs per call net of call overhead "
           f"({', '.join(f'{k}: {v:.1f} µs' for k, v in overhead.items())}).", ""]
    out.append("| shape | K x N | format | mode | threads | µs (wall) | µs (CPU, 1 thread) | GB/s |")
    out.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = "" if r["cpu_us"] is None else f"{r['cpu_us']:.1f}"
        out.append(f"| {r['shape']} | {r['K']}x{r['N']} | {r['fmt']} | {r['mode']} | {r['threads']} | "
                   f"{r['us']:.1f} | {cpu} | {r['gbps']:.2f} |")
    out += ["", "Tokens/s-equivalent of a decode step's matmuls (30 layers + head):", "",
            "| weights | mode | " + " | ".join(f"{t} thread(s) wall" for t in threads_list) + " | 1 thread CPU |",
            "|---|---|" + "---|" * (len(threads_list) + 1)]
    combos = [("f32", "f32", "-")] + [(f, f, m) for f in FORMATS[1:] for m in ("exact", "int8")] + \
             [("q4_1", "q8_0", m) for m in ("exact", "int8")]
    for lf, hf, mode in combos:
        vals = [tokens_per_s(rows, lf, hf, mode, t) for t in threads_list] + \
               [tokens_per_s(rows, lf, hf, mode, 1, key="cpu_us")]
        name = f"{lf}" if lf == hf else f"as shipped: {lf} layers + {hf} head"
        cells = " | ".join("n/a (K=576 needs whole 256-blocks)" if v is None else f"{v:.1f}" for v in vals)
        out.append(f"| {name} | {mode} | {cells} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(",")]
    log(f"kernels: {clib.build_info()}; quantized ISA level {Q.lib().kiln_qmm_get_isa()} "
        f"({', '.join(Q.available_isas())} available)")
    rows, overhead = measure(threads_list, args.reps)
    text = report(rows, threads_list, overhead)
    print(text)
    write_json(args.json, {"rows": rows, "overhead_us": overhead})
    return 0


if __name__ == "__main__":
    sys.exit(main())
