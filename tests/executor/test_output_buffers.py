"""Large run outputs: a buffer is reused only once the caller holds no view of it."""
import resource

import numpy as np
import pytest
import torch

import kiln
from kiln.core.buffers import OutputRecycler

SHAPE = (512, 1024)  # 2 MiB of float32: above the recycler's 1 MiB threshold


def test_a_dropped_output_is_reused():
    r = OutputRecycler()
    a = r.array(0, SHAPE, np.float32)
    p = a.ctypes.data
    del a
    b = r.array(0, SHAPE, np.float32)
    assert b.ctypes.data == p and b.shape == SHAPE and b.dtype == np.float32 and b.flags.c_contiguous


@pytest.mark.parametrize("keep_alive", [
    lambda a: a,                      # the array itself
    lambda a: a[3, 5:9],              # a slice
    lambda a: a.reshape(-1)[::7],     # a view of a view
    lambda a: memoryview(a),          # the buffer protocol
    lambda a: torch.from_numpy(a),    # a tensor sharing the memory
])
def test_an_output_still_seen_is_not_reused(keep_alive):
    r = OutputRecycler()
    a = r.array(0, SHAPE, np.float32)
    a[:] = 7.0
    held = keep_alive(a)
    p = a.ctypes.data
    del a
    for _ in range(3):  # more requests than the recycler keeps
        b = r.array(0, SHAPE, np.float32)
        assert b.ctypes.data != p
        b[:] = -1.0
    assert np.all(np.asarray(held) == 7.0)


def test_small_outputs_and_other_sizes_get_their_own_memory():
    r = OutputRecycler()
    small = r.array(0, (4, 4), np.float32)
    assert r._held == {}
    a = r.array(1, SHAPE, np.float32)
    p = a.ctypes.data
    del a, small
    b = r.array(1, (256, 1024), np.float32)  # same key, another size: not the 2 MiB buffer
    assert b.ctypes.data != p and b.nbytes == 256 * 1024 * 4


class Wide(torch.nn.Module):
    def forward(self, x):
        return (x[:, :, None] * torch.arange(4096, dtype=torch.float32)).reshape(x.shape[0], -1)


@pytest.mark.parametrize("executor", ["compiled", "interpreted"])
def test_a_session_reuses_its_large_output_without_page_faults(executor):
    x = torch.randn(64, 8)
    s = kiln.compile(Wide(), (x,), executor=executor)
    want = Wide()(x).numpy()
    first = s.run({s.input_names[0]: x.numpy()})[0]
    second = s.run({s.input_names[0]: (3 * x).numpy()})[0]  # while the first is held
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(second, Wide()(3 * x).numpy())
    kept = first.copy()
    del first, second
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    again = s.run({s.input_names[0]: (2 * x).numpy()})[0]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    np.testing.assert_array_equal(again, Wide()(2 * x).numpy())
    np.testing.assert_array_equal(kept, want)  # the copy taken before is untouched
    assert faults < 64, f"{faults} page faults: the 8 MiB output was not reused"
