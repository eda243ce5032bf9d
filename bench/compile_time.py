"""Compile time: where `kiln.compile` spends it, and its ratio to `torch.export` alone.

    python -m bench.compile_time [--reps 3] [--models llama-30L,qwen3-28L]

For each model (kiln.models.zoo, random weights, input_ids -> logits with a dynamic sequence),
``--reps`` runs of the compile breakdown (kiln/cli_inspect.py's compile_breakdown: torch.export,
decompose, convert, every pipeline stage, session, one plan). Its torch.export step is the very
call a user would make to export the model alone, so each run's ratios are

    compile / export        = (export + decompose + convert + stages + session) / export
    compile+plan / export   = the same plus planning one binding (seq=128)

It prints each step's minimum over the runs and the smallest ratios. Ratios from one run are
used because other processes on the machine inflate single steps: both sides of a ratio
measured seconds apart slow down together, separate minima need not.
"""
from __future__ import annotations

import argparse
import sys
import time


def measure(family: str, layers: int, reps: int) -> dict:
    """Minimum seconds per step and minimum ratios over ``reps`` runs."""
    from kiln.cli_inspect import compile_breakdown
    from kiln.models import zoo
    module = zoo.logits_model(family, layers)
    best: dict = {}
    for _ in range(reps):
        steps = compile_breakdown(module)
        steps["ratio"] = (steps["total"] - steps["plan"]) / steps["torch.export"]
        steps["ratio+plan"] = steps["total"] / steps["torch.export"]
        for k, v in steps.items():
            best[k] = min(best.get(k, v), v) if isinstance(v, float) else v
    return best


def report(label: str, t: dict) -> str:
    lines = [f"{label}"]
    for k, v in t.items():
        if isinstance(v, float) and not k.startswith("ratio"):
            lines.append(f"  {k:26s} {1e3 * v:9.1f} ms")
    lines.append(f"  compile / export        = {t['ratio']:.2f}")
    lines.append(f"  compile+plan / export   = {t['ratio+plan']:.2f}")
    if "decompose_reason" in t:
        lines.append(f"  run_decompositions was needed: {t['decompose_reason']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compile_time", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", default="llama-30L,qwen3-28L", help="FAMILY-<N>L, comma-separated")
    args = p.parse_args(argv)
    from bench.models import spec as model_spec
    for key in args.models.split(","):
        spec = model_spec(key.strip())
        print(report(f"{spec.label}, min of {args.reps}",
                     measure(spec.family, spec.layers, args.reps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
