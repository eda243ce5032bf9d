import atexit
import os
import shutil
import tempfile
import warnings

import numpy as np
import pytest

os.environ.setdefault("KILN_NUM_THREADS", "2")
# load_model / kiln generate compile into the compile cache: never the user's (~/.cache/kiln) in tests.
os.environ["KILN_CACHE_DIR"] = tempfile.mkdtemp(prefix="kiln-test-cache-")
atexit.register(shutil.rmtree, os.environ["KILN_CACHE_DIR"], True)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def rel_err(a, b) -> float:
    """max |a - b| / max |b| over finite entries; inf if shapes or non-finite entries differ."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    fin = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), fin) or not np.array_equal(a[~fin], b[~fin], equal_nan=True):
        return float("inf")
    if not fin.any():
        return 0.0
    scale = max(float(np.abs(b[fin]).max()), 1e-30)
    return float(np.abs(a[fin] - b[fin]).max() / scale)


def fn_module(fn, **params):
    """A module whose forward is ``fn(module, *inputs)``, with ``params`` as parameters."""
    import torch

    class Fn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fn = fn
            for k, v in params.items():
                self.register_parameter(k, torch.nn.Parameter(v, requires_grad=False))

        def forward(self, *xs):
            return self.fn(self, *xs)

    return Fn()


def rerun_on_generic_build(test_file: str) -> None:
    """Re-run ``test_file`` (less its own generic-build test) against the portable build
    (KILN_FORCE_GENERIC=1) in a subprocess; fails with its output if any case fails."""
    import subprocess
    import sys
    env = dict(os.environ, KILN_FORCE_GENERIC="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test_file,
                        "-k", "not generic_build"], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
