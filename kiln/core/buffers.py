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

import math
import mmap
import sys

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


class OutputRecycler:
    """Large run outputs handed out again once the caller has dropped every view of them.

    A session returns fresh arrays, so a caller may keep any result. Allocating a new large
    output on every run costs a page fault per page at its first write, inside the kernel
    that writes it; where numpy's huge-page request meets fragmented memory (another runtime
    in the process has just freed its buffers) each fault may compact memory first. Measured
    here: filling a fresh 155 MB array (Qwen3's logits at 256 tokens) took 26–295 ms, and
    each such Kiln run took ~200 page faults after a PyTorch run (docs/DESIGN.md, "Output
    buffers"). So, as ORT's arena and PyTorch's caching allocator do, a buffer whose
    every view is gone is reused: the one reference left is the recycler's own, which
    CPython's reference count shows exactly. Outputs under ``min_bytes`` come from malloc.

    Not thread-safe: the caller holds its run lock around ``array``.
    """

    def __init__(self, keep: int = 2, min_bytes: int = 1 << 20):
        self.keep, self.min_bytes = int(keep), int(min_bytes)
        self._held: dict[object, list[np.ndarray]] = {}
        probe = [np.empty(1, np.uint8)]
        self._idle = sys.getrefcount(probe[0])  # held by one list only, counted the same way below

    def array(self, key: object, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A C-contiguous array of ``shape``/``dtype`` (contents undefined) for output ``key``."""
        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize * math.prod(shape)
        if nbytes < self.min_bytes:
            return np.empty(shape, dtype)
        held = self._held.setdefault(key, [])
        for k in range(len(held)):
            if held[k].nbytes == nbytes and sys.getrefcount(held[k]) == self._idle:
                return held[k].view(dtype).reshape(shape)
        raw = fresh(nbytes)
        if len(held) < self.keep:
            held.append(raw)
        return raw.view(dtype).reshape(shape)
