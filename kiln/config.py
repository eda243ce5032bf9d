"""Process-wide settings read from the environment."""
from __future__ import annotations

import os


def num_threads() -> int:
    """KILN_NUM_THREADS, default: the cores this process may use. Applied to kernels and BLAS alike."""
    env = os.environ.get("KILN_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            from .errors import KilnError
            raise KilnError(f"KILN_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n >= 1:
            return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
