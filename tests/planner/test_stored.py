"""Stored plans (kiln/planner/stored.py): a plan survives JSON unchanged, and a loaded plan is checked,
never trusted: damage is a FileFormatError, a plan for other kernels or memory is not used."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import given

from kiln.backends import kernels
from kiln.errors import FileFormatError
from kiln.executor.planned import PlannedExecutor
from kiln.ir.graph import Graph
from kiln.planner import DEVICE, HOST, plan
from kiln.planner.stored import binding_key, dump_plan, load_plan
from tests.graphs import SETTINGS, assert_same, feeds_for, random_graphs, run_reference

C_SCRATCH = kernels.get("c").scratch_rule


def _same(a, b) -> None:
    for field in ("steps", "slots", "placements", "lifetimes", "buffers", "stats", "options"):
        assert getattr(a, field) == getattr(b, field), field
    assert [n.output for n in a.graph.nodes] == [n.output for n in b.graph.nodes]


def _roundtrip(g, p, scratch_rule=None, memory=HOST):
    return load_plan(g, json.loads(json.dumps(dump_plan(p))), scratch_rule=scratch_rule, memory=memory)


def _attention_graph() -> Graph:
    """Scratch (attention), an alias (reshape), an in-place op and an output needing a copy."""
    g = Graph()
    q = g.add_input("q", (1, 2, 5, 4), "float32")
    k = g.add_input("k", (1, 2, 7, 4), "float32")
    a = g.add_node("attention", [q, k, k], name="att")
    r = g.add_node("relu", [g.add_node("reshape", [a], {"shape": (2, 20)}, name="flat")], name="r")
    g.outputs = [r, r]
    return g


@SETTINGS
@given(random_graphs())
def test_random_plans_round_trip(g):
    p = plan(g)
    q = _roundtrip(g, p)
    _same(p, q)
    feeds = feeds_for(g)
    assert_same(PlannedExecutor(g, q, backends=("numpy",)).run(feeds), run_reference(g, feeds))


def test_round_trip_with_scratch_alias_and_copies():
    g = _attention_graph()
    p = plan(g, scratch_rule=C_SCRATCH)
    assert any(s.scratch is not None for s in p.steps) and any(s.kind == "alias" for s in p.steps)
    q = _roundtrip(g, p, C_SCRATCH)
    _same(p, q)
    assert q.graph_to_run(g) is q.graph


def _damaged(g, p, change) -> dict:
    d = json.loads(json.dumps(dump_plan(p)))
    change(d)
    return d


def _first_act(d, p):
    return next(n for n in d["placements"] if n in p.lifetimes)


@pytest.mark.parametrize("change, match", [
    (lambda d: d["steps"].reverse(), "before"),                                    # order breaks a dependency
    (lambda d: d["steps"].pop(), "steps for a graph"),
    (lambda d: d["steps"].__setitem__(0, [0, "sideways"]), "malformed step"),
    (lambda d: d["placements"].__setitem__("att", [0, 3, d["placements"]["att"][2]]), "aligned|overlap"),
    (lambda d: d["placements"].__setitem__("att", [0, 1 << 40, d["placements"]["att"][2]]), "outside"),
    (lambda d: d["placements"].__setitem__("att", [0, 0, 4]), "bytes"),            # wrong size
    (lambda d: d["placements"].__setitem__("att", ["0", 0, 4]), "integer"),
    (lambda d: d["placements"].__setitem__("nobody", [0, 0, 4]), "unknown tensor"),
    (lambda d: d["placements"].pop("att"), "no placement"),
    (lambda d: d.__setitem__("arena_bytes", 64), "arena|outside"),
    (lambda d: d.pop("buffers"), "missing field"),
    (lambda d: d.__setitem__("format", "kiln-plan/0"), "format"),
])
def test_damaged_plans_are_file_format_errors(change, match):
    g = _attention_graph()
    p = plan(g, scratch_rule=C_SCRATCH)
    with pytest.raises(FileFormatError, match=match):
        load_plan(g, _damaged(g, p, change), scratch_rule=C_SCRATCH, memory=HOST)


def test_overlapping_live_tensors_are_refused():
    g = Graph()
    x = g.add_input("x", (4, 8), "float32")
    a = g.add_node("matmul", [x, g.add_const("w", np.eye(8, dtype=np.float32))], name="a")
    b = g.add_node("neg", [a], name="b")
    g.outputs = [g.add_node("add", [a, b], name="c")]
    p = plan(g, order="given")
    d = dump_plan(p)
    d["placements"]["b"] = list(d["placements"]["a"])  # b written over a while a is still read
    with pytest.raises(FileFormatError, match="overlap"):
        load_plan(g, d, scratch_rule=None, memory=HOST)


def test_illegal_in_place_step_is_refused():
    g = Graph()
    x = g.add_input("x", (4, 8), "float32")
    a = g.add_node("matmul", [x, g.add_const("w", np.eye(8, dtype=np.float32))], name="a")
    b = g.add_node("relu", [a], name="b")
    g.outputs = [g.add_node("add", [a, b])]
    p = plan(g, order="given")
    d = dump_plan(p)
    i = next(k for k, s in enumerate(p.steps) if p.graph.nodes[s.node].output == "b")
    d["steps"][i] = [d["steps"][i][0], "inplace"]
    d["placements"]["b"] = list(d["placements"]["a"])
    with pytest.raises(FileFormatError, match="still read"):
        load_plan(g, d, scratch_rule=None, memory=HOST)


def test_plans_for_other_kernels_or_memory_are_not_used():
    g = _attention_graph()
    p = plan(g, scratch_rule=C_SCRATCH)
    d = dump_plan(p)
    assert load_plan(g, copy.deepcopy(d), scratch_rule=None, memory=HOST) is None      # numpy: no scratch
    assert load_plan(g, copy.deepcopy(d), scratch_rule=C_SCRATCH, memory=DEVICE) is None
    small = copy.deepcopy(d)  # a shrunken scratch is never handed to a kernel: the plan is made afresh
    i = next(k for k, s in enumerate(small["steps"]) if len(s) == 4)
    small["steps"][i][3] -= 64
    assert load_plan(g, small, scratch_rule=C_SCRATCH, memory=HOST) is None


def test_binding_key():
    assert binding_key({"s1": 3, "s0": 1}) == "s0=1,s1=3"
    assert binding_key({}) == ""
