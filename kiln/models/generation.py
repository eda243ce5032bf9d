"""The generation loop: prefill, then sample / stream / stop, with timings.

A `Generation` drives a `Decoder` (kiln.models.decoders) and yields one `TokenEvent` per new token;
its `GenerationStats` hold the counts and timings.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

from ..errors import KilnError
from .decoders import Decoder
from .sampling import Sampler, SamplingConfig
from .tokenizer import StreamDecoder


@dataclass
class TokenEvent:
    """One generated token and the text it completed (may be empty mid-character)."""

    token_id: int
    text: str
    index: int          # 0 for the first new token


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0       # time in decode steps (each gives one token after the first)
    decode_steps: int = 0
    stop_reason: str = ""       # "eos" | "max_new_tokens" | "max_len"
    load_s: float = 0.0         # set by the caller: loading the model and the prompt before prefill

    @property
    def time_to_first_token_s(self) -> float:
        """Load + prefill (the first token is sampled from prefill's logits)."""
        return self.load_s + self.prefill_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")

    def summary(self) -> str:
        why = {"eos": "end of sequence", "max_new_tokens": "--max-new-tokens reached",
               "max_len": "the compiled context (KV cache) is full; compile with a larger --max-len"}
        ttft = f"time to first token {1e3 * self.time_to_first_token_s:.0f} ms, " if self.load_s > 0 else ""
        return (f"prompt {self.prompt_tokens} tokens, {self.new_tokens} new tokens, {ttft}"
                f"prefill {1e3 * self.prefill_s:.1f} ms, decode {self.decode_tokens_per_s:.1f} tokens/s "
                f"(stop: {why.get(self.stop_reason, self.stop_reason)})")


class Generation:
    """An iterator of TokenEvents; after it is exhausted, ``ids``/``text``/``stats`` hold the result."""

    def __init__(self, decoder: Decoder, prompt_ids: Sequence[int], *, max_new_tokens: int, max_len: int,
                 sampling: SamplingConfig, eos_ids: Sequence[int], tokenizer: Any):
        if max_new_tokens < 0:
            raise KilnError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not prompt_ids:
            raise KilnError("the prompt is empty (no tokens to start from)")
        if len(prompt_ids) > max_len:
            raise KilnError(f"the prompt has {len(prompt_ids)} tokens; the model was compiled for at most {max_len}")
        self.decoder, self.prompt_ids = decoder, [int(i) for i in prompt_ids]
        self.max_new_tokens, self.max_len = max_new_tokens, max_len
        self.sampler, self.eos_ids = Sampler(sampling, eos_ids), set(int(e) for e in eos_ids)
        self.stream = StreamDecoder(tokenizer)
        self.ids: list[int] = []
        self.stats = GenerationStats(prompt_tokens=len(self.prompt_ids))
        self._iter = self._run()

    @property
    def text(self) -> str:
        return self.stream.text

    def __iter__(self) -> Iterator[TokenEvent]:
        return self

    def __next__(self) -> TokenEvent:
        return next(self._iter)

    def _run(self) -> Iterator[TokenEvent]:
        st = self.stats
        if self.max_new_tokens == 0:
            st.stop_reason = "max_new_tokens"
            return
        try:
            yield from self._decode(st)
        finally:
            self._release()

    def _release(self) -> None:
        # Finished, or closed / dropped mid-stream: the model's KV cache is free for the next generation.
        close = getattr(self.decoder, "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        """Stop this generation early and release the model for another one."""
        self._iter.close()

    def _decode(self, st: GenerationStats) -> Iterator[TokenEvent]:
        t0 = time.perf_counter()
        logits = self.decoder.prefill(self.prompt_ids)
        st.prefill_s = time.perf_counter() - t0
        while True:
            token = self.sampler(logits, self.prompt_ids, self.ids)
            self.ids.append(token)
            st.new_tokens = len(self.ids)
            is_eos = token in self.eos_ids
            # EOS stays in ids (as HF generate returns it) but adds no text.
            delta = "" if is_eos else self.stream.push(token)
            if is_eos or len(self.ids) >= self.max_new_tokens or len(self.prompt_ids) + len(self.ids) >= self.max_len:
                st.stop_reason = ("eos" if is_eos else "max_new_tokens" if len(self.ids) >= self.max_new_tokens
                                  else "max_len")
                self._release()           # before the last event: a caller may never ask for the next one
                yield TokenEvent(token, delta + self.stream.flush(), len(self.ids) - 1)
                return
            yield TokenEvent(token, delta, len(self.ids) - 1)
            t0 = time.perf_counter()
            logits = self.decoder.step(token)
            st.decode_s += time.perf_counter() - t0
            st.decode_steps += 1

    def run(self, on_token: Optional[Callable[[TokenEvent], None]] = None) -> "Generation":
        for ev in self:
            if on_token is not None:
                on_token(ev)
        return self
