"""The planner: random graphs through plan/verify/executors, and unit tests of each sharing decision."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import ValidationError
from kiln.executor.planned import PlannedExecutor
from kiln.core import dims
from kiln.ir.graph import STATE, Graph
from kiln.planner import ALLOCATORS, ORDERS, Placement, plan
from kiln.planner.arena import Interval, align
from tests.graphs import SETTINGS, assert_same, feeds_for, random_graphs, run_reference


@SETTINGS
@given(random_graphs(), st.sampled_from(sorted(ALLOCATORS)), st.booleans(), st.booleans(),
       st.sampled_from(["memory", "given", "greedy"]))
def test_random_graphs(g, allocator, alias, inplace, order):
    p = plan(g, order=order, allocator=allocator, alias=alias, inplace=inplace)
    p.verify()
    assert p.stats.arena_bytes <= p.stats.no_reuse_bytes
    assert p.stats.peak_live_bytes <= p.stats.arena_bytes
    for s in p.steps:  # every alias sits where its op says, inside its source
        if s.kind == "alias":
            node = p.graph.nodes[s.node]
            src, out = p.placements[node.inputs[0]], p.placements[node.output]
            assert out.slot == src.slot and src.offset <= out.offset
            assert out.offset + out.nbytes <= src.offset + src.nbytes
    feeds = feeds_for(g)
    assert_same(PlannedExecutor(g, p, backends=("numpy",)).run(feeds), run_reference(g, feeds))


@SETTINGS
@given(random_graphs())
def test_random_graphs_no_reuse_baseline(g):
    # Without sharing, the bump allocator's arena is exactly the no-reuse figure.
    p = plan(g, order="given", allocator="no_reuse", alias=False, inplace=False)
    assert p.stats.arena_bytes == p.stats.no_reuse_bytes
    assert p.stats.alias_saved_bytes == p.stats.inplace_saved_bytes == 0


# -- sharing decisions ---------------------------------------------------------------
def _mlp_start(rows: int = 4, cols: int = 8) -> tuple[Graph, str]:
    g = Graph()
    x = g.add_input("x", (rows, cols), "float32")
    w = g.add_const("w", np.eye(cols, dtype=np.float32))
    return g, g.add_node("matmul", [x, w], name="a")


def _step(p, name: str):
    return next(s for s in p.steps if p.graph.nodes[s.node].output == name)


def _run_check(g, p) -> None:
    p.verify()
    feeds = feeds_for(g)
    assert_same(PlannedExecutor(g, p, backends=("numpy",)).run(feeds), run_reference(g, feeds))


def test_inplace_when_input_dies():
    g, a = _mlp_start()
    b = g.add_node("relu", [a], name="b")
    g.outputs = [g.add_node("exp", [b], name="c")]
    p = plan(g, order="given")
    assert _step(p, "b").kind == "inplace" and p.placements["b"] == p.placements["a"]
    assert p.stats.inplace_saved_bytes == 4 * 8 * 4
    _run_check(g, p)


def test_never_overwrite_an_input_read_later():
    g, a = _mlp_start()
    b = g.add_node("relu", [a], name="b")
    g.outputs = [g.add_node("add", [a, b], name="c")]  # a is still needed after relu
    p = plan(g, order="given")
    assert _step(p, "b").kind == "kernel" and p.placements["b"] != p.placements["a"]
    _run_check(g, p)


def test_never_overwrite_graph_inputs_or_weights():
    g = Graph()
    x = g.add_input("x", (4, 8), "float32")
    w = g.add_const("w", np.ones((4, 8), np.float32))
    s = g.add_const("s", np.ones((4, 8), np.float32), kind=STATE)
    g.outputs = [g.add_node("add", [g.add_node("relu", [x]), g.add_node("neg", [w]), ], name="o"),
                 g.add_node("exp", [s])]
    p = plan(g)
    assert all(st.kind == "kernel" for st in p.steps)
    _run_check(g, p)


def test_graph_output_never_overwritten():
    g, a = _mlp_start()
    b = g.add_node("relu", [a], name="b")
    r = g.add_node("reshape", [b], {"shape": (32,)}, name="r")   # alias of an output: in its slot
    c = g.add_node("exp", [r], name="c")
    g.outputs = [b, c]
    p = plan(g, order="given")
    assert _step(p, "r").kind == "alias" and p.placements["r"].slot == p.slot_of("output", "b")
    assert _step(p, "c").kind == "kernel" and p.placements["c"].slot == p.slot_of("output", "c")
    _run_check(g, p)


def test_alias_keeps_base_alive():
    g, a = _mlp_start()
    r = g.add_node("reshape", [a], {"shape": (32,)}, name="r")
    e = g.add_node("exp", [a], name="e")                   # a's last direct use, but r is read later
    big = g.add_node("neg", [g.add_node("reshape", [e], {"shape": (32,)})], name="big")
    g.outputs = [g.add_node("add", [r, big], name="o")]
    p = plan(g, order="given")
    assert _step(p, "r").kind == "alias"
    assert _step(p, "e").kind == "kernel"                  # writing over a would corrupt r
    base = next(b for b in p.buffers if "a" in b.members)
    assert "r" in base.members and base.end == p.lifetimes["r"][1]
    _run_check(g, p)


def test_no_inplace_when_another_input_shares_the_buffer():
    g, a = _mlp_start()
    r = g.add_node("reshape", [a], {"shape": (4, 8)}, name="r")  # same bytes, another name
    g.outputs = [g.add_node("exp", [g.add_node("mul", [a, r], name="m")])]
    p = plan(g, order="given")
    assert _step(p, "m").kind == "kernel"
    g2, a2 = _mlp_start()
    g2.outputs = [g2.add_node("exp", [g2.add_node("mul", [a2, a2], name="m")])]  # x * x is fine in place
    assert _step(plan(g2, order="given"), "m").kind == "inplace"
    _run_check(g, p)


def test_outputs_that_need_copies():
    g, a = _mlp_start()
    g.outputs = [a, "x", a, "w"]
    p = plan(g)
    assert len(p.graph.outputs) == 4 and len(set(p.graph.outputs)) == 4
    assert g.outputs == [a, "x", a, "w"] and len(g.nodes) == 1   # the caller's graph is untouched
    _run_check(g, p)


def test_scratch_lives_one_step():
    g = Graph()
    q = g.add_input("q", (1, 2, 5, 4), "float32")
    k = g.add_input("k", (1, 2, 7, 4), "float32")
    g.outputs = [g.add_node("relu", [g.add_node("attention", [q, k, k], name="att")])]
    from kiln.backends import kernels
    assert _step(plan(g), "att").scratch is None    # no backend named: no scratch
    p = plan(g, scratch_rule=kernels.get("c").scratch_rule)   # the C kernel's scratch rule
    st_ = _step(p, "att")
    assert st_.scratch is not None and st_.scratch.nbytes > 0
    rec = next(b for b in p.buffers if b.scratch_step is not None)
    assert rec.start == rec.end == p.steps.index(st_)
    _run_check(g, p)


# -- verify catches broken plans ----------------------------------------------------
def _tamper(p, name: str, **changes):
    placements = dict(p.placements)
    placements[name] = dataclasses.replace(placements[name], **changes)
    return dataclasses.replace(p, placements=placements)


def test_verify_rejects_live_overlap():
    g, a = _mlp_start()
    b = g.add_node("neg", [a], name="b")
    g.outputs = [g.add_node("add", [a, b], name="c")]
    p = plan(g, order="given")
    assert p.placements["a"].offset != p.placements["b"].offset
    with pytest.raises(ValidationError, match="overlap"):
        _tamper(p, "b", offset=p.placements["a"].offset).verify()


def test_verify_rejects_bad_alias_and_out_of_bounds():
    g, a = _mlp_start()
    r = g.add_node("reshape", [a], {"shape": (32,)}, name="r")
    g.outputs = [g.add_node("neg", [r])]
    p = plan(g, order="given")
    with pytest.raises(ValidationError, match="alias"):
        _tamper(p, "r", slot=p.slot_of("input", "x"), offset=0).verify()  # in bounds, wrong bytes
    with pytest.raises(ValidationError, match="outside"):
        _tamper(p, "a", offset=p.arena_bytes).verify()


def test_verify_rejects_illegal_inplace():
    g, a = _mlp_start()
    b = g.add_node("relu", [a], name="b")
    g.outputs = [g.add_node("add", [a, b])]
    p = plan(g, order="given")
    steps = tuple(dataclasses.replace(s, kind="inplace") if p.graph.nodes[s.node].output == "b" else s
                  for s in p.steps)
    bad = dataclasses.replace(_tamper(p, "b", offset=p.placements["a"].offset), steps=steps)
    with pytest.raises(ValidationError, match="still read"):
        bad.verify()


# -- validation and options -----------------------------------------------------------
def test_rejects_symbolic_and_fold_only():
    g = Graph()
    x = g.add_input("x", (dims.Sym.var("s0"), 4), "float32")
    g.outputs = [g.add_node("relu", [x])]
    with pytest.raises(ValidationError, match="'x'"):
        plan(g)
    g = Graph()
    a = g.add_input("a", (3,), "float32")
    g.outputs = [g.add_node("lt", [a, a], name="mask")]
    with pytest.raises(ValidationError, match="fold-only"):
        plan(g)


def test_unknown_names():
    g, a = _mlp_start()
    g.outputs = [a]
    with pytest.raises(Exception, match="allocator"):
        plan(g, allocator="nope")
    with pytest.raises(ValidationError, match="order"):
        plan(g, order="nope")


def test_memory_order_beats_a_bad_given_order():
    # Given order computes every branch head first, keeping all alive; greedy finishes each branch.
    g = Graph()
    x = g.add_input("x", (64, 64), "float32")
    heads = [g.add_node("neg", [x], name=f"h{i}") for i in range(4)]
    tails = [g.add_node("sum", [h], {"axes": (0, 1)}, name=f"t{i}") for i, h in enumerate(heads)]
    acc = tails[0]
    for t in tails[1:]:
        acc = g.add_node("add", [acc, t])
    g.outputs = [acc]
    given = plan(g, order="given")
    best = plan(g, order="memory")
    assert best.stats.arena_bytes < given.stats.arena_bytes
    assert best.options["order"] == "greedy"
    _run_check(g, best)


def test_allocators_share_one_signature():
    bufs = [Interval(100, 0, 2), Interval(64, 1, 3), Interval(200, 3, 4), Interval(10, 4, 4)]
    for name, fn in ALLOCATORS.items():
        offs = fn(bufs, 64)
        assert all(o % 64 == 0 for o in offs), name
        for i, a in enumerate(bufs):
            for j, b in enumerate(bufs[:i]):
                if a.overlaps_in_time(b):
                    assert offs[i] >= offs[j] + align(b.size) or offs[j] >= offs[i] + align(a.size), name
    assert {"best_fit", "first_fit", "linear", "no_reuse"} <= set(ALLOCATORS) and {"given", "greedy"} <= set(ORDERS)


def test_placement_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Placement(0, 0, 4).offset = 8
