"""Kiln: ahead-of-time inference for PyTorch models on the CPU.

    session = kiln.compile(model, (example_input,))
    logits, = session.run({"input_ids": ids})
    session.save("model.kiln");  kiln.load("model.kiln")   # no torch needed to load

Importing kiln does not import torch; only ``kiln.compile`` does.
"""
from . import errors, ops  # noqa: F401  (ops: registers every declaration)
from .errors import KilnError
from .session import Session, compile, load

__all__ = ["compile", "load", "Session", "KilnError", "errors"]
__version__ = "0.1.0"
