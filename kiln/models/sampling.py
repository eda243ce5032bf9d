"""Choosing the next token from logits: greedy, temperature, top-k, top-p (numpy only, no torch).

Before choosing, the logits go through the processors Hugging Face's `generate` applies, in its order
and with its definitions: repetition penalty (over prompt and generated tokens), no-repeat n-grams,
then min_length / min_new_tokens (EOS forbidden until reached). Then the sampling filters, in HF's order
(temperature, then top-k, then top-p), so a seeded run means the same thing here as there, even if the
random streams differ. A generation_config setting not handled here is named in a warning, never
silently dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import KilnError


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. temperature == 0 means greedy (top_k / top_p are then ignored)."""

    temperature: float = 0.0
    top_k: int = 0          # 0: no top-k filter
    top_p: float = 1.0      # 1.0: no nucleus filter
    seed: Optional[int] = None
    repetition_penalty: float = 1.0   # HF: a seen token's logit is divided by it if > 0, else multiplied
    no_repeat_ngram_size: int = 0     # 0: off; else no n-gram of this size occurs twice
    min_new_tokens: int = 0           # EOS is forbidden until this many tokens are generated
    min_length: int = 0               # ... or until prompt + generated reach this many (HF's min_length)

    def __post_init__(self) -> None:
        # Checked here so the CLI and the Python API report bad numbers the same way.
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise KilnError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise KilnError(f"top_k must be an integer >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise KilnError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (np.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise KilnError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")
        for name in ("no_repeat_ngram_size", "min_new_tokens", "min_length"):
            v = getattr(self, name)
            if int(v) != v or v < 0:
                raise KilnError(f"{name} must be an integer >= 0, got {v}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def updated(self, **overrides: Any) -> "SamplingConfig":
        """A copy with the given fields replaced; None values leave a field as it is."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# generation_config settings this module does not apply, with the value that makes each inert
UNSUPPORTED = {"num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "penalty_alpha": None,
               "min_p": None, "top_h": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
               "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
               "force_words_ids": None, "constraints": None, "renormalize_logits": False,
               "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
               "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
               "guidance_scale": None, "stop_strings": None, "max_time": None, "dola_layers": None}


def unsupported_settings(gen_config: Any) -> list[str]:
    """Names (with values) of the settings in ``gen_config`` that change generation but are not applied."""
    out = []
    for name, neutral in UNSUPPORTED.items():
        v = getattr(gen_config, name, None)
        if v is not None and v != neutral and not (isinstance(v, (list, tuple, dict)) and not v):
            out.append(f"{name}={v!r}")
    return out


def defaults_from_generation_config(gen_config: Any) -> SamplingConfig:
    """A model's own generation defaults (its generation_config), else greedy.

    HF only samples when ``do_sample`` is true; otherwise temperature/top_k/top_p in the file are
    inert, and we keep that meaning. The logit processors (repetition penalty, no-repeat n-grams,
    minimum lengths) apply either way. Settings not supported are named in a warning.
    """
    if gen_config is None:
        return SamplingConfig()
    skipped = unsupported_settings(gen_config)
    if skipped:
        import warnings
        warnings.warn(f"generation_config settings not supported by Kiln, ignored: {', '.join(skipped)}",
                      stacklevel=2)

    def get(name, default):
        v = getattr(gen_config, name, None)
        return default if v is None else v
    processors = dict(repetition_penalty=float(get("repetition_penalty", 1.0)),
                      no_repeat_ngram_size=int(get("no_repeat_ngram_size", 0)),
                      min_new_tokens=int(get("min_new_tokens", 0)), min_length=int(get("min_length", 0)))
    if not getattr(gen_config, "do_sample", False):
        return SamplingConfig(**processors)
    return SamplingConfig(temperature=float(get("temperature", 1.0)), top_k=int(get("top_k", 0)),
                          top_p=float(get("top_p", 1.0)), **processors)


class Sampler:
    """Holds the random stream so that one seed gives one sequence across a whole generation."""

    def __init__(self, config: SamplingConfig, eos_ids: Sequence[int] = ()):
        self.config = config
        self.eos_ids = [int(e) for e in eos_ids]
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray, prompt: Sequence[int] = (), generated: Sequence[int] = ()) -> int:
        """The next token after ``prompt`` + ``generated`` (what the processors look at)."""
        logits = process(logits, self.config, list(prompt) + list(generated), len(generated), self.eos_ids)
        return sample(logits, self.config, self.rng)


def process(logits: np.ndarray, config: SamplingConfig, ids: Sequence[int], new: int,
            eos_ids: Sequence[int] = ()) -> np.ndarray:
    """HF's logit processors for the next token after ``ids`` (``new`` of them generated): float32 (vocab,)."""
    scores = np.array(logits, dtype=np.float32).reshape(-1)
    vocab = scores.shape[0]
    if config.repetition_penalty != 1.0 and len(ids):
        seen = np.unique(np.asarray([i for i in ids if 0 <= i < vocab], dtype=np.int64))
        v = scores[seen]
        scores[seen] = np.where(v < 0, v * config.repetition_penalty, v / config.repetition_penalty)
    n = config.no_repeat_ngram_size
    if n and len(ids) + 1 >= n:
        scores[[t for t in banned_ngram_tokens(ids, n) if 0 <= t < vocab]] = -np.inf
    if eos_ids and (new < config.min_new_tokens or len(ids) < config.min_length):
        scores[[e for e in eos_ids if 0 <= e < vocab]] = -np.inf
    return scores


def banned_ngram_tokens(ids: Sequence[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram of ``ids``: those that followed its last n-1 tokens before."""
    ids = list(ids)
    if n == 1:
        return set(ids)
    tail = tuple(ids[len(ids) - n + 1:])
    return {ids[j + n - 1] for j in range(len(ids) - n + 1) if tuple(ids[j:j + n - 1]) == tail}


def sample(logits: np.ndarray, config: SamplingConfig, rng: Optional[np.random.Generator] = None) -> int:
    """The next token id for one position's logits (shape (vocab,))."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)
    if config.greedy:
        # argmax returns the first maximum, the same tie-break as torch.argmax on CPU.
        return int(np.argmax(logits))
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    scores = logits.astype(np.float64) / config.temperature
    scores = top_k_filter(scores, config.top_k)
    scores = top_p_filter(scores, config.top_p)
    probs = softmax(scores)
    return int(rng.choice(probs.shape[0], p=probs))


def softmax(scores: np.ndarray) -> np.ndarray:
    m = np.max(scores)
    e = np.exp(scores - m)  # -inf entries become exactly 0
    return e / e.sum()


def top_k_filter(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest scores (ties at the k-th value are kept too, as in HF), -inf elsewhere."""
    if k <= 0 or k >= scores.shape[0]:
        return scores
    kth = np.partition(scores, -k)[-k]
    return np.where(scores < kth, -np.inf, scores)


def top_p_filter(scores: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of top tokens whose probability mass reaches p (always at least one)."""
    if p >= 1.0:
        return scores
    order = np.argsort(-scores, kind="stable")
    cum = np.cumsum(softmax(scores)[order])
    # A token stays if the mass *before* it is still below p; the first token always stays.
    keep_sorted = np.concatenate([[True], cum[:-1] < p])
    keep = np.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    return np.where(keep, scores, -np.inf)
