"""Decode speed with the KV cache: Kiln vs transformers `generate` (its own cache), same weights.

    python -m bench.decode [--models smollm2,qwen3-28L] [--new-tokens 64] [--rounds 3] [--busy 1]
                           [--dtype f32|native]

For each model, in one process and interleaved rounds: prefill time of a fixed prompt (the
median of PREFILL_REPS prefills a round: beside a busy loop single samples vary 1.7x) and
decode tokens/s excluding prefill (Kiln: the steps after the first token; transformers:
generate(n) minus generate(1)). fp32 decode reads every weight once per token, so the floor
is weight bytes ÷ read bandwidth, measured in the same run (bench/machine.py read_bandwidth,
before and after the rounds: the best pass of the best method, so noise only tightens the
bound); decode is reported as a fraction of that bound, and of a paired bound: Kiln's read
probe (machine.PairedProbe) run just before and after each Kiln round, the round's decode
against the faster of its two probes, median over rounds (what memory gave in those seconds). --busy N repeats the rounds beside N busy loops (bench/busy.py)
and reports the speed each keeps. ``--dtype``: SmolLM2's weights in fp32 (default: the same
weights transformers runs) or ``native`` (the shipped file's own Q4_1 blocks; the bound is then
the blocks' bytes ÷ bandwidth).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import machine
from .output import log, write_json


def kiln_model(key: str, max_len: int, dtype: str = "f32"):
    """(LanguageModel-like decoder factory, torch model, weight bytes per token, label)."""
    from kiln.models import load_model, zoo
    from kiln.models.decoders import CachedDecoder
    from kiln.models.hf import compile_causal_lm
    from kiln.models.loading import kv_cache_session
    if key == "smollm2":
        lm = load_model("default", keep_torch=True, max_len=max_len, dtype=dtype)
        session, model = lm.cached_session, lm.torch_model
        label = "SmolLM2-135M-Instruct (real weights" + (", the file's Q4_1 blocks)" if dtype == "native" else ")")
    else:
        family, layers = key.split("-")[0], int(key.split("-")[1].rstrip("L"))
        model = zoo.causal_lm(family, layers)
        compiled = compile_causal_lm(model, max_len=max_len, last_only=True)
        session = kv_cache_session(compiled.session.graph, max_len)
        label = f"{zoo.FAMILIES[family][0]} ({layers} layers, random weights)"
    weights = sum(a.nbytes for n, a in session.graph.constants.items() if session.graph.tensors[n].kind == "const")
    return (lambda: CachedDecoder(session, max_len=max_len)), model, weights, label


PREFILL_REPS = 5  # prefills timed per round: one ~50 ms sample beside a busy loop spans 60-105 ms


def kiln_run(make_decoder, prompt, n, prefill_reps=1):
    """(median prefill seconds over prefill_reps prefills, seconds per decode step, token ids)."""
    dec = make_decoder()
    times = []
    for _ in range(max(1, prefill_reps)):
        t0 = time.perf_counter()
        logits = dec.prefill(prompt)  # a prefill starts again from position 0
        times.append(time.perf_counter() - t0)
    t1 = time.perf_counter()
    tok = int(np.argmax(logits))
    out = [tok]
    for _ in range(n - 1):
        tok = int(np.argmax(dec.step(tok)))
        out.append(tok)
    t2 = time.perf_counter()
    return float(np.median(times)), (t2 - t1) / (n - 1), out


def hf_generate(model, prompt, n):
    from kiln.models.compare import hf_greedy
    ids, seconds = hf_greedy(model, prompt, n, eos_ids=())
    return seconds, ids


def measure(key: str, new_tokens: int, prompt_tokens: int, rounds: int, max_len: int, threads: int,
            busy: int = 0, dtype: str = "f32") -> dict:
    import torch
    torch.set_num_threads(threads)
    make, model, weight_bytes, label = kiln_model(key, max_len, dtype)
    vocab = model.config.vocab_size
    prompt = np.random.default_rng(0).integers(0, vocab, prompt_tokens).tolist()
    kiln_run(make, prompt, 4)  # warm-up: plans for the prompt length and for one token
    hf_generate(model, prompt, 2)
    res = {"model": key, "label": label, "weight_bytes": weight_bytes, "prompt_tokens": prompt_tokens,
           "new_tokens": new_tokens}
    try:
        probe = machine.PairedProbe()
    except Exception as e:  # noqa: BLE001 - no C library: the run's best probe still bounds it
        log(f"no paired probe: {type(e).__name__}: {e}")
        probe = None
    res.update(_rounds(key, make, model, prompt, new_tokens, rounds, probe))
    del probe
    if busy > 0:
        from .busy import busy_loops
        with busy_loops(busy):
            load0 = os.getloadavg()[0]
            b = _rounds(key, make, model, prompt, new_tokens, rounds)
            b["loadavg"] = max(load0, os.getloadavg()[0])
        b["loops"] = busy
        res["busy"] = b
    return res


def _rounds(key, make, model, prompt, new_tokens, rounds, probe=None) -> dict:
    """Interleaved rounds of Kiln and transformers: medians of prefill (PREFILL_REPS timed per
    round) and per-token decode. With
    ``probe`` (machine.PairedProbe), Kiln's rounds are bracketed by probe passes, and
    "paired_gbps" lists, per round, the higher of the two neighbouring probes."""
    k_prefill, k_step, h_prefill, h_step, paired = [], [], [], [], []
    same = True
    for r in range(rounds):
        before = probe.gbps() if probe else 0.0
        p, s, ids = kiln_run(make, prompt, new_tokens, PREFILL_REPS)
        if probe:
            paired.append(max(before, probe.gbps()))
        k_prefill.append(p)
        k_step.append(s)
        t1 = float(np.median([hf_generate(model, prompt, 1)[0] for _ in range(PREFILL_REPS)]))
        tn, hids = hf_generate(model, prompt, new_tokens)
        h_prefill.append(t1)
        h_step.append((tn - t1) / (new_tokens - 1))
        same &= hids == ids
        log(f"  {key} round {r + 1}/{rounds}: kiln {1 / s:.1f} tok/s, transformers {1 / h_step[-1]:.1f} tok/s")
    return {"tokens_match": same, "kiln_step_ms_rounds": [1e3 * x for x in k_step], "paired_gbps": paired,
            "kiln_prefill_ms": 1e3 * float(np.median(k_prefill)), "kiln_step_ms": 1e3 * float(np.median(k_step)),
            "hf_prefill_ms": 1e3 * float(np.median(h_prefill)), "hf_step_ms": 1e3 * float(np.median(h_step))}


def busy_table(results: list) -> str:
    """Speed kept beside the busy loops (quiet time / busy time), prefill and decode."""
    lines = ["| model | busy loops | load avg | prefill kept kiln | prefill kept transformers "
             "| decode kept kiln | decode kept transformers | decode tok/s busy (kiln / transformers) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        b = r.get("busy")
        if not b:
            continue
        kept = {k: r[k] / b[k] for k in ("kiln_prefill_ms", "hf_prefill_ms", "kiln_step_ms", "hf_step_ms")}
        lines.append(f"| {r['label']} | {b['loops']} | {b['loadavg']:.1f} | {kept['kiln_prefill_ms']:.2f}× | "
                     f"{kept['hf_prefill_ms']:.2f}× | {kept['kiln_step_ms']:.2f}× | {kept['hf_step_ms']:.2f}× | "
                     f"{1e3 / b['kiln_step_ms']:.1f} / {1e3 / b['hf_step_ms']:.1f} |")
    return "\n".join(lines)


def table(results: list, bandwidth: float) -> str:
    lines = [f"Read bandwidth measured in this run: {bandwidth:.1f} GB/s.", "",
             "| model | weights | prefill ms (kiln / transformers) | decode tok/s kiln | decode tok/s transformers"
             " | kiln ÷ transformers | bound tok/s | kiln % of bound | transformers % of bound"
             " | kiln % of paired bound (its probes) | tokens match |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        bound_s = r["weight_bytes"] / (bandwidth * 1e9)
        k, h = 1e3 / r["kiln_step_ms"], 1e3 / r["hf_step_ms"]
        pairs = [r["weight_bytes"] / (g * 1e9) / (ms / 1e3) for g, ms in zip(r["paired_gbps"], r["kiln_step_ms_rounds"])]
        paired = f"{100 * float(np.median(pairs)):.0f}% ({min(r['paired_gbps']):.0f}-{max(r['paired_gbps']):.0f} GB/s)" if pairs else "—"
        lines.append(f"| {r['label']} | {r['weight_bytes'] / 2**20:.0f} MiB | {r['kiln_prefill_ms']:.0f} / "
                     f"{r['hf_prefill_ms']:.0f} | {k:.1f} | {h:.1f} | {k / h:.2f}× | {1 / bound_s:.1f} | "
                     f"{100 * k * bound_s:.0f}% | {100 * h * bound_s:.0f}% | {paired} | {'yes' if r['tokens_match'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decode")
    p.add_argument("--models", default="smollm2,qwen3-28L")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--json", default=None)
    p.add_argument("--dtype", choices=("f32", "native"), default="f32",
                   help="SmolLM2's weights: fp32 (default) or the shipped file's Q4_1 blocks")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="also time beside N busy loops (nice-0 CPU-bound processes) and report the speed kept")
    args = p.parse_args(argv)
    from kiln import config
    threads = config.num_threads()
    log("measuring read bandwidth ...")
    probes = [machine.read_bandwidth(threads=threads)]
    results = []
    for key in args.models.split(","):
        log(f"{key}: compiling and warming up ...")
        results.append(measure(key, args.new_tokens, args.prompt_tokens, args.rounds, args.max_len, threads,
                               busy=args.busy, dtype=args.dtype))
    probes.append(machine.read_bandwidth(threads=threads))
    probe = max(probes, key=lambda r: r["gbps"])
    bw = probe["gbps"]
    print(table(results, bw))
    print(f"(probe: {probe['statistic']}, {probe['source']}, of {probe['reps']} passes over {probe['bytes'] >> 20} MiB, "
          f"before and after the rounds; that method's median {probe['gbps_median']:.1f} GB/s; "
          f"Kiln's probe on 4 KiB pages, where packed weights lie with KILN_HUGE_PAGES=0: "
          f"{max(max(r.get('kiln_stream_4k', 0.0), r.get('kiln_stream_4k_ahead16', 0.0)) for r in probes):.1f} GB/s)")
    if args.busy:
        print()
        print(busy_table(results))
    write_json(args.json, {"bandwidth_gbps": bw, "bandwidth_probes": probes, "threads": threads, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
