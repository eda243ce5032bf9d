"""Every kernel variant compiles to a cubin for sm_90 and sm_80 (no GPU needed: triton.compile
with a CUDA target). The interpreter runs kernels as numpy and accepts code the compiler
rejects, so this is the check that the GPU path builds. Slow (minutes): `make test-slow`."""
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80])
def test_all_kernels_compile_for_cuda(arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-m", "kiln.backends.triton.aot", "--arch", str(arch)], env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert " 0 failed" in r.stdout
