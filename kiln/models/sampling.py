"""Choosing the next token from logits: greedy, temperature, top-k, top-p (numpy only, no torch).

The order of the filters follows Hugging Face's `generate` (temperature, then top-k, then top-p), so a
seeded run means the same thing here as there, even if the random streams differ.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from ..errors import KilnError


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens. temperature == 0 means greedy (top_k / top_p are then ignored)."""

    temperature: float = 0.0
    top_k: int = 0          # 0: no top-k filter
    top_p: float = 1.0      # 1.0: no nucleus filter
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        # Checked here so the CLI and the Python API report bad numbers the same way.
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise KilnError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise KilnError(f"top_k must be an integer >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise KilnError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def updated(self, **overrides: Any) -> "SamplingConfig":
        """A copy with the given fields replaced; None values leave a field as it is."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def defaults_from_generation_config(gen_config: Any) -> SamplingConfig:
    """A model's own sampling defaults (its generation_config), else greedy.

    HF only samples when ``do_sample`` is true; otherwise temperature/top_k/top_p in the file are
    inert, and we keep that meaning.
    """
    if gen_config is None or not getattr(gen_config, "do_sample", False):
        return SamplingConfig()
    temperature = getattr(gen_config, "temperature", None)
    top_k = getattr(gen_config, "top_k", None)
    top_p = getattr(gen_config, "top_p", None)
    return SamplingConfig(temperature=1.0 if temperature is None else float(temperature),
                          top_k=0 if top_k is None else int(top_k),
                          top_p=1.0 if top_p is None else float(top_p))


class Sampler:
    """Holds the random stream so that one seed gives one sequence across a whole generation."""

    def __init__(self, config: SamplingConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        return sample(logits, self.config, self.rng)


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
