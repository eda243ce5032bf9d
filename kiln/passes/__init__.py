"""Graph optimization passes (see pipeline.py for the stage list)."""
from .pipeline import optimize  # noqa: F401
