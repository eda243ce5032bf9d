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
    each, keys and values per layer in layer order."""
    token_input: str
    position_input: str
    max_len: int
    state_names: tuple[str, ...]

    def renamed(self, old: str, new: str) -> "KVCacheInfo":
        def r(name: str) -> str:
            return new if name == old else name
        return KVCacheInfo(r(self.token_input), r(self.position_input), self.max_len,
                           tuple(r(s) for s in self.state_names))

    def to_json(self) -> dict:
        return {"token_input": self.token_input, "position_input": self.position_input,
                "max_len": self.max_len, "state_names": list(self.state_names)}

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
        return KVCacheInfo(tok, pos, n, tuple(states))

    def check_positions(self, arrays) -> None:
        """Feed check (``arrays``: the checked feeds by input name): the new positions
        [position, position + S) must fit in the cache. Raises FeedError."""
        pos = int(arrays[self.position_input])
        tokens = arrays[self.token_input]
        new = tokens.shape[-1] if tokens.ndim else 1
        if pos < 0 or pos + new > self.max_len:
            raise FeedError(f"input {self.position_input!r}: positions [{pos}, {pos + new}) do not fit the KV "
                            f"cache of {self.max_len} positions")
