"""Kernels on Kiln's thread pool: more threads than cores (workers the OS must deschedule)
give bit-identical results to one thread.

Every kernel except the BLAS-split GEMM (matmul with more rows than the skinny kernel
takes) computes each output element by the same operations whichever thread runs it
(csrc/par.h), so the comparison is exact; blocked attention calls sgemm once per block,
whatever the thread count. The split GEMM is held to the reference tolerance only: a BLAS
may pick another micro-kernel for a narrower share of N (OpenBLAS happens not to).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from kiln.backends import clib
from kiln.backends.c.kernels import SKINNY_MAX_M

from .test_kernels import CASES, _LOAD_ERROR, _run

pytestmark = pytest.mark.skipif(_LOAD_ERROR is not None, reason="C kernels not loadable")

# a busy machine in miniature: several threads per core, every one runnable
MANY = 4 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)) + 1


def _blas_backed(case) -> bool:
    a = case.inputs[0]
    return case.op == "matmul" and a.ndim >= 2 and a.shape[-2] > SKINNY_MAX_M


@pytest.fixture
def threads():
    before = clib.lib().kiln_get_num_threads()
    yield
    clib.set_num_threads(before)


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_many_threads_match_one_thread(case, threads):
    clib.set_num_threads(1)
    one, ref = _run(case)
    clib.set_num_threads(MANY)
    assert clib.lib().kiln_get_num_threads() == MANY
    many, _ = _run(case)
    if _blas_backed(case):
        np.testing.assert_allclose(many, ref, rtol=case.rtol, atol=case.atol, equal_nan=True)
    else:
        assert _bits(many) == _bits(one), f"{case.id}: {MANY} threads differ from 1"
