"""Causal prefill attention on Kiln's GEMM microkernels vs the GEMM's own rate, same run.

    python -m bench.attention [--seq 1024,2048] [--models gpt2,qwen3,smollm2] [--threads N] [--reps 5] [--json out.json]

For each (model's head shape, seq): GFLOP/s of the `attention` op (csrc/attention.c) counting
only the visible (causal) query-key pairs, 2·Hq·(D + Dv)·S(S+1)/2 FLOPs, of
  blocked   the default prefill kernel: query blocks on kiln_gemm_plain (the GEMM's tiles)
  rows      the row kernels it replaced for prefill (one query row per task), for reference
and `gemm`, Kiln's packed GEMM on the model's QKV projection at M = seq (kiln_gemm_packed,
the weight packed beforehand), so `blocked ÷ gemm` is attention's share of the GEMM rate.
`rel_err` is the blocked kernel's max error vs the numpy reference, relative to max |ref|.
"""
from __future__ import annotations

import argparse

import numpy as np

from . import machine
from .gemm import engine
from .output import log, write_json

MODELS = {  # name: (query heads, K/V heads, head size, hidden size)
    "gpt2": (12, 12, 64, 768),
    "qwen3": (16, 8, 128, 1024),
    "smollm2": (9, 3, 64, 576),
}


def run(seqs, models, threads, reps):
    import kiln.ops  # noqa: F401  (registers the ops)
    from kiln.ops import registry
    lib, clib = engine()
    if threads:
        clib.set_num_threads(threads)
        lib.kiln_pool_set_threads(threads)
    opdef = registry.get("attention")
    attrs = opdef.make_attrs({"causal": True, "scale": None})
    rng = np.random.default_rng(0)
    rows = []
    for name in models:
        hq, hkv, d, hidden = MODELS[name]
        n_qkv = hidden + 2 * hkv * d
        w = (rng.standard_normal((n_qkv, hidden)) / np.sqrt(hidden)).astype(np.float32)
        packed = np.empty(lib.kiln_gemm_packed_bytes(hidden, n_qkv) // 4, np.float32)
        assert lib.kiln_gemm_pack_b(hidden, n_qkv, w.ctypes.data, hidden, 1, packed.ctypes.data) == 0
        for s in seqs:
            q = rng.uniform(-1, 1, (1, hq, s, d)).astype(np.float32)
            k = rng.uniform(-1, 1, (1, hkv, s, d)).astype(np.float32)
            v = rng.uniform(-1, 1, (1, hkv, s, d)).astype(np.float32)
            out = np.empty_like(q)
            x = rng.standard_normal((s, hidden), dtype=np.float32)
            y = np.empty((s, n_qkv), np.float32)

            def attention(blocked):
                lib.kiln_set_attention_blocked(int(blocked))
                try:
                    clib.run_op("attention", [q, k, v], attrs, out)
                finally:
                    lib.kiln_set_attention_blocked(1)

            fns = {"blocked": lambda: attention(True), "rows": lambda: attention(False),
                   "gemm": lambda: lib.kiln_gemm_packed(s, n_qkv, hidden, x.ctypes.data, hidden, packed.ctypes.data,
                                                        y.ctypes.data, n_qkv, 1.0, None, 0.0, 0, None, 0)}
            attention(True)
            want = np.asarray(opdef.ref([q, k, v], attrs))
            err = float(np.abs(out - want).max() / max(np.abs(want).max(), 1e-30))
            flops = {"blocked": 2.0 * hq * 2 * d * s * (s + 1) / 2}
            flops["rows"] = flops["blocked"]
            flops["gemm"] = 2.0 * s * n_qkv * hidden
            row = {"model": name, "seq": s, "heads": f"{hq}/{hkv}x{d}", "rel_err": err}
            for label, fn in fns.items():
                row[label] = flops[label] / machine._median_time(fn, reps) / 1e9  # noqa: SLF001
            row["blocked_of_gemm"] = row["blocked"] / row["gemm"]
            rows.append(row)
            log("  ".join(f"{k_}={v_:.3g}" if isinstance(v_, float) else f"{k_}={v_}" for k_, v_ in row.items()))
    return {"machine": machine.describe(lib.kiln_pool_threads()), "rows": rows}


def table(res) -> str:
    out = ["| model (heads q/kv × size) | seq | blocked GFLOP/s | rows GFLOP/s | GEMM GFLOP/s | blocked ÷ GEMM | rel err |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        out.append(f"| {r['model']} ({r['heads']}) | {r['seq']} | {r['blocked']:.1f} | {r['rows']:.1f} | "
                   f"{r['gemm']:.1f} | {r['blocked_of_gemm']:.2f} | {r['rel_err']:.1e} |")
    return "\n".join(out)


def _models(text: str) -> list:
    names = [m for m in text.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=lambda t: [int(x) for x in t.split(",")], default=[1024, 2048],
                    help="sequence lengths, comma-separated (default 1024,2048)")
    ap.add_argument("--models", type=_models, default=list(MODELS), help=f"from {', '.join(MODELS)}")
    ap.add_argument("--threads", type=int, default=0, help="0: KILN_NUM_THREADS / all usable cores")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    res = run(args.seq, args.models, args.threads, args.reps)
    print(table(res))
    write_json(args.json, res)


if __name__ == "__main__":
    main()
