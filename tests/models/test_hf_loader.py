"""Hugging Face folders: save_pretrained → kiln.models.hf → Kiln logits match PyTorch."""
import pytest
import torch

from kiln.errors import KilnError
from kiln.models.hf import compile_causal_lm, eos_token_ids, load_hf_folder
from tests.conftest import rel_err

ARCHS = ("gpt2", "qwen3", "llama")


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_folder_round_trip(arch, hf_folder, tiny_model, tiny_tokenizer, executor):
    folder = hf_folder(arch)
    parts = load_hf_folder(folder)
    want = tiny_model(arch, len(tiny_tokenizer))
    # The weights on disk are the ones we saved, in fp32, and the model is in eval mode.
    got_sd, want_sd = parts.model.state_dict(), want.state_dict()
    assert set(got_sd) == set(want_sd)
    for k in want_sd:
        assert got_sd[k].dtype == torch.float32 and torch.equal(got_sd[k], want_sd[k]), k
    assert not parts.model.training
    assert parts.tokenizer is not None and parts.tokenizer.chat_template

    compiled = compile_causal_lm(parts.model, max_len=64, executor=executor, last_only=False)
    assert compiled.min_len == 1
    for n in (1, 5, 17):
        ids = torch.randint(0, len(tiny_tokenizer), (1, n), generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            ref = parts.model(input_ids=ids, use_cache=False).logits.numpy()
        out = compiled.session.run({compiled.session.input_names[0]: ids.numpy()})[0]
        assert rel_err(out, ref) <= 1e-4, (arch, n, rel_err(out, ref))


def test_last_only_logits(hf_folder, executor):
    parts = load_hf_folder(hf_folder("llama"))
    compiled = compile_causal_lm(parts.model, max_len=64, executor=executor, last_only=True)
    ids = torch.arange(3, 14).reshape(1, -1)
    with torch.inference_mode():
        ref = parts.model(input_ids=ids, use_cache=False).logits[:, -1:].numpy()
    out = compiled.session.run({compiled.session.input_names[0]: ids.numpy()})[0]
    assert out.shape == ref.shape and rel_err(out, ref) <= 1e-4


def test_eos_ids_and_tokenizer(hf_folder, tiny_tokenizer):
    parts = load_hf_folder(hf_folder("qwen3"))
    assert eos_token_ids(parts.model, parts.tokenizer, parts.generation_config)[0] == 2
    text = "The capital of France is Paris."
    assert parts.tokenizer(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    assert parts.tokenizer.decode(parts.tokenizer(text)["input_ids"]) == text


def test_hf_folder_errors(tmp_path):
    with pytest.raises(KilnError, match="does not exist"):
        load_hf_folder(tmp_path / "missing")
    with pytest.raises(KilnError, match="no config.json"):
        load_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(KilnError, match="safetensors"):
        load_hf_folder(tmp_path)


def test_compile_rejects_tiny_max_len(hf_folder):
    parts = load_hf_folder(hf_folder("gpt2"))
    with pytest.raises(KilnError, match="max_len"):
        compile_causal_lm(parts.model, max_len=1)
