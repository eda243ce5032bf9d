"""Compile time: where `kiln.compile` spends it, and its ratio to `torch.export` alone.

    python -m bench.compile_time [--reps 3] [--models llama-30L,qwen3-28L]

For each model (kiln.models.zoo, random weights, input_ids -> logits with a dynamic sequence):
``--reps`` times torch.export alone and the full compile breakdown (kiln/cli_inspect.py's
compile_breakdown: export, decompose, convert, every pipeline stage, session, one plan),
then prints each step's minimum over the repetitions and the ratios

    compile / export        = (export + decompose + convert + stages + session) / export alone
    compile+plan / export   = the same plus planning one binding (seq=128)

Minima and ratios are used because other processes on the machine inflate single runs; the
ratio moves least under contention, as both sides slow down together.
"""
from __future__ import annotations

import argparse
import sys
import time


def _export_alone(module) -> float:
    import torch
    from torch.export import Dim
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.export.export(module, (torch.zeros((1, 8), dtype=torch.long),),
                            dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=1024)}}, strict=False)
    return time.perf_counter() - t0


def measure(family: str, layers: int, reps: int) -> dict:
    """Minimum seconds per step over ``reps`` runs, plus "export alone"."""
    from kiln.cli_inspect import compile_breakdown
    from kiln.models import zoo
    module = zoo.logits_model(family, layers)
    best: dict = {}
    for _ in range(reps):
        alone = _export_alone(module)
        steps = compile_breakdown(module)
        steps["export alone"] = alone
        for k, v in steps.items():
            if isinstance(v, float):
                best[k] = min(best.get(k, v), v)
            else:
                best[k] = v
    return best


def report(label: str, t: dict) -> str:
    compile_s = t["total"] - t["plan"]
    lines = [f"{label}"]
    for k, v in t.items():
        if isinstance(v, float) and k not in ("total", "export alone"):
            lines.append(f"  {k:26s} {1e3 * v:9.1f} ms")
    lines.append(f"  {'export alone':26s} {1e3 * t['export alone']:9.1f} ms")
    lines.append(f"  compile / export        = {compile_s / t['export alone']:.2f}")
    lines.append(f"  compile+plan / export   = {t['total'] / t['export alone']:.2f}")
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
