"""Compile every kernel variant the launchers use for a GPU target, without a GPU.

Triton's interpreter is more lenient than its compiler (it runs kernels as numpy), so the
interpreter tests alone cannot show that the kernels compile. ``compile_all`` lowers each
kernel to a cubin for a CUDA target through ``triton.compile`` (ptxas ships with Triton; no
driver or device needed). Must run in a process where the kernels are *not* interpreted:

    python -m kiln.backends.triton.aot [--arch 90]
"""
from __future__ import annotations

import sys
import time

P32, P64, PB, I32, I64, F32, C = "*fp32", "*i64", "*i1", "i32", "i64", "fp32", "constexpr"


def variants():
    """(name, kernel, signature, constexprs) for the variants the launchers produce."""
    from . import attention, elementwise, fused, matmul, movement, norm, reduce
    out = []

    def add(name, fn, sig, const):
        sig = dict(sig)
        for k in const:
            sig[k] = C
        out.append((name, fn, sig, const))

    for op in (0, 2, 3, 5, 7, 10, 11, 12, 13, 15):
        add(f"unary{op}", elementwise._unary, {"x": P32, "y": P32, "n": I32}, {"OP": op, "BLOCK": 1024})
    nary = {"a": P32, "b": P32, "c": P32, "y": P32, "meta": P64, "n": I32}
    for op in range(7):
        add(f"binary{op}", elementwise._nary, nary, {"OP": op, "RANK": 3, "IS_FLOAT": True, "BLOCK": 1024})
    add("binary-int-div", elementwise._nary, dict(nary, a=P64, b=P64, c=P64, y=P64),
        {"OP": 3, "RANK": 2, "IS_FLOAT": False, "BLOCK": 1024})
    add("where", elementwise._nary, dict(nary, a=PB), {"OP": 7, "RANK": 2, "IS_FLOAT": True, "BLOCK": 1024})
    add("cast-f-b", elementwise._cast, {"x": P32, "y": PB, "n": I32}, {"BLOCK": 1024})
    add("cast-f-i", elementwise._cast, {"x": P32, "y": P64, "n": I32}, {"BLOCK": 1024})
    red = {"x": P32, "y": P32, "meta": P64, "n_red": I32, "scale": F32}
    for op in range(3):
        add(f"reduce{op}", reduce._reduce, red, {"OP": op, "KR": 2, "RR": 1, "IS_FLOAT": True, "BLOCK": 256})
    add("reduce-max-int", reduce._reduce, dict(red, x=P64, y=P64), {"OP": 2, "KR": 1, "RR": 1, "IS_FLOAT": False,
                                                                    "BLOCK": 64})
    for log in (False, True):
        add(f"softmax-log{log}", reduce._softmax, {"x": P32, "y": P32, "n": I32, "inner": I32},
            {"LOG": log, "BLOCK": 1024})
    for rms, w, b in ((False, True, True), (True, True, False), (False, False, False)):
        add(f"norm-rms{rms}-w{w}-b{b}", norm._norm, {"x": P32, "w": P32, "b": P32, "y": P32, "n": I32, "eps": F32},
            {"RMS": rms, "HAS_W": w, "HAS_B": b, "BLOCK": 1024})
    for packed in (False, True):
        add(f"gated-packed{packed}", fused._gated, {"g": P32, "u": P32, "y": P32, "n": I32, "half": I32},
            {"PACKED": packed, "ACT": 4, "BLOCK": 1024})
    add("rope", fused._rope, {"x": P32, "cos": P32, "sin": P32, "y": P32, "S": I32, "D": I32}, {"BLOCK_D": 128})
    mm = {"a": P32, "b": P32, "bias": P32, "c": P32, "meta": P64, "M": I32, "N": I32, "K": I32, "s_am": I32,
          "s_ak": I32, "s_bk": I32, "s_bn": I32, "s_cm": I32, "s_cn": I32, "alpha": F32, "beta": F32}
    for bias, act in ((False, 0), (True, 3), (True, 4)):
        add(f"matmul-bias{bias}-act{act}", matmul._matmul, mm, {"BATCH_RANK": 1, "HAS_BIAS": bias, "ACT": act,
                                                                "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32})
    att = {"q": P32, "k": P32, "v": P32, "mask": P32, "o": P32, "pos_ptr": P64, "flag": "*i32", "code": I32,
           "Sq": I32, "Sk": I32, "Hq": I32, "group": I32, "D": I32, "DV": I32, "scale": F32,
           "s_mb": I32, "s_mh": I32, "s_mq": I32, "s_mk": I32}
    for causal, mask, mbool, pos in ((True, False, False, False), (False, True, True, False),
                                     (False, True, False, False), (True, False, False, True)):
        add(f"attention-c{causal}-m{mask}{mbool}-pos{pos}", attention._attn, dict(att, mask=PB if mbool else P32),
            {"CAUSAL": causal, "HAS_MASK": mask, "MASK_BOOL": mbool, "HAS_POS": pos,
             "BLOCK_M": 32 if pos else 64, "BLOCK_N": 32 if pos else 64,          # wide heads take 32x32 tiles
             "BLOCK_D": 128 if pos else 64, "BLOCK_DV": 128 if pos else 64})
    add("strided_copy", movement._strided_copy, {"x": P32, "y": P32, "meta": P64, "n": I32, "x_base": I32,
                                                 "y_base": I32}, {"RANK": 3, "BLOCK": 1024})
    add("take", movement._take, {"x": P32, "idx": P64, "y": P32, "n_idx": I32, "N": I32, "inner": I32,
                                 "flag": "*i32", "code": I32}, {"BLOCK": 1024})
    add("gather", movement._gather, {"x": P32, "idx": P64, "y": P32, "meta": P64, "n": I32, "N": I32,
                                     "flag": "*i32", "code": I32}, {"AXIS": 1, "RANK": 3, "BLOCK": 1024})
    add("cache_write", movement._cache_write, {"new": P32, "cache": P32, "pos_ptr": P64, "n": I32, "S": I32,
                                               "L": I32, "D": I32, "flag": "*i32", "code": I32}, {"BLOCK": 1024})
    return out


def compile_all(arch: int = 90, only: str = "") -> tuple[int, list[tuple[str, str]]]:
    """Compile every variant (whose name contains `only`) for sm_<arch>: (how many were tried,
    [(name, error)] for the ones that failed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import runtime
    if runtime.INTERPRETED:
        raise runtime.BackendError("compile_all needs compiled-mode kernels: unset TRITON_INTERPRET")
    target = GPUTarget("cuda", arch, 32)
    failures = []
    tried = 0
    for name, fn, sig, const in variants():
        if only and only not in name:
            continue
        tried += 1
        try:
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=target)
        except Exception as e:  # noqa: BLE001 - collected and reported by name
            failures.append((name, f"{type(e).__name__}: {str(e)[:2000]}"))
    return tried, failures


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="compile every Triton kernel variant for a CUDA target")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--only", default="")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tried, failures = compile_all(args.arch, args.only)
    for name, err in failures:
        print(f"FAILED {name}: {err}\n")
    print(f"{tried - len(failures)} compiled, {len(failures)} failed, {time.perf_counter() - t0:.1f} s")
    return 0 if tried and not failures else 1   # nothing matching --only is a failure too


if __name__ == "__main__":
    sys.exit(main())
