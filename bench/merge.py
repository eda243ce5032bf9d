"""Merged vs unmerged projections (merge-matmuls), packed weights vs the BLAS path, side by side.

    python -m bench.merge [--models qwen3,llama] [--layers 2] [--seqs 1,16,64,256] [--reps 0]

For each model (kiln.models.zoo, random weights, input_ids -> logits) and sequence length,
four sessions compiled from the same module run interleaved (each rep runs all four, so
they share the machine's load), and the minimum times are printed as ratios to the
default (merged, packed):
  unmerged       merge-matmuls and fuse-gated-packed left out, weights packed
  blas-merged    KILN_PACK_WEIGHTS=0: weights plain, matmul on OpenBLAS / the skinny kernel
  blas-unmerged  both
A ratio above 1 means that variant is slower than the default. The merge-matmuls decision
in docs/DESIGN.md rests on these ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

VARIANTS = (("merged", True, "1"), ("unmerged", False, "1"), ("blas-merged", True, "0"), ("blas-unmerged", False, "0"))


def sessions(module, ids):
    import kiln
    from kiln.passes.pipeline import STAGE_NAMES
    unmerged = [s for s in STAGE_NAMES if s not in ("merge-matmuls", "fuse-gated-packed")]
    old = os.environ.get("KILN_PACK_WEIGHTS")
    out = {}
    try:
        for name, merge, pack in VARIANTS:
            os.environ["KILN_PACK_WEIGHTS"] = pack
            out[name] = kiln.compile(module, (ids,), passes=None if merge else unmerged)
    finally:
        if old is None:
            os.environ.pop("KILN_PACK_WEIGHTS", None)
        else:
            os.environ["KILN_PACK_WEIGHTS"] = old
    return out


def measure(family: str, layers: int, seq: int, reps: int) -> dict:
    import numpy as np
    import torch
    from kiln.models import zoo
    module = zoo.logits_model(family, layers)
    ids = torch.randint(0, 100, (1, seq))
    sess = sessions(module, ids)
    feeds = {sess["merged"].input_names[0]: ids.numpy()}
    ref = sess["merged"].run(feeds)[0]
    for name, s in sess.items():  # every variant computes the same logits
        np.testing.assert_allclose(s.run(feeds)[0], ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    best = {k: float("inf") for k in sess}
    for _ in range(reps or max(4, 200 // seq)):
        for k, s in sess.items():
            t0 = time.perf_counter()
            s.run(feeds)
            best[k] = min(best[k], time.perf_counter() - t0)
    return {k: v / best["merged"] for k, v in best.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.merge", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="qwen3,llama", help="kiln.models.zoo families")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seqs", default="1,16,64,256")
    p.add_argument("--reps", type=int, default=0, help="0: max(4, 200 // seq)")
    args = p.parse_args(argv)
    print("| model | seq | " + " | ".join(f"{n} ÷ merged" for n, _, _ in VARIANTS[1:]) + " |")
    print("|---|---:|" + "---:|" * (len(VARIANTS) - 1))
    for fam in [m for m in args.models.split(",") if m]:
        for seq in [int(s) for s in args.seqs.split(",") if s]:
            r = measure(fam, args.layers, seq, args.reps)
            print(f"| {fam} {args.layers}L | {seq} | " + " | ".join(f"{r[n]:.3f}" for n, _, _ in VARIANTS[1:]) + " |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
