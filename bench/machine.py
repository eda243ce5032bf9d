"""What machine this is, and its measured compute and memory ceilings (for the roofline floor)."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import threading
import time
from typing import Optional

import numpy as np


def _lscpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in out.splitlines():
        k, _, v = line.partition(":")
        info[k.strip()] = v.strip()
    return info


def _proc_cpuinfo(key: str) -> Optional[str]:
    """The first value of ``key`` in /proc/cpuinfo (lscpu leaves out the current clock on some VMs)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip() == key:
                    return v.strip()
    except OSError:
        pass
    return None


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _version(mod: str):
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


def cpu() -> dict:
    """The CPU as lscpu describes it: model, family, MHz (None where lscpu does not say), flags, the
    whole lscpu table."""
    table = _lscpu()
    mhz = table.get("CPU MHz") or _proc_cpuinfo("cpu MHz") or table.get("CPU max MHz")
    family = table.get("CPU family")
    return {"model": table.get("Model name", platform.processor()),
            "family": int(family) if family and family.isdigit() else None,
            "mhz": float(mhz) if mhz else None, "flags": table.get("Flags", "").split(), "lscpu": table}


def describe(threads: int) -> dict:
    import kiln
    c = cpu()
    table, flags = c["lscpu"], c["flags"]
    info = {
        "cpu": c["model"],
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads_per_core": table.get("Thread(s) per core"),
        "hypervisor": table.get("Hypervisor vendor"),
        "l2": table.get("L2 cache"), "l3": table.get("L3 cache"),
        "simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "memory_bytes": _mem_total(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "threads": threads,
        "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": {"kiln": kiln.__version__, "numpy": np.__version__, "torch": _version("torch"),
                     "transformers": _version("transformers"), "onnxruntime": _version("onnxruntime"),
                     "onnx": _version("onnx"), "onnxscript": _version("onnxscript")},
        "env": {k: os.environ.get(k) for k in ("KILN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")},
    }
    try:
        from kiln.backends import clib
        info["kiln_build"] = clib.build_info()
        info["kiln_blas_core"] = _kiln_blas_core()
    except Exception as e:  # noqa: BLE001
        info["kiln_build"] = f"unavailable: {e}"
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        info["torch_config"] = " ".join(l.strip() for l in torch.__config__.show().splitlines()
                                        if "CPU capability" in l or "BLAS_INFO" in l or "Intel(R) MKL" in l)[:300]
    except Exception:  # noqa: BLE001
        pass
    return info


def _kiln_blas_core() -> str:
    from kiln.backends import clib
    blas = clib._state.get("blas")  # noqa: SLF001 - read-only peek for the report
    return clib._corename(blas) if blas is not None else ""  # noqa: SLF001


def time_samples(fn, reps: int, min_sample: float = 0.05, warmup_s: float = 0.0) -> tuple[list[float], int]:
    """Seconds per call of ``fn``: ``reps`` samples, each averaging enough calls (returned: how
    many) to last >= ``min_sample`` s, after a warm-up of >= 2 calls and >= ``warmup_s`` s."""
    t0 = time.perf_counter()
    n = 0
    while n < 2 or time.perf_counter() - t0 < warmup_s:
        fn()
        n += 1
    inner = max(1, int(min_sample / max((time.perf_counter() - t0) / n, 1e-9)))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return samples, inner


def _median_time(fn, reps: int, min_sample: float = 0.05) -> float:
    return statistics.median(time_samples(fn, reps, min_sample)[0])


def sgemm_peak(n: int = 2048, reps: int = 7) -> dict:
    """GFLOP/s of one n^3 sgemm, measured in this run: Kiln's own packed GEMM ("kiln_packed":
    kiln_gemm_packed, the weight packed beforehand as the pack-weights stage does) and the best
    BLAS ("blas": Kiln's matmul op on a plain weight, i.e. the BLAS Kiln loads, split over its
    threads, NN and NT layouts). ``gflops``, the floor's compute ceiling, is the higher of the
    two; ``source`` says which."""
    from kiln.backends import clib
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    res = {}
    for label, tb in (("NN", False), ("NT", True)):
        t = _median_time(lambda: clib.run_op("matmul", [a, b], {"transpose_b": tb}, c), reps)
        res[label] = 2.0 * n ** 3 / t / 1e9
    res["blas"] = max(res["NN"], res["NT"])
    try:
        from .gemm import engine
        lib, _ = engine()
        packed = np.empty(lib.kiln_gemm_packed_bytes(n, n) // 4, np.float32)
        if lib.kiln_gemm_pack_b(n, n, b.ctypes.data, n, 1, packed.ctypes.data) != 0:
            raise RuntimeError("kiln_gemm_pack_b refused the weight")
        t = _median_time(lambda: lib.kiln_gemm_packed(n, n, n, a.ctypes.data, n, packed.ctypes.data, c.ctypes.data, n,
                                                      1.0, None, 0.0, 0, None, 0), reps)
        res["kiln_packed"] = 2.0 * n ** 3 / t / 1e9
    except Exception as e:  # noqa: BLE001 - a library without the engine: the BLAS peak alone
        res["kiln_packed_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    res["gflops"] = max(res["blas"], res.get("kiln_packed", 0.0))
    res["source"] = "kiln_packed" if res.get("kiln_packed", 0.0) > res["blas"] else "blas"
    res["n"] = n
    return res


def read_bandwidth(nbytes: int = 1 << 30, reps: int = 7, threads: int = 2) -> dict:
    """GB/s reading a float32 buffer of ``nbytes`` (default 1 GiB: far beyond any LLC, pages
    touched before timing), every method timed ``reps`` times, each sample one whole pass:

    * ``kiln_stream``: Kiln's probe (csrc/probe.c), every pool thread streaming 1 MiB chunks
      taken dynamically, four vector accumulators: the rate the GEMV can hope for;
    * ``kiln_stream_4k``: the same over a buffer on ordinary 4 KiB pages, as packed weights
      are allocated with ``KILN_HUGE_PAGES=0`` (kiln/core/buffers.py; by default they ask for
      transparent huge pages, as numpy's buffer does);
    * ``kiln_stream_ahead<L>`` (and ``kiln_stream_4k_ahead16``): the probe with a software
      prefetch L lines ahead, as the decode GEMV prefetches its weights (csrc/gemm_tile.h);
    * ``kiln_sum``: Kiln's ``sum`` op over rows (accumulates in double: may be compute-bound);
    * ``numpy_1thread``: numpy's sum; ``numpy_<threads>threads``: numpy's sum over ``threads``
      contiguous parts on Python threads (numpy drops the GIL in reductions).

    Each method reports its best (``<method>``) and median (``<method>_median``) sample.
    ``gbps``, the floor's bandwidth, is the best sample of the best method (``source`` names
    it): the highest sustained read rate the machine gave in this run, so a shared machine's
    noise makes the bound stricter, never looser. ``gbps_median`` is that method's median."""
    n = nbytes // 4
    rows = 1024
    res = {}

    def record(name, nbytes_, fn):
        samples = [nbytes_ / t / 1e9 for t in time_samples(fn, reps, min_sample=0.0)[0]]
        res[name], res[name + "_median"] = max(samples), statistics.median(samples)

    lib = None
    try:
        import ctypes

        from kiln.backends import clib
        lib = clib.lib()
        lib.kiln_read_probe.restype = ctypes.c_double
        lib.kiln_read_probe.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        lib.kiln_read_probe_ahead.restype = ctypes.c_double
        lib.kiln_read_probe_ahead.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    except Exception as e:  # noqa: BLE001 - an older library without the probe: numpy still measures
        res["kiln_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    if lib is not None:
        from kiln.core import buffers
        small = buffers.fresh(nbytes, huge=False).view(np.float32)
        small[:] = 1.0
        record("kiln_stream_4k", small.nbytes, lambda: lib.kiln_read_probe(small.ctypes.data, small.size))
        record("kiln_stream_4k_ahead16", small.nbytes, lambda: lib.kiln_read_probe_ahead(small.ctypes.data, small.size, 16))
        del small
    a = np.ones((rows, n // rows), np.float32)
    flat = a.reshape(-1)
    if lib is not None:
        record("kiln_stream", a.nbytes, lambda: lib.kiln_read_probe(flat.ctypes.data, flat.size))
        for lines in (16, 64):
            record(f"kiln_stream_ahead{lines}", a.nbytes,
                   lambda lines=lines: lib.kiln_read_probe_ahead(flat.ctypes.data, flat.size, lines))
        out = np.empty((rows,), np.float32)
        record("kiln_sum", a.nbytes, lambda: clib.run_op("sum", [a], {"axes": (1,), "keepdim": False}, out))
    record("numpy_1thread", a.nbytes, lambda: flat.sum())
    parts = np.array_split(flat, threads)

    def threaded():
        ts = [threading.Thread(target=p.sum) for p in parts]
        for t_ in ts:
            t_.start()
        for t_ in ts:
            t_.join()
    record(f"numpy_{threads}threads", a.nbytes, threaded)
    best = max((k for k, v in res.items() if isinstance(v, float) and not k.endswith("_median")), key=res.get)
    res.update(gbps=res[best], gbps_median=res[best + "_median"], source=best, reps=reps, bytes=a.nbytes,
               statistic="best of reps, best method")
    return res


class PairedProbe:
    """Kiln's read probe (csrc/probe.c) over one buffer of ``nbytes`` (default 512 MiB, huge
    pages as packed weights get them), for timing beside a workload: ``gbps()`` is the best of
    ``passes`` whole passes, GB/s. On a shared host the bandwidth swings within minutes (28-78
    GB/s within an hour on 2026-12-02), so a bound from probes taken seconds before and after a
    round says what memory gave that round, where ``read_bandwidth``'s best of the run says what it
    gave in its best minute. Raises KilnError (via kiln.backends.clib) where the C library is missing."""

    def __init__(self, nbytes: int = 1 << 29, passes: int = 2):
        import ctypes

        from kiln.backends import clib
        from kiln.core import buffers
        self.lib = clib.lib()
        self.lib.kiln_read_probe.restype = ctypes.c_double
        self.lib.kiln_read_probe.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        self.x = np.frombuffer(buffers.fresh(nbytes), np.float32)
        self.x[:] = 1.0
        self.passes = passes

    def gbps(self) -> float:
        best = float("inf")
        for _ in range(self.passes):
            t = time.perf_counter()
            self.lib.kiln_read_probe(self.x.ctypes.data, self.x.size)
            best = min(best, time.perf_counter() - t)
        return self.x.nbytes / best / 1e9


# --------------------------------------------------------------------------- other processes' load
def _cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t[0] + t[1]


class ForeignLoad:
    """Cores kept busy by *other* processes between start() and stop(): machine busy time minus
    this process's own CPU time, per wall second. Our benchmark shares the machine; this says how much."""

    def start(self):
        self.t0, self.b0, self.o0 = time.perf_counter(), _cpu_busy_s(), _own_cpu_s()
        return self

    def stop(self) -> float:
        dt = max(time.perf_counter() - self.t0, 1e-3)
        return max(0.0, ((_cpu_busy_s() - self.b0) - (_own_cpu_s() - self.o0)) / dt)


def wait_quiet(max_wait_s: float, threshold: float = 0.3, probe_s: float = 1.0, log=None) -> float:
    """Wait (at most max_wait_s) until other processes use < threshold cores over a probe_s window.
    Returns the foreign load of the last probe."""
    t_end = time.perf_counter() + max_wait_s
    told = False
    while True:
        fl = ForeignLoad().start()
        time.sleep(probe_s)
        load = fl.stop()
        if load < threshold or time.perf_counter() >= t_end:
            return load
        if log and not told:
            log(f"   waiting for the machine to quieten (other processes use {load:.1f} cores)")
            told = True
