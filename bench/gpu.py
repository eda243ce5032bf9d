"""Kiln's Triton backend against PyTorch CUDA eager and torch.compile, on one GPU.

    python -m bench.gpu [--models gpt2,qwen3,llama] [--layers N] [--prefill 16,256,1024]
                        [--new-tokens 64] [--rounds 3] [--json FILE]

Models are the zoo's real sizes with random weights (GPT-2 small, Qwen3-0.6B, SmolLM2-135M
shapes; ``--layers`` shrinks the body). For each: prefill latency at each prompt length (the
last position's logits, as a generator needs) and decode tokens/s with a KV cache.
Kiln-Triton runs the same optimized graph and plans as the CPU runtime, with the KV cache as
device-resident state; PyTorch runs transformers' model on the GPU, eagerly and under
torch.compile (prefill: compiled forward; decode: generate with a static cache and a
compiled forward). Every Kiln timing includes its input upload and output download.
Kiln's logits are checked against eager at the first prompt length before anything is timed.
Refuses to run without a CUDA GPU (the interpreter is for correctness, not speed).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

from .output import log, write_json


def environment() -> dict:
    import torch
    import triton
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = "unknown (nvidia-smi unavailable)"
    return {"gpu": torch.cuda.get_device_name(0), "driver": driver, "cuda": torch.version.cuda,
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()}


def refuse_without_gpu() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("bench.gpu: TRITON_INTERPRET is set; interpreter timings mean nothing. Unset it.")
    try:
        import torch
        import triton  # noqa: F401
    except ImportError as e:
        sys.exit(f"bench.gpu needs torch and triton (pip install 'kiln-runtime[gpu]'): {e}")
    if not torch.cuda.is_available():
        sys.exit("bench.gpu needs a CUDA GPU: torch.cuda.is_available() is False here.")


def timed(fn, rounds: int) -> float:
    """Median seconds of fn() over `rounds` runs after one warm-up (fn must synchronize itself)."""
    fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def attempt(fn):
    """fn()'s result, or the failure as a short string: one contender failing is a result, not a crash."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return f"failed: {type(e).__name__}: {e}"[:200]


class KilnTriton:
    """The model's KV-cache graph in a Session on the triton backend: one plan per length, one
    device KV cache."""

    def __init__(self, model, max_len: int, cuda_graph: bool = False):
        from kiln.session import Session
        from kiln.models.hf import compile_causal_lm
        from kiln.passes.kv_cache import POSITION, add_kv_cache
        graph = compile_causal_lm(model, max_len=max_len, executor="reference", last_only=True).session.graph
        self.session = Session(add_kv_cache(graph, max_len), backend="triton",
                               executor_options={"cuda_graph": cuda_graph})
        self.pos_name = POSITION
        self.ids_name = next(n for n in self.session.input_names if n != POSITION)

    def run(self, ids, pos: int):
        import numpy as np
        return self.session.run({self.ids_name: np.asarray([ids], np.int64),
                                 self.pos_name: np.asarray(pos, np.int64)})[0][0, -1]

    def decode(self, prompt, n: int) -> float:
        """Seconds for n decode steps after a prefill of `prompt` (prefill excluded)."""
        import numpy as np
        tok = int(np.argmax(self.run(prompt, 0)))
        t0 = time.perf_counter()
        for i in range(n):
            tok = int(np.argmax(self.run([tok], len(prompt) + i)))
        return time.perf_counter() - t0


def torch_prefill(model, ids):
    import torch
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1]
        torch.cuda.synchronize()
    return out


def torch_decode(model, prompt, n: int, compiled: bool) -> float:
    """Seconds for n greedy decode steps (generate(n + 1) - generate(1): prefill excluded)."""
    import torch
    ids = torch.tensor([prompt], device="cuda")
    kw = dict(do_sample=False, eos_token_id=-1, pad_token_id=0, attention_mask=torch.ones_like(ids))
    if compiled:
        kw["cache_implementation"] = "static"

    def gen(k):
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=k, min_new_tokens=k, **kw)
        torch.cuda.synchronize()
    gen(n + 1)  # warm-up (and compilation)
    t0 = time.perf_counter()
    gen(1)
    t1 = time.perf_counter()
    gen(n + 1)
    t2 = time.perf_counter()
    return (t2 - t1) - (t1 - t0)


def bench_model(family: str, layers, lengths, new_tokens: int, rounds: int) -> dict:
    import copy

    import numpy as np
    import torch

    from kiln.models import zoo
    layers = layers or zoo.FAMILIES[family][1]
    label = f"{zoo.FAMILIES[family][0]} ({layers} layers, random weights)"
    log(f"== {label}")
    cpu_model = zoo.causal_lm(family, layers)
    max_len = max(lengths) + new_tokens + 1
    kiln = KilnTriton(cpu_model, max_len)
    kiln_graphs = KilnTriton(cpu_model, max_len, cuda_graph=True)   # launches replayed from a CUDA graph
    eager = copy.deepcopy(cpu_model).cuda().eval()
    compiled = torch.compile(copy.deepcopy(cpu_model).cuda().eval())
    rng = np.random.default_rng(0)
    vocab = cpu_model.config.vocab_size
    row = {"model": label, "prefill_ms": {}, "decode_tok_s": {}}

    probe = rng.integers(0, vocab, lengths[0]).tolist()
    want = torch_prefill(eager, torch.tensor([probe], device="cuda")).float().cpu().numpy()
    got = kiln.run(probe, 0)
    row["max_rel_err_vs_eager"] = float(np.abs(got - want).max() / np.abs(want).max())
    log(f"   logits vs eager: max relative error {row['max_rel_err_vs_eager']:.2e}")

    for s in lengths:
        ids = rng.integers(0, vocab, s).tolist()
        t_ids = torch.tensor([ids], device="cuda")
        res = {"kiln-triton": attempt(lambda: timed(lambda: kiln.run(ids, 0), rounds)),
               "kiln-triton+cudagraph": attempt(lambda: timed(lambda: kiln_graphs.run(ids, 0), rounds)),
               "torch-eager": attempt(lambda: timed(lambda: torch_prefill(eager, t_ids), rounds)),
               "torch.compile": attempt(lambda: timed(lambda: torch_prefill(compiled, t_ids), rounds))}
        row["prefill_ms"][s] = {k: (v * 1e3 if isinstance(v, float) else v) for k, v in res.items()}
        log(f"   prefill {s:>5}: " + ", ".join(f"{k} {v:.2f} ms" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in row["prefill_ms"][s].items()))

    prompt = rng.integers(0, vocab, lengths[0]).tolist()
    for name, fn in (("kiln-triton", lambda: kiln.decode(prompt, new_tokens)),
                     ("kiln-triton+cudagraph", lambda: kiln_graphs.decode(prompt, new_tokens)),
                     ("torch-eager", lambda: torch_decode(eager, prompt, new_tokens, False)),
                     ("torch.compile", lambda: torch_decode(copy.deepcopy(eager), prompt, new_tokens, True))):
        secs = attempt(lambda: min(fn() for _ in range(rounds)))
        row["decode_tok_s"][name] = new_tokens / secs if isinstance(secs, float) else secs
    log("   decode tok/s: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in row["decode_tok_s"].items()))
    return row


COLUMNS = ("kiln-triton", "kiln-triton+cudagraph", "torch-eager", "torch.compile")


def markdown(env: dict, rows: list[dict]) -> str:
    lines = [f"GPU {env['gpu']}, driver {env['driver']}, CUDA {env['cuda']}, torch {env['torch']}, "
             f"triton {env['triton']}", "",
             "| model | what | Kiln-Triton | Kiln-Triton + CUDA graph | PyTorch eager | torch.compile |",
             "|---|---|---|---|---|---|"]

    def fmt(v, unit):
        return f"{v:.2f} {unit}" if isinstance(v, float) else str(v)
    for r in rows:
        for s, res in r["prefill_ms"].items():
            lines.append(f"| {r['model']} | prefill {s} | " + " | ".join(
                fmt(res.get(k), "ms") for k in COLUMNS) + " |")
        d = r["decode_tok_s"]
        lines.append(f"| {r['model']} | decode | " + " | ".join(
            fmt(d.get(k), "tok/s") for k in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gpt2,qwen3,llama")
    ap.add_argument("--layers", type=int, default=None, help="shrink every model to this many layers")
    ap.add_argument("--prefill", default="16,256,1024", help="prompt lengths")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    refuse_without_gpu()
    env = environment()
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    lengths = [int(x) for x in args.prefill.split(",")]
    rows = []
    for m in (m.strip() for m in args.models.split(",") if m.strip()):
        # A model that cannot be captured or run is a row of the table, not the end of the run.
        row = attempt(lambda: bench_model(m, args.layers, lengths, args.new_tokens, args.rounds))
        if isinstance(row, str):
            log(f"   {m}: {row}")
            row = {"model": m, "prefill_ms": {s: {k: row for k in COLUMNS} for s in lengths},
                   "decode_tok_s": {k: row for k in COLUMNS}}
        rows.append(row)
    print(markdown(env, rows))
    write_json(args.json, {"environment": env, "results": rows}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
