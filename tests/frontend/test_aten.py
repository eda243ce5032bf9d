"""Every handled ATen op, alone in a tiny module, compiled and compared with PyTorch."""
import collections
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kiln
from kiln.executor.reference import run_reference
from kiln.frontend.torch import export, from_exported_program, supported_ops
from tests.conftest import fn_module as Fn, rel_err

torch.manual_seed(0)


def r(*s):
    return torch.randn(*s)


def p(*s):
    return torch.rand(*s) + 0.1


def i(hi, *s):
    return torch.randint(0, hi, s)


W = torch.randn(6, 8)
EMB = torch.randn(20, 8)
LN_W, LN_B = torch.randn(8), torch.randn(8)
P34 = p(3, 4)

def _gptj_rope(x, pos):
    """GPT-J's rotary embedding: rotates adjacent pairs (x0, x1), (x2, x3), ... of [B, S, H, D]."""
    inv = 1.0 / (10000 ** (torch.arange(0, x.shape[-1], 2).float() / x.shape[-1]))
    ang = pos.float()[:, None] * inv[None, :]                      # [S, D/2]
    sin = ang.sin().repeat_interleave(2, dim=-1)[None, :, None, :]  # [1, S, 1, D]: each angle twice in a row
    cos = ang.cos().repeat_interleave(2, dim=-1)[None, :, None, :]
    rot = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    return x * cos + rot * sin


# name -> (fn(self, *inputs), inputs, params)
CASES = {
    "add": (lambda m, x, y: x + y * 2 + 1, (r(3, 4), r(4)), {}),
    "add_alpha": (lambda m, x, y: torch.add(x, y, alpha=3), (r(3, 4), r(3, 4)), {}),
    "sub": (lambda m, x, y: x - y - 0.5, (r(3, 4), r(1, 4)), {}),
    "rsub": (lambda m, x: 1 - x, (r(5),), {}),
    "mul_div": (lambda m, x, y: x * y / (y + 3) * 0.5 / 2, (r(2, 3), p(2, 3)), {}),
    "neg_pow": (lambda m, x: -(x ** 2) + torch.pow(x.abs(), 0.5) + torch.pow(2.0, x), (r(4, 4),), {}),
    "sqrt_rsqrt_exp_log": (lambda m, x: x.sqrt() + x.rsqrt() + x.exp() + x.log() + x.reciprocal(), (p(3, 5),), {}),
    "tanh_sigmoid_relu": (lambda m, x: x.tanh() + x.sigmoid() + x.relu() + torch.erf(x), (r(3, 5),), {}),
    "gelu": (lambda m, x: F.gelu(x) + F.gelu(x, approximate="tanh"), (r(3, 5),), {}),
    "silu_cos_sin": (lambda m, x: F.silu(x) + x.cos() * x.sin(), (r(3, 5),), {}),
    "max_min_clamp": (lambda m, x, y: torch.maximum(x, y) + torch.minimum(x, y) + x.clamp(-0.5, 0.5)
                      + x.clamp(min=0.1) + x.clamp(max=0.2), (r(3, 4), r(3, 4)), {}),
    "softmax": (lambda m, x: torch.softmax(x, -1) + F.log_softmax(x, dim=0), (r(3, 6),), {}),
    "layer_norm": (lambda m, x: F.layer_norm(x, (8,), m.w, m.b, 1e-5), (r(2, 3, 8),), {"w": LN_W, "b": LN_B}),
    "layer_norm_2d": (lambda m, x: F.layer_norm(x, (3, 8)), (r(2, 3, 8),), {}),
    "rms_norm": (lambda m, x: F.rms_norm(x, (8,), m.w, 1e-6), (r(2, 3, 8),), {"w": LN_W}),
    "embedding": (lambda m, ids: F.embedding(ids, m.w), (i(20, 2, 5),), {"w": EMB}),
    "linear": (lambda m, x: F.linear(x, m.w) + F.linear(x, m.w, m.w[:, 0]), (r(2, 3, 8),), {"w": W}),
    "mm_bmm_matmul": (lambda m, a, b: torch.bmm(a, b).sum(0) + torch.mm(a[0], b[0]) + (a @ b)[1], (r(2, 3, 4), r(2, 4, 5)), {}),
    "matmul_vec": (lambda m, a, v: a @ v, (r(2, 3, 4), r(4)), {}),
    "addmm": (lambda m, x: torch.addmm(m.b, x, m.w.t()) + torch.addmm(m.b, x, m.w.t(), beta=0.5, alpha=2.0),
              (r(3, 8),), {"w": W, "b": torch.randn(6)}),
    "baddbmm": (lambda m, c, a, b: torch.baddbmm(c, a, b, alpha=0.5), (r(2, 3, 5), r(2, 3, 4), r(2, 4, 5)), {}),
    "view_reshape": (lambda m, x: x.view(2, 12).reshape(4, -1).unsqueeze(0).squeeze(0).flatten(), (r(2, 3, 4),), {}),
    "squeeze_dims": (lambda m, x: x.squeeze(1) + x.squeeze(), (r(3, 1, 4),), {}),
    "unflatten": (lambda m, x: x.unflatten(1, (3, 4)), (r(2, 12),), {}),
    "permute_transpose": (lambda m, x: x.permute(2, 0, 1).transpose(0, 1).contiguous() * 1, (r(2, 3, 4),), {}),
    "t": (lambda m, x: x.t() * 2, (r(3, 4),), {}),
    "expand": (lambda m, x: x.expand(3, 4, 5) + x.expand_as(torch.empty(3, 4, 5)), (r(4, 1),), {}),
    "repeat": (lambda m, x: x.repeat(2, 1, 3), (r(3, 2),), {}),
    "repeat_interleave": (lambda m, x: x.repeat_interleave(2, dim=-1).sum(0) + x.repeat_interleave(3, 0)[:2, :2].flatten()
                          + x.repeat_interleave(1).sum() + x.repeat_interleave(2)[:4], (r(3, 2),), {}),
    "rope_interleaved": (lambda m, x, pos: _gptj_rope(x, pos), (r(1, 5, 2, 8), torch.arange(5)), {}),
    "slice_select": (lambda m, x: x[:, 1:3] * 1 + x[:, -2:] + x[0, :2].unsqueeze(0) + x[:, ::2][:, :2], (r(3, 5),), {}),
    "narrow": (lambda m, x: x.narrow(1, 1, 2) * 1, (r(3, 5),), {}),
    "index_select_gather": (lambda m, x, idx: x.index_select(0, idx).sum(-1, keepdim=True) + torch.gather(x, 1, idx.view(1, 2).expand(3, 2))[:2],
                            (r(3, 5), torch.tensor([2, 0])), {}),
    "index_tensor": (lambda m, x, idx: x[idx] * 2, (r(5, 3), torch.tensor([4, 1, 1])), {}),
    "cat_split_chunk": (lambda m, x: torch.cat(list(x.split(2, dim=1)) + list(x.chunk(2, dim=0)[::-1]), dim=0)
                        if False else torch.cat([t * 1 for t in x.split(2, dim=1)], dim=0) + torch.cat(x.chunk(3, 1), 0),
                        (r(4, 6),), {}),
    "split_sizes_stack_unbind": (lambda m, x: torch.stack([a + b for a, b in zip(x.split([1, 2], 1)[:1] * 2, x.unbind(1)[:2])], 0),
                                 (r(3, 3),), {}),
    "where_masked_fill": (lambda m, x, c: torch.where(c, x, 0.0) + x.masked_fill(c, -1.0) + torch.where(x > 0, x, -x),
                          (r(3, 4), torch.rand(3, 4) > 0.5), {}),
    "compare_logic": (lambda m, x: x + ((torch.arange(4) < 2) & (torch.arange(4) != 0) | (torch.arange(4) >= 3)).float()
                      + (torch.arange(4) <= 1).float() * (torch.arange(4) > 0).float() * (torch.arange(4) == 1).float()
                      + (~(torch.arange(4) == 2)).float(), (r(3, 4),), {}),
    "to_dtype": (lambda m, x, ids: x.to(torch.float32) + ids.to(torch.float32) + ids.float().to(torch.int64)
                 + ids.to("cpu", torch.float32) + torch.ones(3, dtype=torch.int64).to(device=x.device), (r(3,), i(9, 3)), {}),
    "mean_sum_amax": (lambda m, x: x.mean(-1, keepdim=True) + x.sum(dim=(0,), keepdim=True) + x.amax(-1, keepdim=True)
                      + x.sum() + x.max(dim=-1, keepdim=True).values, (r(3, 4),), {}),
    "sdpa": (lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v), (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
    "sdpa_causal_scale": (lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2),
                          (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
    "sdpa_mask_bool": (lambda m, q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.bool).tril(2)), (r(1, 2, 5, 8), r(1, 2, 7, 8), r(1, 2, 7, 8)), {}),
    "sdpa_mask_float_gqa": (lambda m, q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf")),
        enable_gqa=True), (r(1, 4, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
    "sdpa_3d": (lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v), (r(2, 5, 8), r(2, 5, 8), r(2, 5, 8)), {}),
    "creation": (lambda m, x: x + torch.ones(3, 4) + torch.zeros(4) + torch.full((3, 1), 2.0) + x.new_ones(4)
                 + torch.ones_like(x) * 2 + torch.zeros_like(x) + torch.full_like(x, 3.0) + x.new_zeros(3, 4)
                 + torch.arange(4).float() + torch.arange(1, 5).float() + torch.arange(0, 8, 2).float()
                 + torch.arange(0.0, 2.0, 0.5), (r(3, 4),), {}),
    "triu_tril": (lambda m, x: x * torch.ones(4, 4).triu(1) + x * torch.ones(4, 4).tril(-1), (r(4, 4),), {}),
    "cumsum_diff": (lambda m, x: x + torch.cumsum(torch.ones(4), 0) + torch.diff(torch.arange(5)).float()
                    + torch.diff(torch.arange(4), prepend=torch.zeros(1, dtype=torch.int64)).float(), (r(4),), {}),
    "dropout_clone": (lambda m, x: F.dropout(x.clone(), 0.5, training=False).detach() + x.contiguous(), (r(3, 4),), {}),
    "type_as": (lambda m, x, ids: ids.type_as(x) + x, (r(4,), i(5, 4)), {}),
    "aten_direct_views": (lambda m, x: torch.ops.aten.alias.default(x) + torch.ops.aten.view_copy.default(x, [3, 4])
                          + torch.ops.aten.slice_copy.Tensor(x, 0, 1, 2), (r(3, 4),), {}),
    "special_softmax": (lambda m, x: torch.special.softmax(x, 0), (r(3, 4),), {}),
    "empty_fill": (lambda m, x: x + torch.scalar_tensor(2.0) + torch.empty(3, 4).fill_(1) + torch.empty_like(x).fill_(2)
                   + x.new_empty(3, 4).fill_(3) + x.new_full((3, 4), 2.5), (r(3, 4),), {}),
    "bitwise_logical": (lambda m, x: x * ((x > 0).bitwise_and(x < 1) | (x > 0).bitwise_or(x < -1)
                                          & torch.logical_and(x > 0, x < 1) | torch.logical_or(x > 0, x < 1)
                                          & torch.logical_not(x > 0)).float(), (r(3, 4),), {}),
    "clamp_min_max_concat": (lambda m, x: torch.concat([torch.clamp_min(x, 0), torch.clamp_max(x, 0)], 0), (r(3, 4),), {}),
    "matmul_3d_2d": (lambda m, a, b: a @ b, (r(2, 3, 4), r(4, 5)), {}),
    "tensor_compare_pow": (lambda m, x, y: (x > y).float() + (x < y).float() + (x >= y).float() + (x <= y).float()
                           + (x == y).float() + (x != y).float() + P34 ** y + x.mean(), (r(3, 4), r(3, 4)), {}),
    "where_scalars": (lambda m, x, c: torch.where(c, 1.0, x) + torch.where(c, x, 2.0) + torch.where(c, 1.0, 0.0)
                      + x.masked_fill(c, torch.tensor(3.0)), (r(3, 4), torch.rand(3, 4) > 0.5), {}),
    "reshape_noncontiguous": (lambda m, x: x.transpose(0, 1).reshape(-1) * 1, (r(3, 4),), {}),
    "squeeze_multi": (lambda m, x: x.squeeze((1, 2)) * 1, (r(3, 1, 1, 4),), {}),
    "manual_attention": (lambda m, q, k, v: torch.softmax(
        (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf")),
        -1) @ v, (r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8)), {}),
}

SEEN: collections.Counter = collections.Counter()


@pytest.mark.parametrize("name", sorted(CASES))
def test_aten_op(name):
    fn, inputs, params = CASES[name]
    model = Fn(fn, **params).eval()
    # Kiln converts the program as captured when it can, else after run_decompositions({}): both count.
    ep = torch.export.export(model, inputs)
    SEEN.update(str(n.target) for n in ep.graph.nodes if n.op == "call_function")
    SEEN.update(str(n.target) for n in ep.run_decompositions({}).graph.nodes if n.op == "call_function")
    with torch.inference_mode():
        want = model(*inputs).numpy()
    sess = kiln.compile(model, inputs, executor="reference")
    got = sess.run({n: x.numpy() for n, x in zip(sess.input_names, inputs)})[0]
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        assert rel_err(got, want) < 1e-5


# Targets that only appear in other situations (asserts, training-mode guards), each with its own test below.
NOT_ELICITED_ALONE = {
    "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default",  # dynamic-shape guards
    "aten.native_dropout.default",   # training-mode dropout: test_training_dropout_is_refused
    "aten.sym_size.int",             # symbolic sizes: test_sym_size_in_dynamic_graph
}


def test_core_aten_decomposed_program():
    """Programs already lowered to core ATen (softmax → _softmax, layer_norm → native_layer_norm) convert too."""
    model = Fn(lambda m, x: torch.softmax(x, -1) + torch.log_softmax(x, -1) + F.layer_norm(x, (4,)).view(12).view(3, 4))
    x = r(3, 4)
    ep = torch.export.export(model, (x,)).run_decompositions()
    SEEN.update(str(n.target) for n in ep.graph.nodes if n.op == "call_function")
    g = from_exported_program(ep)
    assert rel_err(run_reference(g, {g.inputs[0]: x.numpy()})[0], model(x).numpy()) < 1e-6


def test_every_handler_is_exercised():
    """Runs last in this module (pytest keeps file order): every handler target met a case."""
    if len(SEEN) == 0:
        pytest.fail("run the whole module: the op cases record which targets they reached")
    assert NOT_ELICITED_ALONE <= set(supported_ops()), "stale exemption"
    missing = [t for t in supported_ops() if t not in SEEN and t not in NOT_ELICITED_ALONE]
    assert not missing, f"handlers never exercised by a case: {missing}"


def test_sym_size_in_dynamic_graph():
    model = Fn(lambda m, x: x.view(x.shape[0] * x.shape[1], -1) * 2).eval()
    x = r(2, 6, 4)
    dyn = {"xs": ({1: torch.export.Dim("n", min=2, max=64)},)}
    sess = kiln.compile(model, (x,), dynamic_shapes=dyn, executor="reference")
    for n in (2, 5, 9):
        xi = r(2, n, 4)
        assert rel_err(sess.run({sess.input_names[0]: xi.numpy()})[0], model(xi).numpy()) < 1e-6


def test_training_dropout_is_refused():
    model = Fn(lambda m, x: F.dropout(x, 0.5, training=True))
    with pytest.raises(kiln.errors.KilnError, match="eval"):
        kiln.compile(model, (r(3, 4),), executor="reference")


class UsesCummax(nn.Module):
    def forward(self, x):
        y = x * 2
        return torch.cummax(y, 0).values  # the line the error must point at


def test_unsupported_op_names_op_and_source_line():
    with pytest.raises(kiln.errors.UnsupportedOpError) as e:
        export(UsesCummax(), (r(4, 3),))
    msg = str(e.value)
    assert "aten.cummax" in msg
    assert "test_aten.py" in msg and "torch.cummax(y, 0)" in msg
    assert "kiln ops" in msg


def test_unsupported_dtype_is_clear():
    with pytest.raises(kiln.errors.KilnError, match="complex64"):
        export(Fn(lambda m, x: x * 2), (torch.randn(3, dtype=torch.complex64),))
