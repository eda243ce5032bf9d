"""Generation settings from a folder's generation_config.json are honoured as transformers does."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def penalized(hf_folder, tmp_path_factory, executor):
    from kiln.models.loading import load_model
    folder = tmp_path_factory.mktemp("penalized") / "llama"
    shutil.copytree(hf_folder("llama"), folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 0, "repetition_penalty": 1.5}))
    return load_model(folder, executor=executor, max_len=64, keep_torch=True)


def _both(lm, n=24, **settings):
    from kiln.models.compare import torch_greedy
    lm = dataclasses.replace(lm, sampling=dataclasses.replace(lm.sampling, **settings), eos_ids=())
    saved = {k: getattr(lm.torch_model.generation_config, k, None) for k in settings}
    lm.torch_model.generation_config.update(**settings)
    try:
        prompt = lm.encode("The capital of France is", chat=False)
        return lm.generate(prompt, n, temperature=0.0).ids, torch_greedy(lm, prompt, n)[0]
    finally:
        lm.torch_model.generation_config.update(**saved)


def test_repetition_penalty_from_the_folder(penalized):
    assert penalized.sampling.repetition_penalty == 1.5
    got, want = _both(penalized)
    assert got == want
    assert got != _both(penalized, repetition_penalty=1.0)[0]   # the penalty changes this example's tokens


@pytest.mark.parametrize("settings", [dict(repetition_penalty=1.0), dict(repetition_penalty=1.5, no_repeat_ngram_size=2),
                                      dict(repetition_penalty=0.7, no_repeat_ngram_size=1)])
def test_processors_match_transformers(penalized, settings):
    got, want = _both(penalized, **settings)
    assert got == want


def test_min_new_tokens_forbids_eos():
    from kiln.models.sampling import SamplingConfig, process
    logits = np.array([0.0, 1.0, 5.0, -1.0], np.float32)
    cfg = SamplingConfig(min_new_tokens=2, min_length=0)
    assert process(logits, cfg, [1, 3], 1, [2])[2] == -np.inf
    assert process(logits, cfg, [1, 3, 0], 2, [2])[2] == 5.0
    # repetition penalty as HF defines it: positive logits divided, negative multiplied
    pen = process(logits, SamplingConfig(repetition_penalty=2.0), [1, 3, 3], 0)
    assert pen.tolist() == [0.0, 0.5, 5.0, -2.0]


def test_unsupported_settings_are_named():
    import transformers as tf

    from kiln.models.sampling import defaults_from_generation_config
    with pytest.warns(UserWarning, match="num_beams=4.*typical_p=0.5|typical_p=0.5.*num_beams=4"):
        defaults_from_generation_config(tf.GenerationConfig(num_beams=4, typical_p=0.5))
