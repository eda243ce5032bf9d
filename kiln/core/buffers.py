"""New large buffers for data written once at compile time (packed weights), on huge pages.

A packed weight is written once, then streamed by the GEMM on every run; fp32 decode reads
every byte of every weight per token, so its speed is the read bandwidth the weights get.
On 4 KiB pages that is less than on 2 MiB ones: each page is a TLB miss, and the hardware
prefetchers stop at 4 KiB boundaries (Intel Xeon, 2026-12-01: Kiln's read probe 29.7 GB/s on
4 KiB pages, 33.7 on huge ones). On the AMD EPYC of 2026-12-02 filling 512 MiB the guest had
used before also took 0.05 s on huge pages against 0.27–0.31 s on 4 KiB ones (memory new to
the VM costs more either way; docs/DESIGN.md, "Compile time"). So these buffers lie in anonymous mappings, 2 MiB-aligned, with
``madvise(MADV_HUGEPAGE)`` (small ones share a slab): where THP is in "madvise" mode (the
common default) the kernel then backs them with huge pages.

An earlier VM made each first-touched huge page cost ~11 ms, so ``KILN_HUGE_PAGES=0`` keeps
these buffers on the system's default page size (read when each buffer is made). A model file
loaded from disk is memory-mapped and keeps the page cache's pages.
"""
from __future__ import annotations

import math
import mmap
import os
import sys
import threading

import numpy as np

# From 4 MiB a buffer gets its own mapping; from 64 KiB, with huge pages wanted, it is carved
# from a shared 32 MiB slab: most of a small model's weights are under 4 MiB (SmolLM2's merged
# QKV is 2.2 MB, its down projection 3.5 MB) and would otherwise sit on malloc's 4 KiB pages.
_MAPPED_FROM = 4 << 20
_CARVED_FROM = 64 << 10
_SLAB = 32 << 20
_HUGE = 2 << 20
_slab_lock = threading.Lock()
_slab: list = [None, 0, 0]  # the slab being carved (mmap), its next free byte and its end


def huge_pages_wanted() -> bool:
    """Whether new write-once buffers ask for transparent huge pages (``KILN_HUGE_PAGES``,
    default 1; "0" turns the request off)."""
    return os.environ.get("KILN_HUGE_PAGES", "1").strip() not in ("0", "false", "no", "off")


def _mapping(nbytes: int, huge: bool) -> tuple[mmap.mmap, int]:
    """A new anonymous mapping holding ``nbytes`` from the returned offset (2 MiB-aligned and
    advised for huge pages when ``huge``)."""
    pad = _HUGE if huge else 0
    m = mmap.mmap(-1, nbytes + pad, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = (-np.frombuffer(m, np.uint8, count=1).ctypes.data) % _HUGE if huge else 0
    if huge:
        try:
            m.madvise(mmap.MADV_HUGEPAGE, start, nbytes)
        except OSError:  # THP "never", or a kernel without it: ordinary pages, the same bytes
            pass
    return m, start


def fresh(nbytes: int, huge: bool | None = None) -> np.ndarray:
    """A new writable uint8 array of ``nbytes`` (contents undefined until written); 64-byte
    aligned where it is mapped or carved (below that, numpy's alignment).

    With huge pages wanted (``KILN_HUGE_PAGES``, default on) a buffer of 4 MiB or more lies
    in its own anonymous mapping, 2 MiB-aligned, with ``madvise(MADV_HUGEPAGE)``; one of 64 KiB
    to 4 MiB is carved from a shared slab mapped the same way (the slab is freed when every
    array carved from it is gone; the one being carved is held until it is full, so at most
    32 MiB outlive their arrays). Without huge pages: a mapping from 4 MiB (page-aligned),
    numpy's allocator below. ``huge`` overrides ``KILN_HUGE_PAGES`` for this buffer."""
    nbytes = int(nbytes)
    if not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(nbytes, np.uint8)
    huge = (huge_pages_wanted() if huge is None else huge) and hasattr(mmap, "MADV_HUGEPAGE")
    # Each array is made straight on the mapping (its base the mmap, not another array), so a
    # view of it has the array itself as base and CPython's count of it sees every view
    # (OutputRecycler relies on that).
    if nbytes >= _MAPPED_FROM:
        m, start = _mapping(nbytes, huge)
        return np.frombuffer(m, np.uint8, count=nbytes, offset=start)
    if not huge or nbytes < _CARVED_FROM:
        return np.empty(nbytes, np.uint8)
    with _slab_lock:
        m, at, end = _slab
        if m is None or at + nbytes > end:
            m, at = _mapping(_SLAB, True)
            end = at + _SLAB
        _slab[:] = m, at + nbytes + (-nbytes % 64), end
        return np.frombuffer(m, np.uint8, count=nbytes, offset=at)


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
        raw = fresh(nbytes, huge=False)  # outputs keep the page size they had (see above)
        if len(held) < self.keep:
            held.append(raw)
        return raw.view(dtype).reshape(shape)
