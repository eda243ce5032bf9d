"""`kiln bench`: Kiln against PyTorch eager, torch.compile and ONNX Runtime on the same machine.

The harness lives in the repository's bench/ directory (it needs torch, and optionally
onnxruntime/onnx/onnxscript/matplotlib: ``pip install -e '.[bench]'``); this module only
wires it into the ``kiln`` command:

    kiln bench --quick                       # ~10 minutes: 2-layer GPT-2/Qwen3 bodies, SmolLM2 whole
    kiln bench --models gpt2-2L,qwen3-28L --seqs 16,256 --rounds 10 --out bench/out
    kiln bench --models qwen3-2L --seqs 16,256 --decode qwen3-2L --busy 1   # speed kept beside a busy process
    kiln bench --generation [--quick]        # decode / prefill tok/s per weight format: Kiln, transformers,
                                             # llama.cpp (bench/generation.py; --gen-* options)

Writes results.json (raw timings), results.md (tables: ms and ratios to each peer) and
latency.png / memory.png into --out.
"""
from __future__ import annotations

import os
import sys


def _repo_root() -> str | None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return here if os.path.isfile(os.path.join(here, "bench", "run.py")) else None


def _bench_run():
    root = _repo_root()
    if root is None:
        return None
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import run  # noqa: PLC0415 - the harness is only importable from a checkout
    return run


def add_parser(subparsers, arguments: bool = True):
    """``arguments=False`` (another command runs) skips importing the harness for its options."""
    p = subparsers.add_parser("bench", help="benchmark Kiln against PyTorch eager, torch.compile and ONNX Runtime",
                              description=__doc__.split("\n\n")[0])
    run = _bench_run() if arguments else None
    if run is not None:
        run.add_arguments(p)
        from bench import generation
        p.add_argument("--generation", action="store_true",
                       help="the generation table instead (bench/generation.py): decode and prefill tok/s per "
                            "weight format and activation mode, Kiln vs transformers vs llama.cpp")
        generation.add_arguments(p, prefix="gen-")
    p.set_defaults(fn=globals()["run"])
    return p


def run(args) -> int:
    bench = _bench_run()
    if bench is None:
        print("kiln bench: the benchmark harness (bench/) is only in a source checkout of Kiln; "
              "clone the repository and run `pip install -e '.[bench]'` there", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("kiln bench: needs torch and transformers: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    if getattr(args, "threads", None):
        os.environ["KILN_NUM_THREADS"] = str(args.threads)
    if not getattr(args, "out", None):
        args.out = os.path.join(_repo_root(), "bench", "out")
    if getattr(args, "generation", False):
        from bench import generation
        if args.quick:  # shows it works: one round, few tokens, two prefill lengths
            args.rounds, args.gen_new_tokens, args.gen_prefill = 1, 8, "16,64"
        return generation.run(args, prefix="gen_")
    bench.run_all(args)
    return 0
