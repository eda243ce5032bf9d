"""The C backend: kernels in csrc, registered in ``kernels``; ``codegen`` writes the C header
from those registrations; ``kiln.backends.clib``/``cabi`` bind the built library."""
from __future__ import annotations

from .kernels import BACKEND  # noqa: F401
