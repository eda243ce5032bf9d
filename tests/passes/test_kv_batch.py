"""The batched KV-cache transform (kiln/passes/kv_batch.py): what it builds, what it refuses, its self-check,
and the metadata it records (saved and loaded with the graph)."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import FileFormatError, KilnError
from kiln.ir.kv_cache import KVCacheInfo
from kiln.passes.kv_batch import LOGIT_ROWS, POSITIONS, SLOTS, batch_kv_cache, verify_batched


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    import importlib.util
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("kiln_kv_batch_models", root / "tests" / "models" / "conftest.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    from kiln.models.hf import compile_causal_lm
    from kiln.passes.kv_cache import add_kv_cache
    lm = compile_causal_lm(m.make_tiny_model("llama", 64), max_len=32, executor="reference")
    return add_kv_cache(lm.session.graph, 32)


def test_builds_slot_caches_and_per_token_inputs(cached):
    g = batch_kv_cache(cached, 4)
    info = g.kv_cache
    assert (info.slots, info.slot_input, info.position_input, info.logits_input) == (4, SLOTS, POSITIONS, LOGIT_ROWS)
    assert "cache_position" not in g.tensors
    ops = [n.op for n in g.nodes]
    assert "cache_write" not in ops and "cached_attention" not in ops
    assert ops.count("slot_cache_write") == len(info.state_names) and ops.count("slot_cached_attention") == 2
    for name in info.state_names:
        assert g.tensors[name].shape[0] == 4 and g.constants[name].shape[0] == 4
    assert g.tensors[g.outputs[0]].shape[1] == g.tensors[LOGIT_ROWS].shape[0]   # logits for R rows only
    assert cached.kv_cache.slots == 0 and cached.tensors[cached.kv_cache.state_names[0]].shape[0] == 1  # untouched


def test_refusals(cached):
    with pytest.raises(KilnError, match="slots"):
        batch_kv_cache(cached, 0)
    with pytest.raises(KilnError, match="single-sequence"):
        batch_kv_cache(batch_kv_cache(cached, 2, verify=False), 2)
    g = cached.copy()
    g.kv_cache = None
    with pytest.raises(KilnError, match="single-sequence"):
        batch_kv_cache(g, 2)


def test_self_check_catches_sequences_that_mix(cached):
    g = batch_kv_cache(cached, 2, verify=False)
    verify_batched(cached, g)
    node = next(n for n in g.nodes if n.op == "slot_cached_attention")
    zero = g.add_const("zero_i64", np.zeros((), np.int64))
    everyone_in_slot_0 = g.add_node("mul", [SLOTS, zero], name="slot0", index=g.nodes.index(node))
    g.set_inputs(node, node.inputs[:3] + [everyone_in_slot_0, node.inputs[4]])
    with pytest.raises(KilnError, match="self-check failed"):
        verify_batched(cached, g)


def test_metadata_round_trips(cached, tmp_path):
    from kiln.ir import serialize
    g = batch_kv_cache(cached, 3, verify=False)
    assert KVCacheInfo.from_json(g.kv_cache.to_json()) == g.kv_cache
    assert "slots" not in cached.kv_cache.to_json()          # single-sequence files are unchanged
    serialize.save(g, tmp_path / "b.kiln")
    loaded, _ = serialize.load(tmp_path / "b.kiln")
    assert loaded.kv_cache == g.kv_cache
    for bad in ({"slots": -1}, {"slots": True}, {"slots": 2, "slot_input": 3}, {"slots": 2, "logits_input": ""}):
        with pytest.raises(FileFormatError):
            KVCacheInfo.from_json(dict(g.kv_cache.to_json(), **bad))
