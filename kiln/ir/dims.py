"""Symbolic dims live in the bottom layer (kiln/core/dims.py); this name stays for the frontend."""
from ..core.dims import *  # noqa: F401,F403
from ..core.dims import Dim, DimLike, Sym  # noqa: F401
