"""Threads (issue 16): one Session used from several threads gives what one thread gives.

Stateless sessions run concurrently (each plan's arena has its own lock); sessions with state
run one call at a time under ``session.lock``, which a caller holds across a sequence."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import kiln
from kiln.core.dims import Sym
from kiln.ir.graph import Graph
from tests.ir.test_kv_cache_info import cached_graph

STEPS = 120


def dynamic_mlp() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", (Sym.var("s0"), 8), "float32")
    g.sym_sources = {"s0": ("x", 0)}
    g.sym_ranges = {"s0": (1, 16)}
    h = g.add_node("matmul", [x, g.add_const("w", rng.standard_normal((8, 16)).astype(np.float32))])
    h = g.add_node("softmax", [g.add_node("silu", [h])], {"axis": 1})
    g.outputs = [g.add_node("matmul", [h, g.add_const("w2", rng.standard_normal((16, 4)).astype(np.float32))])]
    return g


def _feeds(k):
    return {"x": np.random.default_rng(k).standard_normal((1 + k % 5, 8)).astype(np.float32)}


def _in_threads(n, fn):
    errors, results = [], [None] * n
    barrier = threading.Barrier(n)

    def body(t):
        try:
            barrier.wait()
            results[t] = fn(t)
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            errors.append(e)
    threads = [threading.Thread(target=body, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("executor", ["compiled", "interpreted"])
def test_stateless_session_two_threads_match_one_thread(executor):
    sess = kiln.Session(dynamic_mlp(), executor=executor)
    want = [sess.run(_feeds(k))[0] for k in range(2 * STEPS)]  # five lengths: five plans, shared by both threads
    got = _in_threads(2, lambda t: [sess.run(_feeds(k))[0] for k in range(t, 2 * STEPS, 2)])
    for t in range(2):
        for j, k in enumerate(range(t, 2 * STEPS, 2)):
            np.testing.assert_array_equal(got[t][j], want[k], err_msg=f"thread {t} step {k}")


def _sequence(sess, seed):
    """A prefill of 3 tokens and a decode-like step of 3 more into the one KV cache."""
    rng = np.random.default_rng(seed)
    with sess.lock:
        sess.reset_state()
        a = sess.run({"ids": rng.integers(0, 9, (1, 3)), "pos": np.array(0)})[0]
        b = sess.run({"ids": rng.integers(0, 9, (1, 3)), "pos": np.array(3)})[0]
    return a, b


@pytest.mark.parametrize("executor", ["compiled", "interpreted", "reference"])
def test_kv_cache_session_two_threads_match_one_thread(executor):
    sess = kiln.Session(cached_graph(), executor=executor)
    want = [_sequence(sess, k) for k in range(2 * STEPS)]
    got = _in_threads(2, lambda t: [_sequence(sess, k) for k in range(t, 2 * STEPS, 2)])
    for t in range(2):
        for j, k in enumerate(range(t, 2 * STEPS, 2)):
            for x, y in zip(got[t][j], want[k]):
                np.testing.assert_array_equal(x, y, err_msg=f"thread {t} sequence {k}")


def test_a_run_on_a_session_with_state_waits_for_the_lock():
    sess = kiln.Session(cached_graph(), executor="compiled")
    done = threading.Event()
    with sess.lock:
        th = threading.Thread(target=lambda: (sess.run({"ids": np.ones((1, 3), np.int64), "pos": np.array(0)}),
                                              done.set()))
        th.start()
        assert not done.wait(0.3)        # blocked while another thread holds the session
        assert not sess.state["k"].any()
    th.join(10)
    assert done.is_set() and sess.state["k"][0, 0, :3].all()
