"""Write-once buffers (kiln/core/buffers.py): sizes, alignment and the huge-page request."""
import os

import numpy as np
import pytest

from kiln.core import buffers

MiB = 1 << 20


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


def _huge_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return int(f.read().split("AnonHugePages:")[1].split()[0])


@pytest.mark.parametrize("nbytes", [2, 4 * MiB - 1, 4 * MiB, 5 * MiB + 3, 17 * MiB])
@pytest.mark.parametrize("huge", ["1", "0"])
def test_fresh_has_the_size_asked_and_is_writable(monkeypatch, nbytes, huge):
    monkeypatch.setenv("KILN_HUGE_PAGES", huge)
    a = buffers.fresh(nbytes)
    assert a.dtype == np.uint8 and a.shape == (nbytes,) and a.flags.writeable and a.flags.c_contiguous
    a[:] = 7
    a[-1] = 9
    assert int(a[0]) == 7 and int(a[-1]) == 9
    if nbytes >= 4 * MiB:
        assert a.ctypes.data % 4096 == 0
    if nbytes >= 4 * MiB and huge == "1":
        assert a.ctypes.data % (2 * MiB) == 0  # huge pages can back the buffer from its first byte


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup") or _thp_mode() == "never",
                    reason="needs Linux with transparent huge pages enabled (always or madvise)")
def test_fresh_gets_huge_pages_unless_turned_off(monkeypatch):
    # AnonHugePages counts the whole process, so compare before and after touching one buffer.
    monkeypatch.setenv("KILN_HUGE_PAGES", "1")
    before = _huge_kb()
    a = buffers.fresh(64 * MiB)
    a[:] = 1
    gained = _huge_kb() - before
    monkeypatch.setenv("KILN_HUGE_PAGES", "0")
    before_off = _huge_kb()
    b = buffers.fresh(64 * MiB)
    b[:] = 1
    gained_off = _huge_kb() - before_off
    assert gained >= 32 * 1024, f"only {gained} kB of 64 MiB on huge pages"  # the kernel may fall short when memory is fragmented
    if _thp_mode() == "madvise":
        assert gained_off == 0
    del a, b


def test_small_buffers_carved_from_one_slab_do_not_overlap(monkeypatch):
    monkeypatch.setenv("KILN_HUGE_PAGES", "1")
    arrays = [buffers.fresh(n) for n in (64 << 10, (1 << 20) + 5, 3 * MiB, 100 << 10) * 6]
    for i, a in enumerate(arrays):
        assert a.ctypes.data % 64 == 0
        a[:] = i
    assert all(int(a.min()) == i == int(a.max()) for i, a in enumerate(arrays))  # no array wrote into another


@pytest.mark.parametrize("nbytes", [100, 64 << 10, 2 * MiB, 5 * MiB])
@pytest.mark.parametrize("huge", [True, False])
def test_a_view_of_a_fresh_buffer_holds_that_buffer(nbytes, huge):
    """A view's base is the buffer itself, so its reference count sees every view (the output
    recycler reuses a buffer only when that count says no view is left)."""
    import sys
    a = buffers.fresh(nbytes, huge=huge)
    before = sys.getrefcount(a)
    v = a.view(np.float32)[:3]
    after = sys.getrefcount(a)
    del v
    assert after == before + 1 and sys.getrefcount(a) == before
