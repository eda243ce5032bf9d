"""`LanguageModel`: a causal LM compiled by Kiln, with its tokenizer and generation defaults.

    lm = kiln.models.load_model("default")            # or an HF folder, or a .gguf path
    for ev in lm.stream("What is the capital of France?", max_new_tokens=32):
        print(ev.text, end="", flush=True)
    result = lm.generate([1, 2, 3], max_new_tokens=8)   # ids in, ids + text + timings out
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .decoders import CachedDecoder, Decoder, RecomputeDecoder, RePrefillDecoder
from .generation import Generation, TokenEvent
from .sampling import SamplingConfig
from .tokenizer import encode_prompt, has_chat_template

Prompt = Union[str, Sequence[int]]


@dataclass
class LanguageModel:
    """A causal LM compiled by Kiln, with its tokenizer and generation defaults."""

    name: str
    session: Any                       # kiln.Session: input_ids (1, seq) -> logits (None: from a file)
    tokenizer: Any                     # KilnTokenizer (or a transformers tokenizer) or None
    config: Any                        # transformers config (a dict when loaded from a file)
    eos_ids: tuple[int, ...]
    sampling: SamplingConfig           # defaults (from generation_config, else greedy)
    min_len: int
    max_len: int
    last_only: bool
    torch_model: Any = None            # kept only with keep_torch=True (comparisons)
    timings: dict[str, float] = field(default_factory=dict)   # load step -> seconds
    cached_session: Any = None         # the same graph with a KV cache (None: recompute only)
    use_cache: bool = True
    provenance: dict[str, Any] = field(default_factory=dict)   # a model file's: source, hash, options, ...

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    def encode(self, prompt: Prompt, chat: Optional[bool] = None) -> list[int]:
        if isinstance(prompt, str):
            return encode_prompt(self.tokenizer, prompt, chat)
        return [int(i) for i in prompt]

    def decoder(self) -> Decoder:
        if self.use_cache and self.cached_session is not None:
            return CachedDecoder(self.cached_session, max_len=self.max_len)
        if self.session is None:  # a model file holds only the KV-cache graph: re-prefill from position 0
            return RePrefillDecoder(self.cached_session, max_len=self.max_len)
        return RecomputeDecoder(self.session, min_len=self.min_len, max_len=self.max_len, last_only=self.last_only)

    def stream(self, prompt: Prompt, max_new_tokens: int = 64, *, temperature: Optional[float] = None,
               top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
               chat: Optional[bool] = None) -> Generation:
        """Start generating; iterate the result for TokenEvents. Unset sampling arguments take the model's
        defaults; temperature 0 is greedy."""
        sampling = self.sampling.updated(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return Generation(self.decoder(), self.encode(prompt, chat), max_new_tokens=int(max_new_tokens),
                          max_len=self.max_len, sampling=sampling, eos_ids=self.eos_ids, tokenizer=self.tokenizer)

    def generate(self, prompt: Prompt, max_new_tokens: int = 64, *, on_token: Optional[Callable[[TokenEvent], None]]
                 = None, **kwargs: Any) -> Generation:
        """Generate to the end; ``on_token`` sees each TokenEvent as it is produced."""
        return self.stream(prompt, max_new_tokens, **kwargs).run(on_token)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits after ``ids`` (one prefill), for checks against other runtimes."""
        decoder = self.decoder()
        try:
            return decoder.prefill(ids)
        finally:
            close = getattr(decoder, "close", None)
            if close is not None:
                close()
