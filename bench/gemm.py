"""Kiln's packed-B GEMM engine vs today's matmul kernel, OpenBLAS and numpy, on layer shapes.

    python -m bench.gemm [--m 1,16,64,256,1024] [--shapes smollm2-up,gpt2-qkv,qwen3-up] [--threads N]
                         [--reps 5] [--json out.json]

For each (M, K, N): GFLOP/s (2·M·N·K / median time) of
  packed    kiln_gemm_packed (csrc/gemm.c): weight packed once beforehand, the pool's threads
  matmul    Kiln's current matmul op (csrc/matmul.c): OpenBLAS sgemm split over OpenMP threads,
            its own skinny kernel for few rows; weight [N, K] as torch's Linear stores it
  openblas  one cblas_sgemm call (NT layout) on the calling thread, the BLAS Kiln loads
  numpy     a @ w.T in float32 (numpy's own BLAS and threads)
and for M = 1 (decode GEMV) the weight bytes read per second by `packed`, as a fraction of
the machine's read bandwidth measured in the same run (bench/machine.read_bandwidth).
"""
from __future__ import annotations

import argparse
import ctypes
import sys

import numpy as np

from . import machine
from .output import log, write_json

SHAPES = {  # name: (K, N) of one projection
    "smollm2-up": (576, 1536),
    "smollm2-down": (1536, 576),
    "gpt2-qkv": (768, 2304),
    "gpt2-fc": (768, 3072),
    "qwen3-up": (1024, 3072),
    "qwen3-down": (3072, 1024),
    "smollm2-head": (576, 49152),   # a vocabulary-sized N (the tied LM head)
}
DEFAULT_SHAPES = "smollm2-up,gpt2-qkv,qwen3-up,qwen3-down"


def engine():
    """The kernel library (loaded by kiln.backends.clib) with the engine's signatures set."""
    from kiln.backends import clib
    lib = clib.lib()
    i64, ptr, f32, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
    lib.kiln_gemm_packed_bytes.restype, lib.kiln_gemm_packed_bytes.argtypes = i64, [i64, i64]
    lib.kiln_gemm_pack_b.restype, lib.kiln_gemm_pack_b.argtypes = c_int, [i64, i64, ptr, i64, c_int, ptr]
    lib.kiln_gemm_packed.restype = c_int
    lib.kiln_gemm_packed.argtypes = [i64, i64, i64, ptr, i64, ptr, ptr, i64, f32, ptr, f32, c_int, ptr, i64]
    lib.kiln_gemm_isa.restype = c_int
    lib.kiln_pool_set_threads.argtypes = [c_int]
    lib.kiln_pool_threads.restype = c_int
    return lib, clib


def run(ms, shapes, threads, reps):
    lib, clib = engine()
    if threads:
        clib.set_num_threads(threads)
        lib.kiln_pool_set_threads(threads)
    blas = clib._state.get("blas")  # noqa: SLF001 - the BLAS Kiln itself loaded
    sgemm = None
    if blas is not None:
        sgemm = next((getattr(blas, n) for n in ("scipy_cblas_sgemm", "cblas_sgemm") if hasattr(blas, n)), None)
    bw = machine.read_bandwidth(nbytes=256 << 20, reps=reps)
    log(f"read bandwidth {bw['gbps']:.1f} GB/s; engine ISA {('generic', 'avx2', 'avx512')[lib.kiln_gemm_isa()]}, "
        f"{lib.kiln_pool_threads()} pool threads")
    rng = np.random.default_rng(0)
    rows = []
    for name in shapes:
        k, n = SHAPES[name]
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)  # torch Linear layout [N, K]
        packed = np.empty(lib.kiln_gemm_packed_bytes(k, n) // 4, np.float32)
        assert lib.kiln_gemm_pack_b(k, n, w.ctypes.data, k, 1, packed.ctypes.data) == 0
        for m in ms:
            a = rng.standard_normal((m, k), dtype=np.float32)
            c = np.empty((m, n), np.float32)
            fns = {
                "packed": lambda: lib.kiln_gemm_packed(m, n, k, a.ctypes.data, k, packed.ctypes.data, c.ctypes.data,
                                                       n, 1.0, None, 0.0, 0, None, 0),
                "matmul": lambda: clib.run_op("matmul", [a, w], {"transpose_b": True}, c),
                "numpy": lambda: np.matmul(a, w.T, out=c),
            }
            if sgemm is not None:
                vp, one, zero = ctypes.c_void_p, ctypes.c_float(1.0), ctypes.c_float(0.0)
                fns["openblas"] = lambda: sgemm(101, 111, 112, m, n, k, one, vp(a.ctypes.data), k, vp(w.ctypes.data),
                                                k, zero, vp(c.ctypes.data), n)
            want = a.astype(np.float64) @ w.T.astype(np.float64)
            fns["packed"]()
            err = float(np.abs(c - want).max() / max(np.abs(want).max(), 1e-30))
            row = {"shape": name, "M": m, "K": k, "N": n, "packed_rel_err": err}
            for label, fn in fns.items():
                t = machine._median_time(fn, reps)  # noqa: SLF001 - the suite's timing helper
                row[label] = 2.0 * m * n * k / t / 1e9
                if m == 1 and label == "packed":
                    row["gemv_gbps"] = packed.nbytes / t / 1e9
                    row["gemv_of_bandwidth"] = row["gemv_gbps"] / bw["gbps"]
            rows.append(row)
            log("  ".join(f"{k_}={v:.3g}" if isinstance(v, float) else f"{k_}={v}" for k_, v in row.items()))
    return {"machine": machine.describe(lib.kiln_pool_threads()), "read_bandwidth": bw, "rows": rows}


def table(res) -> str:
    labels = [x for x in ("packed", "matmul", "openblas", "numpy") if x in res["rows"][0]]
    out = ["| shape (K→N) | M | " + " | ".join(f"{x} GFLOP/s" for x in labels) + " | GEMV GB/s (of read bw) |",
           "|---|---:|" + "---:|" * (len(labels) + 1)]
    for r in res["rows"]:
        gemv = f"{r['gemv_gbps']:.1f} ({r['gemv_of_bandwidth']:.0%})" if "gemv_gbps" in r else ""
        out.append(f"| {r['shape']} ({r['K']}→{r['N']}) | {r['M']} | "
                   + " | ".join(f"{r[x]:.1f}" for x in labels) + f" | {gemv} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", default="1,16,64,256,1024", help="row counts, comma-separated")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"from {', '.join(SHAPES)}")
    ap.add_argument("--threads", type=int, default=0, help="0: KILN_NUM_THREADS / all usable cores")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    res = run([int(x) for x in args.m.split(",")], shapes, args.threads, args.reps)
    print(table(res))
    write_json(args.json, res)


if __name__ == "__main__":
    main()
