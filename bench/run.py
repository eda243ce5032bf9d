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
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_PEERS = ["kiln", "eager", "torch.compile", "torch.compile+freezing", "onnxruntime"]
REL_TOL = 1e-3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    if a.shape != ref.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def quantiles(xs):
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def threads() -> int:
    from kiln import config
    return config.num_threads()


# --------------------------------------------------------------------------- one model config
def _build_contestants(model, example, max_seq, peers, passes_off, n_threads, executor):
    from . import peers as P
    out = []
    for name in peers:
        if name == "kiln":
            out.append(P.Kiln(model, example, max_seq, executor=executor))
            if passes_off:
                out.append(P.Kiln(model, example, max_seq, optimize=False, executor=executor))
        elif name == "eager":
            out.append(P.TorchEager(model))
        elif name == "torch.compile":
            out.append(P.TorchCompile(model))
        elif name == "torch.compile+freezing":
            out.append(P.TorchCompile(model, freezing=True))
        elif name == "onnxruntime":
            out.append(P.OnnxRuntime(model, example, max_seq, n_threads))
        else:
            raise ValueError(f"unknown contestant {name!r} (one of {', '.join(ALL_PEERS)})")
    return out


def run_config(key: str, seqs, *, rounds: int = 10, warmup: int = 2, peers=ALL_PEERS, passes_off=None,
               min_sample: float = 0.02, max_run_s: float = 60.0, gap_s: float = 0.005,
               executor: str = "compiled", memory: bool = True, profile: bool = True,
               wait_quiet_s: float = 0.0, retries: int = 0, retry_load: float = 0.5) -> dict:
    """Benchmark one model config at each seq length. Returns a JSON-able dict."""
    import torch

    from . import machine
    from . import models as M
    from . import peers as P
    n_threads = threads()
    torch.set_num_threads(n_threads)
    from kiln.backends import clib
    if clib.available():
        clib.set_num_threads(n_threads)
    spec = M.spec(key)
    if passes_off is None:
        passes_off = spec.layers <= 2
    log(f"== {key}: {spec.label}; building model")
    model, cfg = M.build_model(spec)
    vocab = M.vocab_size(cfg)
    rng = np.random.default_rng(1234)
    example = rng.integers(0, vocab, (1, max(2, min(seqs))), dtype=np.int64)
    res = {"model": key, "label": spec.label, "layers": spec.layers, "threads": n_threads,
           "weight_bytes": M.weight_bytes(model),
           "params": int(sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())),
           "contestants": {}, "seqs": {}}
    contestants = []
    for c in _build_contestants(model, example, spec.max_seq, peers, passes_off, n_threads, executor):
        t0 = time.perf_counter()
        try:
            c.prepare()
            contestants.append(c)
            res["contestants"][c.name] = {"status": "ok", "compile_s": c.compile_s, "notes": c.notes,
                                          "weight_bytes": c.weight_bytes()}
            log(f"   {c.name}: ready in {time.perf_counter() - t0:.1f}s")
        except P.Unavailable as e:
            res["contestants"][c.name] = {"status": "unavailable", "reason": str(e)}
            log(f"   {c.name}: SKIPPED ({e})")
        gc.collect()
    prev = None
    for s in seqs:
        entry = res["seqs"].setdefault(str(s), {})
        entry.update(seq=s, flops=M.flops(cfg, s))
        # Skip a shape whose single run would take more than max_run_s (extrapolated from the last one).
        if prev is not None:
            slowest = max(prev["median_ms"].values(), default=0) / 1e3
            est = slowest * (s / prev["seq"]) ** 1.15
            if est > max_run_s:
                entry["skipped"] = f"one run estimated at {est:.0f}s > {max_run_s:.0f}s"
                log(f"   seq {s}: skipped ({entry['skipped']})")
                continue
        ids = rng.integers(0, vocab, (1, s), dtype=np.int64)
        if wait_quiet_s > 0:
            entry["foreign_load_before"] = machine.wait_quiet(wait_quiet_s, log=log)
        entry["loadavg_before"] = os.getloadavg()[0]
        entry.update(first_call_s={}, rel_err={}, samples_ms={}, median_ms={}, q1_ms={}, q3_ms={},
                     calls_per_sample={}, memory={}, excluded={})
        with torch.inference_mode():
            ref = model(torch.from_numpy(ids)).numpy().astype(np.float64)
        live, too_slow = [], False
        for c in contestants:
            t0 = time.perf_counter()
            try:
                y = c.first_call(ids) if hasattr(c, "first_call") else c(ids)
            except Exception as e:  # noqa: BLE001
                entry["excluded"][c.name] = f"run failed: {type(e).__name__}: {str(e)[:200]}"
                log(f"   seq {s}: {c.name} FAILED: {entry['excluded'][c.name]}")
                continue
            dt = time.perf_counter() - t0
            entry["first_call_s"][c.name] = dt
            err = rel_err(y, ref)
            entry["rel_err"][c.name] = err
            if not err <= REL_TOL:
                entry["excluded"][c.name] = f"rel err {err:.2e} > {REL_TOL}"
                log(f"   seq {s}: {c.name} EXCLUDED (rel err {err:.2e})")
                continue
            live.append(c)
            too_slow |= dt > max_run_s
        del ref
        if too_slow:
            entry["skipped"] = f"a first call took more than {max_run_s:.0f}s"
            log(f"   seq {s}: skipped ({entry['skipped']})")
            continue
        # warm-up, and calls per sample so each sample lasts >= min_sample
        per_call = {}
        for c in live:
            ts = []
            for _ in range(max(1, warmup)):
                t0 = time.perf_counter()
                c(ids)
                ts.append(time.perf_counter() - t0)
            per_call[c.name] = min(ts)
            entry["calls_per_sample"][c.name] = max(1, int(np.ceil(min_sample / max(min(ts), 1e-6))))
        for attempt in range(1 + retries):
            samples = {c.name: [] for c in live}
            foreign = machine.ForeignLoad().start()
            for _ in range(rounds):
                for c in live:
                    k = entry["calls_per_sample"][c.name]
                    t0 = time.perf_counter()
                    for _ in range(k):
                        c(ids)
                    samples[c.name].append((time.perf_counter() - t0) / k * 1e3)
                    if gap_s:
                        time.sleep(gap_s)
            entry["foreign_load"] = foreign.stop()
            entry["attempts"] = attempt + 1
            if entry["foreign_load"] <= retry_load or attempt == retries:
                break
            log(f"   seq {s}: other processes used {entry['foreign_load']:.2f} cores while timing; retrying")
            if wait_quiet_s > 0:
                machine.wait_quiet(wait_quiet_s, log=log)
        for name, xs in samples.items():
            q1, med, q3 = quantiles(xs)
            entry["samples_ms"][name] = xs
            entry["median_ms"][name], entry["q1_ms"][name], entry["q3_ms"][name] = med, q1, q3
        if memory:
            for c in live:
                try:
                    entry["memory"][c.name] = c.memory(ids)
                except Exception as e:  # noqa: BLE001
                    entry["memory"][c.name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        if profile:
            for c in live:
                if c.kind == "kiln":
                    try:
                        entry.setdefault("kiln_profile", {})[c.name] = c.profile(ids)
                    except Exception as e:  # noqa: BLE001
                        entry.setdefault("kiln_profile", {})[c.name] = {"error": str(e)[:200]}
        entry["loadavg_after"] = os.getloadavg()[0]
        line = "  ".join(f"{n} {entry['median_ms'][n]:.2f}" for n in entry["median_ms"])
        log(f"   seq {s}: median ms: {line}  (other processes: {entry['foreign_load']:.2f} cores)")
        prev = entry
    for c in contestants:
        c.close()
    del contestants, model
    gc.collect()
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass
    return res


# --------------------------------------------------------------------------- the whole run
def measure_machine(n_threads: int, quick: bool) -> dict:
    from . import machine
    info = machine.describe(n_threads)
    log("measuring sgemm peak (Kiln's BLAS, 2048^3) and read bandwidth")
    try:
        info["sgemm"] = machine.sgemm_peak(reps=5 if quick else 9)
    except Exception as e:  # noqa: BLE001 - no floor then, but the timings still run
        info["sgemm"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    info["bandwidth"] = machine.read_bandwidth(nbytes=(256 << 20) if quick else (1 << 30), threads=n_threads)
    log(f"   sgemm {info['sgemm'].get('gflops', 0):.0f} GFLOP/s, read {info['bandwidth']['gbps']:.1f} GB/s")
    return info


def add_floors(results: dict) -> None:
    """Floor = max(FLOPs / sgemm peak, weight bytes / read bandwidth); Kiln's time as a multiple of it."""
    m = results["machine"]
    peaks = [m.get("sgemm", {}).get("gflops")] + [e.get("sgemm", {}).get("gflops") for e in m.get("remeasured", [])]
    bws = [m.get("bandwidth", {}).get("gbps")] + [e.get("bandwidth", {}).get("gbps") for e in m.get("remeasured", [])]
    peak = max([p for p in peaks if p] or [0])
    bw = max([b for b in bws if b] or [0])
    results["floor_inputs"] = {"sgemm_gflops": peak, "read_gbps": bw}
    if not peak or not bw:
        return
    for cfg in results["configs"].values():
        for e in cfg["seqs"].values():
            compute = e["flops"] / (peak * 1e9)
            memory = cfg["weight_bytes"] / (bw * 1e9)
            e["floor_ms"] = 1e3 * max(compute, memory)
            e["floor_bound"] = "compute" if compute >= memory else "memory"
            if "kiln" in e.get("median_ms", {}):
                e["kiln_x_floor"] = e["median_ms"]["kiln"] / e["floor_ms"]


def run_worker(args) -> int:
    res = run_config(args.worker, [int(s) for s in args.seqs.split(",")], rounds=args.rounds,
                     warmup=args.warmup, peers=args.peers.split(","),
                     min_sample=args.min_sample, max_run_s=args.max_run_seconds, executor=args.executor,
                     wait_quiet_s=args.wait_quiet, retries=args.retries)
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
    from . import report
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
            res = run_config(key, seqs, rounds=rounds, warmup=args.warmup, peers=args.peers.split(","),
                             min_sample=args.min_sample, max_run_s=args.max_run_seconds,
                             executor=args.executor, memory=not args.no_memory, wait_quiet_s=args.wait_quiet,
                             retries=args.retries)
        else:
            res = _run_subprocess(key, seqs, rounds, args)
        res["wall_s"] = time.perf_counter() - t0
        results["configs"][key] = res
        add_floors(results)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
        report.write(results, args.out, plots=not args.no_plots)
        log(f"== {key} done in {res['wall_s']:.0f}s; tables in {os.path.join(args.out, 'results.md')}")
    if not args.quick and not args.in_process and not args.skip_machine:
        from . import machine
        results["machine"].setdefault("remeasured", []).append(
            {"sgemm": machine.sgemm_peak(), "bandwidth": machine.read_bandwidth(threads=n_threads)})
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    add_floors(results)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    report.write(results, args.out, plots=not args.no_plots)
    log(f"done: {json_path}, {os.path.join(args.out, 'results.md')}")
    return results


def _run_subprocess(key, seqs, rounds, args) -> dict:
    result = os.path.join(args.out, f".worker-{key}.json")
    if os.path.exists(result):
        os.remove(result)
    cmd = [sys.executable, "-m", "bench.run", "--worker", key, "--seqs", ",".join(map(str, seqs)),
           "--rounds", str(rounds), "--warmup", str(args.warmup), "--peers", args.peers,
           "--min-sample", str(args.min_sample), "--max-run-seconds", str(args.max_run_seconds),
           "--executor", args.executor, "--wait-quiet", str(args.wait_quiet), "--retries", str(args.retries),
           "--result", result]
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
