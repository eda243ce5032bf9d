#!/usr/bin/env python3
"""Measure single-precision GEMM (sgemm) throughput of candidate BLAS libraries.

Candidates
  so32      scipy-openblas32 (pip), via ctypes: scipy_cblas_sgemm
  so32-raw  same library, but with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed
            from the environment of that measurement only
  mkl       Intel MKL from PyPI (libmkl_rt.so.*), via ctypes: cblas_sgemm
            (located with --mkl-lib PATH, $MKL_LIB, or by searching sys.prefix and
            /tmp/mklvenv; skipped with a note if not found)
  numpy     numpy.matmul on float32 (numpy's bundled OpenBLAS), reference
  numpy-raw same, with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed
  torch     torch.mm on float32, reference

Every library runs in its own subprocess (so idle BLAS worker threads of one
library never steal a core from the next, and the environment can differ per
library). Each case: warm-up, then --reps timed samples (each sample is a batch
of calls lasting >= --min-sample seconds); the median per-call time gives
GFLOP/s = 2*M*N*K / t.

Layouts (row-major C[M,N] = A[M,K] @ op(B)):
  NN  B stored [K,N]           (CblasNoTrans, CblasNoTrans)
  NT  B stored [N,K], B^T used (CblasNoTrans, CblasTrans)  -- nn.Linear weight layout

Usage:
  .venv/bin/python bench/sgemm_candidates.py                 # all candidates, full set
  .venv/bin/python bench/sgemm_candidates.py --quick         # small sizes only
  .venv/bin/python bench/sgemm_candidates.py --libs so32,mkl --mkl-lib /tmp/mklvenv/lib/libmkl_rt.so.3
  .venv/bin/python bench/sgemm_candidates.py --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a script (also its per-library workers): make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import machine  # noqa: E402

CblasRowMajor = 101
CblasNoTrans = 111
CblasTrans = 112

OPENBLAS_TUNING_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

SQUARE = [256, 512, 1024, 2048, 4096]
# (label, M, N, K)
TRANSFORMER = [
    ("1x3072x768 [sgemm call]", 1, 3072, 768),
    ("256x2304x768 (qkv)", 256, 2304, 768),
    ("256x768x3072 (mlp-down)", 256, 768, 3072),
]

ALL_LIBS = ["so32", "so32-raw", "mkl", "numpy", "numpy-raw", "torch"]


# --------------------------------------------------------------------------- cases
def build_cases(quick: bool, max_square: int):
    cases = []
    for n in SQUARE:
        if n > max_square or (quick and n > 1024):
            continue
        cases.append((f"{n}^3", n, n, n))
    cases.extend(TRANSFORMER)
    return cases


# --------------------------------------------------------------------------- locating libs
def find_mkl_lib(explicit: str | None) -> str | None:
    cands = []
    if explicit:
        cands.append(explicit)
    if os.environ.get("MKL_LIB"):
        cands.append(os.environ["MKL_LIB"])
    for prefix in (sys.prefix, "/tmp/mklvenv", os.path.expanduser("~/.local")):
        cands.extend(sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True))
    for c in cands:
        if c and os.path.isfile(c):
            return os.path.abspath(c)
    return None


def so32_path() -> str:
    import scipy_openblas32

    d = scipy_openblas32.get_lib_dir()
    name = scipy_openblas32.get_library()  # "scipy_openblas"
    return os.path.join(d, f"lib{name}.so")


def numpy_openblas_path() -> str | None:
    import numpy

    libs = glob.glob(os.path.join(os.path.dirname(numpy.__file__), os.pardir, "numpy.libs", "libscipy_openblas*.so"))
    return os.path.abspath(libs[0]) if libs else None


# --------------------------------------------------------------------------- worker side
class CtypesSgemm:
    """sgemm through a C BLAS library loaded with ctypes."""

    def __init__(self, kind: str, path: str, threads: int):
        self.kind = kind
        self.path = path
        self.info: dict = {"path": path}
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        self.lib = lib
        if kind == "openblas":
            self.fn = lib.scipy_cblas_sgemm
            lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
            lib.scipy_openblas_set_num_threads(threads)
            lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
            lib.scipy_openblas_get_config.restype = ctypes.c_char_p
            lib.scipy_openblas_get_num_threads.restype = ctypes.c_int
            self.info["corename"] = lib.scipy_openblas_get_corename().decode()
            self.info["config"] = lib.scipy_openblas_get_config().decode()
            self.info["threads"] = lib.scipy_openblas_get_num_threads()
        elif kind == "mkl":
            self.fn = lib.cblas_sgemm
            lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
            lib.MKL_Set_Num_Threads(threads)
            lib.MKL_Get_Max_Threads.restype = ctypes.c_int
            self.info["threads"] = lib.MKL_Get_Max_Threads()
            buf = ctypes.create_string_buffer(512)
            try:
                lib.MKL_Get_Version_String(buf, 512)
                self.info["version"] = buf.value.decode(errors="replace").strip()
            except AttributeError:
                pass
        else:
            raise ValueError(kind)
        i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        self.fn.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
        self.fn.restype = None
        self.gemv = lib.scipy_cblas_sgemv if kind == "openblas" else lib.cblas_sgemv
        self.gemv.argtypes = [i, i, i, i, f, p, i, p, i, f, p, i]
        self.gemv.restype = None

    def make_gemv(self, x, b, y, transb: bool):
        """y[N] = x[K] @ op(B) through cblas_sgemv (the M=1 case of make_call)."""
        gv = self.gemv
        px, pb, py = x.ctypes.data, b.ctypes.data, y.ctypes.data
        if transb:  # B stored [N,K]: y = B x
            n, k = b.shape
            return lambda: gv(CblasRowMajor, CblasNoTrans, n, k, 1.0, pb, k, px, 1, 0.0, py, 1)
        k, n = b.shape  # B stored [K,N]: y = B^T x
        return lambda: gv(CblasRowMajor, CblasTrans, k, n, 1.0, pb, n, px, 1, 0.0, py, 1)

    def make_call(self, a, b, c, transb: bool):
        m, k = a.shape
        n = c.shape[1]
        fn = self.fn
        tb = CblasTrans if transb else CblasNoTrans
        ldb = k if transb else n
        pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data

        def call():
            fn(CblasRowMajor, CblasNoTrans, tb, m, n, k, 1.0, pa, k, pb, ldb, 0.0, pc, n)

        return call


def worker_setup(lib: str, threads: int, mkl_path: str | None):
    """Returns (info, make_call, make_gemv); make_call(a, b, c, transb) -> zero-arg callable doing
    C = A @ op(B); make_gemv(x, b, y, transb) -> zero-arg callable doing y = x @ op(B) as a GEMV."""
    import numpy as np

    if lib in ("so32", "so32-raw"):
        blas = CtypesSgemm("openblas", so32_path(), threads)
        return blas.info, blas.make_call, blas.make_gemv
    if lib == "mkl":
        if not mkl_path:
            raise RuntimeError("MKL library not found")
        blas = CtypesSgemm("mkl", mkl_path, threads)
        return blas.info, blas.make_call, blas.make_gemv
    if lib in ("numpy", "numpy-raw"):
        info = {"numpy": np.__version__}
        p = numpy_openblas_path()
        if p:
            try:
                nl = ctypes.CDLL(p, mode=ctypes.RTLD_LOCAL)
                for suffix in ("64_", ""):
                    g = getattr(nl, f"scipy_openblas_get_corename{suffix}", None)
                    if g is not None:
                        g.restype = ctypes.c_char_p
                        info["corename"] = g().decode()
                        cfg = getattr(nl, f"scipy_openblas_get_config{suffix}")
                        cfg.restype = ctypes.c_char_p
                        info["config"] = cfg().decode()
                        st = getattr(nl, f"scipy_openblas_set_num_threads{suffix}")
                        st.argtypes = [ctypes.c_int]
                        st(threads)
                        break
            except OSError:
                pass

        def make_call(a, b, c, transb):
            bb = b.T if transb else b
            return lambda: np.matmul(a, bb, out=c)

        def make_gemv(x, b, y, transb):
            bb = b.T if transb else b
            return lambda: np.matmul(x, bb, out=y)  # 1-D @ 2-D -> numpy calls sgemv

        return info, make_call, make_gemv
    if lib == "torch":
        import torch

        torch.set_num_threads(threads)
        info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "blas": "mkl" if torch.backends.mkl.is_available() else "?"}

        def make_call(a, b, c, transb):
            ta, tb_, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
            bb = tb_.t() if transb else tb_

            def call():
                torch.mm(ta, bb, out=tc)

            return call

        def make_gemv(x, b, y, transb):
            tx, tb_, ty = torch.from_numpy(x), torch.from_numpy(b), torch.from_numpy(y)
            mat = tb_ if transb else tb_.t()  # [N,K] view

            def call():
                torch.mv(mat, tx, out=ty)

            return call

        return info, make_call, make_gemv
    raise ValueError(lib)


def record(out, args, label, m, n, k, lay, samples, inner):
    med = statistics.median(samples)
    flops = 2.0 * m * n * k
    out["results"].append({
        "case": label, "M": m, "N": n, "K": k, "layout": lay,
        "median_s": med, "min_s": min(samples), "max_s": max(samples),
        "inner": inner, "reps": len(samples),
        "gflops": flops / med / 1e9, "gflops_best": flops / min(samples) / 1e9,
    })
    print(f"  [{args.worker}] {label:>34} {lay}: {flops / med / 1e9:8.1f} GFLOP/s", file=sys.stderr, flush=True)


def run_worker(args):
    import numpy as np

    info, make_call, make_gemv = worker_setup(args.worker, args.threads, args.mkl_lib)
    info["env"] = {v: os.environ.get(v) for v in OPENBLAS_TUNING_VARS}
    rng = np.random.default_rng(0)
    out = {"lib": args.worker, "info": info, "results": [], "check": {}}

    # correctness check on a small odd-sized case, both layouts
    m, n, k = 67, 45, 129
    a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    for transb in (False, True):
        b = rng.uniform(-1, 1, (n, k) if transb else (k, n)).astype(np.float32)
        c = np.zeros((m, n), np.float32)
        make_call(a, b, c, transb)()
        ref = a.astype(np.float64) @ (b.T if transb else b).astype(np.float64)
        out["check"]["NT" if transb else "NN"] = float(np.max(np.abs(c - ref)) / np.max(np.abs(ref)))
        x = np.ascontiguousarray(a[0])
        y = np.zeros(n, np.float32)
        make_gemv(x, b, y, transb)()
        out["check"]["gemv-NT" if transb else "gemv-NN"] = float(np.max(np.abs(y - ref[0])) / np.max(np.abs(ref[0])))

    layouts = [t for t in args.layouts.split(",") if t]
    for label, m, n, k in build_cases(args.quick, args.max_square):
        a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        for lay in layouts:
            transb = lay == "NT"
            b = rng.uniform(-1, 1, (n, k) if transb else (k, n)).astype(np.float32)
            c = np.zeros((m, n), np.float32)
            call = make_call(a, b, c, transb)
            samples, inner = machine.time_samples(call, args.reps, args.min_sample, args.warmup)
            record(out, args, label, m, n, k, lay, samples, inner)
            if m == 1:  # same product through the library's GEMV entry point
                x = np.ascontiguousarray(a[0])
                y = np.zeros(n, np.float32)
                samples, inner = machine.time_samples(make_gemv(x, b, y, transb), args.reps, args.min_sample, args.warmup)
                record(out, args, f"1x{n}x{k} [sgemv call]", m, n, k, lay, samples, inner)
    print(json.dumps(out))


# --------------------------------------------------------------------------- driver side
CLOCK_C = r"""
#include <stdio.h>
#include <stdint.h>
#include <time.h>
int main(void) { /* chain of dependent 1-cycle integer adds: adds per second ~= core clock */
  uint64_t x = 0, n = 500000000ULL; struct timespec a, b; double best = 0;
  for (int r = 0; r < 3; r++) {
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (uint64_t i = 0; i < n; i++)
      __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    clock_gettime(CLOCK_MONOTONIC, &b);
    double t = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9, g = 4.0 * n / t / 1e9;
    if (g > best) best = g;
  }
  printf("%.3f\n", best);
  return (int)(x & 1);
}
"""


def measure_clock_ghz() -> float | None:
    """Estimate the running core clock with a tiny C add-chain (needs cc; x86-64 only)."""
    import shutil
    import tempfile

    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "clk.c"), os.path.join(d, "clk")
        with open(src, "w") as f:
            f.write(CLOCK_C)
        try:
            subprocess.run([cc, "-O2", "-o", exe, src], check=True, capture_output=True)
            return float(subprocess.run([exe], capture_output=True, text=True, timeout=60).stdout)
        except (subprocess.SubprocessError, ValueError, OSError):
            return None


def cpu_info(measure_clock: bool = True):
    c = machine.cpu()
    info = {"machine": platform.machine(), "nproc": os.cpu_count(), "model": c["model"], "family": c["family"],
            "avx512f": "avx512f" in c["flags"], "avx2": "avx2" in c["flags"]}
    if c["mhz"]:
        info["mhz"] = c["mhz"]
    # 2 FMA pipes x 16 fp32 lanes (512-bit) x 2 flops per FMA  (AVX2: 8 lanes)
    if info.get("mhz"):
        info["peak_avx512_core_gflops_reported_clock"] = 2 * 16 * 2 * info["mhz"] / 1000.0
    if measure_clock:
        ghz = measure_clock_ghz()
        if ghz:
            info["measured_ghz"] = ghz
            info["peak_avx512_core_gflops_measured_clock"] = 2 * 16 * 2 * ghz
            info["peak_avx2_core_gflops_measured_clock"] = 2 * 8 * 2 * ghz
    return info


def run_lib(lib, args, mkl_path):
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["MKL_NUM_THREADS"] = str(args.threads)
    if lib.endswith("-raw"):
        for v in OPENBLAS_TUNING_VARS:
            env.pop(v, None)
    if lib == "mkl" and mkl_path:
        d = os.path.dirname(mkl_path)
        env["LD_LIBRARY_PATH"] = d + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--threads", str(args.threads),
           "--reps", str(args.reps), "--min-sample", str(args.min_sample), "--warmup", str(args.warmup),
           "--layouts", args.layouts, "--max-square", str(args.max_square)]
    if args.quick:
        cmd.append("--quick")
    if mkl_path:
        cmd += ["--mkl-lib", mkl_path]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        return {"lib": lib, "error": f"worker exited {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def markdown(cpu, runs, args):
    ok = [r for r in runs if "results" in r]
    lines = []
    envs = {v: os.environ.get(v) for v in OPENBLAS_TUNING_VARS}
    lines.append(f"CPU: {cpu.get('model')} (family {cpu.get('family')}), {cpu.get('nproc')} cores, "
                 f"{cpu.get('mhz')} MHz reported; threads={args.threads}; median of {args.reps} samples")
    nc = args.threads
    if "peak_avx512_core_gflops_reported_clock" in cpu:
        p = cpu["peak_avx512_core_gflops_reported_clock"]
        lines.append(f"Peak @ reported {cpu['mhz'] / 1000:.2f} GHz: AVX-512 {p:.0f} GFLOP/s/core ({nc * p:.0f} for {nc} threads)")
    if "measured_ghz" in cpu:
        p, p2 = cpu["peak_avx512_core_gflops_measured_clock"], cpu["peak_avx2_core_gflops_measured_clock"]
        lines.append(f"Peak @ measured {cpu['measured_ghz']:.2f} GHz (add-chain): AVX-512 {p:.0f} GFLOP/s/core "
                     f"({nc * p:.0f} for {nc}); AVX2 {p2:.0f}/core ({nc * p2:.0f} for {nc})")
    lines.append(f"Env: " + ", ".join(f"{k}={v}" for k, v in envs.items()) + " (`-raw` = both unset)")
    lines.append("")
    for r in runs:
        i = r.get("info", {})
        desc = ", ".join(f"{k}={v}" for k, v in i.items() if k in ("corename", "threads", "version", "torch", "numpy"))
        if "error" in r:
            desc = r["error"]
        chk = r.get("check")
        if chk:
            desc += "; max rel.err vs float64 " + " ".join(f"{k}={v:.1e}" for k, v in chk.items())
        lines.append(f"- `{r['lib']}`: {desc}")
    lines.append("")
    if not ok:
        lines.append("(no library produced results)")
        return "\n".join(lines) + "\n"
    libs = [r["lib"] for r in ok]
    lines.append("| case | layout | " + " | ".join(libs) + " |")
    lines.append("|---|---|" + "---:|" * len(libs))
    keys = [(x["case"], x["layout"]) for x in ok[0]["results"]] if ok else []
    for case, lay in keys:
        row = []
        vals = {}
        for r in ok:
            for x in r["results"]:
                if x["case"] == case and x["layout"] == lay:
                    vals[r["lib"]] = x["gflops"]
        best = max(vals.values()) if vals else None
        for lib in libs:
            v = vals.get(lib)
            s = "-" if v is None else f"{v:.1f}"
            if v is not None and v == best:
                s = f"**{s}**"
            row.append(s)
        lines.append(f"| {case} | {lay} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--libs", default=",".join(ALL_LIBS), help=f"comma list from {ALL_LIBS}")
    ap.add_argument("--mkl-lib", default=None, help="path to libmkl_rt.so.* (default: search)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7, help="timed samples per case (median reported)")
    ap.add_argument("--min-sample", type=float, default=0.05, help="min seconds per timed sample")
    ap.add_argument("--warmup", type=float, default=0.2, help="min warm-up seconds per case")
    ap.add_argument("--layouts", default="NN,NT")
    ap.add_argument("--max-square", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="square sizes <= 1024 only")
    ap.add_argument("--json", default=None, help="write raw results here")
    ap.add_argument("--markdown", default=None, help="write the Markdown table here")
    ap.add_argument("--no-clock", action="store_true", help="skip the C add-chain clock estimate")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        run_worker(args)
        return

    cpu = cpu_info(not args.no_clock)
    mkl_path = find_mkl_lib(args.mkl_lib)
    runs = []
    t0 = time.time()
    for lib in [x for x in args.libs.split(",") if x]:
        if lib == "mkl" and not mkl_path:
            print("MKL not found (pass --mkl-lib PATH); skipping", file=sys.stderr)
            runs.append({"lib": "mkl", "error": "skipped: libmkl_rt not found"})
            continue
        print(f"== {lib}", file=sys.stderr, flush=True)
        runs.append(run_lib(lib, args, mkl_path))
    md = markdown(cpu, runs, args)
    print(md)
    print(f"(total {time.time() - t0:.0f} s)", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu, "env": {v: os.environ.get(v) for v in OPENBLAS_TUNING_VARS},
                       "args": vars(args), "runs": runs}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
