"""`kiln inspect MODEL`: the graph before and after the optimization pipeline, stage by stage.

MODEL is a saved ``.kiln`` file (printed as saved; a language-model file from `kiln compile` also shows
its tokenizer, chat template, EOS ids, generation defaults and provenance), a model family (gpt2, qwen3, llama: their
real sizes with random weights, ``--layers`` of them), ``default``, an HF folder or a .gguf.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .cli_options import add_weight_options
from .errors import KilnError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help="show a model's graph before and after optimization")
    p.add_argument("model", help="gpt2 | qwen3 | llama | default | PATH.kiln | PATH.gguf | HF folder")
    p.add_argument("--layers", type=int, default=2, help="layers for a model family (default 2)")
    p.add_argument("--dump", action="store_true", help="print the optimized graph node by node")
    p.add_argument("--timings", action="store_true",
                   help="print where compile time goes: export, conversion, each stage, planning")
    add_weight_options(p, act=False)
    p.set_defaults(fn=run)
    return p


def weight_report(g: Any) -> str:
    """Each weight's storage type (counts and bytes per type) and the weight bytes a decoded
    token reads: every matmul weight whole, one row of each embedding table."""
    from .ir.graph import CONST
    by: dict = {}
    for name, t in g.tensors.items():
        if t.kind == CONST:
            n, b = by.get(t.storage, (0, 0))
            by[t.storage] = (n + 1, b + int(t.nbytes))
    per_token = 0
    for node in g.nodes:
        if node.op in ("matmul", "qmatmul") and g.tensors[node.inputs[1]].kind == CONST:
            per_token += int(g.tensors[node.inputs[1]].nbytes)
        elif node.op in ("embedding", "qembedding") and g.tensors[node.inputs[0]].kind == CONST:
            t = g.tensors[node.inputs[0]]
            per_token += int(t.nbytes) // max(1, int(t.shape[0]))
    lines = ["== weights by storage type =="]
    lines += [f"  {st:8s} {n:5d} tensors  {b / 2**20:9.2f} MiB" for st, (n, b) in sorted(by.items())]
    lines.append(f"  weight bytes read per decoded token: {per_token / 2**20:.2f} MiB")
    return "\n".join(lines)


def _histogram(h: dict) -> str:
    return ", ".join(f"{op}×{n}" for op, n in h.items())


def compile_breakdown(module: Any, seq: int = 8, plan_seq: int = 128) -> dict:
    """Seconds per compile step for an ``input_ids -> logits`` module with a dynamic sequence.

    Keys, in order: "torch.export", "decompose" (0 when the program converts as captured),
    "convert", "stage:NAME" per optimization stage, "session", "plan" (resolve and plan one
    binding, seq=``plan_seq``), and "total" (the sum). Raises KilnError as kiln.compile does.
    """
    import time

    import torch
    from torch.export import Dim

    from .frontend.torch import export
    from .passes.pipeline import optimize
    from .session import Session
    steps: dict = {}
    graph = export(module, (torch.zeros((1, seq), dtype=torch.long),),
                   dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=1024)}}, timings=steps)
    out = {k: v for k, v in steps.items() if isinstance(v, float)}
    log: list = []
    opt = optimize(graph, log=log)
    out.update({f"stage:{e.name}": e.ms / 1e3 for e in log})
    t0 = time.perf_counter()
    session = Session(opt)
    t1 = time.perf_counter()
    session.plan(**{sym: plan_seq for sym in opt.symbols})
    out.update({"session": t1 - t0, "plan": time.perf_counter() - t1})
    out["total"] = sum(out.values())
    if "decompose_reason" in steps:
        out["decompose_reason"] = steps["decompose_reason"]
    return out


def format_breakdown(t: dict) -> str:
    """The table `kiln inspect --timings` prints (milliseconds and share of the total)."""
    lines = []
    for k, v in t.items():
        if isinstance(v, float) and k != "total":
            lines.append(f"  {k:26s} {1e3 * v:9.1f} ms  {100 * v / t['total']:5.1f} %")
    lines.append(f"  {'total':26s} {1e3 * t['total']:9.1f} ms   (compile / torch.export = "
                 f"{t['total'] / t['torch.export']:.2f})")
    if "decompose_reason" in t:
        lines.append(f"  run_decompositions was needed: {t['decompose_reason']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if str(args.model).endswith(".kiln"):
        import kiln
        from .ir import serialize
        from .models import model_file
        _graph, extra = serialize.load(args.model)
        if model_file.KEY in extra:  # a language-model file: everything it holds, then the graph
            print(model_file.describe(args.model), file=out)
            if args.dump:
                print(_graph.dump(), file=out)
            return 0
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
        from .models.loading import load_parts_stored
        from .models.hf import logits_module
        parts, label, stored = load_parts_stored(args.model, lambda msg: print(f"  {msg}", file=sys.stderr),
                                                 native=args.dtype == "native" and not args.quantize,
                                                 quantize=args.quantize)
        module = logits_module(parts.model, last_only=False)
        if str(args.model).endswith(".gguf") or args.model == "default":
            _say_dequantized(parts.source, stored, out)
    if args.timings:
        print(f"{label}: compile-time breakdown", file=out)
        print(format_breakdown(compile_breakdown(module)), file=out)
        return 0
    print(f"{label}: exporting with a dynamic sequence length ...", file=sys.stderr, flush=True)
    graph = export(module, (torch.zeros((1, 8), dtype=torch.long),),
                   dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=1024)}})
    if stored:
        from .models.gguf_quant import attach, tied_names
        attach(graph, stored, prefix="model.", aliases=tied_names(parts.model))
    log: list = []
    from .passes.quantize import QuantizeConfig
    opt = optimize(graph, log=log, quantize_cfg=QuantizeConfig(args.quantize) if args.quantize else None)
    print(f"== before optimization ==\n{graph.summary()}\n", file=out)
    print("== stages ==", file=out)
    for entry in log:
        print(f"  {entry}", file=out)
    print(f"\n== after optimization ==\n{opt.dump() if args.dump else opt.summary()}\n", file=out)
    print(f"histogram before: {_histogram(graph.op_histogram())}", file=out)
    print(f"histogram after:  {_histogram(opt.op_histogram())}", file=out)
    print(weight_report(opt), file=out)
    return 0


def _say_dequantized(path: str, stored: Any, out: Any) -> None:
    """Which GGUF tensors were dequantized at load (no kernel reads their type, or --dtype f32)."""
    from .models.gguf import read_gguf
    gf = read_gguf(path)
    kept = set(stored or ())
    from .models.gguf import hf_name
    deq: dict = {}
    for name, t in gf.tensors.items():
        if hf_name(name) not in kept and t.tensor_type.name not in ("F32",):
            deq[t.tensor_type.name] = deq.get(t.tensor_type.name, 0) + 1
    if deq:
        print("GGUF tensors dequantized to fp32 at load: " + ", ".join(f"{k}×{v}" for k, v in deq.items()), file=out)
