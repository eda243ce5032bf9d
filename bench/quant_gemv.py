"""Decode-shaped GEMV (M = 1) through the quantized kernels vs Kiln's fp32 matmul.

    python -m bench.quant_gemv [--threads 1,2] [--reps 5] [--formats q8_0,q5_0] [--llc-mb N] [--json out.json]

Shapes are SmolLM2-135M's (hidden 576, FFN 1536, 30 layers, vocabulary 49152, tied head).
Every shape rotates over enough distinct weight copies that one round reads more than the
last-level cache holds (``--llc-mb``, default: the size /sys reports, x 1.25), so every
call streams its weights from DRAM, as a decode step of a model larger than the cache does.
(A single LM-head copy would stay in a large L3 and overstate the DRAM-bound speed.)

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
FORMATS = ["f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "i8_row", "q4_k", "q5_k", "q6_k"]
GGUF_WRITES = {"q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1"}   # made by gguf's quantizer
FIXTURES = "/work/shared/fixtures/*.gguf"


def _block_pool(fmt: str, rng) -> np.ndarray:
    """Valid blocks of ``fmt`` as uint8 [n, block_bytes]."""
    st = storage.get(fmt)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    if st.quantize is not None:
        raw = st.quantize(x)
    elif fmt in GGUF_WRITES:
        import gguf
        raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType[GGUF_WRITES[fmt]])
    else:
        import gguf
        parts = [np.asarray(t.data).reshape(-1) for p in sorted(glob.glob(FIXTURES))
                 for t in gguf.GGUFReader(p).tensors if int(t.tensor_type) == st.gguf_type]
        if not parts:
            raise SystemExit(f"no {fmt} blocks in {FIXTURES}")
        raw = np.concatenate(parts)
    return np.ascontiguousarray(raw).reshape(-1, st.block_bytes)


def llc_bytes() -> int:
    """Size of the largest CPU cache /sys reports (the last level), or 32 MiB."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        with open(path) as f:
            text = f.read().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * mult)
    return max(sizes, default=32 << 20)


def make_weights(fmt: str, n: int, k: int, min_bytes: int, rng):
    """Weight arrays [n, K] in ``fmt`` (raw bytes, or float32 for f32), views into one buffer of at
    least ``min_bytes``, so one round over them reads that much; None when K does not fit."""
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
    copies = max(1, -(-min_bytes // one.nbytes))
    buf = np.empty((copies,) + one.shape, one.dtype)
    buf[...] = one          # the same values in every copy: speed does not depend on them
    return list(buf)
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
    out = np.empty((1, ws[0].shape[0]), np.float32)
    return [lambda w=w: clib.run_op("matmul", [a, w], {"transpose_b": True}, out) for w in ws]


def _q_calls(fmt, mode, ws, a, n, k, threads):
    """One prepared call (its output and scratch shared), pointed at each copy in turn."""
    call = Q.Qmm(fmt, mode, a, ws[0], n, k, threads=threads)

    def at(ptr):
        def run():
            call.args.w = ptr
            return call()
        return run
    return [at(w.ctypes.data) for w in ws]


def measure(threads_list, reps: int, formats=FORMATS, min_bytes: int = 0):
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
        a = rng.standard_normal((1, k)).astype(np.float32)
        for fmt in formats:
            ws = make_weights(fmt, n, k, min_bytes, rng)
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
             [("q5_0", "q8_0", m) for m in ("exact", "int8")] + \
             [("q4_1", "q8_0", m) for m in ("exact", "int8")]
    measured = {r["fmt"] for r in rows}
    for lf, hf, mode in combos:
        if not {lf, hf} <= measured:
            continue
        vals = [tokens_per_s(rows, lf, hf, mode, t) for t in threads_list] + \
               [tokens_per_s(rows, lf, hf, mode, 1, key="cpu_us")]
        name = f"{lf}" if lf == hf else f"{'as shipped' if lf == 'q4_1' else 'Q4_K_M-like'}: {lf} layers + {hf} head"
        cells = " | ".join("n/a (K=576 needs whole 256-blocks)" if v is None else f"{v:.1f}" for v in vals)
        out.append(f"| {name} | {mode} | {cells} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated storage types")
    ap.add_argument("--llc-mb", type=float, default=None, help="last-level cache size (default: from /sys)")
    args = ap.parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(",")]
    formats = [f for f in args.formats.split(",") if f]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        ap.error(f"unknown format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    llc = int(args.llc_mb * (1 << 20)) if args.llc_mb is not None else llc_bytes()
    log(f"kernels: {clib.build_info()}; quantized ISA level {Q.lib().kiln_qmm_get_isa()} "
        f"({', '.join(Q.available_isas())} available)")
    log(f"each shape's copies hold >= {1.25 * llc / 2**20:.0f} MiB (1.25 x the {llc / 2**20:.0f} MiB last-level cache)")
    rows, overhead = measure(threads_list, args.reps, formats, int(1.25 * llc))
    text = report(rows, threads_list, overhead)
    print(text)
    write_json(args.json, {"rows": rows, "overhead_us": overhead})
    return 0


if __name__ == "__main__":
    sys.exit(main())
