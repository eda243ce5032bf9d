"""New large buffers for data written once at compile time (packed weights), on ordinary pages.

numpy asks the kernel for transparent huge pages on every array of 4 MiB or more
(``madvise(MADV_HUGEPAGE)``). Where THP is in "madvise" mode, every first touch of such an
array then makes a whole 2 MiB page in the fault; in the VM Kiln is developed on that cost
about 11 ms a page, so filling a new 1 GiB numpy array took several times as long as filling
one on 4 KiB pages (docs/DESIGN.md, "Compile time"). A packed weight is written once, then
streamed by the GEMM or saved to a model file (memory-mapped on load), so Kiln gives it an
anonymous private mapping without that request and leaves the page size to the system's default.
"""
from __future__ import annotations

import mmap

import numpy as np

# Below this numpy allocates without the huge-page request anyway (its own threshold).
_MAPPED_FROM = 4 << 20


def fresh(nbytes: int) -> np.ndarray:
    """A new writable uint8 array of ``nbytes`` (contents undefined until written).
    Freed with the array (the mapping is owned by the buffer the array holds)."""
    nbytes = int(nbytes)
    if nbytes < _MAPPED_FROM or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(nbytes, np.uint8)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), np.uint8)
