"""Generation: greedy Kiln decoding equals transformers generate; sampling, streaming and stopping rules."""
import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.models import load_model, torch_greedy
from kiln.models.generation import Generation
from kiln.models.sampling import (SamplingConfig, defaults_from_generation_config, sample, top_k_filter,
                                  top_p_filter)
from kiln.models.tokenizer import StreamDecoder


@pytest.fixture(scope="module")
def models(hf_folder, executor):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = load_model(hf_folder(arch), executor=executor, keep_torch=True, max_len=96)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ["gpt2", "qwen3", "llama"])
def test_greedy_matches_transformers(arch, models):
    lm = models(arch)
    lm_eos, lm.eos_ids = lm.eos_ids, ()  # random weights: don't let an early EOS shorten the comparison
    try:
        prompt = lm.encode("The capital of France is", chat=False)
        got = lm.generate(prompt, 32, temperature=0.0)
        want, _ = torch_greedy(lm, prompt, 32)
    finally:
        lm.eos_ids = lm_eos
    assert len(got.ids) == 32 and got.ids == want
    assert got.stats.new_tokens == 32 and got.stats.decode_steps == 31 and got.stats.stop_reason == "max_new_tokens"


def test_one_token_prompt_and_chat(models):
    lm = models("llama")
    lm_eos, lm.eos_ids = lm.eos_ids, ()
    try:
        got = lm.generate([7], 5)
        want, _ = torch_greedy(lm, [7], 5)
    finally:
        lm.eos_ids = lm_eos
    assert got.ids == want
    chat_ids = lm.encode("Hi", chat=None)  # the tiny tokenizer has a ChatML template: used by default
    assert chat_ids[0] == lm.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert lm.encode("Hi", chat=False) != chat_ids


def test_streamed_text_is_the_decoded_text(models):
    lm = models("qwen3")
    pieces = []
    gen = lm.generate("Paris, London", 20, on_token=lambda ev: pieces.append(ev.text), chat=False)
    ids = [i for i in gen.ids if i not in lm.eos_ids]
    assert "".join(pieces) == gen.text == lm.tokenizer.decode(ids, skip_special_tokens=True)


def test_seeded_sampling_is_reproducible(models):
    lm = models("gpt2")
    a = lm.generate([3, 4, 5], 12, temperature=1.0, top_k=50, top_p=0.9, seed=123).ids
    b = lm.generate([3, 4, 5], 12, temperature=1.0, top_k=50, top_p=0.9, seed=123).ids
    c = lm.generate([3, 4, 5], 12, temperature=1.5, seed=7).ids
    assert a == b and len(a) == 12 and a != c


def test_prompt_too_long_and_bad_settings(models):
    lm = models("gpt2")
    with pytest.raises(KilnError, match="at most 96"):
        lm.generate(list(range(97)), 1)
    with pytest.raises(KilnError, match="temperature"):
        lm.generate([1, 2], 1, temperature=-1)
    with pytest.raises(KilnError, match="top_p"):
        lm.generate([1, 2], 1, top_p=0)
    with pytest.raises(KilnError, match="empty"):
        lm.generate([], 1)


class ScriptedDecoder:
    """A Decoder that plays back fixed next tokens (as one-hot logits), recording what it was fed."""

    def __init__(self, script, vocab=10):
        self.script, self.vocab, self.fed = list(script), vocab, []

    def _next(self):
        logits = np.zeros(self.vocab, np.float32)
        logits[self.script.pop(0)] = 5.0
        return logits

    def prefill(self, ids):
        self.fed.append(list(ids))
        return self._next()

    def step(self, token):
        self.fed.append([token])
        return self._next()


def _gen(script, **kw):
    args = dict(max_new_tokens=10, max_len=100, sampling=SamplingConfig(), eos_ids=(9,), tokenizer=None)
    args.update(kw)
    dec = ScriptedDecoder(script)
    return Generation(dec, [1, 2], **args).run(), dec


def test_stops_on_eos_and_limits():
    g, dec = _gen([4, 5, 9, 6])
    assert g.ids == [4, 5, 9] and g.stats.stop_reason == "eos" and dec.fed == [[1, 2], [4], [5]]
    g, _ = _gen([4, 5, 6, 7], max_new_tokens=3)
    assert g.ids == [4, 5, 6] and g.stats.stop_reason == "max_new_tokens"
    g, _ = _gen([4, 5, 6, 7], max_len=4)
    assert g.ids == [4, 5] and g.stats.stop_reason == "max_len"
    g, dec = _gen([4], max_new_tokens=0)
    assert g.ids == [] and dec.fed == []


def test_filters_and_sampling():
    s = np.array([1.0, 3.0, 2.0, 0.0])
    assert np.isneginf(top_k_filter(s, 2)).tolist() == [True, False, False, True]
    probs = np.exp(s) / np.exp(s).sum()  # 0.087, 0.644, 0.237, 0.032
    assert np.isneginf(top_p_filter(s, 0.5)).tolist() == [True, False, True, True]
    assert np.isneginf(top_p_filter(s, 0.7)).tolist() == [True, False, False, True]
    assert probs[1] + probs[2] > 0.7
    assert sample(s, SamplingConfig()) == 1
    draws = [sample(s, SamplingConfig(temperature=1.0, top_k=2), np.random.default_rng(i)) for i in range(200)]
    assert set(draws) == {1, 2}


def test_defaults_from_generation_config():
    import transformers as tf
    assert defaults_from_generation_config(None).greedy
    assert defaults_from_generation_config(tf.GenerationConfig(temperature=0.7)).greedy  # do_sample off
    cfg = defaults_from_generation_config(tf.GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=20))
    assert (cfg.temperature, cfg.top_k, cfg.top_p) == (0.7, 20, 0.9)


def test_stream_decoder_holds_partial_characters(tiny_tokenizer):
    text = "cafés in Zürich 🙂 ok"
    ids = tiny_tokenizer(text)["input_ids"]
    sd = StreamDecoder(tiny_tokenizer)
    deltas = [sd.push(i) for i in ids]
    assert "".join(deltas) + sd.flush() == text
    assert all("\ufffd" not in d for d in deltas)


def test_load_model_errors(tmp_path):
    with pytest.raises(KilnError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(KilnError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(KilnError, match="not a Hugging Face model folder"):
        load_model(tmp_path)
