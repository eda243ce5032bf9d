"""The three planned paths (interpreted numpy, interpreted C, compiled) against the numpy reference."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given

from kiln.backends import clib
from kiln.errors import FeedError, ValidationError
from kiln.executor.planned import PlannedExecutor, reset_state
from kiln.ir.graph import STATE, Graph
from kiln.planner import plan
from tests.conftest import rel_err
from tests.graphs import SETTINGS, assert_same, feeds_for, random_graphs, run_reference

HAVE_C = clib.available()
needs_c = pytest.mark.skipif(not HAVE_C, reason="C kernels not built (run `pip install -e .`); CI builds them")

if HAVE_C:
    from kiln.executor.compiled import CompiledExecutor


def _executors(g, p):
    yield "planned-numpy", PlannedExecutor(g, p, backends=("numpy",))
    if HAVE_C:
        yield "planned-c", PlannedExecutor(g, p, backends=("c",))
        yield "compiled", CompiledExecutor(g, p)


def check_all_paths(g: Graph, *, tol: float = 1e-5, runs: int = 2, **plan_kw) -> None:
    p = plan(g, **plan_kw)
    p.verify()
    for seed in range(runs):  # a second run catches state leaking through the reused arena
        feeds = feeds_for(g, seed)
        want = run_reference(g, feeds)
        for name, ex in _executors(g, p):
            got = ex.run(feeds)
            if name == "planned-numpy":
                assert_same(got, want)
                continue
            assert len(got) == len(want)
            for i, (a, b) in enumerate(zip(got, want)):
                assert a.shape == b.shape and a.dtype == b.dtype, (name, i)
                assert rel_err(a, b) <= tol, f"{name} output {i}: rel err {rel_err(a, b)}"


# -- hand-built graphs -----------------------------------------------------------------
def mlp_block() -> Graph:
    rng = np.random.default_rng(1)
    g = Graph()
    x = g.add_input("x", (6, 16), "float32")
    w1 = g.add_const("w1", rng.standard_normal((16, 32)).astype(np.float32) * 0.2)
    b1 = g.add_const("b1", rng.standard_normal((32,)).astype(np.float32))
    w2 = g.add_const("w2", rng.standard_normal((16, 32)).astype(np.float32) * 0.2)  # used transposed
    ln_w = g.add_const("ln_w", np.linspace(0.5, 1.5, 16, dtype=np.float32))
    h = g.add_node("layer_norm", [x, ln_w], {"eps": 1e-5})
    h = g.add_node("matmul", [h, w1, b1])
    h = g.add_node("gelu", [h])
    h = g.add_node("matmul", [h, w2], {"transpose_b": True})
    h = g.add_node("add", [h, x], name="resid")
    g.outputs = [g.add_node("rms_norm", [h, ln_w], {"eps": 1e-6}), h]
    return g


def attention_block(causal: bool = True) -> Graph:
    rng = np.random.default_rng(2)
    g = Graph()
    x = g.add_input("x", (1, 5, 16), "float32")
    wqkv = g.add_const("wqkv", rng.standard_normal((16, 48)).astype(np.float32) * 0.3)
    wo = g.add_const("wo", rng.standard_normal((16, 16)).astype(np.float32) * 0.3)
    qkv = g.add_node("matmul", [x, wqkv])
    heads = []
    for i, nm in enumerate("qkv"):
        t = g.add_node("slice", [qkv], {"axis": 2, "start": 16 * i, "end": 16 * (i + 1)}, name=nm)
        t = g.add_node("reshape", [t], {"shape": (1, 5, 4, 4)})
        heads.append(g.add_node("permute", [t], {"perm": (0, 2, 1, 3)}))
    att = g.add_node("attention", heads, {"causal": causal}, name="att")
    att = g.add_node("permute", [att], {"perm": (0, 2, 1, 3)})
    att = g.add_node("reshape", [att], {"shape": (1, 5, 16)})
    out = g.add_node("matmul", [att, wo])
    g.outputs = [g.add_node("add", [out, x])]
    return g


def movement_mix() -> Graph:
    g = Graph()
    x = g.add_input("x", (1, 4, 6), "float32")
    y = g.add_input("y", (4, 6), "float32")
    a = g.add_node("reshape", [x], {"shape": (4, 6)})
    s = g.add_node("slice", [a], {"axis": 0, "start": 1, "end": 3})        # contiguous rows: an alias
    t = g.add_node("slice", [a], {"axis": 1, "start": 0, "end": 6, "step": 2})  # strided: a copy
    c = g.add_node("concat", [s, g.add_node("exp", [y])], {"axis": 0})
    m = g.add_node("softmax", [c], {"axis": 1})
    e = g.add_node("expand", [g.add_node("reshape", [t], {"shape": (4, 1, 3)})], {"shape": (4, 2, 3)})
    p = g.add_node("permute", [e], {"perm": (1, 0, 2)})
    g.outputs = [m, p, x, m]          # an input and a duplicate among the outputs
    return g


def int_and_state() -> Graph:
    g = Graph()
    ids = g.add_input("ids", (2, 3), "int64")
    table = g.add_const("table", np.arange(40, dtype=np.float32).reshape(4, 10) / 10)
    bias = g.add_const("bias", np.full((10,), 0.5, np.float32), kind=STATE)
    e = g.add_node("embedding", [table, ids])
    g.outputs = [g.add_node("add", [e, bias]), "table", g.add_node("cast", [ids], {"dtype": "float32"})]
    return g


def edge_cases() -> Graph:
    g = Graph()
    x = g.add_input("x", (0, 4), "float32")            # zero-size tensors take no bytes
    y = g.add_input("y", (3, 4), "float32")
    g.add_node("exp", [y], name="dead")                # computed, never read: lives one step
    z = g.add_node("relu", [x])
    g.outputs = [z, g.add_node("sum", [y], {"axes": (0, 1)}), "y"]
    return g


def no_nodes() -> Graph:
    g = Graph()
    g.outputs = [g.add_input("x", (2, 2), "float32")]
    return g


GRAPHS = {"mlp": mlp_block, "attention": attention_block, "movement": movement_mix, "int_state": int_and_state,
          "edge_cases": edge_cases, "no_nodes": no_nodes}


@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("opts", [{}, {"alias": False, "inplace": False, "allocator": "no_reuse"},
                                  {"order": "given", "allocator": "linear"}], ids=["default", "no_sharing", "linear"])
def test_hand_built_graphs(name, opts):
    check_all_paths(GRAPHS[name](), **opts)


@needs_c
@SETTINGS
@given(random_graphs())
def test_random_graphs_compiled(g):
    check_all_paths(g, runs=1)


# -- executor behaviour ----------------------------------------------------------------
def test_planned_profile_and_fallback_record():
    g = mlp_block()
    ex = PlannedExecutor(g, plan(g))
    ex.run(feeds_for(g), profile=True)
    prof = ex.last_profile
    assert sum(e["count"] for e in prof.by_op.values()) == len(prof.nodes) == len(g.nodes)
    assert abs(sum(e["pct"] for e in prof.by_op.values()) - 100.0) < 1e-6
    assert {n[2] for n in prof.nodes} == ({"c"} if HAVE_C else {"numpy"}) and ex.fallbacks == {}
    assert "matmul" in prof.table() and prof["matmul"]["count"] == 2 and set(prof) == set(prof.by_op)


def test_planned_rejects_bad_feed_size():
    g = mlp_block()
    ex = PlannedExecutor(g, plan(g), backends=("numpy",))
    with pytest.raises(FeedError, match="'x'"):
        ex.run({"x": np.zeros((5, 16), np.float32)})


def test_plan_for_another_graph_is_refused():
    with pytest.raises(ValidationError, match="different graph"):
        PlannedExecutor(mlp_block(), plan(mlp_block()))


@needs_c
def test_compiled_profile():
    g = attention_block()
    p = plan(g)
    ex = CompiledExecutor(g, p)
    ex.run(feeds_for(g), profile=True)
    prof = ex.last_profile
    assert sum(e["count"] for e in prof.by_op.values()) == sum(s.kind != "alias" for s in p.steps)
    assert "attention" in prof.by_op


@needs_c
def test_compiled_checks_every_placement_before_c():
    g = mlp_block()
    p = plan(g)
    name = next(n for n, pl in p.placements.items() if pl.slot == 0)
    placements = dict(p.placements)
    placements[name] = dataclasses.replace(placements[name], offset=p.arena_bytes)
    bad = dataclasses.replace(p, placements=placements)  # (unverified on purpose)
    with pytest.raises(ValidationError, match="outside slot 0"):
        CompiledExecutor(g, bad)
    ex = CompiledExecutor(g, p)
    with pytest.raises(FeedError):
        ex.run({"x": np.zeros((2, 16), np.float32)})


@needs_c
def test_compiled_accepts_noncontiguous_and_other_dtypes():
    g = mlp_block()
    ex = CompiledExecutor(g, plan(g))
    x = np.asfortranarray(np.random.default_rng(3).standard_normal((6, 16)))  # float64, F order
    got = ex.run({"x": x})
    want = run_reference(g, {"x": x.astype(np.float32)})
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(got, want))


# -- state written in place ---------------------------------------------------------------
def kv_cache_graph(reader_first: bool = True) -> Graph:
    g = Graph()
    cache = g.add_const("k_cache", np.zeros((1, 2, 6, 4), np.float32), kind=STATE)
    new = g.add_input("new", (1, 2, 2, 4), "float32")
    pos = g.add_input("pos", (), "int64")
    old = g.add_node("neg", [cache], name="old")        # reads the value before the write
    k = g.add_node("cache_write", [cache, new, pos], name="k")
    g.outputs = [g.add_node("add", [k, old], name="y"), k]
    if not reader_first:
        g.nodes = [g.nodes[1], g.nodes[0], *g.nodes[2:]]
    return g


@pytest.mark.parametrize("order", ["given", "memory"])
def test_state_written_in_place_persists(order):
    for idx in range(3 if HAVE_C else 1):
        g = kv_cache_graph()
        oracle = {"k_cache": np.zeros((1, 2, 6, 4), np.float32)}   # the reference's persistent state
        p = plan(g, order=order)
        write = next(s for s in p.steps if p.graph.nodes[s.node].op == "cache_write")
        assert write.kind == "inplace" and p.placements["k"] == p.placements["k_cache"]
        name, ex = list(_executors(g, p))[idx]
        rng = np.random.default_rng(0)
        for pos in (0, 2, 3):
            feeds = {"new": rng.standard_normal((1, 2, 2, 4)).astype(np.float32), "pos": np.array(pos)}
            want = run_reference(g, feeds, state=oracle)
            got = ex.run(feeds)
            assert all(rel_err(a, b) < 1e-6 for a, b in zip(got, want)), (name, pos)
            np.testing.assert_array_equal(ex.state["k_cache"], oracle["k_cache"])  # it persisted
        reset_state(ex.state, g)
        assert not ex.state["k_cache"].any()


def test_readers_of_the_old_state_run_before_the_write():
    g = kv_cache_graph(reader_first=False)              # node list: write, then the old-value reader
    for order in ("given", "greedy"):
        p = plan(g, order=order)
        steps = [p.graph.nodes[s.node].output for s in p.steps]
        assert steps.index("old") < steps.index("k"), order


def test_state_read_after_write():
    g = Graph()
    cache = g.add_const("c", np.zeros((1, 1, 4, 2), np.float32), kind=STATE)
    new = g.add_input("new", (1, 1, 1, 2), "float32")
    pos = g.add_input("pos", (), "int64")
    k = g.add_node("cache_write", [cache, new, pos])
    g.outputs = [g.add_node("add", [k, g.add_node("relu", [cache], name="r")])]  # fine: relu runs first
    p = plan(g)
    assert [p.graph.nodes[s.node].op for s in p.steps][:2] == ["relu", "cache_write"]
    g.outputs = [g.add_node("add", [k, cache])]     # one kernel reading the old and the new value
    with pytest.raises(ValidationError, match="old value"):
        plan(g)


def test_verify_rejects_a_state_write_before_its_old_readers():
    g = kv_cache_graph()
    p = plan(g, order="given")
    steps = list(p.steps)
    steps[0], steps[1] = steps[1], steps[0]          # the write now runs before neg(k_cache)
    with pytest.raises(ValidationError, match="must come first"):
        dataclasses.replace(p, steps=tuple(steps)).verify()


def test_state_write_through_a_view_is_refused():
    g = Graph()
    cache = g.add_const("c", np.zeros((1, 1, 4, 2), np.float32), kind=STATE)
    view = g.add_node("reshape", [cache], {"shape": (1, 1, 4, 2)})
    g.outputs = [g.add_node("cache_write", [view, g.add_input("new", (1, 1, 1, 2), "float32"),
                                            g.add_input("pos", (), "int64")])]
    with pytest.raises(ValidationError, match="view of state"):
        plan(g)


def test_executor_registry_names_every_executor_once():
    from kiln.errors import KilnError
    from kiln.executor.registry import EXECUTORS, check_name, describe
    assert set(EXECUTORS) == {"compiled", "interpreted", "numpy", "reference", "triton"}
    assert all(s.doc and s.factory.__doc__.strip() for s in EXECUTORS.values())
    assert all(f"{name} [" in describe() for name in EXECUTORS)
    with pytest.raises(KilnError, match="executor must be one of compiled, interpreted, numpy, reference, triton"):
        check_name("gpu")
