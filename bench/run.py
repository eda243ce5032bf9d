"""Run the benchmark: every contestant on every model config and sequence length, in one process
per model config, interleaved round by round; then write JSON, Markdown and plots.

    python -m bench.run                       # the full benchmark (long)
    python -m bench.run --quick               # a ~10 minute subset
    python -m bench.run --models gpt2-2L --seqs 16,64 --rounds 10 --out bench/out
    kiln bench ...                            # the same, from the kiln command

Method (details in docs/benchmarks.md): every contestant is built once per model; for each
sequence length each is called once (first-call time: per-shape compile/plan), its logits are
checked against eager PyTorch (max |a-b| / max |b| <= 1e-3; a failing contestant is not
timed), then warmed up, then timed in interleaved rounds (A B C D, A B C D, ...) so that drift
on a shared machine hits all alike. Each sample averages enough calls to last >= --min-sample
seconds. Medians and IQRs of the samples are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import report
from .measure import ALL_PEERS, Settings, log, run_config, threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- the whole run
def measure_machine(n_threads: int, quick: bool) -> dict:
    from . import machine
    info = machine.describe(n_threads)
    log("measuring sgemm peak (Kiln's packed GEMM and the BLAS, 2048^3) and read bandwidth")
    try:
        info["sgemm"] = machine.sgemm_peak(reps=5 if quick else 9)
    except Exception as e:  # noqa: BLE001 - no floor then, but the timings still run
        info["sgemm"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    info["bandwidth"] = machine.read_bandwidth(nbytes=(256 << 20) if quick else (1 << 30), threads=n_threads)
    log(f"   sgemm {info['sgemm'].get('gflops', 0):.0f} GFLOP/s, read {info['bandwidth']['gbps']:.1f} GB/s")
    return info


def run_worker(args) -> int:
    res = run_config(args.worker, [int(s) for s in args.seqs.split(",")],
                     **vars(Settings.from_args(args, args.rounds)))
    with open(args.result, "w") as f:
        json.dump(res, f)
    return 0


def parse_models(args):
    from . import models as M
    table = dict(M.QUICK if args.quick else M.FULL)
    keys = args.models.split(",") if args.models else list(table)
    seqs = [int(s) for s in args.seqs.split(",")] if args.seqs else None
    out = {}
    for k in keys:
        M.spec(k)  # validates
        out[k] = seqs or table.get(k, [16, 64, 256, 1024])
    return out


def run_all(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    n_threads = threads()
    configs = parse_models(args)
    rounds = args.rounds or (5 if args.quick else 10)
    log(f"kiln bench: {len(configs)} model configs, {n_threads} threads, {rounds} rounds, out {args.out}")
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], "rounds": rounds,
               "machine": ({"threads": n_threads} if args.skip_machine else measure_machine(n_threads, args.quick)),
               "configs": {}}
    json_path = os.path.join(args.out, "results.json")
    for key, seqs in configs.items():
        t0 = time.perf_counter()
        if args.in_process:
            res = run_config(key, seqs, **vars(Settings.from_args(args, rounds)))
        else:
            res = _run_subprocess(key, seqs, rounds, args)
        res["wall_s"] = time.perf_counter() - t0
        results["configs"][key] = res
        _save(results, args)  # after every config: a long run that stops still leaves its tables
        log(f"== {key} done in {res['wall_s']:.0f}s; tables in {os.path.join(args.out, 'results.md')}")
    if not args.quick and not args.in_process and not args.skip_machine:
        from . import machine
        results["machine"].setdefault("remeasured", []).append(
            {"sgemm": machine.sgemm_peak(), "bandwidth": machine.read_bandwidth(threads=n_threads)})
    if args.decode:
        results["decode"] = run_decode(args, n_threads)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _save(results, args)
    log(f"done: {json_path}, {os.path.join(args.out, 'results.md')}")
    return results


def run_decode(args, n_threads: int) -> dict:
    """bench/decode.py for --decode's models (KV-cache decode: Kiln vs transformers), beside
    --busy loops too when asked; tables in decode.md."""
    from . import decode, machine
    bw = machine.read_bandwidth(threads=n_threads)["gbps"]
    res = [decode.measure(key, 32, 32, args.rounds or 3, 256, n_threads, busy=args.busy)
           for key in args.decode.split(",")]
    md = decode.table(res, bw) + ("\n\n" + decode.busy_table(res) if args.busy else "")
    with open(os.path.join(args.out, "decode.md"), "w") as f:
        f.write(md + "\n")
    log("decode:\n" + md)
    return {"bandwidth_gbps": bw, "results": res}


def _save(results: dict, args) -> None:
    """Floors, then results.json and the report (tables, plots) in args.out."""
    report.add_floors(results)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report.write(results, args.out, plots=not args.no_plots)
    if getattr(args, "busy", 0):
        with open(os.path.join(args.out, "busy.md"), "w") as f:
            f.write(busy_table(results) + "\n")


def busy_table(results: dict) -> str:
    """Markdown: per config and seq, each contestant's quiet and busy median and the speed kept."""
    lines = ["| model | seq | contestant | quiet ms | busy ms | speed kept (quiet/busy) | load avg (busy) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for key, res in results["configs"].items():
        for s, e in res.get("seqs", {}).items():
            b = e.get("busy")
            if not b:
                continue
            for name, ms in b["median_ms"].items():
                lines.append(f"| {key} | {s} | {name} | {e['median_ms'][name]:.2f} | {ms:.2f} | "
                             f"{b['kept'][name]:.2f}× | {b['loadavg']:.1f} |")
    return "\n".join(lines)


def _run_subprocess(key, seqs, rounds, args) -> dict:
    result = os.path.join(args.out, f".worker-{key}.json")
    if os.path.exists(result):
        os.remove(result)
    cmd = [sys.executable, "-m", "bench.run", "--worker", key, "--seqs", ",".join(map(str, seqs)),
           "--rounds", str(rounds), "--warmup", str(args.warmup), "--peers", args.peers,
           "--min-sample", str(args.min_sample), "--max-run-seconds", str(args.max_run_seconds),
           "--executor", args.executor, "--wait-quiet", str(args.wait_quiet), "--retries", str(args.retries),
           "--busy", str(args.busy), "--result", result]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    rc = subprocess.call(cmd, cwd=REPO, env=env)
    if rc != 0 or not os.path.exists(result):
        log(f"   {key}: worker failed with exit code {rc}")
        return {"model": key, "error": f"worker exit code {rc}", "contestants": {}, "seqs": {},
                "weight_bytes": 0}
    with open(result) as f:
        res = json.load(f)
    os.remove(result)
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a subset that finishes in ~10 minutes")
    p.add_argument("--models", help="comma-separated configs, e.g. gpt2-2L,qwen3-28L,llama-30L "
                                    "(FAMILY-<layers>L; families gpt2, qwen3, llama, tiny)")
    p.add_argument("--seqs", help="comma-separated sequence lengths (default: per config)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10; 5 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls per contestant and shape")
    p.add_argument("--peers", default=",".join(ALL_PEERS), help=f"contestants (default: {','.join(ALL_PEERS)})")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "out"), help="output directory")
    p.add_argument("--min-sample", type=float, default=0.02, help="seconds per timing sample (calls averaged)")
    p.add_argument("--max-run-seconds", type=float, default=60.0, help="skip shapes whose one run exceeds this")
    from kiln.executor.registry import DEFAULT, EXECUTORS
    p.add_argument("--executor", default=DEFAULT, choices=list(EXECUTORS),
                   help=f"Kiln executor to time (default {DEFAULT})")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every runtime (sets KILN_NUM_THREADS; default: KILN_NUM_THREADS or all cores)")
    p.add_argument("--wait-quiet", type=float, default=0.0,
                   help="before each shape, wait up to this many seconds for other processes to go idle")
    p.add_argument("--retries", type=int, default=0,
                   help="re-time a shape (up to N times) if other processes used > 0.5 cores meanwhile")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="also time every shape beside N busy loops (nice-0 CPU-bound processes, killed "
                        "afterwards); reports the speed each contestant keeps (busy.md)")
    p.add_argument("--decode", default=None, metavar="MODELS",
                   help="also measure KV-cache decode for these models (bench/decode.py keys, e.g. "
                        "qwen3-2L,smollm2), beside --busy loops too; tables in decode.md")
    p.add_argument("--in-process", action="store_true", help="run every config in this process")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--skip-machine", action="store_true", help="don't measure sgemm peak / bandwidth (no floor)")
    p.add_argument("--no-memory", action="store_true")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if getattr(args, "threads", None):
        os.environ["KILN_NUM_THREADS"] = str(args.threads)
    if args.worker:
        return run_worker(args)
    run_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
