"""A GPU backend through Triton: one kernel family per file, registered per op.

Import order matters once: whether kernels are compiled for a GPU or run by Triton's
CPU interpreter is fixed when this package is first imported (see runtime.py).
``TritonExecutor`` runs a static, planned Kiln graph on the device.
"""
from __future__ import annotations

from . import runtime  # noqa: F401  (first: it checks torch/triton are installed)
from . import attention, elementwise, fused, matmul, movement, norm, reduce  # noqa: F401  (registration)
from .registry import KERNELS, get, missing_ops, register  # noqa: F401


def __getattr__(name):
    if name == "TritonExecutor":
        from .executor import TritonExecutor
        return TritonExecutor
    raise AttributeError(name)
