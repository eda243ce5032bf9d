"""Masks the causal flag must not swallow: a sliding window shorter than the sequence range."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")


def _mistral(window: int):
    torch.manual_seed(0)
    cfg = tf.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           sliding_window=window, initializer_range=0.2)
    return tf.MistralForCausalLM(cfg).eval()


def _compile(model, max_len=64):
    from torch.export import Dim

    import kiln
    from kiln.models.hf import logits_module
    wrapped = logits_module(model)
    session = kiln.compile(wrapped, (torch.zeros((1, 8), dtype=torch.long),), executor="reference",
                           dynamic_shapes={"input_ids": {1: Dim("seq", min=1, max=max_len)}})
    return wrapped, session


@pytest.mark.parametrize("window, causal", [(20, False), (4, False), (200, True)])
def test_sliding_window_logits_match_transformers(window, causal):
    wrapped, session = _compile(_mistral(window))
    attention = [n for n in session.graph.nodes if n.op == "attention"]
    # A window shorter than the range (64) is not causal at every length: it must stay a mask.
    assert attention and all(n.attrs.causal == causal for n in attention)
    ids = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = wrapped(ids).numpy()
    out = session.run({session.input_names[0]: ids.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_kv_cache_names_the_sliding_window():
    from kiln.errors import KilnError
    from kiln.passes.kv_cache import add_kv_cache
    _, session = _compile(_mistral(20))
    with pytest.raises(KilnError, match="not causal at every length"):
        add_kv_cache(session.graph, 64)
