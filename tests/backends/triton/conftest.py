"""Run this folder's kernels in Triton's CPU interpreter when there is no GPU.

Triton fixes interpreter mode when a kernel is decorated, so TRITON_INTERPRET=1 is set
here, before kiln.backends.triton is imported, and removed again right after: the
kernels stay interpreted, and no other test (or subprocess) sees the variable."""
from __future__ import annotations

import os

import numpy as np
import pytest

import sys

import torch

_had = "TRITON_INTERPRET" in os.environ
if not torch.cuda.is_available() and not _had:
    if "triton" in sys.modules and "kiln.backends.triton" not in sys.modules:
        raise RuntimeError("triton was imported before tests/backends/triton/conftest.py could set "
                           "TRITON_INTERPRET=1; run with TRITON_INTERPRET=1 in the environment")
    os.environ["TRITON_INTERPRET"] = "1"
try:
    import kiln.backends.triton  # noqa: F401  (triton is in the test extra: a missing one fails here, loudly)
finally:
    if not _had:
        os.environ.pop("TRITON_INTERPRET", None)


@pytest.fixture(scope="session")
def ctx():
    from kiln.backends.triton.runtime import Context
    return Context()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
