"""The Graph's incremental use-def maps equal a recomputation after any sequence of edits."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.errors import KilnError, ValidationError
from kiln.ir.graph import Graph
from kiln.ir.validate import validate

EDITS = ["add", "add", "add", "replace_uses", "rename", "remove_dead", "set_inputs", "replace_node", "reorder"]


def recomputed(g: Graph):
    producer = {n.output: n for n in g.nodes}
    users: dict[str, set[int]] = {}
    for n in g.nodes:
        for i in n.inputs:
            users.setdefault(i, set()).add(id(n))
    return producer, users


def assert_maps_fresh(g: Graph) -> None:
    producer, users = recomputed(g)
    assert dict(g.producers()) == producer
    for name in g.tensors:
        assert g.producer(name) is producer.get(name)
        assert {id(n) for n in g.users(name)} == users.get(name, set()), name
        assert g.is_used(name) == (name in users or name in g.outputs)
    g.check_use_def()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(EDITS), st.integers(0, 10**6), st.integers(0, 10**6)), max_size=40))
def test_maps_follow_random_edits(edits):
    g = Graph()
    g.add_input("x", (2, 3), "float32")
    g.add_const("w", np.ones((2, 3), np.float32))
    g.outputs = [g.add_node("relu", ["x"])]
    for kind, a, b in edits:
        names = list(g.tensors)
        nodes = g.nodes
        if kind == "add":
            if a % 2:
                g.add_node("relu", [names[a % len(names)]], index=b % (len(nodes) + 1))
            else:
                g.add_node("add", [names[a % len(names)], names[b % len(names)]])
        elif kind == "replace_uses":
            g.replace_all_uses(names[a % len(names)], names[b % len(names)])
        elif kind == "rename":
            old = names[a % len(names)]
            g.rename(old, g.fresh(f"t{b}"))
        elif kind == "remove_dead":
            dead = [n for n in nodes if not g.is_used(n.output)]
            if dead:
                g.remove_node(dead[a % len(dead)])
        elif kind == "set_inputs" and nodes:
            n = nodes[a % len(nodes)]
            g.set_inputs(n, [names[(b + k) % len(names)] for k in range(len(n.inputs))])
        elif kind == "replace_node" and nodes:
            n = nodes[a % len(nodes)]
            if len(n.inputs) == 1:
                g.replace_node(n, dataclasses.replace(n, op="neg" if b % 2 else "relu", inputs=list(n.inputs)))
        elif kind == "reorder":
            order = list(nodes)
            np.random.default_rng(a).shuffle(order)
            g.nodes = order
        assert_maps_fresh(g)
    assert_maps_fresh(g.copy())


def test_bypassing_the_graph_is_caught():
    g = Graph()
    x = g.add_input("x", (4,), "float32")
    y = g.add_node("relu", [x])
    g.outputs = [g.add_node("neg", [y])]
    g.nodes[1].inputs = [x]                 # a change behind the graph's back
    with pytest.raises(KilnError, match="use-def"):
        g.check_use_def()
    with pytest.raises(ValidationError, match="use-def"):
        validate(g)


def test_rename_and_replace_keep_outputs():
    g = Graph()
    x = g.add_input("x", (4,), "float32")
    y = g.add_node("relu", [x])
    z = g.add_node("neg", [y])
    g.outputs = [y, z]
    g.rename(y, "r")
    assert g.outputs == ["r", z] and g.nodes[1].inputs == ["r"] and g.producer("r") is g.nodes[0]
    changed = g.replace_all_uses("r", x)
    assert changed == [g.nodes[1]] and g.outputs == [x, z] and not g.is_used("r")
    with pytest.raises(KilnError, match="already exists"):
        g.rename(z, x)
    assert_maps_fresh(g)
