"""TritonExecutor: the Plan's memory on the device, and whole tiny models against PyTorch.

Whole models: logits within 1e-4 x max|logit| of PyTorch fp32 (the bar the CPU executors
meet), for a full prefill and for prefill + KV-cache decode steps."""
import numpy as np
import pytest
import torch

from kiln.backends.triton import executor as tex
from kiln.backends.triton import runtime
from kiln.errors import BackendError, FeedError
from kiln.executor.reference import run_reference
from kiln.ir.graph import Graph
from kiln.passes.kv_cache import POSITION, add_kv_cache
from kiln.planner import plan as make_plan
from tests.conftest import rel_err

VOCAB = 96


def test_no_device_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(runtime, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendError, match="CUDA GPU.*TRITON_INTERPRET=1"):
        runtime.device()


def _small_graph():
    g = Graph()
    g.add_input("x", (2, 3, 4), "float32")
    w = g.add_const("w", np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))
    r = g.add_node("reshape", ["x"], {"shape": (6, 4)})           # alias
    e = g.add_node("exp", [r])                                     # in place candidate
    m = g.add_node("matmul", [e, w])
    s = g.add_node("slice", [m], {"axis": 0, "start": 2, "end": 6})
    t = g.add_node("tanh", [s])
    g.outputs = [t, m]
    return g


def test_runs_the_plan_in_one_arena(rng):
    g = _small_graph()
    p = make_plan(g)
    ex = tex.TritonExecutor(g, p)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    got = ex.run({"x": x})
    want = run_reference(g, {"x": x})
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-6
    arena = ex._slots[0]
    lo, hi = arena.data_ptr(), arena.data_ptr() + arena.numel()
    for _, ins, out, _, node in ex._steps:              # every activation is a view of slot 0 or its own slot
        for t, name in zip(ins + [out], node.inputs + [node.output]):
            if p.placements[name].slot == 0:
                assert lo <= t.data_ptr() < hi
    assert ex.run({"x": x})[0].tolist() == got[0].tolist()      # a second run reuses the buffers
    with pytest.raises(FeedError):
        ex.run({"x": x[:1]})


def tiny(arch: str):
    import transformers as tf
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=2, pad_token_id=0, initializer_range=0.2)
    if arch == "gpt2":
        cfg, cls = tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **common), tf.GPT2LMHeadModel
    elif arch == "qwen3":
        cfg = tf.Qwen3Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                             tie_word_embeddings=True, **common)
        cls = tf.Qwen3ForCausalLM
    else:
        cfg = tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                             **common)
        cls = tf.LlamaForCausalLM
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith(".bias"):
                prm.add_(0.1 * torch.randn_like(prm))
    return model


def torch_logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits.numpy()


@pytest.fixture(scope="module")
def exported():
    """arch -> (model, optimized full-logits graph with a symbolic sequence length): torch.export
    dominates this file's time, so each architecture is exported once."""
    from kiln.models.hf import compile_causal_lm
    cache = {}

    def get(arch):
        if arch not in cache:
            model = tiny(arch)
            cache[arch] = model, compile_causal_lm(model, max_len=32, executor="reference",
                                                   last_only=False).session.graph
        return cache[arch]
    return get


@pytest.mark.parametrize("arch", ["gpt2", "qwen3", "llama"])
def test_whole_model_prefill(arch, exported, rng):
    model, g = exported(arch)
    (sym,) = g.symbols
    ids = rng.integers(0, VOCAB, 7).tolist()
    got = tex.build(g, {sym: 7}).run({g.inputs[0]: np.array([ids], np.int64)})[0]
    err = rel_err(got, torch_logits(model, ids))
    assert err < 1e-4, f"{arch}: logits relative error {err:.2e}"


@pytest.mark.parametrize("arch", ["gpt2", "qwen3"])
def test_kv_cache_prefill_then_decode(arch, exported, rng):
    model, full = exported(arch)
    g = add_kv_cache(full, 32)
    (sym,) = g.symbols
    ids_name = next(n for n in g.inputs if n != POSITION)
    ids = rng.integers(0, VOCAB, 5).tolist()
    prefill = tex.build(g, {sym: 5})
    decode = tex.build(g, {sym: 1}, state=prefill.state)      # one KV cache on the device, two plans
    assert all(decode.state[n] is prefill.state[n] for n in prefill.state)
    logits = prefill.run({ids_name: np.array([ids], np.int64), POSITION: np.array(0, np.int64)})[0]
    for step in range(3):
        want = torch_logits(model, ids)[0, -1]
        err = rel_err(logits[0, -1], want)
        assert err < 1e-4, f"{arch} step {step}: relative error {err:.2e}"
        ids.append(int(np.argmax(want)))
        logits = decode.run({ids_name: np.array([ids[-1:]], np.int64), POSITION: np.array(len(ids) - 1, np.int64)})[0]
    with pytest.raises(BackendError, match="cached_attention|cache_write"):   # past the cache: a KilnError, no overrun
        decode.run({ids_name: np.array([[1]], np.int64), POSITION: np.array(32, np.int64)})


def test_triton_session_greedy_decode_matches_reference(exported):
    """TritonSession behind the generation code's CachedDecoder: the same greedy tokens as
    the numpy reference Session, with one device KV cache across prefill and decode plans."""
    from kiln.models.decoders import CachedDecoder
    from kiln.backends.triton.session import TritonSession
    from kiln.session import Session
    _, full = exported("gpt2")
    g = add_kv_cache(full, 32)
    runs, dec_sessions = [], (TritonSession(g, cuda_graph=True), Session(g, executor="reference"))
    for sess in dec_sessions:   # (cuda_graph is a no-op off a GPU: same results)
        dec = CachedDecoder(sess, max_len=32)
        logits, toks = dec.prefill([5, 17, 3, 60]), []
        for _ in range(4):
            toks.append(int(np.argmax(logits)))
            logits = dec.step(toks[-1])
        runs.append((toks, logits))
    assert runs[0][0] == runs[1][0]
    assert rel_err(runs[0][1], runs[1][1]) < 1e-4
    tsess = dec_sessions[0]
    assert any(bool(t.abs().sum() > 0) for t in tsess.state.values())
    tsess.reset_state()                                   # in place: every plan sees the zeroed cache
    assert all(bool(t.abs().sum() == 0) for t in tsess.state.values())
    with pytest.raises(FeedError, match="do not fit the KV cache"):
        TritonSession(g).run({"input_ids": np.zeros((1, 2), np.int64), POSITION: np.array(31, np.int64)})
