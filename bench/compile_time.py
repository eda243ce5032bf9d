"""Compile time: where `kiln.compile` spends it, and its ratio to `torch.export` alone.

    python -m bench.compile_time [--reps 3] [--models llama-30L,qwen3-28L] [--ablate-pack]

For each model (kiln.models.zoo, random weights, input_ids -> logits with a dynamic sequence),
``--reps`` runs of the compile breakdown (kiln/cli_inspect.py's compile_breakdown: torch.export,
decompose, convert, every pipeline stage, session, one plan). Its torch.export step is the very
call a user would make to export the model alone, so each run's ratios are

    compile / export        = (export + decompose + convert + stages + session) / export
    compile+plan / export   = the same plus planning one binding (seq=128)

It prints each step's minimum over the runs and the smallest ratios. Ratios from one run are
used because other processes on the machine inflate single steps: both sides of a ratio
measured seconds apart slow down together, separate minima need not.

``--ablate-pack`` also compiles each model with the pack-weights stage off
(``KILN_PACK_WEIGHTS=0``, the plain weights the compiler produced before packing existed),
alternating the two in one process, and prints packed ÷ plain: the compile time the packed
model costs over the unpacked one (issue 11's budget: at most 1.5).
"""
from __future__ import annotations

import argparse
import sys
import time


def measure(family: str, layers: int, reps: int, ablate_pack: bool = False) -> dict:
    """Minimum seconds per step and minimum ratios over ``reps`` runs.

    With ``ablate_pack``, each rep also compiles with KILN_PACK_WEIGHTS=0 right after the packed
    compile (order alternating between reps); "plain total" is that compile's minimum and "packed ÷
    plain" the median over reps of the two totals' ratio (export included on both sides)."""
    import gc
    import os

    from kiln.cli_inspect import compile_breakdown
    from kiln.models import zoo
    module = zoo.logits_model(family, layers)
    best: dict = {}
    ratios: list = []
    for rep in range(reps):
        pair = {}
        for packed in ((True, False) if rep % 2 == 0 else (False, True)) if ablate_pack else (True,):
            old = os.environ.get("KILN_PACK_WEIGHTS")
            os.environ["KILN_PACK_WEIGHTS"] = "1" if packed else "0"
            try:
                steps = compile_breakdown(module)
            finally:
                if old is None:
                    del os.environ["KILN_PACK_WEIGHTS"]
                else:
                    os.environ["KILN_PACK_WEIGHTS"] = old
            gc.collect()   # the previous session's buffers go back before the next compile touches new ones
            pair[packed] = steps["total"] - steps["plan"]
            if not packed:
                best["plain total"] = min(best.get("plain total", pair[False]), pair[False])
                continue
            steps["ratio"] = (steps["total"] - steps["plan"]) / steps["torch.export"]
            steps["ratio+plan"] = steps["total"] / steps["torch.export"]
            for k, v in steps.items():
                best[k] = min(best.get(k, v), v) if isinstance(v, float) else v
        if ablate_pack:
            ratios.append(pair[True] / pair[False])
    if ratios:
        best["packed/plain"] = sorted(ratios)[len(ratios) // 2]
        best["packed/plain all"] = ratios
    return best


def report(label: str, t: dict) -> str:
    lines = [f"{label}"]
    for k, v in t.items():
        if isinstance(v, float) and not k.startswith("ratio") and k != "packed/plain":
            lines.append(f"  {k:26s} {1e3 * v:9.1f} ms")
    lines.append(f"  compile / export        = {t['ratio']:.2f}")
    lines.append(f"  compile+plan / export   = {t['ratio+plan']:.2f}")
    if "packed/plain" in t:
        lines.append(f"  packed / plain compile  = {t['packed/plain']:.2f}   (median; each rep: "
                     + ", ".join(f"{r:.2f}" for r in t["packed/plain all"]) + ")")
    if "decompose_reason" in t:
        lines.append(f"  run_decompositions was needed: {t['decompose_reason']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compile_time", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", default="llama-30L,qwen3-28L", help="FAMILY-<N>L, comma-separated")
    p.add_argument("--ablate-pack", action="store_true",
                   help="also compile with KILN_PACK_WEIGHTS=0, alternated, and print packed ÷ plain")
    args = p.parse_args(argv)
    from bench.models import spec as model_spec
    for key in args.models.split(","):
        spec = model_spec(key.strip())
        print(report(f"{spec.label}, min of {args.reps}",
                     measure(spec.family, spec.layers, args.reps, args.ablate_pack)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
