"""One LanguageModel, one KV cache: a second generation while one is unfinished is refused with a
clear error (never two sequences interleaved on one cache); finished, closed or dropped generations
release the cache; a model used from several threads one generation at a time stays exact."""
import gc
import threading

import pytest

from kiln.models import load_model
from kiln.models.decoders import CacheInUseError


@pytest.fixture(scope="module")
def lm(hf_folder, executor):
    return load_model(hf_folder("llama"), executor=executor, max_len=64)


def _ids(lm, prompt, n=8):
    return lm.generate(prompt, n, temperature=0).ids


def test_a_second_generation_while_one_streams_is_refused(lm):
    want_a, want_b = _ids(lm, [5, 6, 7]), _ids(lm, [9, 3])
    a = lm.stream([5, 6, 7], 8, temperature=0)
    first = next(a)
    with pytest.raises(CacheInUseError, match="in use by another generation"):
        lm.generate([9, 3], 8, temperature=0)
    with pytest.raises(CacheInUseError):
        lm.logits([1, 2])
    rest = [ev.token_id for ev in a]
    assert [first.token_id] + rest == want_a        # the refused call did not touch a's cache
    assert _ids(lm, [9, 3]) == want_b               # finished: the cache is free again


def test_a_second_thread_is_refused_and_the_first_is_exact(lm):
    want = _ids(lm, [4, 4, 2], 12)
    a = lm.stream([4, 4, 2], 12, temperature=0)
    got = [next(a).token_id]
    errors = []

    def other():
        try:
            lm.generate([1, 2, 3], 12, temperature=0)
        except CacheInUseError as e:
            errors.append(e)
    t = threading.Thread(target=other)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive() and len(errors) == 1
    got += [ev.token_id for ev in a]
    assert got == want


def test_close_and_drop_release_the_cache(lm):
    want = _ids(lm, [7, 1])
    g = lm.stream([3, 3, 3], 8, temperature=0)
    next(g)
    g.close()
    assert _ids(lm, [7, 1]) == want
    for _ in lm.stream([3, 3, 3], 8, temperature=0):
        break                                        # the loop's generation is dropped here
    gc.collect()
    assert _ids(lm, [7, 1]) == want


def test_the_last_event_releases_without_another_next(lm):
    g = lm.stream([2, 5], 3, temperature=0)
    events = [next(g) for _ in range(3)]             # never asks for StopIteration
    assert len(events) == 3
    assert _ids(lm, [2, 5], 3) == [e.token_id for e in events]


def test_threads_taking_turns_match_one_thread(lm):
    prompts = [[i + 1, i + 2, i + 3] for i in range(4)]
    want = [_ids(lm, p, 6) for p in prompts]
    turn = threading.Lock()
    got = {}

    def worker(i):
        with turn:                                   # one generation at a time, from four threads
            got[i] = _ids(lm, prompts[i], 6)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [got[i] for i in range(4)] == want
