"""A serving request as the engine sees it: prompt ids, limits, sampling, and its output events."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..models.sampling import Sampler, SamplingConfig
from ..models.tokenizer import StreamDecoder

_ids = itertools.count(1)


@dataclass
class Event:
    """One step of a request's output. ``text`` is the new text (stop strings already cut out);
    ``finish_reason`` is set on the last event: "stop" (EOS or a stop string), "length" (max_tokens or
    the context is full), "cancelled", or "error" (``error`` then says why)."""

    token_ids: list[int]
    text: str
    finish_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: Optional[str] = None


class StopText:
    """Incremental text with stop strings: emits only text that cannot turn out to start a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=0)
        self.text = ""      # everything decoded so far
        self.sent = 0       # chars of text already emitted

    def push(self, delta: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit now, whether a stop string was found)."""
        start = max(0, self.sent - self.hold)
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            out, self.sent = self.text[self.sent:cut], max(self.sent, cut)
            return out, True
        safe = len(self.text)
        for s in self.stops:  # keep back a tail that is a prefix of some stop string
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if s.startswith(self.text[-k:]):
                    safe = min(safe, len(self.text) - k)
                    break
        safe = max(safe, self.sent)
        out, self.sent = self.text[self.sent:safe], safe
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


@dataclass
class Request:
    """Everything the engine keeps for one request. ``sink`` receives Events (from the engine thread)."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingConfig
    eos_ids: frozenset
    tokenizer: Any
    sink: Callable[[Event], None]
    stop: Sequence[str] = ()
    id: int = field(default_factory=lambda: next(_ids))
    # Engine-side progress, touched only by the engine thread.
    slot: Optional[int] = None
    prefilled: int = 0                      # prompt tokens already in the slot's cache
    chunks: list[int] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    t_submit: float = field(default_factory=time.perf_counter)
    t_last: Optional[float] = None          # time of the last emitted token

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.sampling)
        self.detok = StreamDecoder(self.tokenizer)
        self.stop_text = StopText(self.stop)

    @property
    def position(self) -> int:
        """Positions this sequence holds in its slot's cache."""
        return self.prefilled + max(0, len(self.out_ids) - 1)

    def event(self, ids: list[int], text: str, finish: Optional[str] = None, error: Optional[str] = None) -> Event:
        return Event(ids, text, finish, len(self.prompt_ids), len(self.out_ids), error)
