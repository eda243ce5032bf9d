"""Graphs for tests: random graphs (hypothesis), feeds for them, and comparison of outputs.

Shared by the planner, executor and graph tests; no torch needed.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kiln.core.dtypes import np_dtype
from kiln.executor.reference import run_reference  # noqa: F401  (re-exported for the tests)
from kiln.ir.graph import Graph
from kiln.ops import registry

def feeds_for(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        shape = tuple(int(d) for d in t.shape)
        out[name] = (rng.standard_normal(shape).astype(np.float32) if t.dtype == "float32"
                     else rng.integers(0, 4, shape).astype(np_dtype(t.dtype)))
    return out


def assert_same(got, want, *, rtol: float = 0.0, atol: float = 0.0) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"output {i}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"output {i}")


# -- random graphs -------------------------------------------------------------------
UNARY = ["relu", "neg", "tanh", "sigmoid", "abs"]
BINARY = ["add", "sub", "mul", "maximum"]
KINDS = ["unary", "unary", "binary", "binary", "reshape", "slice", "matmul", "softmax", "concat", "permute",
         "expand"]


def _broadcastable(a, b) -> bool:
    try:
        return registry.broadcast_shapes(a, b) == tuple(a)
    except Exception:  # noqa: BLE001
        return False


@st.composite
def random_graphs(draw) -> Graph:
    g = Graph()
    dim = st.integers(1, 5)
    pool: list[str] = []
    for i in range(draw(st.integers(1, 3))):
        pool.append(g.add_input(f"in{i}", (draw(dim), draw(dim)), "float32"))
    if draw(st.booleans()):
        shape = g.tensors[pool[0]].shape
        pool.append(g.add_const("w0", np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)))
    for k in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(KINDS))
        x = draw(st.sampled_from(pool))
        shape = tuple(g.tensors[x].shape)
        rank = len(shape)
        if kind == "unary":
            out = g.add_node(draw(st.sampled_from(UNARY)), [x])
        elif kind == "binary":
            ys = [t for t in pool if _broadcastable(shape, g.tensors[t].shape)]
            out = g.add_node(draw(st.sampled_from(BINARY)), [x, draw(st.sampled_from(ys))])
        elif kind == "reshape":
            n = int(np.prod(shape))
            divs = [d for d in range(1, n + 1) if n % d == 0]
            a = draw(st.sampled_from(divs))
            target = draw(st.sampled_from([(n,), (a, n // a), (1, a, n // a), (a, -1)]))
            out = g.add_node("reshape", [x], {"shape": target})
        elif kind == "slice":
            axis = draw(st.integers(0, rank - 1))
            start = draw(st.integers(0, shape[axis] - 1))
            end = draw(st.integers(start + 1, shape[axis]))
            out = g.add_node("slice", [x], {"axis": axis, "start": start, "end": end,
                                            "step": draw(st.sampled_from([1, 1, 2]))})
        elif kind == "matmul":
            if rank < 2:
                x = g.add_node("reshape", [x], {"shape": (1, shape[0])})
                shape = (1, shape[0])
            tb = draw(st.booleans())
            kdim, n = shape[-1], draw(dim)
            cands = [t for t in pool if len(g.tensors[t].shape) == 2 and
                     tuple(g.tensors[t].shape)[1 if tb else 0] == kdim]
            if cands and draw(st.booleans()):
                y = draw(st.sampled_from(cands))
            else:
                wshape = (n, kdim) if tb else (kdim, n)
                y = g.add_const(g.fresh("w"), np.cos(np.arange(n * kdim, dtype=np.float32)).reshape(wshape))
            out = g.add_node("matmul", [x, y], {"transpose_b": tb})
        elif kind == "softmax":
            out = g.add_node("softmax", [x], {"axis": draw(st.integers(0, rank - 1))})
        elif kind == "concat":
            axis = draw(st.integers(0, rank - 1))
            ys = [t for t in pool if len(g.tensors[t].shape) == rank and
                  all(g.tensors[t].shape[i] == shape[i] for i in range(rank) if i != axis)]
            out = g.add_node("concat", [x] + draw(st.lists(st.sampled_from(ys), min_size=1, max_size=2)),
                             {"axis": axis})
        elif kind == "permute":
            out = g.add_node("permute", [x], {"perm": tuple(draw(st.permutations(range(rank))))})
        else:  # expand: grow size-1 axes (a copy) or keep the shape (an alias)
            target = tuple(draw(st.sampled_from([d, 3])) if d == 1 else d for d in shape)
            out = g.add_node("expand", [x], {"shape": target})
        pool.append(out)
    nodes = [n.output for n in g.nodes]
    g.outputs = [nodes[-1]] + draw(st.lists(st.sampled_from(pool), max_size=3))
    return g


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- hand-built graphs for rule tests -----------------------------------------------
def rewrite_checked(graph: Graph, rules, *, rtol: float = 1e-5, atol: float = 1e-6) -> tuple[dict, Graph]:
    """Run ``rules`` on a copy of a hand-built ``graph`` (no torch.export needed); check the
    result is valid, its use-def maps fresh, and its outputs equal the original's on random
    feeds. Returns (fire counts, rewritten graph)."""
    from kiln.ir.validate import validate
    from kiln.passes.engine import rewrite
    g = graph.copy()
    fired = rewrite(g, rules)
    validate(g)
    feeds = feeds_for(graph)
    assert_same(run_reference(g, feeds), run_reference(graph, feeds), rtol=rtol, atol=atol)
    return fired, g
