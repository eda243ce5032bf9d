"""Registry of ATen handlers: one small function per ATen op (or overload family)."""
from __future__ import annotations

from typing import Callable

HANDLERS: dict[str, Callable] = {}

# In-place ops whose write changes no value Kiln sees (detach_ only drops autograd history):
# a program holding them still converts as captured, without functionalization.
SAFE_IN_PLACE = frozenset({"aten.detach_.default"})


def handles(*targets: str):
    """Register ``fn(ctx, *args, **kwargs)`` for ATen targets named like 'aten.add.Tensor'."""
    def deco(fn):
        for t in targets:
            if t in HANDLERS:
                raise ValueError(f"two handlers for {t}")
            HANDLERS[t] = fn
        return fn
    return deco
