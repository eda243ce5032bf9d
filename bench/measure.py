"""Measure one model config: build every contestant, then at each sequence length check its
logits against eager PyTorch, warm up and time the contestants in interleaved rounds.

The method is described in bench/run.py and docs/benchmarks.md; `run_config` is the entry point.
"""
from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

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


@dataclass
class Settings:
    """How one model config is timed (the command-line options of the same names)."""
    rounds: int = 10
    warmup: int = 2
    peers: Sequence[str] = tuple(ALL_PEERS)
    passes_off: Optional[bool] = None  # also time Kiln without its passes (default: for <= 2 layers)
    min_sample: float = 0.02
    max_run_s: float = 60.0
    gap_s: float = 0.005
    executor: str = "compiled"
    memory: bool = True
    profile: bool = True
    wait_quiet_s: float = 0.0
    retries: int = 0
    retry_load: float = 0.5
    busy: int = 0            # after the quiet rounds, time again beside this many busy loops (bench/busy.py)
    busy_limit_s: float = 900.0

    @staticmethod
    def from_args(args, rounds: int) -> "Settings":
        return Settings(rounds=rounds, warmup=args.warmup, peers=args.peers.split(","), min_sample=args.min_sample,
                        max_run_s=args.max_run_seconds, executor=args.executor,
                        memory=not getattr(args, "no_memory", False), wait_quiet_s=args.wait_quiet,
                        retries=args.retries, busy=getattr(args, "busy", 0) or 0)


def run_config(key: str, seqs, **settings) -> dict:
    """Benchmark one model config at each seq length (``settings``: the fields of Settings).
    Returns a JSON-able dict."""
    import torch

    from . import models as M
    st = Settings(**settings)
    n_threads = _set_threads()
    spec = M.spec(key)
    passes_off = spec.layers <= 2 if st.passes_off is None else st.passes_off
    log(f"== {key}: {spec.label}; building model")
    model, cfg = M.build_model(spec)
    vocab = M.vocab_size(cfg)
    rng = np.random.default_rng(1234)
    example = rng.integers(0, vocab, (1, max(2, min(seqs))), dtype=np.int64)
    res = {"model": key, "label": spec.label, "layers": spec.layers, "threads": n_threads,
           "weight_bytes": M.weight_bytes(model),
           "params": int(sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())),
           "contestants": {}, "seqs": {}}
    contestants = _prepare(_build_contestants(model, example, spec.max_seq, st.peers, passes_off, n_threads,
                                              st.executor), res["contestants"])
    prev = None
    for s in seqs:
        entry = res["seqs"].setdefault(str(s), {})
        entry.update(seq=s, flops=M.flops(cfg, s))
        if _skip_by_estimate(entry, prev, s, st.max_run_s):
            continue
        ids = rng.integers(0, vocab, (1, s), dtype=np.int64)
        if _time_shape(entry, model, contestants, ids, st):
            prev = entry
    for c in contestants:
        c.close()
    del contestants, model
    gc.collect()
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001 - only frees torch.compile's caches between configs
        pass
    return res


def _set_threads() -> int:
    """Every runtime in this process gets the same thread count."""
    import torch

    from kiln.backends import clib
    n_threads = threads()
    torch.set_num_threads(n_threads)
    if clib.available():
        clib.set_num_threads(n_threads)
    return n_threads


def _prepare(candidates, report: dict) -> list:
    """Build each contestant (export, compile, ...); those unavailable here are reported and dropped."""
    from . import peers as P
    ready = []
    for c in candidates:
        t0 = time.perf_counter()
        try:
            c.prepare()
            ready.append(c)
            report[c.name] = {"status": "ok", "compile_s": c.compile_s, "notes": c.notes,
                              "weight_bytes": c.weight_bytes()}
            log(f"   {c.name}: ready in {time.perf_counter() - t0:.1f}s")
        except P.Unavailable as e:
            report[c.name] = {"status": "unavailable", "reason": str(e)}
            log(f"   {c.name}: SKIPPED ({e})")
        gc.collect()
    return ready


def _skip_by_estimate(entry: dict, prev: Optional[dict], s: int, max_run_s: float) -> bool:
    """Skip a shape whose single run would take more than max_run_s (extrapolated from the last one)."""
    if prev is None:
        return False
    slowest = max(prev["median_ms"].values(), default=0) / 1e3
    est = slowest * (s / prev["seq"]) ** 1.15
    if est <= max_run_s:
        return False
    entry["skipped"] = f"one run estimated at {est:.0f}s > {max_run_s:.0f}s"
    log(f"   seq {entry['seq']}: skipped ({entry['skipped']})")
    return True


def _time_shape(entry: dict, model, contestants: list, ids: np.ndarray, st: Settings) -> bool:
    """Check, warm up and time every contestant on ``ids``; fills ``entry``. False if the shape was skipped."""
    import torch

    from . import machine
    s = ids.shape[1]
    if st.wait_quiet_s > 0:
        entry["foreign_load_before"] = machine.wait_quiet(st.wait_quiet_s, log=log)
    entry["loadavg_before"] = os.getloadavg()[0]
    entry.update(first_call_s={}, rel_err={}, samples_ms={}, median_ms={}, q1_ms={}, q3_ms={},
                 calls_per_sample={}, memory={}, excluded={})
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids)).numpy().astype(np.float64)
    live, too_slow = _first_calls(entry, contestants, ids, ref, st.max_run_s)
    del ref
    if too_slow:
        entry["skipped"] = f"a first call took more than {st.max_run_s:.0f}s"
        log(f"   seq {s}: skipped ({entry['skipped']})")
        return False
    for c in live:
        entry["calls_per_sample"][c.name] = _calls_per_sample(c, ids, st.warmup, st.min_sample)
    samples = _timed_rounds(entry, live, ids, st)
    for name, xs in samples.items():
        q1, med, q3 = quantiles(xs)
        entry["samples_ms"][name] = xs
        entry["median_ms"][name], entry["q1_ms"][name], entry["q3_ms"][name] = med, q1, q3
    if st.busy > 0:
        entry["busy"] = _busy_rounds(entry, live, ids, st)
    if st.memory:
        for c in live:
            entry["memory"][c.name] = _guarded(lambda: c.memory(ids))
    if st.profile:
        for c in live:
            if c.kind == "kiln":
                entry.setdefault("kiln_profile", {})[c.name] = _guarded(lambda: c.profile(ids))
    entry["loadavg_after"] = os.getloadavg()[0]
    line = "  ".join(f"{n} {entry['median_ms'][n]:.2f}" for n in entry["median_ms"])
    log(f"   seq {s}: median ms: {line}  (other processes: {entry['foreign_load']:.2f} cores)")
    return True


def _first_calls(entry: dict, contestants: list, ids: np.ndarray, ref: np.ndarray, max_run_s: float):
    """Each contestant's first call (per-shape compile/plan included), checked against eager PyTorch.
    Returns (the contestants that passed, whether any first call took longer than max_run_s)."""
    s = ids.shape[1]
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
    return live, too_slow


def _calls_per_sample(c, ids: np.ndarray, warmup: int, min_sample: float) -> int:
    """Warm up, then how many calls make a sample last >= min_sample."""
    ts = []
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        c(ids)
        ts.append(time.perf_counter() - t0)
    return max(1, int(np.ceil(min_sample / max(min(ts), 1e-6))))


def _timed_rounds(entry: dict, live: list, ids: np.ndarray, st: Settings) -> dict[str, list[float]]:
    """Interleaved rounds (A B C, A B C, ...): ms per call, per contestant. Re-timed (up to st.retries
    times) when other processes used more than st.retry_load cores meanwhile."""
    from . import machine
    for attempt in range(1 + st.retries):
        samples: dict[str, list[float]] = {c.name: [] for c in live}
        foreign = machine.ForeignLoad().start()
        for _ in range(st.rounds):
            for c in live:
                k = entry["calls_per_sample"][c.name]
                t0 = time.perf_counter()
                for _ in range(k):
                    c(ids)
                samples[c.name].append((time.perf_counter() - t0) / k * 1e3)
                if st.gap_s:
                    time.sleep(st.gap_s)
        entry["foreign_load"] = foreign.stop()
        entry["attempts"] = attempt + 1
        if entry["foreign_load"] <= st.retry_load or attempt == st.retries:
            break
        log(f"   seq {ids.shape[1]}: other processes used {entry['foreign_load']:.2f} cores while timing; retrying")
        if st.wait_quiet_s > 0:
            machine.wait_quiet(st.wait_quiet_s, log=log)
    return samples


def _busy_rounds(entry: dict, live: list, ids: np.ndarray, st: Settings) -> dict:
    """The same interleaved rounds with st.busy busy loops running: medians and speed kept
    (quiet ms / busy ms) per contestant."""
    from .busy import busy_loops
    quiet = {k: v for k, v in entry.items() if k in ("foreign_load", "attempts")}
    with busy_loops(st.busy, st.busy_limit_s):
        load0 = os.getloadavg()[0]
        samples = _timed_rounds(entry, live, ids, Settings(**{**vars(st), "retries": 0}))
    entry.update(quiet)  # the quiet rounds' load stays the one reported for the quiet timings
    out = {"loops": st.busy, "loadavg": max(load0, os.getloadavg()[0]), "median_ms": {}, "q1_ms": {}, "q3_ms": {},
           "kept": {}}
    for name, xs in samples.items():
        q1, med, q3 = quantiles(xs)
        out["median_ms"][name], out["q1_ms"][name], out["q3_ms"][name] = med, q1, q3
        out["kept"][name] = entry["median_ms"][name] / med
    line = "  ".join(f"{n} {out['median_ms'][n]:.2f} ({out['kept'][n]:.2f}x)" for n in out["median_ms"])
    log(f"   seq {ids.shape[1]}: beside {st.busy} busy loop(s): median ms (speed kept): {line}")
    return out


def _guarded(measure) -> dict:
    """A measurement that may fail without stopping the benchmark: its result, or the error."""
    try:
        return measure()
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}
