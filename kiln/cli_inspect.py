"""`kiln inspect MODEL`: the graph before and after the optimization pipeline, stage by stage.

MODEL is a saved ``.kiln`` file (printed as saved), a model family (gpt2, qwen3, llama: their
real sizes with random weights, ``--layers`` of them), ``default``, an HF folder or a .gguf.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import KilnError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help="show a model's graph before and after optimization")
    p.add_argument("model", help="gpt2 | qwen3 | llama | default | PATH.kiln | PATH.gguf | HF folder")
    p.add_argument("--layers", type=int, default=2, help="layers for a model family (default 2)")
    p.add_argument("--dump", action="store_true", help="print the optimized graph node by node")
    p.set_defaults(fn=run)
    return p


def _histogram(h: dict) -> str:
    return ", ".join(f"{op}×{n}" for op, n in h.items())


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if str(args.model).endswith(".kiln"):
        import kiln
        sess = kiln.load(args.model)
        print(sess.graph.dump() if args.dump else sess.summary(), file=out)
        return 0
    if args.layers < 1:
        raise KilnError(f"--layers must be >= 1, got {args.layers}")
    import torch
    from torch.export import Dim

    from .frontend.torch import export
    from .models import zoo
    from .passes.pipeline import optimize
    if args.model in zoo.FAMILIES:
        module = zoo.logits_model(args.model, args.layers)
        label = f"{zoo.FAMILIES[args.model][0]}, {args.layers} layers, random weights"
    else:
        from .models.loading import load_parts
        from .models.hf import logits_module
        parts, label = load_parts(args.model, lambda msg: print(f"  {msg}", file=sys.stderr))
        module = logits_module(parts.model, last_only=False)
    print(f"{label}: exporting with a dynamic sequence length ...", file=sys.stderr, flush=True)
    graph = export(module, (torch.zeros((1, 8), dtype=torch.long),),
                   dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=1024)}})
    log: list = []
    opt = optimize(graph, log=log)
    print(f"== before optimization ==\n{graph.summary()}\n", file=out)
    print("== stages ==", file=out)
    for entry in log:
        print(f"  {entry}", file=out)
    print(f"\n== after optimization ==\n{opt.dump() if args.dump else opt.summary()}\n", file=out)
    print(f"histogram before: {_histogram(graph.op_histogram())}", file=out)
    print(f"histogram after:  {_histogram(opt.op_histogram())}", file=out)
    return 0
