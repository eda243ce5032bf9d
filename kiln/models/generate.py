"""Text generation on a Kiln session: load a model, then prefill / decode / sample / stream.

    lm = kiln.models.load_model("default")            # or an HF folder, or a .gguf path
    for ev in lm.stream("What is the capital of France?", max_new_tokens=32):
        print(ev.text, end="", flush=True)
    result = lm.generate([1, 2, 3], max_new_tokens=8)   # ids in, ids + text + timings out

Decoding goes through the `Decoder` protocol (prefill(ids) -> logits, step(token) -> logits).
`CachedDecoder` (the default) keeps the KV cache as graph state: prefill writes the prompt's keys and
values, each step feeds one token. `RecomputeDecoder` (``cache=False``) reruns the whole prefix every
step on the same dynamic-length graph, for comparison.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, Union

import numpy as np

from ..errors import KilnError
from .sampling import Sampler, SamplingConfig, defaults_from_generation_config
from .tokenizer import StreamDecoder, encode_prompt, has_chat_template

Prompt = Union[str, Sequence[int]]
Progress = Callable[[str], None]


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


class CachedDecoder:
    """KV cache as graph state: one plan for the prompt length, one for single tokens, no Python per layer."""

    def __init__(self, session: Any, *, max_len: int):
        info = session.graph.kv_cache
        if info is None:
            raise KilnError("CachedDecoder needs a graph with a KV cache (kiln.passes.kv_cache.add_kv_cache)")
        self.session, self.max_len, self.position_name = session, max_len, info.position_input
        self.input_name = info.token_input
        self.pos = 0

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        # Old cache rows need no clearing: attention reads only positions [0, pos + n).
        self.pos = 0
        return self._run([int(i) for i in ids])

    def step(self, token: int) -> np.ndarray:
        return self._run([int(token)])

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

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")

    def summary(self) -> str:
        why = {"eos": "end of sequence", "max_new_tokens": "--max-new-tokens reached",
               "max_len": "the compiled context (KV cache) is full; compile with a larger --max-len"}
        return (f"prompt {self.prompt_tokens} tokens, {self.new_tokens} new tokens, "
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
        self.sampler, self.eos_ids = Sampler(sampling), set(int(e) for e in eos_ids)
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
        t0 = time.perf_counter()
        logits = self.decoder.prefill(self.prompt_ids)
        st.prefill_s = time.perf_counter() - t0
        while True:
            token = self.sampler(logits)
            self.ids.append(token)
            st.new_tokens = len(self.ids)
            is_eos = token in self.eos_ids
            # EOS stays in ids (as HF generate returns it) but adds no text.
            delta = "" if is_eos else self.stream.push(token)
            if is_eos or len(self.ids) >= self.max_new_tokens or len(self.prompt_ids) + len(self.ids) >= self.max_len:
                st.stop_reason = ("eos" if is_eos else "max_new_tokens" if len(self.ids) >= self.max_new_tokens
                                  else "max_len")
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


@dataclass
class LanguageModel:
    """A causal LM compiled by Kiln, with its tokenizer and generation defaults."""

    name: str
    session: Any                       # kiln.Session: input_ids (1, seq) -> logits
    tokenizer: Any                     # transformers tokenizer or None
    config: Any                        # transformers config
    eos_ids: tuple[int, ...]
    sampling: SamplingConfig           # defaults (from generation_config, else greedy)
    min_len: int
    max_len: int
    last_only: bool
    torch_model: Any = None            # kept only with keep_torch=True (comparisons)
    timings: dict[str, float] = field(default_factory=dict)   # load step -> seconds
    cached_session: Any = None         # the same graph with a KV cache (None: recompute only)
    use_cache: bool = True

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
        return self.decoder().prefill(ids)


def load_model(spec: Union[str, os.PathLike] = "default", *, executor: str = "compiled", max_len: Optional[int] = None,
               keep_torch: bool = False, progress: Optional[Progress] = None, last_only: bool = True,
               cache: bool = True) -> LanguageModel:
    """'default' (SmolLM2-135M-Instruct), a Hugging Face model folder, or a .gguf file → LanguageModel.

    ``progress`` is called with the name of each step as it starts (loading, compiling, ...).
    ``cache`` decodes with a KV cache of ``max_len`` positions (else the prefix is recomputed).
    """
    from .hf import DEFAULT_MAX_LEN, compile_causal_lm, context_length, eos_token_ids
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    parts, name = _load_parts(spec, say)
    timings["load"] = time.perf_counter() - t0
    model = parts.model
    limit = context_length(model.config)
    max_len = min(limit, DEFAULT_MAX_LEN) if max_len is None else int(max_len)
    if not 2 <= max_len <= limit:
        raise KilnError(f"max_len must be in [2, {limit}] for this model, got {max_len}")
    say(f"exporting and compiling with Kiln (executor {executor}, sequence length 1..{max_len})")
    t0 = time.perf_counter()
    compiled = compile_causal_lm(model, max_len=max_len, executor=executor, last_only=last_only)
    cached = None
    if cache:
        if not compiled.last_only:
            raise KilnError("the KV cache needs a graph that returns the last position's logits")
        from ..passes.kv_cache import add_kv_cache
        from ..session import Session
        say(f"adding a KV cache of {max_len} positions")
        cached = Session(add_kv_cache(compiled.session.graph, max_len), executor=executor)
        for sym in cached.graph.sym_sources:  # plan single-token decode now, not on the first token
            cached.plan(**{sym: 1})
    timings["compile"] = time.perf_counter() - t0
    return LanguageModel(cached_session=cached, use_cache=cache,
        name=name, session=compiled.session, tokenizer=parts.tokenizer, config=model.config,
        eos_ids=eos_token_ids(model, parts.tokenizer, parts.generation_config),
        sampling=defaults_from_generation_config(parts.generation_config), min_len=compiled.min_len,
        max_len=compiled.max_len, last_only=compiled.last_only, torch_model=model if keep_torch else None,
        timings=timings)


def _load_parts(spec: Union[str, os.PathLike], say: Progress):
    from .hf import is_hf_folder, load_hf_folder
    if str(spec) == "default":
        from .default import NAME, default_model_path
        say("locating the default model")
        path = default_model_path()
        say(f"reading {path.name} (dequantizing to fp32)")
        from .gguf import load_gguf
        return load_gguf(path), NAME
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise KilnError(f"GGUF file {str(path)!r} does not exist")
        say(f"reading {path.name} (dequantizing to fp32)")
        from .gguf import load_gguf
        return load_gguf(path), path.name
    if path.is_dir():
        if not is_hf_folder(path):
            raise KilnError(f"{str(path)!r} is not a Hugging Face model folder (no config.json in it)")
        say(f"loading the Hugging Face model in {path}")
        return load_hf_folder(path), path.name
    if path.exists():
        raise KilnError(f"{str(path)!r} is neither a .gguf file nor a model folder")
    raise KilnError(f"unknown model {str(spec)!r}: expected 'default', a Hugging Face model folder or a .gguf file")


def hf_greedy(model: Any, prompt_ids: Sequence[int], max_new_tokens: int, *,
              eos_ids: Optional[Sequence[int]] = None) -> tuple[list[int], float]:
    """Greedy generation by transformers `generate` (with its KV cache): (new ids, seconds).

    ``eos_ids=()`` generates exactly ``max_new_tokens``: EOS is made unreachable (-1) rather
    than forbidden, since min_new_tokens would mask the EOS logit and change which token wins.
    """
    import copy
    import warnings

    import torch
    import transformers
    config = copy.deepcopy(model.generation_config)
    eos = list(eos_ids) if eos_ids is not None else config.eos_token_id
    config.update(eos_token_id=eos if eos != [] else -1, max_new_tokens=max_new_tokens, do_sample=False,
                  pad_token_id=(eos[0] if isinstance(eos, list) and eos else 0), temperature=None, top_k=None,
                  top_p=None)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # -1 is "not a token": that is the point
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            seconds = time.perf_counter() - t0
    finally:
        transformers.logging.set_verbosity(verbosity)
    # generate pads finished sequences to equal length; a single sequence stops at its EOS.
    return out[0, ids.shape[1]:].tolist(), seconds


def torch_greedy(lm: LanguageModel, prompt_ids: Sequence[int], max_new_tokens: int) -> tuple[list[int], float]:
    """The same greedy generation by transformers `generate` on the same weights: (new ids, seconds)."""
    if lm.torch_model is None:
        raise KilnError("load the model with keep_torch=True to compare with transformers")
    return hf_greedy(lm.torch_model, prompt_ids, max_new_tokens, eos_ids=lm.eos_ids)
