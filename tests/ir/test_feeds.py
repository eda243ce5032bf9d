"""Feeds (issue 16, "feeds"): every check runs before any copy or work, and each bad feed is a
FeedError naming the input."""
from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.core.dims import Sym
from kiln.errors import FeedError
from kiln.ir.feeds import check_feeds, index_ranges
from kiln.ir.graph import Graph

EXECUTORS = ["compiled", "interpreted", "numpy", "reference"]


def embed_graph(seq=4) -> Graph:
    g = Graph()
    ids = g.add_input("ids", (1, seq), "int64")
    emb = g.add_node("embedding", [g.add_const("table", np.arange(22, dtype=np.float32).reshape(11, 2)), ids])
    g.outputs = [g.add_node("relu", [emb])]
    return g


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("bad", [11, 10**6, -1])
def test_token_ids_outside_the_vocabulary_are_refused_before_running(executor, bad):
    sess = kiln.Session(embed_graph(), executor=executor)
    ids = np.array([[1, 2, bad, 3]])
    with pytest.raises(FeedError, match=r"input 'ids': values .* outside the valid range \[0, 11\) of embedding"):
        sess.run({"ids": ids})
    assert len(sess._executors) == 0 or executor == "reference"  # refused before a plan was even built
    np.testing.assert_array_equal(sess.run({"ids": np.array([[0, 10, 5, 1]])})[0][0, :, 0], [0, 20, 10, 2])


def test_index_ranges_follow_the_graph():
    g = Graph()
    idx = g.add_input("idx", (3,), "int64")
    x = g.add_input("x", (Sym.var("s0"), 2), "float32")
    g.outputs = [g.add_node("index_select", [x, idx], {"axis": 0})]
    assert index_ranges(g, {"s0": 7}) == {"idx": (-7, 7, "index_select 'index_select' over 'x' axis 0")}
    with pytest.raises(FeedError, match=r"outside the valid range \[-7, 7\)"):
        check_feeds(g, {"idx": np.array([0, 7, 1]), "x": np.zeros((7, 2), np.float32)})


def test_remembered_index_ranges_still_refuse_and_follow_the_binding():
    g = Graph()
    idx = g.add_input("idx", (3,), "int64")
    x = g.add_input("x", (Sym.var("s0"), 2), "float32")
    g.outputs = [g.add_node("index_select", [x, idx], {"axis": 0})]
    memo = {}
    check_feeds(g, {"idx": np.array([0, 6, -7]), "x": np.zeros((7, 2), np.float32)}, memo)
    assert list(memo) == [(("s0", 7),)]
    with pytest.raises(FeedError, match=r"outside the valid range \[-7, 7\)"):   # from the memo
        check_feeds(g, {"idx": np.array([0, 7, 1]), "x": np.zeros((7, 2), np.float32)}, memo)
    with pytest.raises(FeedError, match=r"outside the valid range \[-3, 3\)"):   # another binding
        check_feeds(g, {"idx": np.array([0, 6, 1]), "x": np.zeros((3, 2), np.float32)}, memo)
    sess = kiln.Session(embed_graph(), executor="compiled")
    sess.run({"ids": np.array([[0, 10, 5, 1]])})
    with pytest.raises(FeedError, match=r"outside the valid range \[0, 11\)"):
        sess.run({"ids": np.array([[0, 11, 5, 1]])})


def test_a_huge_broadcast_view_of_the_wrong_shape_is_refused_without_copying():
    sess = kiln.Session(embed_graph(), executor="compiled")
    view = np.broadcast_to(np.zeros(1, np.int64), (1, 10**9))   # 8 GB if it were copied
    with pytest.raises(FeedError, match=r"axis 1 must be 4"):
        sess.run({"ids": view})
    g = Graph()  # symbolic length: the range check refuses before the copy too
    ids = g.add_input("ids", (1, Sym.var("s0")), "int64")
    g.sym_ranges = {"s0": (1, 64)}
    g.sym_sources = {"s0": ("ids", 1)}
    g.outputs = [g.add_node("embedding", [g.add_const("table", np.ones((11, 2), np.float32)), ids])]
    with pytest.raises(FeedError, match=r"outside the range \[1, 64\]"):
        kiln.Session(g).run({"ids": view})


class _Raises:
    def numpy(self):
        raise RuntimeError("device tensor")


class _NotArray:
    def numpy(self):
        return [[1, 2, 3, 4]]


@pytest.mark.parametrize("feed,match", [
    (_Raises(), r"'ids': _Raises.numpy\(\) failed: RuntimeError: device tensor"),
    (_NotArray(), r"'ids': _NotArray.numpy\(\) returned list, not an array"),
    ([[1, 2, 3, 4]], r"'ids': expected a numpy array, got list"),
    ("ids", r"'ids': expected a numpy array, got str"),
])
def test_objects_that_are_not_arrays_are_feed_errors(feed, match):
    with pytest.raises(FeedError, match=match):
        kiln.Session(embed_graph(), executor="reference").run({"ids": feed})


def test_integer_conversions_that_do_not_fit_are_refused():
    with pytest.raises(FeedError, match=r"'ids': values .*18446744073709551615 do not fit int64"):
        check_feeds(embed_graph(), {"ids": np.array([[0, 1, 2, 2**64 - 1]], np.uint64)})
    g = Graph()
    g.outputs = [g.add_node("cast", [g.add_input("i", (2,), "int32")], {"dtype": "float32"})]
    with pytest.raises(FeedError, match=r"'i': values .* do not fit int32"):
        check_feeds(g, {"i": np.array([1, 2**40])})
    arrays, _ = check_feeds(g, {"i": np.array([1, -2**31], np.int64)})   # fits: converted exactly
    assert arrays["i"].dtype == np.int32 and arrays["i"][1] == -2**31
    arrays, _ = check_feeds(embed_graph(), {"ids": np.array([[1, 2, 3, 4]], np.uint8)})
    assert arrays["ids"].dtype == np.int64
