"""Accuracy of quantized weights against fp32 (issue 12): one table per model.

    python -m bench.quant_accuracy [--model default|PATH.gguf|HF-folder] [--text FILE] [--tokens 512]
                                   [--formats native,int8,q8_0,q4_0,q4_k] [--modes exact,int8] [--markdown OUT.md]
                                   [--formats int8,int8-max,int8-max-head,int8-keep-head]   (the int8 ablations)

Rows: the model's own GGUF blocks (``native``, only for a quantized GGUF) and each compile-time
format of the fp32 model (``kiln compile --quantize int8|q8_0|q4_0|q4_k``), each in the exact
(fp32 activations) and int8 (activations rounded per row/block, VNNI dot products) modes. The
reference is the same weights in fp32 (``dtype="f32"``: a GGUF dequantized at load). Columns,
over the first ``--tokens`` tokens of the text (one prefill, logits at every position):

* max / mean |logit − fp32 logit| / max |fp32 logit|
* top-1: the fraction of positions whose most likely next token equals fp32's
* perplexity of the text (exp of the mean next-token negative log-likelihood), and its change vs fp32
* the greedy answer to a few chat prompts (16 new tokens; "=" when identical to fp32's)
* KL: the mean over positions of KL(fp32 ‖ quantized) of the next-token distributions, in nats
  (a steadier measure of fidelity than the perplexity change, which errors can move either way)

int8 ablations (``--formats``): ``int8`` is the default (each row's scale chosen for least
rounding error, the tied LM head quantized too); ``int8-keep-head`` the same with the tied
head / embedding in fp32; ``int8-max`` scales max|row| / 127 with the head quantized;
``int8-max-head`` the old default (max-abs scales, tied head fp32); ``int8-cal`` activation-aware
scales (each weight's error weighed by its input channels' mean square, measured on a calibration
text that is not the evaluation text: the first 512 tokens of the GNU GPL version 3,
``/usr/share/common-licenses/GPL-3`` from Debian's base-files). kiln/core/quantize_int8.py.

The text: the Jargon File 4.4.7's appendix "The Meaning of 'Hack'" (public domain, as its
copyright notice states), from the Debian package ``jargon-text``
(``/usr/share/doc/jargon-text/jargon.txt.gz``; ``apt-get install jargon-text``). No installed
Python package here ships public-domain English prose, so a system package provides it;
``--text FILE`` takes any other UTF-8 (or gzipped) text. On random weights perplexity means
nothing: use a model with real weights (the default SmolLM2-135M-Instruct).

``--random gpt2,qwen3[:LAYERS]`` instead compares the int8 variants on the transformers
architectures at their real sizes (kiln/models/zoo.py, ``LAYERS`` layers, default 2) with random
weights over random token ids: perplexity means nothing there, so only the logit error, top-1
agreement and KL vs fp32 are given.

Accuracy numbers do not depend on machine load; nothing here is timed.
"""
from __future__ import annotations

import argparse
import gzip
import re
import sys
import time
from pathlib import Path

import numpy as np

JARGON = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
JARGON_SECTION = "The Meaning of ‘Hack’"
PROMPTS = ["What is the capital of France?", "Name three primary colors.", "What is 12 times 12?"]
FORMATS = ("native", "int8", "q8_0", "q4_0", "q4_k")
# int8 ablations: --formats name -> QuantizeConfig keywords (kiln/passes/quantize.py)
INT8_VARIANTS = {"int8-keep-head": {"keep_tied": True}, "int8-max": {"scales": "max", "keep_tied": False},
                 "int8-max-head": {"scales": "max", "keep_tied": True}, "int8-cal": {}}
CALIBRATION_TEXT = Path("/usr/share/common-licenses/GPL-3")


def calibration_feeds(tokenizer, tokens: int = 512) -> tuple:
    """One feed of the calibration text's first ``tokens`` token ids (see the module doc)."""
    if not CALIBRATION_TEXT.is_file():
        raise SystemExit(f"quant_accuracy: {CALIBRATION_TEXT} (the int8-cal calibration text) is missing")
    ids = tokenizer(" ".join(CALIBRATION_TEXT.read_text().split()), add_special_tokens=False)["input_ids"][:tokens]
    return ({"input_ids": np.asarray([ids], np.int64)},)
MODES = ("exact", "int8")


def default_text() -> str:
    """The Jargon File's "The Meaning of 'Hack'" appendix as running prose (line wrapping undone)."""
    if not JARGON.is_file():
        raise SystemExit(f"quant_accuracy: {JARGON} is missing: `apt-get install jargon-text`, or pass --text FILE")
    full = gzip.decompress(JARGON.read_bytes()).decode("utf-8")
    heading = f"\n{JARGON_SECTION}\n"  # the appendix itself (unindented), not its table-of-contents lines
    start = full.index(heading) + len(heading)
    return re.sub(r"\s+", " ", full[start:start + 20000]).strip()


def read_text(path: str) -> str:
    raw = Path(path).read_bytes()
    return (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8")


def all_logits(lm, ids: list[int]) -> np.ndarray:
    """Next-token logits at every position of ``ids`` ([T, V], float64): one prefill of the
    full-sequence graph (the model is compiled with last_only=False)."""
    out = lm.session(np.asarray([ids], np.int64))[0]
    return np.asarray(out, np.float64).reshape(len(ids), -1)


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    z = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(np.exp(-np.mean(logp[np.arange(len(ids) - 1), ids[1:]])))


def kl_divergence(logits: np.ndarray, base: np.ndarray) -> float:
    """Mean over positions of KL(softmax(base) ‖ softmax(logits)), nats."""
    def logp(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lb, lq = logp(base), logp(logits)
    return float(np.mean((np.exp(lb) * (lb - lq)).sum(axis=1)))


def answers(lm) -> list[str]:
    return [lm.generate(p, 16, temperature=0).text.strip().replace("\n", " ") for p in PROMPTS]


def load(model: str, max_len: int, **kw):
    from kiln.models.loading import load_model
    # full-sequence logits (perplexity needs every position) and no KV cache: one graph, one compile
    return load_model(model, max_len=max_len, last_only=False, cache=False, compile_cache=False, **kw)


def rows(model: str, formats, modes, tokenizer=None):
    """(label, load_model keywords) per row; the GGUF's own blocks only for a quantized GGUF."""
    for fmt in formats:
        for mode in modes:
            if fmt == "native":
                if str(model) == "default" or str(model).lower().endswith(".gguf"):
                    yield f"file's own blocks, {mode}", {"act": mode}
            elif fmt in INT8_VARIANTS:
                from kiln.passes.quantize import QuantizeConfig
                extra = {"calibration": calibration_feeds(tokenizer)} if fmt == "int8-cal" else {}
                cfg = QuantizeConfig("int8", mode, **INT8_VARIANTS[fmt], **extra)
                yield f"{fmt} (ablation), {mode}", {"dtype": "f32", "quantize": cfg, "act": mode}
            else:
                yield f"--quantize {fmt}, {mode}", {"dtype": "f32", "quantize": fmt, "act": mode}


def stored_types(lm) -> str:
    kinds = sorted({t.storage for t in lm.session.graph.tensors.values() if t.storage != "plain"})
    return "+".join(kinds) or "f32"


def random_table(specs: str, tokens: int, formats) -> list[str]:
    """The int8 variants on random-weight models (see the module doc): Markdown lines."""
    import kiln
    from kiln.models import zoo
    from kiln.passes.quantize import QuantizeConfig
    lines = ["| model (random weights) | int8 variant, activations | max err | mean err | top-1 | KL |",
             "|---|---|---:|---:|---:|---:|"]
    for spec in specs.split(","):
        family, _, layers = spec.partition(":")
        model = zoo.logits_model(family, int(layers or 2))
        vocab = zoo.config(family, 1).vocab_size
        ids = np.random.default_rng(0).integers(0, vocab, (1, tokens))
        import torch
        with torch.no_grad():
            base = np.asarray(model(torch.from_numpy(ids))[0], np.float64).reshape(tokens, -1)
        scale = float(np.abs(base).max())
        for fmt in formats:
            for mode in MODES:
                cfg = QuantizeConfig("int8", mode, **INT8_VARIANTS.get(fmt, {}))
                s = kiln.compile(model, (torch.from_numpy(ids),), quantize=cfg)
                lg = np.asarray(s(ids)[0], np.float64).reshape(tokens, -1)
                err = np.abs(lg - base) / scale
                line = (f"| {family}, {layers or 2} layers | {fmt}, {mode} | {err.max():.2e} | {err.mean():.2e} | "
                        f"{np.mean(lg.argmax(1) == base.argmax(1)):.3f} | {kl_divergence(lg, base):.2e} |")
                lines.append(line)
                print(line, flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--text", default=None, help="UTF-8 text file (.gz too); default: the Jargon File appendix")
    p.add_argument("--tokens", type=int, default=512, help="tokens of the text scored (default 512)")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    p.add_argument("--random", default=None, help="FAMILY[:LAYERS],...: int8 variants on random-weight models")
    args = p.parse_args(argv)
    if args.random:
        # (int8-cal is left out: random token ids are no calibration text)
        lines = random_table(args.random, args.tokens,
                             [f for f in args.formats.split(",") if f.startswith("int8") and f != "int8-cal"])
        if args.markdown:
            Path(args.markdown).write_text("\n".join(lines) + "\n")
        return 0
    text = read_text(args.text) if args.text else default_text()
    t0 = time.perf_counter()
    ref = load(args.model, args.tokens + 32, dtype="f32")
    ids = ref.tokenizer(text, add_special_tokens=False)["input_ids"][: args.tokens]
    if len(ids) < 16:
        raise SystemExit(f"quant_accuracy: the text has only {len(ids)} tokens")
    base = all_logits(ref, ids)
    scale = float(np.abs(base).max())
    ppl0 = perplexity(base, ids)
    ref_answers = answers(ref)
    src = f"--text {args.text}" if args.text else f"{JARGON} (Jargon File 4.4.7, '{JARGON_SECTION}', public domain)"
    head = [f"model {ref.name}; text: {src}, first {len(ids)} tokens; reference: the same weights in fp32 "
            f"(max |logit| {scale:.2f}, perplexity {ppl0:.3f})", "",
            "| weights, activations | stored | max err | mean err | top-1 | KL | perplexity | Δ ppl | "
            + " | ".join(f"“{q}”" for q in PROMPTS) + " |",
            "|---|---|---:|---:|---:|---:|---:|---:|" + "---|" * len(PROMPTS),
            f"| fp32 | f32 | 0 | 0 | 1.000 | 0 | {ppl0:.3f} | 0 | " + " | ".join(ref_answers) + " |"]
    lines = list(head)
    print("\n".join(head), flush=True)
    tokenizer = ref.tokenizer
    del ref
    for label, kw in rows(args.model, args.formats.split(","), args.modes.split(","), tokenizer):
        lm = load(args.model, args.tokens + 32, **kw)
        lg = all_logits(lm, ids)
        err = np.abs(lg - base) / scale
        top1 = float(np.mean(lg.argmax(1) == base.argmax(1)))
        ppl = perplexity(lg, ids)
        said = [("=" if a == r else a) for a, r in zip(answers(lm), ref_answers)]
        kl = kl_divergence(lg, base)
        line = (f"| {label} | {stored_types(lm)} | {err.max():.2e} | {err.mean():.2e} | {top1:.3f} | {kl:.2e} | {ppl:.3f} | "
                f"{100 * (ppl / ppl0 - 1):+.2f} % | " + " | ".join(said) + " |")
        lines.append(line)
        print(line, flush=True)
        del lm
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
