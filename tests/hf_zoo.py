"""Small bodies of the real architectures (random weights), cached across tests."""
from __future__ import annotations

import functools

from kiln.models import zoo


@functools.lru_cache(maxsize=None)
def hf_model(name: str, layers: int = 2):
    return zoo.logits_model(name, layers)
