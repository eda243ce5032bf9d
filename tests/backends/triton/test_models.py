"""Whole tiny GPT-2, Qwen3 and Llama models on the triton backend against PyTorch.

Logits within 1e-4 x max|logit| of PyTorch fp32 (the bar the CPU executors meet), for a
prefill and 8 KV-cache decode steps after it (the cache on the device), through
``load_model(..., backend="triton")`` (a real HF folder); and ``kiln.compile(...,
backend="triton")`` and ``kiln.load(path, backend="triton")`` on one model."""
import numpy as np
import pytest
import torch

import kiln
from kiln.models.decoders import CachedDecoder
from tests.conftest import rel_err
from tests.models.conftest import SENTENCES, make_tiny_model

DECODE_STEPS = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from kiln.models.tokenizer import train_bpe_tokenizer
    tok = train_bpe_tokenizer(SENTENCES, vocab_size=320)
    cache = {}

    def make(arch):
        if arch not in cache:
            cache[arch] = tmp_path_factory.mktemp(f"hf-{arch}")
            make_tiny_model(arch, len(tok)).save_pretrained(cache[arch])
            tok.save_pretrained(cache[arch])
        return cache[arch]
    return make


def torch_last_logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].numpy()


@pytest.mark.parametrize("arch", ["gpt2", "qwen3", "llama"])
def test_load_model_prefill_and_decode_with_the_kv_cache_on_the_device(arch, folder):
    from kiln.models import load_model
    lm = load_model(folder(arch), backend="triton", keep_torch=True, max_len=32)
    sess = lm.cached_session
    assert (sess.executor, sess.backend) == ("triton", "triton")
    assert all(isinstance(t, torch.Tensor) for t in sess.state.values()) or not sess.state
    dec = CachedDecoder(sess, max_len=32)
    ids = [5, 17, 3, 60, 11]
    logits = dec.prefill(ids)
    for step in range(DECODE_STEPS + 1):
        want = torch_last_logits(lm.torch_model, ids)
        err = rel_err(np.asarray(logits).reshape(-1), want)
        assert err < 1e-4, f"{arch} step {step}: relative error {err:.2e}"
        if step == DECODE_STEPS:
            break
        ids.append(int(np.argmax(want)))
        logits = dec.step(ids[-1])
    assert all(isinstance(t, torch.Tensor) and t.device.type in ("cpu", "cuda") for t in sess.state.values())


def test_compile_and_load_with_the_triton_backend(folder, tmp_path):
    import transformers as tf
    model = tf.AutoModelForCausalLM.from_pretrained(folder("gpt2")).eval()
    ids = torch.tensor([[4, 9, 33, 2, 71, 8]])

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, use_cache=False).logits

    wrapped = Logits(model).eval()
    sess = kiln.compile(wrapped, (ids,), backend="triton")
    assert (sess.executor, sess.backend) == ("triton", "triton")
    with torch.inference_mode():
        want = wrapped(ids).numpy()
    got = sess.run({"input_ids": ids.numpy()})[0]
    assert rel_err(got, want) < 1e-4
    path = tmp_path / "gpt2.kiln"
    sess.save(path)
    loaded = kiln.load(path, backend="triton")
    assert loaded.backend == "triton"
    np.testing.assert_array_equal(loaded.run({"input_ids": ids.numpy()})[0], got)


def test_kiln_generate_with_the_triton_backend(folder, capsys):
    from kiln import cli
    code = cli.main(["generate", "Paris", "--model", str(folder("llama")), "--max-new-tokens", "4",
                     "--backend", "triton", "--max-len", "32", "--no-chat", "--temperature", "0", "--compare-torch"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "backend triton" in err and "tokens match" in err      # the same greedy tokens as transformers
