"""int8 per-channel scales (kiln/core/quantize_int8.py) and the quantize stage's use of them:
the chosen scales reproduce a per-row numpy search, no row's rounding error exceeds the
max-abs scale's, the tied head is quantized by default for int8, and save → load keeps them."""
import numpy as np
import pytest
import torch

import kiln
from kiln.core import storage
from kiln.core.quantize_int8 import CLIP_GRID, quantize_i8_row
from kiln.errors import KilnError
from kiln.passes.quantize import QuantizeConfig

I8 = storage.get("i8_row")


def _weights(n=64, k=96, seed=0):
    """Heavy-tailed rows with a few outliers (what LLM weights look like), some all-zero rows,
    one row of a single value."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(3, (n, k)) * 0.02).astype(np.float32)
    w[3] = 0
    w[5] = 0.125
    w[7, 11] = 1.5
    return w


def _row_errors(w, raw):
    d = I8.dequantize(raw, w.shape).astype(np.float64)
    return ((w.astype(np.float64) - d) ** 2).sum(axis=1)


def _search_one_row(row):
    """The search written plainly, one row at a time (the module doc's steps 1-2)."""
    amax = np.float32(np.abs(row).max())
    w64 = row.astype(np.float64)

    def err(s, q):
        return float(((w64 - (np.float32(s) * q.astype(np.float32)).astype(np.float64)) ** 2).sum())

    def codes(s):
        return np.clip(np.rint(row / s), -127, 127) if s > 0 else np.zeros_like(row)

    s_max = np.float32(amax / np.float32(127))
    best_s, best_e32 = s_max, None
    for c in CLIP_GRID[::-1]:            # c = 1 first: the max-abs scale
        s = np.float32(amax * (c / np.float32(127)))
        d = row - codes(s).astype(np.float32) * s
        e = np.float32(np.dot(d, d))
        if best_e32 is None or e < best_e32:
            best_s, best_e32 = s, e
    q = codes(best_s)
    qq = float(np.dot(q, q))
    ls = np.float32(np.dot(w64, q) / qq) if qq > 0 else np.float32(0)
    s, e = (ls, err(ls, q)) if err(ls, q) < err(best_s, q) else (best_s, err(best_s, q))
    if e > err(s_max, codes(s_max)):
        s, q = s_max, codes(s_max)
    return s, q.astype(np.int8)


def test_scales_reproduce_a_plain_per_row_search():
    w = _weights()
    raw = quantize_i8_row(w, "mse")
    assert raw.shape == (64, 4 + 96) and raw.dtype == np.uint8
    got_s = np.ascontiguousarray(raw[:, :4]).view("<f4")[:, 0]
    got_q = raw[:, 4:].view(np.int8)
    for i, row in enumerate(w):
        s, q = _search_one_row(row)
        # float32 scans summed in another order may pick a neighbouring candidate on a near tie
        assert got_s[i] == pytest.approx(s, rel=0.03), i
        if got_s[i] == s:
            np.testing.assert_array_equal(got_q[i], q, err_msg=f"row {i}")


def test_no_row_is_worse_than_max_abs_and_most_are_better():
    for seed in range(3):
        w = _weights(seed=seed)
        e_mse = _row_errors(w, quantize_i8_row(w, "mse"))
        e_max = _row_errors(w, quantize_i8_row(w, "max"))
        assert (e_mse <= e_max).all()
        assert (e_mse < e_max).mean() > 0.5                # heavy tails: clipping pays in most rows
        assert e_mse[3] == 0 and e_mse[5] == 0            # zero and constant rows stay exact


def test_max_is_the_storage_tables_definition():
    w = _weights()
    np.testing.assert_array_equal(quantize_i8_row(w, "max"), I8.quantize(w))


def test_bad_input_is_refused():
    with pytest.raises(KilnError, match="NaN"):
        quantize_i8_row(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(KilnError, match="method"):
        quantize_i8_row(np.ones((2, 4), np.float32), "minmax")
    with pytest.raises(KilnError, match="scales"):
        QuantizeConfig("int8", scales="minmax")


class _TiedLM(torch.nn.Module):
    def __init__(self, vocab=80, d=64):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.up = torch.nn.Linear(d, 128, bias=False)
        self.down = torch.nn.Linear(128, d, bias=False)

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.down(torch.relu(self.up(h)))
        return h @ self.emb.weight.T


def _tied_model():
    torch.manual_seed(0)
    m = _TiedLM().eval()
    with torch.no_grad():  # heavy-tailed weights, so the scale search has something to find
        for p in m.parameters():
            p.copy_(torch.from_numpy(_weights(*p.shape, seed=p.shape[0])))
    return m


def _stored(session):
    return {n: t for n, t in session.graph.tensors.items() if t.storage == "i8_row"}


def test_quantize_stage_stores_the_searched_scales_and_the_tied_head():
    m = _tied_model()
    ids = torch.tensor([[1, 7, 79, 3]])
    s = kiln.compile(m, (ids,), quantize="int8")
    hist = s.graph.op_histogram()
    assert hist.get("qembedding") == 1 and hist.get("qmatmul", 0) >= 2, hist   # the tied head too
    weights = {"emb": m.emb.weight, "up": m.up.weight, "down": m.down.weight}
    stored = _stored(s)
    assert len(stored) == 3
    for name, t in stored.items():
        src = next(v for k, v in weights.items() if name.startswith(k) or f".{k}." in name or k in name)
        w = src.detach().numpy()
        np.testing.assert_array_equal(s.graph.constants[name], quantize_i8_row(w, "mse"), err_msg=name)
    ref = m(ids).detach().numpy()
    out = s(ids.numpy())[0]
    assert np.abs(out - ref).max() <= 0.02 * np.abs(ref).max()
    # the ablation: max-abs scales, the tied head kept fp32
    old = kiln.compile(m, (ids,), quantize=QuantizeConfig("int8", scales="max", keep_tied=True))
    assert "qembedding" not in old.graph.op_histogram() and len(_stored(old)) == 2
    for name in _stored(old):
        w = (m.up.weight if "up" in name else m.down.weight).detach().numpy()
        np.testing.assert_array_equal(old.graph.constants[name], I8.quantize(w), err_msg=name)


def test_output_error_not_above_max_abs_on_heavy_tailed_weights():
    m = _tied_model()
    ids = torch.arange(0, 80, 3)[None]
    ref = m(ids).detach().numpy().astype(np.float64)
    errs = {}
    for scales in ("mse", "max"):
        s = kiln.compile(m, (ids,), quantize=QuantizeConfig("int8", scales=scales), executor="reference")
        errs[scales] = float(np.sqrt(((s(ids.numpy())[0] - ref) ** 2).mean()))
    assert errs["mse"] < errs["max"], errs


def test_save_load_keeps_the_searched_bytes(tmp_path):
    m = _tied_model()
    ids = torch.tensor([[2, 5, 9]])
    s = kiln.compile(m, (ids,), quantize="int8")
    p = tmp_path / "m.kiln"
    s.save(p)
    t = kiln.load(p)
    for name, tensor in _stored(s).items():
        assert t.graph.tensors[name].storage == "i8_row"
        assert bytes(np.asarray(t.graph.constants[name])) == bytes(s.graph.constants[name])
    np.testing.assert_array_equal(t(ids.numpy())[0], s(ids.numpy())[0])


def test_channel_weights_weigh_the_error_and_never_lose_to_max_abs():
    w = _weights(32, 64, seed=4)
    h = np.ones(64)
    h[[3, 40]] = 1e4                                   # two loud input channels
    d = I8.dequantize(quantize_i8_row(w, "mse", h), w.shape).astype(np.float64)
    d_plain = I8.dequantize(quantize_i8_row(w, "mse"), w.shape).astype(np.float64)
    d_max = I8.dequantize(quantize_i8_row(w, "max"), w.shape).astype(np.float64)

    def werr(dq):
        return (((w - dq) ** 2) * h).sum(axis=1)
    assert (werr(d) <= werr(d_max)).all() and werr(d).sum() < werr(d_plain).sum()
    np.testing.assert_array_equal(quantize_i8_row(w, "mse", np.ones(64)), quantize_i8_row(w, "mse"))
    with pytest.raises(KilnError, match="channel weights"):
        quantize_i8_row(w, "mse", -h)


def test_calibration_measures_each_weights_input_energy():
    from kiln.frontend.torch import export
    from kiln.passes.quantize_calibration import input_energy
    m = _tied_model()
    ids = torch.tensor([[1, 7, 79, 3, 3, 50]])
    from kiln.passes.pipeline import optimize
    g = optimize(export(m, (ids,)), stages=["canonicalize", "absorb", "fold"])   # the graph the stage sees
    energy = input_energy(g, [{g.inputs[0]: ids.numpy()}])
    h = m.emb(ids)[0].detach().numpy().astype(np.float64)
    hidden = torch.relu(m.up(m.emb(ids)))[0].detach().numpy().astype(np.float64)
    want = {"up": (h ** 2).mean(0), "down": (hidden ** 2).mean(0)}
    assert len(energy) == 3, list(energy)              # up, down and the tied head's matmul
    head_in = (h + m.down(torch.relu(m.up(m.emb(ids))))[0].detach().numpy()) ** 2
    for name, v in energy.items():
        which = "up" if "up" in name else "down" if "down" in name else "head"
        np.testing.assert_allclose(v, want[which] if which != "head" else head_in.mean(0), rtol=1e-4, err_msg=name)
    # the calibrated compile runs and matches the model
    s = kiln.compile(m, (ids,), quantize=QuantizeConfig("int8", calibration=({g.inputs[0]: ids.numpy()},)))
    ref = m(ids).detach().numpy()
    assert np.abs(s(ids.numpy())[0] - ref).max() <= 0.02 * np.abs(ref).max()
    with pytest.raises(KilnError, match="no calibration"):
        input_energy(g, [])
