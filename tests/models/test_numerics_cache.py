"""The KV cache for models whose attention or positions the transform does not see directly.

Gemma-2 (logit soft-capping) and BLOOM (ALiBi) write attention out by hand; OPT computes positions
from ``cumsum(attention_mask) - 1``. The stateless graph matches transformers; the cache must either
match too or be refused with the real reason, and loading then falls back to decoding without it.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

SMALL = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, initializer_range=0.2)


def _model(arch: str):
    torch.manual_seed(0)
    if arch == "gemma2":
        cfg = tf.Gemma2Config(intermediate_size=64, num_hidden_layers=2, num_key_value_heads=2, head_dim=8,
                              max_position_embeddings=128, attn_logit_softcapping=5.0, final_logit_softcapping=30.0,
                              sliding_window=128, **SMALL)
        return tf.Gemma2ForCausalLM(cfg).eval()
    if arch == "bloom":
        return tf.BloomForCausalLM(tf.BloomConfig(n_layer=2, **{("n_head" if k == "num_attention_heads" else k): v
                                                                  for k, v in SMALL.items()})).eval()
    if arch == "opt":
        cfg = tf.OPTConfig(ffn_dim=64, num_hidden_layers=2, max_position_embeddings=128, word_embed_proj_dim=32,
                           **SMALL)
        return tf.OPTForCausalLM(cfg).eval()
    raise ValueError(arch)


def _compile(model, max_len=32):
    from kiln.models.hf import compile_causal_lm
    return compile_causal_lm(model, max_len=max_len, executor="reference")


@pytest.fixture(scope="module")
def compiled():
    cache = {}

    def get(arch):
        if arch not in cache:
            model = _model(arch)
            cache[arch] = (model, _compile(model))
        return cache[arch]
    return get


@pytest.mark.parametrize("arch", ["gemma2", "bloom", "opt"])
def test_stateless_logits_match(arch, compiled):
    from kiln.models.hf import logits_module
    model, lm = compiled(arch)
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = logits_module(model, lm.last_only)(ids).numpy()
    out = lm.session.run({lm.session.input_names[0]: ids.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch, reason", [("gemma2", "computed by hand at softmax"),
                                          ("bloom", "computed by hand at softmax")])
def test_cache_refused_with_reason_and_fallback(arch, reason, compiled):
    from kiln.errors import KilnError
    from kiln.models.loading import cache_or_notice
    from kiln.passes.kv_cache import add_kv_cache
    _, lm = compiled(arch)
    with pytest.raises(KilnError, match=reason):
        add_kv_cache(lm.session.graph, 32)
    notices = []
    assert cache_or_notice(lm.session.graph, 32, "reference", notices.append) is None
    assert len(notices) == 1 and notices[0].startswith("no KV cache") and reason in notices[0]


def _cached_greedy(session, prompt, n):
    """Greedy decoding through a cached session: prefill, then one token per step."""
    info = session.graph.kv_cache
    ids, out, pos = np.array([prompt], dtype=np.int64), [], 0
    for _ in range(n):
        logits = session.run({info.token_input: ids, info.position_input: np.array(pos, dtype=np.int64)})[0]
        pos += ids.shape[1]
        out.append(int(np.argmax(logits[0, -1])))
        ids = np.array([[out[-1]]], dtype=np.int64)
    return out


def test_opt_positions_follow_the_cache(compiled):
    """OPT's positions are cumsum(mask) - 1 + 2: with the cache they must move with the cache position."""
    from kiln.models.compare import hf_greedy
    from kiln.models.loading import kv_cache_session
    model, lm = compiled("opt")
    session = kv_cache_session(lm.session.graph, 32, executor="reference")
    prompt = [5, 9, 3, 17, 4]
    want, _ = hf_greedy(model, prompt, 12, eos_ids=())
    assert _cached_greedy(session, prompt, 12) == want


def test_self_check_refuses_positions_that_do_not_move(compiled, monkeypatch):
    """Without the position rewrite the cached OPT graph is wrong: the self-check must say so."""
    from kiln.errors import KilnError
    from kiln.passes import kv_cache
    _, lm = compiled("opt")
    monkeypatch.setattr(kv_cache, "positions_as_arange", lambda g, seq: 0)
    with pytest.raises(KilnError, match="self-check failed: after decode step 1"):
        kv_cache.add_kv_cache(lm.session.graph, 32)
