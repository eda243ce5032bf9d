"""KV-cache metadata on the graph: checked by validate, kept by copy/rename/save, used for feeds."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kiln.errors import FeedError, ValidationError
from kiln.ir import serialize
from kiln.ir.graph import STATE, Graph
from kiln.ir.kv_cache import KVCacheInfo
from kiln.ir.validate import validate


def cached_graph() -> Graph:
    g = Graph()
    ids = g.add_input("ids", (1, 3), "int64")
    pos = g.add_input("pos", (), "int64")
    cache = g.add_const("k", np.zeros((1, 2, 8, 4), np.float32), kind=STATE)
    new = g.add_node("cast", [g.add_node("expand", [g.add_node("reshape", [ids], {"shape": (1, 1, 3, 1)})],
                                          {"shape": (1, 2, 3, 4)})], {"dtype": "float32"})
    g.outputs = [g.add_node("cache_write", [cache, new, pos])]
    g.kv_cache = KVCacheInfo("ids", "pos", 8, ("k",))
    return g


def test_metadata_travels_and_checks_positions(tmp_path):
    g = cached_graph()
    validate(g)
    assert g.copy().kv_cache == g.kv_cache
    serialize.save(g, tmp_path / "m.kiln")
    loaded, _ = serialize.load(tmp_path / "m.kiln")
    assert loaded.kv_cache == g.kv_cache
    info = loaded.kv_cache
    info.check_positions({"ids": np.zeros((1, 3), np.int64), "pos": np.array(5)})   # [5, 8) fits
    with pytest.raises(FeedError, match=r"'pos': positions \[6, 9\) do not fit the KV cache of 8"):
        info.check_positions({"ids": np.zeros((1, 3), np.int64), "pos": np.array(6)})
    g.rename("pos", "cache_position")
    assert g.kv_cache.position_input == "cache_position"
    validate(g)


@pytest.mark.parametrize("change,message", [
    ({"token_input": "nope"}, "token_input 'nope' is not a graph input"),
    ({"position_input": "ids"}, "must be an int64 scalar"),
    ({"max_len": 9}, r"must be a \[B, H, 9, D\] state tensor"),
    ({"state_names": ("ids",)}, "state tensor"),
])
def test_inconsistent_metadata_is_refused(change, message):
    g = cached_graph()
    g.kv_cache = dataclasses.replace(g.kv_cache, **change)
    with pytest.raises(ValidationError, match=message):
        validate(g)
