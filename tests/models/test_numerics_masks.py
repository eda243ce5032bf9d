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


def test_runtime_padding_mask_llama():
    """An HF Llama fed a runtime attention_mask (batch 2, left padding): compiles and runs, with the
    causal part a flag and the padding part a runtime mask."""
    from torch.export import Dim

    import kiln
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = tf.LlamaForCausalLM(cfg).eval()

    class WithMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    wrapped = WithMask().eval()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0
    seq = Dim("seq", min=2, max=32)
    from kiln.backends import clib
    session = kiln.compile(wrapped, (ids, mask), executor="compiled" if clib.available() else "reference",
                           dynamic_shapes={"input_ids": {1: seq}, "attention_mask": {1: seq}})
    att = [n for n in session.graph.nodes if n.op == "attention"]
    assert att and all(n.attrs.causal and len(n.inputs) == 4 for n in att)
    for length in (8, 5):
        i, m = ids[:, :length], mask[:, :length]
        out = session.run({"input_ids": i.numpy(), "attention_mask": m.numpy()})[0]
        with torch.no_grad():
            ref = wrapped(i, m).numpy()
        keep = m.numpy().astype(bool)   # padded positions attend to nothing: their logits are undefined
        np.testing.assert_allclose(out[keep], ref[keep], rtol=1e-4, atol=1e-4)
