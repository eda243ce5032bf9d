"""The `kiln` command: generate, compile, cache, bench, inspect, ops, demo.

Importing this module and running `kiln generate --model FILE.kiln` never imports torch: every
subcommand imports what it needs when it runs."""
from __future__ import annotations

import argparse
import sys
import time


def _demo(args) -> int:
    import numpy as np
    import torch
    from torch.export import Dim

    import kiln
    from kiln.models.tiny import TinyTransformer

    torch.manual_seed(0)
    model = TinyTransformer().eval()
    ids = torch.randint(0, 512, (1, 16))
    print("compiling the built-in TinyTransformer (2 layers, dim 128) ...", flush=True)
    t0 = time.perf_counter()
    sess = kiln.compile(model, (ids,), dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=256)}},
                        executor=args.executor)
    print(f"compiled in {time.perf_counter() - t0:.2f}s\n{sess.summary()}\n")
    for s in (8, 16, 64):
        x = torch.randint(0, 512, (1, s))
        with torch.inference_mode():
            ref = model(x).numpy()
        out = sess.run({"input_ids": x.numpy()})[0]
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        print(f"seq {s:3d}: kiln logits[0, -1, :4] = {np.round(out[0, -1, :4], 4)}  "
              f"torch = {np.round(ref[0, -1, :4], 4)}  max rel err {err:.1e}")
    return 0


def _ops(args) -> int:
    from kiln.ops import registry
    if args.aten:
        from kiln.frontend.torch import supported_ops
        print("\n".join(supported_ops()))
        return 0
    for name in sorted(registry.REGISTRY):
        d = registry.REGISTRY[name]
        props = ", ".join(sorted(d.props))
        print(f"{name:14s} ({', '.join(d.inputs)})  [{props}]  {d.doc}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    p = argparse.ArgumentParser(prog="kiln", description="Ahead-of-time inference for PyTorch models on the CPU")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="compile the built-in tiny transformer and compare with PyTorch")
    from kiln.executor.registry import DEFAULT, EXECUTORS, describe
    d.add_argument("--executor", default=DEFAULT, choices=list(EXECUTORS), help=describe())
    d.set_defaults(fn=_demo)
    o = sub.add_parser("ops", help="list Kiln ops (or, with --aten, the supported ATen ops)")
    o.add_argument("--aten", action="store_true")
    o.set_defaults(fn=_ops)
    from kiln import cli_bench, cli_cache, cli_compile, cli_generate, cli_inspect, cli_serve
    cli_generate.add_parser(sub)
    cli_compile.add_parser(sub)
    cli_cache.add_parser(sub)
    cli_serve.add_parser(sub)
    cli_bench.add_parser(sub, arguments=command in (None, "bench"))  # its options import the harness
    cli_inspect.add_parser(sub)
    args = p.parse_args(argv)
    from kiln.errors import KilnError
    try:
        return args.fn(args)
    except KilnError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
