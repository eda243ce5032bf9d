"""Indexing a runtime tensor with constant indices is a gather; what cannot run is refused at compile."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kiln  # noqa: E402
from kiln.errors import UnsupportedOpError  # noqa: E402


def _check(fn, x, executor="compiled"):
    class M(torch.nn.Module):
        def forward(self, x):
            return fn(x)
    from kiln.backends import clib
    session = kiln.compile(M(), (torch.from_numpy(x),), executor=executor if clib.available() else "reference")
    assert not any(n.op == "index" for n in session.graph.nodes)
    out = session.run({session.input_names[0]: x})[0]
    np.testing.assert_allclose(out, fn(torch.from_numpy(x)).numpy(), rtol=1e-6)


def test_constant_list_index_is_a_gather():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    _check(lambda t: t[:, [2, 0, 1]] * 2, x)
    _check(lambda t: t[:, [-1, 0]] + 1, x)                       # negative indices count from the end
    _check(lambda t: t[[1, 0], [2, 0]] * 3, x)                   # two adjacent index tensors
    _check(lambda t: t[:, torch.tensor([[0, 1], [2, 2]])] - 1, x)  # a 2-D index


def test_what_cannot_run_is_refused_at_compile_time():
    class M(torch.nn.Module):
        def forward(self, x):
            return x[[0, 1], :, [1, 2]] * 2   # indexed axes not adjacent: no lowering
    x = torch.randn(2, 3, 4)
    with pytest.raises(UnsupportedOpError, match=r"op 'index'.*\n  at .*test_index_lowering.py"):
        kiln.compile(M(), (x,))
