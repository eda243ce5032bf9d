"""Whole graphs against PyTorch fp32: an MLP, transformer blocks, and 2-layer GPT-2 / Qwen3 / Llama."""
import pytest
import torch
from torch import nn
from torch.export import Dim

import kiln
from kiln.models.tiny import Block, TinyTransformer
from tests.conftest import rel_err
from tests.hf_zoo import hf_model

EXECUTORS = ["reference", "numpy", "interpreted", "compiled"]


def _available(executor: str) -> bool:
    if executor in ("interpreted", "compiled"):
        from kiln.backends import clib
        return clib.available()
    return True


def _check(sess, model, inputs, tol=1e-4):
    with torch.inference_mode():
        want = model(*inputs).numpy()
    got = sess.run(dict(zip(sess.input_names, (x.numpy() for x in inputs))))[0]
    err = rel_err(got, want)
    assert err < tol, f"relative error {err:.2e}"
    return err


@pytest.mark.parametrize("executor", EXECUTORS)
def test_mlp(executor):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    x = torch.randn(4, 16)
    _check(kiln.compile(model, (x,), executor=executor), model, (x,))


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "manual"])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_transformer_block(executor, sdpa):
    torch.manual_seed(0)
    model = Block(64, 4, sdpa=sdpa).eval()
    x = torch.randn(2, 10, 64)
    _check(kiln.compile(model, (x,), executor=executor), model, (x,))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_tiny_transformer_dynamic(executor):
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    sess = kiln.compile(model, (torch.randint(0, 512, (1, 8)),), executor=executor,
                        dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=256)}})
    for s in (3, 16, 77):
        _check(sess, model, (torch.randint(0, 512, (1, s)),))


@pytest.fixture(scope="module", params=["gpt2", "qwen3", "llama"])
def hf_session(request):
    model = hf_model(request.param)
    graph_sess = kiln.compile(model, (torch.randint(0, 1000, (1, 8)),), executor="reference",
                              dynamic_shapes={"input_ids": {1: Dim("seq", min=2, max=512)}})
    return request.param, model, graph_sess


@pytest.mark.parametrize("executor", EXECUTORS)
def test_hf_models_dynamic_seq(hf_session, executor):
    """Export once, run at three sequence lengths, on every executor; logits within 1e-4 relative."""
    name, model, sess = hf_session
    if not _available(executor):
        pytest.fail("C kernels are not built (pip install -e .)")
    sess = kiln.Session(sess.graph, executor=executor)
    for s in (2, 9, 33):
        ids = torch.randint(0, 1000, (1, s))
        _check(sess, model, (ids,))
