"""Engine and scheduler: slots, chunked prefill between decode steps, cancellation, limits, batching invariance."""
from __future__ import annotations

import threading

import pytest

from fakes import VOCAB, FakeRunner
from kiln.models.sampling import SamplingConfig
from kiln.serve import Engine, QueueFull, RequestError
from kiln.serve.request import Request, StopText
from kiln.serve.runner import chunk_sizes
from kiln.serve.scheduler import Scheduler

EOS = 10 ** 6   # never produced: lengths are decided by max_tokens


def _req(prompt, max_tokens=5, sink=None, **sampling):
    events = []
    r = Request(list(prompt), max_tokens, SamplingConfig(**sampling), frozenset([EOS]), None,
                sink or events.append)
    return r, events


def _engine(n_slots=2, max_queue=8, gate=None, chunk=8, max_len=64):
    runner = FakeRunner(n_slots, max_len=max_len, gate=gate)
    return Engine(runner, tokenizer=None, eos_ids=[EOS], vocab_size=VOCAB, max_queue=max_queue,
                  prefill_chunk=chunk).start(), runner


def _ids(handle):
    return [t for ev in handle for t in ev.token_ids]


def test_chunk_sizes():
    assert chunk_sizes(0, 64) == []
    assert chunk_sizes(64, 64) == [64]
    assert chunk_sizes(150, 64) == [64, 64, 16, 4, 2]
    assert all(sum(chunk_sizes(n, 8)) == n for n in range(40))
    with pytest.raises(Exception, match="power of two"):
        chunk_sizes(5, 48)


def test_slots_are_handed_out_and_returned():
    sched = Scheduler(FakeRunner(2), prefill_chunk=8)
    reqs = [_req([1, 2, 3, 4], max_tokens=n)[0] for n in (1, 4, 4)]
    for r in reqs:
        sched.add(r)
    sched.step()
    assert sorted(r.slot for r in reqs[:2]) == [0, 1] and reqs[2].slot is None
    assert len(sched.waiting) == 1
    # reqs[0] (max_tokens 1) finished in that step: its slot is free and the next step admits reqs[2] into it
    assert reqs[0].id not in sched.active
    sched.step()
    assert reqs[2].slot == reqs[0].slot
    while not sched.idle:
        sched.step()
    assert sorted(sched.free) == [0, 1]


def test_chunked_prefill_runs_between_decode_steps():
    runner = FakeRunner(2)
    sched = Scheduler(runner, prefill_chunk=8)
    short, _ = _req([1, 2, 3, 4], max_tokens=20)
    sched.add(short)
    sched.step()                       # prefill of the short prompt, first token
    long_, _ = _req(list(range(1, 41)), max_tokens=3)
    sched.add(long_)
    before = len(runner.batches)
    for _ in range(5):
        sched.step()
    steps = runner.batches[before:]
    for b in steps:                    # every step: one decode row for `short` and one 8-token chunk of `long_`
        assert [len(w.tokens) for w in b if w.slot == short.slot] == [1]
        assert [len(w.tokens) for w in b if w.slot == long_.slot] == [8]
    assert [w.start for b in steps for w in b if w.slot == long_.slot] == [0, 8, 16, 24, 32]
    assert len(long_.out_ids) == 1     # the last chunk gave the first token
    assert len(short.out_ids) == 6


def test_greedy_and_seeded_outputs_do_not_depend_on_batching():
    prompts = [[1, 2, 3], list(range(5, 30)), [7] * 17, [4, 4], list(range(1, 12))]
    samplings = [{}, {"temperature": 0.8, "top_k": 20, "seed": 3}, {}, {"temperature": 1.0, "top_p": 0.9, "seed": 9},
                 {}]
    alone = []
    for p, s in zip(prompts, samplings):
        eng, _ = _engine(n_slots=1)
        alone.append(_ids(eng.submit(p, max_tokens=12, sampling=SamplingConfig(**s))))
        eng.shutdown()
    eng, runner = _engine(n_slots=3)
    handles = [eng.submit(p, max_tokens=12, sampling=SamplingConfig(**s)) for p, s in zip(prompts, samplings)]
    together = [_ids(h) for h in handles]
    eng.shutdown()
    assert together == alone
    assert max(len(b) for b in runner.batches) > 1   # they really shared steps


def test_cancel_frees_the_slot_at_once():
    gate = threading.Semaphore(0)
    eng, _ = _engine(n_slots=1, gate=gate)
    h = eng.submit([1, 2, 3, 4], max_tokens=50)
    gate.release()                       # one step: the prefill, which gives the first token
    first = next(iter(h))
    assert first.finish_reason is None
    h.cancel()
    gate.release(100)
    rest = list(h)
    assert rest[-1].finish_reason == "cancelled"
    assert eng.stats()["active"] == 0 and eng.scheduler.free == [0]
    assert len(_ids(eng.submit([4, 5], max_tokens=3))) == 3   # the slot serves the next request
    eng.shutdown()


def test_cancel_a_waiting_request():
    gate = threading.Event()
    eng, _ = _engine(n_slots=1, gate=gate)
    running = eng.submit([1, 2], max_tokens=3)
    waiting = eng.submit([3, 4], max_tokens=3)
    waiting.cancel()
    gate.set()
    assert [ev.finish_reason for ev in waiting][-1] == "cancelled"
    assert len(_ids(running)) == 3
    eng.shutdown()


def test_queue_overflow_is_refused():
    gate = threading.Event()
    eng, _ = _engine(n_slots=1, max_queue=1, gate=gate)
    a = eng.submit([1, 2], max_tokens=2)
    assert _wait(lambda: eng.stats()["active"] == 1)
    b = eng.submit([3, 4], max_tokens=2)
    assert _wait(lambda: eng.stats()["queued"] == 1)
    with pytest.raises(QueueFull):
        eng.submit([5, 6], max_tokens=2)
    gate.set()
    assert len(_ids(a)) == 2 and len(_ids(b)) == 2
    assert len(_ids(eng.submit([5, 6], max_tokens=2))) == 2     # room again
    eng.shutdown()


def test_request_limits():
    eng, _ = _engine(max_len=16)
    for prompt, kw, msg in (([], {}, "empty"), (list(range(1, 17)), {}, "context"),
                            ([1, 2], {"max_tokens": 0}, "max_tokens"), ([1, 2], {"max_tokens": 99}, "max_tokens"),
                            ([1, VOCAB], {}, "vocabulary"), ([-1], {}, "vocabulary")):
        with pytest.raises(RequestError, match=msg):
            eng.submit(prompt, **kw)
    # no max_tokens: generate until the context is full
    evs = list(eng.submit(list(range(1, 11)), max_tokens=None))
    assert sum(len(e.token_ids) for e in evs) == 6 and evs[-1].finish_reason == "length"
    eng.shutdown()


def test_runner_failure_ends_its_requests_not_the_engine():
    eng, runner = _engine(n_slots=1)
    runner.fail_next = True
    evs = list(eng.submit([1, 2, 3], max_tokens=4))
    assert evs[-1].finish_reason == "error" and "injected" in evs[-1].error
    assert eng.scheduler.free == [0]
    assert len(_ids(eng.submit([1, 2, 3], max_tokens=4))) == 4
    eng.shutdown()


def test_stop_text_holds_back_prefixes_and_cuts_at_the_stop():
    st = StopText(["END", "\n\n"])
    assert st.push("hello E") == ("hello ", False)      # "E" may start "END"
    assert st.push("N") == ("", False)
    assert st.push("Dtrailing") == ("", True)
    st = StopText(["END"])
    assert st.push("hello E") == ("hello ", False)
    assert st.push("x") == ("Ex", False)                 # not a stop after all: released
    assert st.flush() == ""
    st = StopText([])
    assert st.push("abc") == ("abc", False)


def _wait(pred, timeout=10.0):
    from tests.serve.conftest import wait_until
    return wait_until(pred, timeout)
