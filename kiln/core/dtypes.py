"""The element types a Kiln tensor may have, their sizes, and their numpy equivalents."""
from __future__ import annotations

import numpy as np

DTYPES = ("float32", "int64", "int32", "bool")      # the order is the C enum's (csrc/generated)
ITEMSIZE = {"float32": 4, "int64": 8, "int32": 4, "bool": 1}


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a Kiln dtype name."""
    return np.dtype(name if name != "bool" else np.bool_)


def from_numpy(dt) -> str:
    """The Kiln dtype a numpy array is stored as: float64/float16 become float32, unsigned
    and 8/16-bit integers int64 (a constant's values are kept, not its width)."""
    dt = np.dtype(dt)
    if dt == np.float64 or dt == np.float16:
        return "float32"
    if dt == np.bool_:
        return "bool"
    if dt.kind in "iu":
        return "int64" if dt.itemsize == 8 or dt.kind == "u" else ("int32" if dt.itemsize == 4 else "int64")
    return str(dt)
