"""PerSlotRunner on a real (tiny) model: slots share weights, keep separate caches, and batched greedy
output equals LanguageModel.generate token for token."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.serve import Engine, PerSlotRunner, SlotWork


def test_slots_share_weights_not_caches(tiny_lm):
    runner = PerSlotRunner.from_model(tiny_lm, 2)
    a, b = runner.sessions
    assert a.graph is b.graph                                  # one graph: its constants (weights) are shared
    assert all(a.state[k] is not b.state[k] for k in a.state)  # caches are per slot
    info = tiny_lm.cached_session.graph.kv_cache
    assert runner.slot_bytes() == sum(a.state[n].nbytes for n in info.state_names)
    runner.step([SlotWork(0, (1, 2), 0), SlotWork(1, (3, 4), 0)])
    (key, ex_a), = a._executors.items()
    if tiny_lm.cached_session.executor == "compiled":       # one plan per length for all slots
        assert b._executors[key].plan is ex_a.plan and b._executors[key]._arena is not ex_a._arena


def test_rows_do_not_disturb_each_other(tiny_lm):
    runner = PerSlotRunner.from_model(tiny_lm, 2)
    p, q = [5, 6, 7, 8], [9, 10, 11]
    alone = runner.step([SlotWork(0, tuple(p), 0)])[0]
    runner.step([SlotWork(1, tuple(q), 0)])
    both = runner.step([SlotWork(0, tuple(p), 0), SlotWork(1, (12,), 3)])
    np.testing.assert_array_equal(both[0], alone)
    np.testing.assert_allclose(alone, tiny_lm.logits(p), rtol=1e-5, atol=1e-5)


def test_bad_rows_are_refused(tiny_lm):
    runner = PerSlotRunner.from_model(tiny_lm, 1)
    for batch in ([SlotWork(1, (1,), 0)], [SlotWork(0, (), 0)], [SlotWork(0, (1,), runner.max_len)],
                  [SlotWork(0, (1,), 0), SlotWork(0, (2,), 1)]):
        with pytest.raises(KilnError):
            runner.step(batch)


def test_engine_greedy_equals_generate(tiny_lm):
    prompts = [tiny_lm.encode(t, chat=False) for t in ("The capital of France is", "Hello world, how are you",
                                                       "Tokens are pieces of words; merges join bytes")] + [[7, 8]]
    refs = [tiny_lm.generate(p, 16, temperature=0).ids for p in prompts]
    eng = Engine.from_model(tiny_lm, parallel=3, prefill_chunk=8).start()
    try:
        handles = [eng.submit(p, max_tokens=16) for p in prompts]
        outs = [[t for ev in h for t in ev.token_ids] for h in handles]
    finally:
        eng.shutdown()
    assert outs == refs
