"""The storage-type table (kiln/core/storage.py) against gguf's reference (de)quantizers.

Fixtures are llama.cpp-quantized GGUF files (/work/shared/fixtures): every tensor of
every file is dequantized by Kiln and by ``gguf.quants.dequantize`` and must agree
bitwise, and its byte size must be the table's.
"""
from __future__ import annotations

import glob
import os

import gguf
import numpy as np
import pytest

from kiln.core import storage
from kiln.errors import KilnError
from tests.shared_fixtures import FIXTURES_DIR

T = gguf.GGMLQuantizationType

FIXTURES = sorted(glob.glob(str(FIXTURES_DIR / "*.gguf")))


def _shape(t):
    return tuple(int(x) for x in reversed(t.shape))  # GGUF lists dims fastest-first


def test_fixtures_are_there():
    assert len(FIXTURES) >= 7, "the GGUF fixtures (/work/shared/fixtures) are missing"


@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
def test_every_fixture_tensor_dequantizes_like_gguf(path):
    kinds = set()
    for t in gguf.GGUFReader(path).tensors:
        st = storage.by_gguf_type(int(t.tensor_type))
        shape = _shape(t)
        assert storage.nbytes(st, shape) == t.data.nbytes, (t.name, st.name)
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        got = st.dequantize(t.data, shape)
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_array_equal(got, want, err_msg=f"{os.path.basename(path)}:{t.name} ({st.name})")
        kinds.add(st.name)
    assert "F32" in path or kinds - {"f32"}, "a quantized fixture without quantized tensors"


def test_fixtures_cover_every_gguf_block_type():
    """Every block type is read from llama.cpp-made files, or (those gguf's Python quantizer
    writes, which no fixture holds) from gguf-made blocks in test_dequantize_data_quantized_by_gguf."""
    kinds = {storage.by_gguf_type(int(t.tensor_type)).name for p in FIXTURES for t in gguf.GGUFReader(p).tensors}
    assert {s.name for s in storage.STORAGE.values() if s.is_block} <= kinds | set(GGUF_QUANTIZABLE)


def test_default_model_tensors_dequantize_like_gguf():
    from kiln.models.default import default_model_path
    try:
        path = default_model_path()
    except KilnError as e:
        pytest.skip(str(e))
    tensors = gguf.GGUFReader(str(path)).tensors
    picked = [t for t in tensors if t.name in ("token_embd.weight", "blk.0.ffn_down.weight", "blk.0.attn_q.weight",
                                              "blk.0.attn_norm.weight")]
    assert len(picked) == 4
    for t in picked:
        st, shape = storage.by_gguf_type(int(t.tensor_type)), _shape(t)
        rows = min(shape[0], 64) if len(shape) == 2 else shape[0]
        raw = np.asarray(t.data)[:rows] if len(shape) == 2 else np.asarray(t.data)
        sub = (rows, shape[1]) if len(shape) == 2 else shape
        want = gguf.quants.dequantize(raw, t.tensor_type).reshape(sub)
        np.testing.assert_array_equal(st.dequantize(raw, sub), want, err_msg=t.name)


GGUF_QUANTIZABLE = {"f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "f32": T.F32,
                    "q5_0": T.Q5_0, "q5_1": T.Q5_1}


def _data(shape=(9, 512), seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x[0, :32] = 0           # an all-zero block
    x[1, 32:64] = 1e-3      # a constant block
    x[2] *= 50
    return x


@pytest.mark.parametrize("name", list(GGUF_QUANTIZABLE))
def test_dequantize_data_quantized_by_gguf(name):
    x = _data()
    raw = gguf.quants.quantize(x, GGUF_QUANTIZABLE[name])
    want = gguf.quants.dequantize(raw, GGUF_QUANTIZABLE[name])
    np.testing.assert_array_equal(storage.get(name).dequantize(raw, x.shape), want)


@pytest.mark.parametrize("name", ["f16", "bf16", "q8_0", "q4_0", "f32"])
def test_quantize_matches_gguf_bitwise(name):
    x = _data()
    want = gguf.quants.quantize(x, GGUF_QUANTIZABLE[name])
    got = storage.get(name).quantize(x)
    assert got.dtype == np.uint8 and got.nbytes == storage.nbytes(name, x.shape)
    np.testing.assert_array_equal(got.reshape(-1), want.view(np.uint8).reshape(-1))


def _step_error(name, x):
    """(|dequantize(quantize(x)) - x|, the step D of each element's 16-group)."""
    st = storage.get(name)
    raw = st.quantize(x)
    y = st.dequantize(raw, x.shape)
    _, d, _ = st.decode(raw.reshape(-1, st.block_bytes))
    return np.abs(y - x).reshape(-1, 16), np.abs(d).reshape(-1, 1)


FP16_REL = 2.0 ** -11  # the stored fp16 step is within this relative distance of the fp32 one


def test_q8_0_error_is_half_a_step():
    # codes are rounded against the fp32 step, the stored step is its fp16: |q| <= 127 of those
    err, d = _step_error("q8_0", _data())
    assert np.all(err <= d * (0.5 + 127 * FP16_REL) * (1 + 1e-6))


def test_q4_0_error_is_at_most_one_step():
    # the extreme maps to -8, so the opposite extreme (+8 steps) clips to 7: one full step
    err, d = _step_error("q4_0", _data())
    assert np.all(err <= d * (1 + 8 * FP16_REL) * (1 + 1e-6))


def test_q4_k_error_is_half_a_step():
    err, d = _step_error("q4_k", _data((6, 1024), seed=3))
    assert np.all(err <= d * 0.5 * (1 + 1e-5) + 1e-7)
    # and the round trip through gguf's own dequantizer agrees
    x = _data((6, 1024), seed=3)
    raw = storage.get("q4_k").quantize(x)
    np.testing.assert_array_equal(storage.get("q4_k").dequantize(raw, x.shape),
                                  gguf.quants.dequantize(raw, T.Q4_K).reshape(x.shape))


def test_int8_per_row_is_its_definition():
    x = _data((5, 96))
    st = storage.get("i8_row")
    raw = st.quantize(x)
    assert raw.shape == (5, 4 + 96) and storage.nbytes("i8_row", x.shape) == 5 * 100
    scale = raw[:, :4].copy().view("<f4")[:, 0]
    q = raw[:, 4:].view(np.int8)
    np.testing.assert_array_equal(scale, (np.abs(x).max(axis=1) / np.float32(127)).astype(np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        want_q = np.where(scale[:, None] > 0, np.rint(x / scale[:, None]), 0)
    np.testing.assert_array_equal(q, want_q)
    assert np.abs(q).max() <= 127
    np.testing.assert_array_equal(st.dequantize(raw, x.shape), scale[:, None] * q.astype(np.float32))
    zero = st.quantize(np.zeros((1, 32), np.float32))
    assert not zero.any()


def test_table_sizes():
    want = {"f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "i8_row": (1, 1), "q8_0": (32, 34), "q4_0": (32, 18),
            "q4_1": (32, 20), "q4_k": (256, 144), "q5_k": (256, 176), "q6_k": (256, 210), "f32_p16": (1, 4),
                "q5_0": (32, 22), "q5_1": (32, 24)}
    assert {n: (s.block_size, s.block_bytes) for n, s in storage.STORAGE.items()} == want
    assert storage.nbytes("q4_k", (3, 512)) == 3 * 2 * 144
    assert storage.nbytes("f32", ()) == 4
    for name, st in storage.STORAGE.items():
        if st.gguf_type is not None:
            assert storage.by_gguf_type(st.gguf_type) is st
            assert gguf.GGML_QUANT_SIZES[T(st.gguf_type)] == (st.block_size, st.block_bytes)


def test_bad_input_is_a_kiln_error():
    with pytest.raises(KilnError, match="not a whole number"):
        storage.nbytes("q4_k", (2, 300))
    with pytest.raises(KilnError, match="unknown storage type"):
        storage.get("q3_k")
    with pytest.raises(KilnError, match="GGUF tensor type 11 is not supported"):
        storage.by_gguf_type(11)
    with pytest.raises(KilnError, match="bytes given"):
        storage.get("q8_0").dequantize(np.zeros(33, np.uint8), (1, 32))
    with pytest.raises(KilnError, match="bytes given"):
        storage.get("f16").dequantize(np.zeros(3, np.uint8), (2,))
    with pytest.raises(KilnError, match="NaN"):
        storage.get("q8_0").quantize(np.full((1, 32), np.nan, np.float32))
    with pytest.raises(KilnError, match="multiple of the block size"):
        storage.get("q4_0").quantize(np.zeros((1, 48), np.float32))
