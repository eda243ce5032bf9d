"""Accuracy of quantized weights against fp32 (issue 12), on one model.

    python -m bench.quant_accuracy [--model default|PATH.gguf|HF-folder] [--text FILE]

For the model's own GGUF blocks (native, exact and int8 activation modes) and for each
compile-time format (--quantize int8 / q8_0 / q4_0 / q4_k of the fp32 model): max and
mean |logit error| over a text (relative to max|logit| of fp32), top-1 agreement per
position, perplexity of the text; then the greedy chat answer to "What is the capital of
France?". The fp32 reference is the same weights dequantized (``dtype="f32"``).

Not done yet: a bundled public-domain English text (the default text is a short
paragraph written here; pass --text for a real one) and GPT-2 / Qwen3 rows.
"""
from __future__ import annotations

import argparse

import numpy as np

TEXT = ("The old lighthouse stood at the edge of the harbour, and every evening the keeper climbed "
        "its narrow stairs to light the lamp. Ships coming home through the fog looked for its beam, "
        "and the children of the town believed that the keeper never slept.")
QUESTION = "What is the capital of France?"


def _all_logits(lm, ids):
    """Next-token logits at every position (prefill of each prefix: slow but cache-free)."""
    return np.stack([np.asarray(lm.logits(ids[:i + 1]), np.float64).reshape(-1) for i in range(len(ids) - 1)])


def _ppl(logits, ids):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(np.exp(-np.mean(logp[np.arange(len(ids) - 1), ids[1:]])))


def main(argv=None) -> int:
    from kiln.models.loading import load_model
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--text", default=None)
    p.add_argument("--max-tokens", type=int, default=48)
    args = p.parse_args(argv)
    text = open(args.text).read() if args.text else TEXT
    ref = load_model(args.model, dtype="f32", max_len=256)
    ids = ref.tokenizer(text)["input_ids"][: args.max_tokens]
    base = _all_logits(ref, ids)
    scale = np.abs(base).max()
    rows = [("f32", {"dtype": "f32"})] + [(f"native {m}", {"act": m}) for m in ("exact", "int8")] + \
        [(f"--quantize {q} {m}", {"dtype": "f32", "quantize": q, "act": m})
         for q in ("int8", "q8_0", "q4_0", "q4_k") for m in ("exact", "int8")]
    print(f"{'weights':26s} {'max err':>9s} {'mean err':>9s} {'top-1':>6s} {'ppl':>8s}  answer")
    for label, kw in rows:
        lm = ref if label == "f32" else load_model(args.model, max_len=256, **kw)
        lg = base if label == "f32" else _all_logits(lm, ids)
        err = np.abs(lg - base) / scale
        top1 = float(np.mean(lg.argmax(1) == base.argmax(1)))
        answer = lm.generate(QUESTION, 16, temperature=0).text.strip().replace("\n", " ")
        print(f"{label:26s} {err.max():9.2e} {err.mean():9.2e} {top1:6.3f} {_ppl(lg, ids):8.3f}  {answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
