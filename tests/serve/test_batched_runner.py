"""BatchedRunner on a real (tiny) model: one graph for all slots, per-token slots and positions, and a
sequence's logits bit-identical alone or batched, on the C and numpy executors."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from kiln.errors import BackendError, FeedError, KilnError
from kiln.serve import BatchedRunner, Engine, PerSlotRunner, SlotWork
from kiln.serve.runner import runner_for

A, B, C = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [9, 10, 11], [20, 21, 22, 23, 24]


def _executors():
    from kiln.backends import clib
    return ["compiled", "reference"] if clib.available() else ["reference"]


def _runner(lm, n, executor, **kw):
    return BatchedRunner(lm.cached_session.graph, n, executor=executor, **kw)


def _greedy(runner, jobs, steps, chunk=4):
    """jobs: slot -> prompt. Prompts prefill in chunks of ``chunk`` (all slots' chunks in the same steps),
    then decode together; returns slot -> list of logits (after the prompt, then after each token)."""
    outs = {s: [] for s in jobs}
    done = {s: 0 for s in jobs}
    while any(done[s] < len(p) for s, p in jobs.items()):
        rows = [SlotWork(s, tuple(p[done[s]:done[s] + chunk]), done[s], want_logits=done[s] + chunk >= len(p))
                for s, p in jobs.items() if done[s] < len(p)]
        for w, r in zip(rows, runner.step(rows)):
            done[w.slot] += len(w.tokens)
            if r is not None:
                outs[w.slot].append(r)
    for k in range(steps):
        rows = [SlotWork(s, (int(np.argmax(outs[s][-1])),), len(p) + k) for s, p in jobs.items()]
        for w, r in zip(rows, runner.step(rows)):
            outs[w.slot].append(r)
    return outs


@pytest.mark.parametrize("executor", _executors())
def test_alone_and_batched_are_bit_identical(tiny_lm, executor):
    alone = _greedy(_runner(tiny_lm, 3, executor, verify=False), {0: A}, 5)[0]
    runner = _runner(tiny_lm, 3, executor, verify=False)
    batched = _greedy(runner, {2: B, 0: C, 1: A}, 5)[1]       # A in another slot, beside two others
    assert len(alone) == len(batched) == 6
    for x, y in zip(alone, batched):
        np.testing.assert_array_equal(x, y)
    # and the same logits as the single-sequence cached graph, to float rounding
    ref = PerSlotRunner.from_model(tiny_lm, 1).step([SlotWork(0, tuple(A), 0)])[0]
    np.testing.assert_allclose(alone[0], ref, rtol=1e-4, atol=1e-5)


def test_one_call_per_step_of_decode_rows_and_prefill_rows_sized_as_alone(tiny_lm):
    runner = _runner(tiny_lm, 4, _executors()[0], verify=False)
    step = [SlotWork(0, (1,), 0), SlotWork(1, (2,), 0), SlotWork(2, tuple(range(3, 23)), 0), SlotWork(3, (4, 5), 0)]
    assert runner.groups(step) == [[2], [0, 1, 3]]      # a 20-token chunk alone; 4 tokens share a call
    runner.step(step)
    assert runner.calls == 2
    loose = _runner(tiny_lm, 4, _executors()[0], verify=False, exact=False)
    assert loose.groups(step) == [[0, 1, 2, 3]]


def test_matmul_rows_up_to_rows_per_call_match_one_row():
    """What exact mode relies on: a matmul row computed with up to ROWS_PER_CALL rows equals the
    one-row product bit for bit (the skinny kernel). If the kernel choice changes, this fails first."""
    from kiln.core.dims import Sym
    from kiln.ir.graph import Graph
    from kiln.session import Session
    if _executors()[0] != "compiled":
        pytest.skip("C kernels not built")
    rng = np.random.default_rng(0)
    for k, n in ((576, 1536), (1536, 576), (64, 4099)):
        g = Graph()
        x = g.add_input("x", (Sym.var("m"), k), "float32")
        g.sym_sources["m"], g.sym_ranges["m"] = ("x", 0), (1, 64)
        w = g.add_const("w", rng.standard_normal((n, k)).astype(np.float32))
        g.outputs = [g.add_node("matmul", [x, w], {"transpose_b": True})]
        s = Session(g)
        a = rng.standard_normal((BatchedRunner.ROWS_PER_CALL, k)).astype(np.float32)
        one = [s.run({"x": a[i:i + 1]})[0][0] for i in range(len(a))]
        for m in range(2, BatchedRunner.ROWS_PER_CALL + 1):
            out = s.run({"x": a[:m]})[0]
            for i in range(m):
                np.testing.assert_array_equal(out[i], one[i], err_msg=f"K={k} N={n}: row {i} of {m}")


def test_kv_cache_state_is_per_slot(tiny_lm):
    runner = _runner(tiny_lm, 3, _executors()[0], verify=False)
    info = runner.session.graph.kv_cache
    assert info.slots == 3 and runner.session.graph.inputs == [info.token_input, info.slot_input,
                                                               info.position_input, info.logits_input]
    runner.step([SlotWork(1, (1, 2, 3), 0)])
    for name in info.state_names:
        st = runner.session.state[name]
        assert st.shape[0] == 3
        assert not st[0].any() and not st[2].any() and st[1, :, :3].any() and not st[1, :, 3:].any()


def test_bad_rows_are_refused_before_and_inside_c(tiny_lm):
    runner = _runner(tiny_lm, 2, _executors()[0], verify=False)
    for batch in ([SlotWork(2, (1,), 0)], [SlotWork(0, (), 0)], [SlotWork(0, (1,), runner.max_len)],
                  [SlotWork(0, (1,), 0), SlotWork(0, (2,), 1)], [SlotWork(-1, (1,), 0)]):
        with pytest.raises(KilnError):
            runner.step(batch)
    info = runner.session.graph.kv_cache
    feeds = {info.token_input: np.array([[1, 2]]), info.slot_input: np.array([0, 2]),
             info.position_input: np.array([0, 1]), info.logits_input: np.array([1])}
    with pytest.raises(FeedError, match="slot id 2 at token 1"):
        runner.session.run(feeds)
    with pytest.raises(FeedError, match="position -1"):
        runner.session.run(dict(feeds, **{info.slot_input: np.array([0, 1]), info.position_input: np.array([0, -1])}))
    if runner.session.executor != "compiled":
        return
    # past the feed check (as a caller of the executor would be): the C kernel refuses, naming the node
    ex = runner.session._executor_for({s: 2 if s != "r" else 1 for s in runner.session.graph.sym_sources})
    before = {k: v.copy() for k, v in runner.session.state.items()}
    with pytest.raises(BackendError, match=r"slot.*index or position out of range"):
        ex.run(feeds)
    for k, v in runner.session.state.items():
        np.testing.assert_array_equal(v, before[k])


def test_triton_is_refused_with_a_clear_error(tiny_lm):
    from kiln.session import Session
    from kiln.passes.kv_batch import batch_kv_cache
    g = batch_kv_cache(tiny_lm.cached_session.graph, 2, verify=False)
    # no Triton kernels for the slot ops: refused when the session is made (or, without a GPU or the
    # interpreter, because Triton cannot run at all), never at the first step
    with pytest.raises(BackendError, match="no kernel for: slot_c|needs a CUDA GPU"):
        Session(g, backend="triton")


def test_engine_serves_with_the_batched_runner_and_matches_generate(tiny_lm):
    prompts = [tiny_lm.encode(t, chat=False) for t in ("The capital of France is", "Hello world, how are you",
                                                       "Tokens are pieces of words; merges join bytes")] + [[7, 8]]
    refs = [tiny_lm.generate(p, 12, temperature=0).ids for p in prompts]
    eng = Engine.from_model(tiny_lm, parallel=3, prefill_chunk=4).start()
    assert isinstance(eng.runner, BatchedRunner)
    try:
        outs = [[t for ev in h for t in ev.token_ids] for h in [eng.submit(p, max_tokens=12) for p in prompts]]
        alone = []
        for p in prompts:     # one at a time through the same engine: the single-stream output
            alone.append([t for ev in eng.submit(p, max_tokens=12) for t in ev.token_ids])
    finally:
        eng.shutdown()
    assert outs == alone == refs


def test_engine_interleaves_chunked_prefill_with_decode_and_cancels(tiny_lm):
    gate = threading.Semaphore(0)
    runner = _runner(tiny_lm, 2, _executors()[0], verify=False)
    seen: list[list[SlotWork]] = []
    real = runner.step

    def step(batch):
        gate.acquire(timeout=30)
        seen.append(list(batch))
        return real(batch)

    runner.step = step
    eng = Engine(runner, tokenizer=tiny_lm.tokenizer, eos_ids=[10 ** 6], vocab_size=320, prefill_chunk=4).start()
    try:
        first = eng.submit([1, 2], max_tokens=30)
        gate.release()
        gate.release()                          # its prefill, then one decode step
        long = eng.submit(list(range(3, 23)), max_tokens=30)   # 20 tokens: 5 chunks of 4
        for _ in range(8):
            gate.release()
        import time
        end = time.monotonic() + 30
        while len(seen) < 10 and time.monotonic() < end:
            time.sleep(0.01)
        mixed = [b for b in seen if len(b) == 2 and {len(w.tokens) for w in b} == {1, 4}]
        assert len(mixed) >= 3, [[(w.slot, len(w.tokens)) for w in b] for b in seen]   # decode beside each chunk
        eng.cancel(long.id)
        eng.cancel(first.id)
        for _ in range(4):
            gate.release()
        assert [ev.finish_reason for ev in long][-1] == "cancelled"
        assert [ev.finish_reason for ev in first][-1] == "cancelled"
        end = time.monotonic() + 10
        while eng.stats()["active"] and time.monotonic() < end:
            time.sleep(0.01)
        assert eng.stats()["active"] == 0 and sorted(eng.scheduler.free) == [0, 1]
    finally:
        for _ in range(100):
            gate.release()
        eng.shutdown()


def test_falls_back_to_per_slot_with_a_notice(tiny_lm, monkeypatch):
    import kiln.passes.kv_batch as kv_batch

    def refuse(*a, **k):
        raise KilnError("cannot batch the KV cache: (test) refused\nsecond line")

    monkeypatch.setattr(kv_batch, "batch_kv_cache", refuse)
    lines: list[str] = []
    runner = runner_for(tiny_lm, 2, notice=lines.append)
    assert isinstance(runner, PerSlotRunner)
    assert lines == ["serving slot by slot (no batched decoding): cannot batch the KV cache: (test) refused"]
    assert isinstance(runner_for(tiny_lm, 2, kind="per-slot"), PerSlotRunner)
    with pytest.raises(KilnError, match="runner must be"):
        runner_for(tiny_lm, 2, kind="fast")
