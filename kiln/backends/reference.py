"""The numpy backend: every op's declared reference is its kernel (host memory).

It is the oracle the other backends are tested against, the constant folder's evaluator
and the ``numpy``/``reference`` executors' kernels. It registers nothing: see
``kernels.ReferenceBackend``."""
from __future__ import annotations

from .kernels import HOST, ReferenceBackend

BACKEND = ReferenceBackend("numpy", memory=HOST, doc="each op's numpy reference (float64 inside where it matters)")
