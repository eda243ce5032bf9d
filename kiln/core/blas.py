"""numpy's own BLAS, held to one thread where Kiln evaluates graphs with numpy.

The numpy reference (constant folding, the KV-cache self-check at compile time, the reference
executor) multiplies small operands: a few rows against a weight. numpy's bundled OpenBLAS
starts one spinning thread per core for each such product, and on a machine doing other work
those threads wait for each other: measured on this 2-core machine under load, a 7×576 by
576×1536 float64 product took 24 ms on the default threads and 0.9 ms on one, which made the
self-check of the default model 29 s of CPU. threadpoolctl limits the thread pools of the
native libraries loaded in the process for the duration of a block and restores them after.
"""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with every loaded BLAS limited to one thread (restored on exit)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield
