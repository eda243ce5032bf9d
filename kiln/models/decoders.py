"""Decoders: one generation's model state behind ``prefill(ids) -> logits`` and ``step(token) -> logits``.

`CachedDecoder` (the default) keeps the KV cache as graph state: prefill writes the prompt's keys and
values, each step feeds one token. `RecomputeDecoder` (``cache=False``) reruns the whole prefix every
step on the same dynamic-length graph, for comparison; `RePrefillDecoder` does the same on the KV-cache
graph (a model file holds only that one), prefilling the whole sequence from position 0 every step.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Protocol, Sequence

import numpy as np

from ..errors import KilnError


class Decoder(Protocol):
    """One generation's model state. Both calls return the next-token logits, shape (vocab,), float32."""

    def prefill(self, ids: Sequence[int]) -> np.ndarray: ...

    def step(self, token: int) -> np.ndarray: ...


class RecomputeDecoder:
    """No cache: every step feeds the whole sequence again (one session, dynamic length, no re-export)."""

    def __init__(self, session: Any, *, min_len: int, max_len: int, last_only: bool):
        self.session, self.min_len, self.max_len, self.last_only = session, min_len, max_len, last_only
        self.input_name = session.input_names[0]
        self.ids: list[int] = []

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.ids = [int(i) for i in ids]
        return self._run()

    def step(self, token: int) -> np.ndarray:
        self.ids.append(int(token))
        return self._run()

    def _run(self) -> np.ndarray:
        n = len(self.ids)
        if n > self.max_len:
            raise KilnError(f"sequence of {n} tokens exceeds the compiled maximum of {self.max_len}")
        # Right-pad up to min_len: causal attention keeps the real positions blind to the padding.
        feed = np.zeros((1, max(n, self.min_len)), dtype=np.int64)
        feed[0, :n] = self.ids
        logits = self.session.run({self.input_name: feed})[0]
        return np.asarray(logits[0, -1] if self.last_only else logits[0, n - 1], dtype=np.float32)


# The KV cache is session state, so one session holds one sequence: the decoder that prefilled last owns
# it until it is closed (or dropped). The session lock makes each run safe, not a whole generation; two
# generations interleaving on one cache would each read the other's keys and values, silently.
_owners_lock = threading.Lock()
_owners: "weakref.WeakKeyDictionary[Any, weakref.ref]" = weakref.WeakKeyDictionary()


class CacheInUseError(KilnError):
    """A second generation asked for a KV cache that another, unfinished generation holds."""


class CachedDecoder:
    """KV cache as graph state: one plan for the prompt length, one for single tokens, no Python per layer.

    One decoder at a time uses a session's cache: prefill claims it, `close()` (or dropping the decoder)
    releases it, and a prefill by another decoder meanwhile raises CacheInUseError."""

    def __init__(self, session: Any, *, max_len: int):
        info = session.graph.kv_cache
        if info is None:
            raise KilnError("CachedDecoder needs a graph with a KV cache (kiln.passes.kv_cache.add_kv_cache)")
        self.session, self.max_len, self.position_name = session, max_len, info.position_input
        self.input_name = info.token_input
        self.pos = 0

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        # Old cache rows need no clearing: attention reads only positions [0, pos + n).
        self._claim()
        self.pos = 0
        return self._run([int(i) for i in ids])

    def _claim(self) -> None:
        with _owners_lock:
            ref = _owners.get(self.session)
            owner = ref() if ref is not None else None
            if owner is not None and owner is not self:
                raise CacheInUseError(
                    "this model's KV cache is in use by another generation that has not finished: one model "
                    "generates one sequence at a time. Finish or close() the other generation, load the model "
                    "once per thread, or serve concurrent requests with kiln.serve (one cache slot per request)")
            _owners[self.session] = weakref.ref(self)

    def close(self) -> None:
        """Release the session's KV cache for another generation (idempotent)."""
        with _owners_lock:
            ref = _owners.get(self.session)
            if ref is not None and ref() is self:
                del _owners[self.session]

    def step(self, token: int) -> np.ndarray:
        return self._run([int(token)])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown: the module globals may be gone)
            pass

    def _run(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        if n == 0:
            raise KilnError("cannot run an empty prompt")
        if self.pos + n > self.max_len:
            raise KilnError(f"the KV cache holds {self.max_len} positions; {self.pos} are used and {n} more "
                            f"were requested (compile with a larger max_len)")
        logits = self.session.run({self.input_name: np.asarray([ids], dtype=np.int64),
                                   self.position_name: np.asarray(self.pos, dtype=np.int64)})[0]
        self.pos += n
        return np.asarray(logits[0, -1], dtype=np.float32)


class RePrefillDecoder(CachedDecoder):
    """No cache reuse on a KV-cache graph: every step prefills the whole sequence again from position 0."""

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self._claim()
        self.ids = [int(i) for i in ids]
        self.pos = 0
        return self._run(list(self.ids))

    def step(self, token: int) -> np.ndarray:
        self.ids.append(int(token))
        self.pos = 0
        return self._run(list(self.ids))
