"""The C backend's kernel registrations: which ops csrc implements, their params structs
(field lists the codegen turns into ``kiln_<op>_params``), how attrs lower to those fields,
and each kernel's scratch rule (which depends on the kernel variant C will pick and on the
thread count, so it lives here, beside the C, not in the op declaration).

Every registration here must have a ``kiln_k_<op>`` in csrc; the codegen's op ids are the
sorted names registered here (``c.codegen.stale`` fails a test when csrc/generated lags)."""
from __future__ import annotations

from ... import config
from ...ops.attention import scale_of
from ...ops.fused import ACTIVATIONS
from ..kernels import HOST, PLAIN, Backend

BACKEND = Backend("c", memory=HOST, doc="the C kernels (csrc), one C call per run")

# Tile sizes that the C kernels and these scratch rules share (written into the header).
FLASH_BLOCK = 64           # keys per tile in the flash kernel; scratch is sized from it
BLOCK_ROWS = 128           # query rows per block in the blocked (sgemm) kernel
BLOCKED_MIN_SQ = 32        # fewer queries than this (decode) use the row kernels
BLOCKED_MAX_SK = 16384     # beyond this many keys a block of scores is too large: row kernels
# Few rows against a transposed B run as C^T = B @ A^T through scratch (see csrc/matmul.c):
# more rows than the skinny kernel takes, at most TRANSPOSED_MAX_M, and layer-sized N (for
# vocabulary-sized N, e.g. an LM head, the plain GEMM measured as fast and needs no scratch).
SKINNY_MAX_M = 8
TRANSPOSED_MAX_M = 128
TRANSPOSED_MAX_N = 16384
GEMM_LARGE_M_MIN = 128     # KILN_GEMM_LARGE_M_MIN (csrc/gemm.h): rows from which the packed GEMM packs A

# Ops whose kernels take no params and no scratch.
PLAIN_KERNELS = (
    "abs", "cos", "erf", "exp", "gelu", "gelu_tanh", "log", "neg", "reciprocal", "relu", "rsqrt", "sigmoid",
    "silu", "sin", "sqrt", "tanh",                                   # csrc/unary.c
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "where",  # csrc/binary.c
    "cast", "copy", "reshape", "expand", "embedding", "cache_write", "rope",
)


def attention_scratch(sq: int, sk: int, dv: int) -> int:
    """Bytes of scratch for the kernel that will run, per thread: a block of scores
    (BLOCK_ROWS x Sk) for the blocked kernel, else one row of scores (standard) or one key
    tile plus the running output row (flash), whichever is larger."""
    per_thread = max(sk, FLASH_BLOCK + dv + 2)
    if sq >= BLOCKED_MIN_SQ and sk <= BLOCKED_MAX_SK:
        per_thread = max(per_thread, min(sq, BLOCK_ROWS) * sk)
    slot = (per_thread + 1023) // 1024 * 1024 + 1024  # attn_slot_floats (csrc/attention.h): slots a page apart
    return 4 * slot * config.num_threads()


def _attention_scratch(in_shapes, out_shape, a) -> int:
    return attention_scratch(in_shapes[0][2], in_shapes[1][2], in_shapes[2][3])


def matmul_scratch(in_shapes, out_shape, attrs) -> int:
    """Bytes for C^T when the transposed path applies (mirrors the C decision; the kernel
    falls back to the plain GEMM when it is given less)."""
    b = in_shapes[1]
    if not attrs.transpose_b:
        return 0
    m, n = out_shape[-2], out_shape[-1]
    b_batch = 1
    for d in b[:-2]:
        b_batch *= d
    rows = m
    if b_batch == 1:  # a shared 2-D B: the kernel runs one GEMM over every batch row
        for d in out_shape[:-2]:
            rows *= d
    if SKINNY_MAX_M < rows <= TRANSPOSED_MAX_M and n <= TRANSPOSED_MAX_N:
        return 4 * rows * n
    return 0


def packed_matmul_scratch(in_shapes, out_shape, attrs) -> int:
    """Bytes for A packed once for all chunks of the large-M GEMM (mirrors kiln_gemm_scratch_bytes,
    csrc/gemm.c: (rows + 16) x K floats from GEMM_LARGE_M_MIN rows; the kernel packs per chunk
    when given less)."""
    rows = 1
    for d in out_shape[:-1]:
        rows *= d
    k = in_shapes[0][-1]
    return 4 * (rows + 16) * k if rows >= GEMM_LARGE_M_MIN and k > 0 else 0


def _slice_start(a, ins, out):
    return {"axis": a.axis, "step": a.step, "start": range(*slice(a.start, a.end, a.step).indices(ins[0][a.axis])).start}


def _register() -> None:
    reg = BACKEND.register
    for op in PLAIN_KERNELS:
        reg(op)
    mm = dict(params=(("transpose_b", "i64"), ("alpha", "f32"), ("beta", "f32"), ("act", "i64")),
              lower=lambda a, ins, out: {"transpose_b": int(a.transpose_b), "alpha": a.alpha, "beta": a.beta,
                                         "act": ACTIVATIONS.index(a.act)})
    reg("matmul", scratch=matmul_scratch, **mm)
    # B packed at compile time (kiln/passes/pack.py): csrc/matmul.c runs Kiln's packed GEMM
    reg("matmul", storage=(PLAIN, "f32_p16"), scratch=packed_matmul_scratch, **mm)
    reg("matmul", storage=(PLAIN, "f32_p16", PLAIN), scratch=packed_matmul_scratch, **mm)
    reg("embedding", storage=("f32_p16", PLAIN))   # a table tied to a packed LM head (csrc/gather.c)
    reg("attention", params=(("causal", "i64"), ("scale", "f32"), ("group", "i64")),
        lower=lambda a, ins, out: {"causal": int(a.causal), "scale": scale_of(a, ins[0][3]),
                                   "group": ins[0][1] // ins[1][1]},
        scratch=_attention_scratch)
    reg("cached_attention", params=(("scale", "f32"), ("group", "i64")),
        lower=lambda a, ins, out: {"scale": scale_of(a, ins[0][3]), "group": ins[0][1] // ins[1][1]},
        scratch=_attention_scratch)
    reg("slot_cache_write")   # csrc/slot_cache.c
    reg("slot_cached_attention", params=(("scale", "f32"), ("group", "i64")),
        lower=lambda a, ins, out: {"scale": scale_of(a, ins[0][3]), "group": ins[0][1] // ins[1][1]})
    reg("gated_act", params=(("act", "i64"),), lower=lambda a, i, o: {"act": ACTIVATIONS.index(a.act)})
    for op in ("sum", "mean", "max"):
        reg(op, params=(("axes_mask", "i64"),), lower=lambda a, i, o: {"axes_mask": sum(1 << ax for ax in a.axes)})
    for op in ("softmax", "log_softmax", "concat", "index_select", "gather"):
        reg(op, params=(("axis", "i64"),))
    for op in ("layer_norm", "rms_norm"):
        reg(op, params=(("eps", "f32"),))
    reg("permute", params=(("perm", "i64x8"),), lower=lambda a, i, o: {"perm": list(a.perm)})
    reg("slice", params=(("axis", "i64"), ("start", "i64"), ("step", "i64")), lower=_slice_start)
    _register_quant(reg)


def _register_quant(reg) -> None:
    """The quantized kernels (csrc/qmatmul_op.c): one entry per weight storage type the C side
    decodes, plus the plain entry the codegen reads the params struct from."""
    from ...ops.quant import C_FORMATS, _fmt_lower, _qmm_lower, _qmm_scratch
    fmt = (("fmt", "i64"),)
    qmm = dict(params=(("fmt", "i64"), ("mode", "i64"), ("act", "i64"), ("threads", "i64")), lower=_qmm_lower,
               scratch=_qmm_scratch)
    reg("dequantize", params=fmt, lower=_fmt_lower)
    reg("qmatmul", **qmm)
    reg("qembedding", params=fmt, lower=_fmt_lower)
    for st in C_FORMATS:
        reg("dequantize", storage=(st,), params=fmt, lower=_fmt_lower)
        reg("qmatmul", storage=(PLAIN, st), **qmm)
        reg("qmatmul", storage=(PLAIN, st, PLAIN), **qmm)
        reg("qembedding", storage=(st, PLAIN), params=fmt, lower=_fmt_lower)


_register()
