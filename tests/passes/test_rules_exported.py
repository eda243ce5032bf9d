"""Each rewrite rule on exported graphs: fires on its target, leaves near-misses alone, keeps the numerics."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim

from kiln.executor.reference import run_reference
from kiln.frontend.torch import export
from kiln.passes import optimize
from tests.conftest import fn_module as Fn, rel_err

torch.manual_seed(0)


def r(*s):
    return torch.randn(*s)


def run_pipeline(fn, inputs, dynamic=None, **params):
    model = Fn(fn, **params).eval()
    g = export(model, inputs, dynamic_shapes=dynamic)
    log = []
    opt = optimize(g, log=log)
    fired = {}
    for entry in log:
        for k, v in entry.fired.items():
            fired[k] = fired.get(k, 0) + v
    feeds = {n: x.numpy() for n, x in zip(g.inputs, inputs)}
    want = run_reference(g, feeds)[0]
    got = run_reference(opt, feeds)[0]
    assert rel_err(got, want) < 1e-5, f"optimized graph differs: {rel_err(got, want):.2e}"
    return fired, opt


W = torch.randn(16, 8)
# (rule, fn, inputs, params): the rule must fire
POSITIVE = [
    ("reshape-chain", lambda m, x: x.view(4, 6).view(2, 12) * 2, (r(2, 3, 4),), {}),
    ("permute-chain", lambda m, x: x.permute(1, 0, 2).permute(2, 1, 0) * 2, (r(2, 3, 4),), {}),
    ("div-by-constant", lambda m, x: (x / 4.0).exp(), (r(3, 4),), {}),
    ("mul-by-one", lambda m, x: (x * 1.0).exp(), (r(3, 4),), {}),
    ("add-zero", lambda m, x: (x + 0.0).exp(), (r(3, 4),), {}),
    ("matmul-transpose-b", lambda m, a, b: a @ b.transpose(-1, -2), (r(2, 3, 5), r(2, 4, 5)), {}),
    ("matmul-scale-out", lambda m, a, b: (a @ b) * 0.5, (r(3, 5), r(5, 4)), {}),
    ("matmul-scale-in", lambda m, a, b: (a * 3.0) @ b, (r(3, 5), r(5, 4)), {}),
    ("matmul-pretranspose-weight", lambda m, x: x @ m.w, (r(3, 16),), {"w": torch.randn(16, 8)}),
    ("fold", lambda m, x: x + m.w.t().sum(0), (r(16),), {"w": torch.randn(16, 16)}),
    ("softmax-from-exp-sum", lambda m, x: (x - x.amax(-1, keepdim=True)).exp()
     / (x - x.amax(-1, keepdim=True)).exp().sum(-1, keepdim=True), (r(3, 7),), {}),
    ("softmax-from-exp-sum-unshifted", lambda m, x: x.exp() / x.exp().sum(-1, keepdim=True), (r(3, 7),), {}),
    ("attention-from-matmuls", lambda m, q, k, v: torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1) @ v,
     (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
    ("attention-from-matmuls-where-fill", lambda m, q, k, v: torch.softmax(
        (q @ k.transpose(-1, -2)).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf")), -1) @ v,
     (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
    ("attention-from-matmuls-where-keep", lambda m, q, k, v: torch.softmax(
        torch.where(m.keep, q @ k.transpose(-1, -2), float("-inf")), -1) @ v,
     (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {"keep": torch.rand(5, 5) > 0.3}),
    ("attention-from-matmuls-additive", lambda m, q, k, v: torch.softmax(q @ k.transpose(-1, -2) + m.bias, -1) @ v,
     (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {"bias": torch.randn(5, 5)}),
    ("gqa-from-repeat-kv", lambda m, q, k, v: F.scaled_dot_product_attention(
        q, k[:, :, None].expand(1, 2, 2, 5, 8).reshape(1, 4, 5, 8), v[:, :, None].expand(1, 2, 2, 5, 8).reshape(1, 4, 5, 8)),
     (r(1, 4, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
    ("causal-mask", lambda m, q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool).tril()), (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
    ("rms-norm", lambda m, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), (r(3, 16),), {}),
    ("norm-weight", lambda m, x: m.w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)), (r(3, 16),),
     {"w": torch.randn(16)}),
    ("layer-norm-div", lambda m, x: (x - x.mean(-1, keepdim=True)) / torch.sqrt(
        (x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + 1e-5) * m.w + m.b, (r(3, 16),),
     {"w": torch.randn(16), "b": torch.randn(16)}),
    ("layer-norm-rsqrt", lambda m, x: (x - x.mean(-1, keepdim=True)) * torch.rsqrt(
        (x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + 1e-5), (r(3, 16),), {}),
    ("silu", lambda m, x: x * torch.sigmoid(x), (r(3, 16),), {}),
    ("silu-from-exp", lambda m, x: x / (torch.exp(-x) + 1), (r(3, 16),), {}),
    ("gelu-erf", lambda m, x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))), (r(3, 16),), {}),
    ("gelu-erf-2", lambda m, x: x * (0.5 * (1.0 + torch.erf(x * (1 / math.sqrt(2.0))))), (r(3, 16),), {}),
    ("gated-gelu_tanh", lambda m, g, u: F.gelu(g, approximate="tanh") * u, (r(3, 16), r(3, 16)), {}),
    ("gated-relu", lambda m, g, u: torch.relu(g) * u, (r(3, 16), r(3, 16)), {}),
    ("norm-bias", lambda m, x: F.layer_norm(x, (16,)) * m.w + m.b, (r(3, 16),),
     {"w": torch.randn(16), "b": torch.randn(16)}),
    ("matmul-relu-through-view", lambda m, x: torch.relu(torch.addmm(m.b, x.view(-1, 8), m.w.t()).view(2, 3, 16)),
     (r(2, 3, 8),), {"w": W, "b": torch.randn(16)}),
    ("matmul-gelu-through-view", lambda m, x: F.gelu(torch.addmm(m.b, x.view(-1, 8), m.w.t()).view(2, 3, 16)),
     (r(2, 3, 8),), {"w": W, "b": torch.randn(16)}),
    ("gelu-tanh", lambda m, x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0)))),
     (r(3, 16),), {}),
    ("rope-rotate-half", lambda m, x: x * m.cos + torch.cat([-x[..., 4:], x[..., :4]], -1) * m.sin, (r(1, 2, 5, 8),),
     {"cos": torch.randn(1, 1, 5, 8), "sin": torch.randn(1, 1, 5, 8)}),
    ("gated-silu", lambda m, g, u: F.silu(g) * u, (r(3, 16), r(3, 16)), {}),
    ("gated-gelu", lambda m, g, u: F.gelu(g) * u, (r(3, 16), r(3, 16)), {}),
    ("matmul-bias", lambda m, x: F.linear(x, m.w, m.b), (r(3, 8),), {"w": W, "b": torch.randn(16)}),
    ("merge-matmuls", lambda m, x: F.linear(x, m.w1) + F.linear(x, m.w2), (r(3, 8),),
     {"w1": torch.randn(16, 8), "w2": torch.randn(16, 8)}),
    ("gated-packed", lambda m, x: F.silu(F.linear(x, m.w1)) * F.linear(x, m.w2), (r(3, 8),),
     {"w1": torch.randn(16, 8), "w2": torch.randn(16, 8)}),
    ("dedupe", lambda m, x: x.exp() + x.exp(), (r(3, 4),), {}),
    ("matmul-relu", lambda m, x: torch.relu(F.linear(x, m.w, m.b)), (r(3, 8),), {"w": W, "b": torch.randn(16)}),
    ("matmul-gelu", lambda m, x: F.gelu(F.linear(x, m.w, m.b)), (r(3, 8),), {"w": W, "b": torch.randn(16)}),
    ("matmul-gelu_tanh", lambda m, x: F.gelu(x @ m.w.t(), approximate="tanh"), (r(3, 8),), {"w": W}),
    ("matmul-gelu_tanh-through-view", lambda m, x: F.gelu(torch.addmm(m.b, x.view(-1, 8), m.w.t()).view(2, 3, 16),
                                                          approximate="tanh"), (r(2, 3, 8),),
     {"w": W, "b": torch.randn(16)}),
    ("pack-weights", lambda m, x: F.linear(x, m.w), (r(3, 8),), {"w": W}),
]

# (rule, fn, inputs, params): the rule must NOT fire (a near miss)
NEAR_MISS = [
    ("add-zero", lambda m, x: (x + 1e-6).exp(), (r(3, 4),), {}),  # an epsilon is not zero
    ("matmul-transpose-b", lambda m, a, b: a @ b.permute(1, 0, 2), (r(2, 3, 5), r(5, 2, 4)), {}),  # not the last two
    ("softmax-from-exp-sum-unshifted", lambda m, x: x.exp() / x.exp().sum(0, keepdim=True) + x.exp(), (r(3, 7),), {}),
    ("attention-from-matmuls", lambda m, q, k, v: torch.softmax(q @ k.transpose(-1, -2), 2) @ v,  # wrong axis
     (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
    ("causal-mask", lambda m, q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool).tril(1)), (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
    ("causal-mask", lambda m, q, k, v, mk: F.scaled_dot_product_attention(q, k, v, attn_mask=mk),  # runtime mask
     (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8), torch.ones(5, 5, dtype=torch.bool).tril()), {}),
    ("rms-norm", lambda m, x: x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + 1e-6), (r(3, 16),), {}),  # wrong axis
    ("silu", lambda m, x: x * torch.sigmoid(x) + torch.sigmoid(x), (r(3, 16),), {}),  # sigmoid read outside
    ("norm-weight", lambda m, x, w: w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)),  # runtime weight
     (r(3, 16), r(16)), {}),
    ("matmul-bias", lambda m, x, b: F.linear(x, m.w) + b, (r(3, 8), r(16)), {"w": W}),  # bias not constant
    ("matmul-bias", lambda m, x: F.linear(x, m.w) + m.b, (r(3, 8),), {"w": W, "b": torch.randn(3, 16)}),  # not a row
    ("merge-matmuls", lambda m, x, y: F.linear(x, m.w) + F.linear(y, m.w), (r(3, 8), r(3, 8)), {"w": W}),
    ("rope-rotate-half", lambda m, x: x * m.cos + torch.cat([-x[..., 4:], x[..., 4:]], -1) * m.sin, (r(1, 2, 5, 8),),
     {"cos": torch.randn(1, 1, 5, 8), "sin": torch.randn(1, 1, 5, 8)}),  # halves do not split at D/2
    ("gated-packed", lambda m, x: F.silu(F.linear(x, m.w1)) * F.linear(x, m.w2) + F.linear(x, m.w1), (r(3, 8),),
     {"w1": torch.randn(16, 8), "w2": torch.randn(16, 8)}),
    ("matmul-relu", lambda m, x: torch.relu(F.linear(x, m.w)) + F.linear(x, m.w), (r(3, 8),), {"w": W}),  # read twice
    ("pack-weights", lambda m, x, y: F.linear(x, m.w) + (m.w @ y).t(),  # the weight is also an A operand
     (r(3, 8), r(8, 3)), {"w": torch.randn(8, 8)}),
]


@pytest.mark.parametrize("rule,fn,inputs,params", POSITIVE, ids=[p[0] for p in POSITIVE])
def test_rule_fires(rule, fn, inputs, params):
    fired, _ = run_pipeline(fn, inputs, **params)
    assert fired.get(rule, 0) >= 1, f"{rule} did not fire; fired: {fired}"


@pytest.mark.parametrize("rule,fn,inputs,params", NEAR_MISS, ids=[f"{p[0]}-{i}" for i, p in enumerate(NEAR_MISS)])
def test_rule_leaves_near_miss(rule, fn, inputs, params):
    fired, _ = run_pipeline(fn, inputs, **params)
    assert fired.get(rule, 0) == 0, f"{rule} fired on a near miss; fired: {fired}"


def test_every_rule_has_a_positive_case():
    """A rule (or function stage) without a test that makes it fire fails here."""
    from kiln.passes.engine import RuleSet
    from kiln.passes.pipeline import STAGES
    rules = {r.name for _, stage in STAGES if isinstance(stage, RuleSet) for r in stage}
    from tests.passes.test_rules import IDENTITIES
    covered = {p[0] for p in POSITIVE} | set(IDENTITIES)
    covered |= {"quantize", "fuse-quant"}  # fired on exported models in tests/passes/test_quantize.py
    functions = {}
    for name, stage in STAGES:
        if not isinstance(stage, RuleSet):
            functions.setdefault(stage, set()).add(name)
    # a function stage counts as covered when any stage running the same function is (cse = dedupe, ...)
    uncovered_functions = [names for names in functions.values() if not names & covered]
    assert not rules - covered, f"rules without a positive case: {sorted(rules - covered)}"
    assert not uncovered_functions, f"stages without a positive case: {uncovered_functions}"


def test_causal_mask_with_symbolic_sizes():
    """HF-style masks built from arange and comparisons over a dynamic length become causal=True."""
    def fn(m, q, k, v):
        s = q.shape[2]
        i = torch.arange(s)
        mask = i[None, :] <= i[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    seq = Dim("seq", min=2, max=64)
    dyn = {"xs": tuple({2: seq} for _ in range(3))}
    fired, opt = run_pipeline(fn, (r(1, 2, 6, 8), r(1, 2, 6, 8), r(1, 2, 6, 8)), dynamic=dyn)
    assert fired.get("causal-mask") == 1
    att = [n for n in opt.nodes if n.op == "attention"]
    assert att and att[0].attrs.causal and len(att[0].inputs) == 3


def test_graph_outputs_are_never_removed():
    """An interior value that is also a graph output blocks the fusion that would delete it."""
    fired, opt = run_pipeline(lambda m, x: (x * torch.sigmoid(x), torch.sigmoid(x))[0], (r(3, 4),))
    model = Fn(lambda m, x: (x * torch.sigmoid(x), torch.sigmoid(x)))
    g = export(model, (r(3, 4),))
    opt = optimize(g)
    assert len(opt.outputs) == 2 and all(o in opt.tensors for o in opt.outputs)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for a, b in zip(run_reference(opt, {g.inputs[0]: x}), run_reference(g, {g.inputs[0]: x})):
        assert rel_err(a, b) < 1e-6


def test_stages_can_be_switched_off_by_name():
    model = Fn(lambda m, x: x * torch.sigmoid(x))
    g = export(model, (r(3, 4),))
    assert "silu" in optimize(g).op_histogram()
    assert "silu" not in optimize(g, stages=["canonicalize", "fold"]).op_histogram()
    with pytest.raises(Exception, match="unknown pass stage"):
        optimize(g, stages=["nope"])
