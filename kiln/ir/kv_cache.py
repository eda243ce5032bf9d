"""What a graph with a KV cache tells its runtime, as typed metadata on the Graph.

Written by the KV-cache transform (kiln/passes/kv_cache.py), saved with the graph
(kiln/ir/serialize.py) and read by the runtime (kiln/session.py, kiln/models), so
no one infers these facts from tensor names.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import FeedError


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
        return KVCacheInfo(str(d["token_input"]), str(d["position_input"]), int(d["max_len"]),
                           tuple(str(s) for s in d["state_names"]))

    def check_positions(self, arrays) -> None:
        """Feed check (``arrays``: the checked feeds by input name): the new positions
        [position, position + S) must fit in the cache. Raises FeedError."""
        pos = int(arrays[self.position_input])
        tokens = arrays[self.token_input]
        new = tokens.shape[-1] if tokens.ndim else 1
        if pos < 0 or pos + new > self.max_len:
            raise FeedError(f"input {self.position_input!r}: positions [{pos}, {pos + new}) do not fit the KV "
                            f"cache of {self.max_len} positions")
