"""Which programs convert as captured, which need run_decompositions({}), and that both are exact."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.frontend.torch import export
from kiln.frontend.torch.export import needs_decomposition
from tests.conftest import fn_module as Fn, rel_err


def _check(model, *inputs, decomposed: bool):
    timings: dict = {}
    g = export(model, inputs, timings=timings)
    assert ("decompose_reason" in timings) == decomposed, timings
    assert set(timings) >= {"torch.export", "decompose", "convert"}
    sess = kiln.Session(g, executor="reference")
    got = sess.run({n: x.numpy() for n, x in zip(sess.input_names, inputs)})[0]
    with torch.no_grad():
        want = model(*inputs).numpy()
    assert rel_err(got, want) < 1e-6


class InPlace(torch.nn.Module):
    def forward(self, x):
        y = x.clone()
        y.add_(1)
        y.view(12).mul_(2)                # writes through a view into y
        z = torch.empty(3, 4).fill_(2)
        return y * z


def test_in_place_program_is_functionalized_first():
    x = torch.randn(3, 4)
    assert "in place" in needs_decomposition(torch.export.export(InPlace(), (x,)))
    _check(InPlace(), x, decomposed=True)


class Regions(torch.nn.Module):
    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            y = x * 2
        with torch.enable_grad():
            y = F.dropout(y + 1, 0.3, training=False)
        return y.contiguous().reshape(-1)


def test_autocast_and_grad_regions_are_inlined():
    x = torch.randn(3, 4)
    with torch.no_grad():
        ep = torch.export.export(Regions(), (x,))
    assert any(n.op == "get_attr" for n in ep.graph.nodes), "torch no longer wraps these regions: revisit"
    assert needs_decomposition(ep) is None
    _check(Regions(), x, decomposed=False)


def test_op_without_handler_is_decomposed_first():
    # movedim and swapaxes have no handlers; their decompositions (permute, transpose) do.
    model = Fn(lambda m, a: a.movedim(0, 2).swapaxes(0, 1) * 2)
    a = torch.randn(2, 3, 4)
    assert "movedim" in needs_decomposition(torch.export.export(model, (a,)))
    _check(model, a, decomposed=True)


def test_dead_unsupported_output_is_ignored():
    # max.dim's indices (output 1) are unsupported; captured but unused they must not matter.
    model = Fn(lambda m, x: x.max(dim=-1).values * 2)
    _check(model, torch.randn(3, 4), decomposed=False)


def test_used_unsupported_output_is_refused():
    model = Fn(lambda m, x: x.max(dim=-1).indices + 1)
    with pytest.raises(kiln.errors.UnsupportedOpError, match="output 1"):
        export(model, (torch.randn(3, 4),))


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_zoo_models_convert_as_captured(family):
    """The measured architectures never pay for run_decompositions (the compile-time budget)."""
    import transformers as tf
    from kiln.models.hf import logits_module
    from kiln.models import zoo
    cfg = zoo.config(family, 1)
    for key in ("hidden_size", "n_embd"):
        if hasattr(cfg, key):
            setattr(cfg, key, 64)
    small = {"llama": dict(intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, vocab_size=97),
             "qwen3": dict(intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           vocab_size=97),
             "gpt2": dict(n_head=4, vocab_size=97)}[family]
    for k, v in small.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    cls = {"gpt2": tf.GPT2LMHeadModel, "qwen3": tf.Qwen3ForCausalLM, "llama": tf.LlamaForCausalLM}[family]
    module = logits_module(cls(cfg).eval(), False)
    ids = torch.randint(0, 97, (1, 6))
    dyn = {"input_ids": {1: torch.export.Dim("seq", min=2, max=64)}}
    timings: dict = {}
    g = export(module, (ids,), dynamic_shapes=dyn, timings=timings)
    assert "decompose_reason" not in timings, timings.get("decompose_reason")
    sess = kiln.Session(g, executor="reference")
    for n in (6, 11):
        x = torch.randint(0, 97, (1, n))
        with torch.no_grad():
            want = module(x).numpy()
        assert rel_err(sess.run({sess.input_names[0]: x.numpy()})[0], want) < 1e-4
    assert np.isfinite(want).all()


def test_interleaved_rope_compiles_with_a_dynamic_sequence():
    """GPT-J-style RoPE (repeat_interleave along a symbolic axis's neighbour), planned and run in C."""
    from tests.frontend.test_aten import _gptj_rope
    model = Fn(lambda m, x, pos: _gptj_rope(x, pos) + x.repeat_interleave(2, dim=1).sum(1, keepdim=True))
    dyn = ({1: torch.export.Dim("seq", min=2, max=64)}, {0: torch.export.Dim("seq", min=2, max=64)})
    sess = kiln.compile(model, (torch.randn(1, 5, 2, 8), torch.arange(5)), dynamic_shapes={"xs": dyn})
    for n in (3, 9):
        x, pos = torch.randn(1, n, 2, 8), torch.arange(n)
        got = sess.run({sess.input_names[0]: x.numpy(), sess.input_names[1]: pos.numpy()})[0]
        assert rel_err(got, model(x, pos).numpy()) < 1e-5
