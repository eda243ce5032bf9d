"""What a graph with a KV cache tells its runtime, as typed metadata on the Graph.

Written by the KV-cache transform (kiln/passes/kv_cache.py), saved with the graph
(kiln/ir/serialize.py) and read by the runtime (kiln/session.py, kiln/models), so
no one infers these facts from tensor names.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import FeedError, FileFormatError


@dataclass(frozen=True)
class KVCacheInfo:
    """``token_input``: the int64 [B, S] token ids; ``position_input``: the int64 scalar
    count of positions the cache already holds; ``max_len``: positions the cache holds
    (the state tensors' axis 2); ``state_names``: the state tensors, [B, Hkv, max_len, D]
    each, keys and values per layer in layer order.

    A batched graph (kiln/passes/kv_batch.py) has ``slots`` > 0: a packed batch of S tokens from
    several sequences; ``position_input`` is then int64 [S] (each token's position), ``slot_input``
    int64 [S] (each token's slot), ``logits_input`` int64 [R] (the tokens whose logits come out), and
    the state tensors are [slots, Hkv, max_len, D]."""
    token_input: str
    position_input: str
    max_len: int
    state_names: tuple[str, ...]
    slots: int = 0
    slot_input: str = ""
    logits_input: str = ""

    def renamed(self, old: str, new: str) -> "KVCacheInfo":
        def r(name: str) -> str:
            return new if name == old else name
        return KVCacheInfo(r(self.token_input), r(self.position_input), self.max_len,
                           tuple(r(s) for s in self.state_names), self.slots, r(self.slot_input),
                           r(self.logits_input))

    def to_json(self) -> dict:
        batched = {"slots": self.slots, "slot_input": self.slot_input, "logits_input": self.logits_input}
        return {"token_input": self.token_input, "position_input": self.position_input,
                "max_len": self.max_len, "state_names": list(self.state_names), **(batched if self.slots else {})}

    @staticmethod
    def from_json(d: dict) -> "KVCacheInfo":
        """Raises FileFormatError on a field of the wrong JSON type or range."""
        if not isinstance(d, dict):
            raise FileFormatError(f"kv_cache must be an object, got {d!r}")
        tok, pos, n, states = d.get("token_input"), d.get("position_input"), d.get("max_len"), d.get("state_names")
        if not isinstance(tok, str) or not isinstance(pos, str):
            raise FileFormatError(f"kv_cache.token_input/position_input must be names, got {tok!r}, {pos!r}")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2**40:
            raise FileFormatError(f"kv_cache.max_len must be an integer in [1, 2**40], got {n!r}")
        if not isinstance(states, list) or not all(isinstance(s, str) for s in states):
            raise FileFormatError(f"kv_cache.state_names must be a list of names, got {states!r}")
        slots, slot_in, logits_in = d.get("slots", 0), d.get("slot_input", ""), d.get("logits_input", "")
        if isinstance(slots, bool) or not isinstance(slots, int) or not 0 <= slots <= 4096:
            raise FileFormatError(f"kv_cache.slots must be an integer in [0, 4096], got {slots!r}")
        if slots and (not isinstance(slot_in, str) or not isinstance(logits_in, str) or not slot_in or not logits_in):
            raise FileFormatError(f"kv_cache.slot_input/logits_input must be names, got {slot_in!r}, {logits_in!r}")
        return KVCacheInfo(tok, pos, n, tuple(states), slots, slot_in if slots else "", logits_in if slots else "")

    def check_positions(self, arrays) -> None:
        """Feed check (``arrays``: the checked feeds by input name): the new positions
        [position, position + S) must fit in the cache. Raises FeedError."""
        if self.slots:
            return self._check_rows(arrays)
        pos = int(arrays[self.position_input])
        tokens = arrays[self.token_input]
        new = tokens.shape[-1] if tokens.ndim else 1
        if pos < 0 or pos + new > self.max_len:
            raise FeedError(f"input {self.position_input!r}: positions [{pos}, {pos + new}) do not fit the KV "
                            f"cache of {self.max_len} positions")

    def _check_rows(self, arrays) -> None:
        """Batched: every token's slot in [0, slots), its position in [0, max_len), one each per token."""
        seq = arrays[self.token_input].shape[-1]
        for name, limit, what in ((self.slot_input, self.slots, "slot id"),
                                  (self.position_input, self.max_len, "position")):
            a = arrays[name]
            if a.shape != (seq,):
                raise FeedError(f"input {name!r}: one {what} per token ({seq}), got shape {list(a.shape)}")
            bad = (a < 0) | (a >= limit)
            if bad.any():
                raise FeedError(f"input {name!r}: {what} {int(a[bad][0])} at token {int(bad.argmax())} is outside "
                                f"[0, {limit})")
