"""Builds Kiln's C kernels as part of `pip install` (no separate build step for users).

Two shared libraries are built from csrc/: one vectorized for this machine
(-march=native: AVX2/AVX-512 where present) and one portable, which
KILN_FORCE_GENERIC=1 selects (for testing the fallback). They are plain C
libraries loaded with ctypes, not Python extension modules.
"""
import glob
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = sorted(glob.glob("csrc/*.c") + glob.glob("csrc/generated/*.c"))
# -fopenmp-simd: `omp simd` hints only; threads are Kiln's own pool (csrc/pool.c), no OpenMP runtime.
COMMON = ["-O3", "-std=c11", "-fopenmp-simd", "-fno-math-errno", "-Wall", "-Wno-unused-function",
          "-Icsrc", "-Icsrc/generated"]


class BuildCLib(build_ext):
    # Plain shared objects: no Python symbols are needed, so skip the PyInit export check.
    def get_export_symbols(self, ext):
        return []


def lib(name, flags):
    return Extension(f"kiln.{name}", sources=SOURCES, extra_compile_args=COMMON + flags,
                     extra_link_args=["-pthread", "-lm"], depends=glob.glob("csrc/*.h") + glob.glob("csrc/generated/*.h"))


native = ["-march=native", "-mtune=native"] if os.environ.get("KILN_PORTABLE_BUILD") != "1" else []
setup(ext_modules=[lib("_kernels", native), lib("_kernels_generic", [])] if SOURCES else [],
      cmdclass={"build_ext": BuildCLib})
