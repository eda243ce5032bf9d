"""Whole models against PyTorch fp32 and transformers `generate` (slow: full-size weights).

GPT-2 small (12 layers) and Qwen3-0.6B sizes (28 layers, GQA 16/8, q/k norms) with random
weights, and the real SmolLM2-135M-Instruct: logits within 1e-4 x max |logit|, and greedy
generation with the KV cache token-for-token equal to recomputing the prefix and to
transformers' own generate with its cache.
"""
import numpy as np
import pytest
import torch

from kiln.models.compare import hf_greedy
from kiln.models.decoders import CachedDecoder, RecomputeDecoder
from kiln.models.hf import compile_causal_lm
from kiln.models.loading import kv_cache_session

pytestmark = pytest.mark.slow
NEW_TOKENS = 64


def greedy(decoder, prompt, n):
    logits = decoder.prefill(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        if len(out) < n:
            logits = decoder.step(out[-1])
    return out


def transformers_greedy(model, prompt, n):
    return hf_greedy(model, prompt, n, eos_ids=())[0]


def check_model(model, executor, vocab):
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, vocab, 11).tolist()
    full = compile_causal_lm(model, max_len=128, executor=executor, last_only=False)
    with torch.inference_mode():
        ref = model(input_ids=torch.tensor([prompt]), use_cache=False).logits.numpy()
    got = full.session.run({full.session.input_names[0]: np.array([prompt], np.int64)})[0]
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= 1e-4, f"logit error {err:.2e}"

    last = compile_causal_lm(model, max_len=128, executor=executor, last_only=True)
    cached = CachedDecoder(kv_cache_session(last.session.graph, 128, executor=executor), max_len=128)
    recompute = RecomputeDecoder(last.session, min_len=last.min_len, max_len=128, last_only=True)
    with_cache = greedy(cached, prompt, NEW_TOKENS)
    assert with_cache == greedy(recompute, prompt, NEW_TOKENS)
    assert with_cache == transformers_greedy(model, prompt, NEW_TOKENS)
    return err


@pytest.mark.parametrize("family,layers", [("gpt2", 12), ("qwen3", 28)])
def test_whole_random_model(family, layers, executor):
    from kiln.models import zoo
    model = zoo.causal_lm(family, layers)
    print(f"{family} {layers} layers: logit error {check_model(model, executor, model.config.vocab_size):.2e}")


def test_smollm2_cache_identity(executor):
    from kiln.models import load_model
    lm = load_model("default", executor=executor, keep_torch=True, max_len=256)
    prompt = lm.encode("What is the capital of France?")
    eos, lm.eos_ids = lm.eos_ids, ()  # 64 full tokens, even past an end of turn
    try:
        cached = lm.generate(prompt, NEW_TOKENS).ids
        lm.use_cache = False
        recomputed = lm.generate(prompt, NEW_TOKENS).ids
    finally:
        lm.eos_ids, lm.use_cache = eos, True
    assert cached == recomputed == transformers_greedy(lm.torch_model, prompt, NEW_TOKENS)
