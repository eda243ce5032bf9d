"""`kiln compile MODEL -o model.kiln`: compile a model once into a self-contained language-model file.

The file (kiln/models/model_file.py) holds the KV-cache graph, the weights, the tokenizer, the chat
template, EOS ids, generation defaults and provenance; `kiln generate --model model.kiln` and
`kiln.models.load_model("model.kiln")` run it without importing torch or transformers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from .errors import KilnError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compile", help="compile a model into one .kiln file that generates without PyTorch",
        description="Compile MODEL ('default', a Hugging Face folder or a .gguf) into a .kiln file: graph with "
                    "KV cache, weights (memory-mapped on load), tokenizer, chat template, EOS ids, generation "
                    "defaults and provenance. Run it with `kiln generate --model FILE.kiln`.")
    p.add_argument("model", help="default | PATH-TO-HF-FOLDER | PATH.gguf")
    p.add_argument("-o", "--output", default=None, help="output file (default: MODEL's name + .kiln, here)")
    p.add_argument("--max-len", default=None, help="KV-cache positions, the longest sequence (default min(context, 2048))")
    p.add_argument("--threads", default=None, help="kernel threads stored as the file's default "
                                                   "(KILN_NUM_THREADS still wins; default: the cores available)")
    from .cli_options import add_weight_options
    add_weight_options(p)  # --dtype / --quantize / --act: the file stores the blocks, mapped on load
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(fn=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .cache import cpu_features, source_hash
    from .cli_generate import _number
    from .cli_progress import Progress
    from .models import model_file
    from .models.loading import COMPILE_STEPS, CompileOptions, begin, compile_language_model, resolve_source
    options = CompileOptions(max_len=_number(args.max_len, "--max-len", int, low=2),
                             threads=_number(args.threads, "--threads", int, low=1),
                             dtype=args.dtype, quantize=args.quantize, act=args.act)
    path, name = resolve_source(args.model)
    output = Path(args.output) if args.output else Path(f"{path.stem if path.is_file() else path.name}.kiln")
    if output.suffix != ".kiln":
        raise KilnError(f"--output must end in .kiln, got {str(output)!r}")
    if output.is_dir():
        raise KilnError(f"--output {str(output)!r} is a directory")
    err = sys.stderr
    progress = Progress(err, quiet=args.quiet)
    t0 = time.perf_counter()
    try:
        begin(progress, COMPILE_STEPS + 2)
        progress(f"hashing {path.name}")
        prov = model_file.provenance(source=str(path), source_sha256=source_hash(path), options=options.as_dict(),
                                     cpu=cpu_features())
        lm, meta = compile_language_model(args.model, max_len=options.max_len, say=progress, provenance_info=prov,
                                          threads=options.threads, dtype=options.dtype,
                                          quantize=options.quantize, act=options.act)
        if meta is None:
            raise KilnError(f"{name} cannot be saved as a .kiln file: its tokenizer has no `tokenizers` form")
        progress(f"saving {output}")
        model_file.save(output, lm.cached_session, meta)
    finally:
        progress.end()
    if not args.quiet:
        print(f"kiln: wrote {output} ({os.path.getsize(output) / 2**20:.1f} MiB, {lm.max_len} positions) "
              f"in {time.perf_counter() - t0:.1f} s; run it with: kiln generate --model {output} \"PROMPT\"",
              file=err, flush=True)
    return 0
