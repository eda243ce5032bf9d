"""Rules and the rewrite engine on hand-built graphs (no torch needed).

tests/passes/test_rules_exported.py covers every rule again on graphs that torch.export makes.
"""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.ir.graph import Graph
from kiln.passes import canonical, fusions
from kiln.passes.engine import Rule, RuleSet, rewrite
from kiln.passes.pattern import Any, Op
from tests.graphs import rewrite_checked

# The frontend never emits identities; other passes and hand-built graphs can.
IDENTITIES = {"reshape-identity": ("reshape", {"shape": (3, 4)}), "permute-identity": ("permute", {"perm": (0, 1)}),
              "cast-identity": ("cast", {"dtype": "float32"})}


@pytest.mark.parametrize("rule", sorted(IDENTITIES))
def test_identity_rules(rule):
    op, attrs = IDENTITIES[rule]
    g = Graph()
    x = g.add_input("x", (3, 4), "float32")
    g.outputs = [g.add_node("exp", [g.add_node(op, [x], attrs)])]
    fired, g = rewrite_checked(g, canonical.RULES)
    assert fired.get(rule) == 1 and [n.op for n in g.nodes] == ["exp"] and g.nodes[0].inputs == ["x"]


def test_chains_collapse_to_one_node():
    g = Graph()
    x = g.add_input("x", (2, 3, 4), "float32")
    y = x
    for shape in ((6, 4), (4, 6), (24,), (2, 12)):
        y = g.add_node("reshape", [y], {"shape": shape})
    g.outputs = [g.add_node("exp", [y])]
    fired, opt = rewrite_checked(g, canonical.RULES)
    assert fired == {"reshape-chain": 3} and [n.op for n in opt.nodes] == ["reshape", "exp"]
    assert opt.tensors[opt.nodes[0].output].shape == (2, 12)


def test_silu_and_its_near_miss():
    g = Graph()
    x = g.add_input("x", (3, 8), "float32")
    g.outputs = [g.add_node("mul", [x, g.add_node("sigmoid", [x])])]
    fired, opt = rewrite_checked(g, fusions.ACTIVATIONS)
    assert fired == {"silu": 1} and [n.op for n in opt.nodes] == ["silu"] and opt.outputs == g.outputs

    g = Graph()
    x = g.add_input("x", (3, 8), "float32")
    s = g.add_node("sigmoid", [x])
    g.outputs = [g.add_node("add", [g.add_node("mul", [x, s]), s])]   # the sigmoid is read outside the match
    fired, opt = rewrite_checked(g, fusions.ACTIVATIONS)
    assert fired == {} and opt.op_histogram() == g.op_histogram()


def test_matmul_bias_uses_the_matched_node():
    g = Graph()
    x = g.add_input("x", (3, 8), "float32")
    w = g.add_const("w", np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    b = g.add_const("b", np.arange(16, dtype=np.float32))
    g.outputs = [g.add_node("add", [g.add_node("matmul", [x, w], {"transpose_b": True}), b])]
    fired, opt = rewrite_checked(g, fusions.BIAS)
    assert fired == {"matmul-bias": 1} and [n.op for n in opt.nodes] == ["matmul"]
    assert opt.nodes[0].inputs[:2] == [x, w] and len(opt.nodes[0].inputs) == 3


def test_dead_code_goes_as_the_rewrite_happens():
    """The replaced nodes and the weights only they read leave the graph; nothing else does."""
    g = Graph()
    x = g.add_input("x", (3, 8), "float32")
    one = g.add_const("one", np.ones((), np.float32))
    y = g.add_node("mul", [x, one])
    g.outputs = [g.add_node("exp", [y]), g.add_node("neg", [x])]
    fired, opt = rewrite_checked(g, canonical.RULES)
    assert fired == {"mul-by-one": 1} and "one" not in opt.tensors and "one" not in opt.constants
    assert sorted(n.op for n in opt.nodes) == ["exp", "neg"]


def test_outputs_keep_their_names():
    g = Graph()
    x = g.add_input("x", (3, 8), "float32")
    out = g.add_node("mul", [x, g.add_node("sigmoid", [x])], name="logits")
    g.outputs = [out]
    _, opt = rewrite_checked(g, fusions.ACTIVATIONS)
    assert opt.outputs == ["logits"] and opt.nodes[-1].op == "silu" and opt.nodes[-1].output == "logits"


def test_only_nodes_near_a_change_are_revisited():
    """A rule that fires on a node's output enables a match at its reader: the worklist finds it
    without a second sweep, and a rule builder's node lookups come from the match."""
    seen = []

    def neg_neg(b, x, inner):
        seen.append(b.node(inner).op)
        return x

    rules = RuleSet([Rule("neg-neg", Op("neg", Op("neg", Any("x"), name="inner")), neg_neg)])
    g = Graph()
    y = g.add_input("x", (4,), "float32")
    for _ in range(8):
        y = g.add_node("neg", [y])
    g.outputs = [g.add_node("exp", [y])]
    fired, opt = rewrite_checked(g, rules)
    assert fired == {"neg-neg": 4} and [n.op for n in opt.nodes] == ["exp"] and seen == ["neg"] * 4


def test_a_rule_that_never_settles_is_stopped():
    flip = RuleSet([Rule("flip", Op("neg", Any("x")), lambda b, x: b.op("neg", [x]))])
    g = Graph()
    g.outputs = [g.add_node("neg", [g.add_input("x", (4,), "float32")])]
    with pytest.raises(KilnError, match="did not converge"):
        rewrite(g, flip)


def test_a_replacement_of_another_shape_is_refused():
    bad = RuleSet([Rule("bad", Op("exp", Any("x")), lambda b, x: b.op("sum", [x], {"axes": (0,), "keepdim": False}))])
    g = Graph()
    g.outputs = [g.add_node("exp", [g.add_input("x", (4, 2), "float32")])]
    with pytest.raises(KilnError, match="shapes/dtypes differ"):
        rewrite(g, bad)
