"""A GPU backend through Triton: one kernel family per file, registered per op on ``BACKEND``.

Import order matters once: whether kernels are compiled for a GPU or run by Triton's
CPU interpreter is fixed when this package is first imported (see runtime.py).
``kiln.executor.triton.TritonExecutor`` runs a static, planned Kiln graph with them;
``kiln.compile(..., backend="triton")`` picks it.
"""
from __future__ import annotations

from . import runtime  # noqa: F401  (first: it checks torch/triton are installed)
from . import attention, elementwise, fused, matmul, movement, norm, reduce  # noqa: F401  (registration)
from .registry import BACKEND, get, missing_ops, register  # noqa: F401


def _ready() -> None:
    runtime.device()  # a GPU, or the interpreter; else a BackendError saying what is missing


BACKEND.ready = _ready
