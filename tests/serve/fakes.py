"""A deterministic fake ModelRunner: logits depend only on the tokens a slot's sequence holds, so any
scheduling bug that mixes sequences, skips or repeats a token, or misplaces a position changes them."""
from __future__ import annotations

import zlib

import numpy as np

from kiln.serve.runner import SlotWork

VOCAB = 50


class FakeRunner:
    def __init__(self, n_slots: int, max_len: int = 64, gate=None):
        self.n_slots, self.max_len, self.gate = n_slots, max_len, gate
        self.history: list[list[int]] = [[] for _ in range(n_slots)]
        self.batches: list[list[SlotWork]] = []
        self.fail_next = False

    def step(self, batch):
        if self.gate is not None:  # an Event (opens once) or a Semaphore (one release per step)
            opened = self.gate.acquire(timeout=30) if hasattr(self.gate, "acquire") else self.gate.wait(30)
            assert opened, "test gate never opened"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected runner failure")
        self.batches.append(list(batch))
        out = []
        assert len({w.slot for w in batch}) == len(batch), "a slot appears twice in one step"
        for w in batch:
            h = self.history[w.slot]
            assert w.start <= len(h), f"slot {w.slot}: start {w.start} skips positions (holds {len(h)})"
            del h[w.start:]
            h.extend(w.tokens)
            assert len(h) <= self.max_len
            seed = zlib.crc32(np.asarray(h, dtype=np.int64).tobytes())
            out.append(np.random.default_rng(seed).standard_normal(VOCAB).astype(np.float32)
                       if w.want_logits else None)
        return out
