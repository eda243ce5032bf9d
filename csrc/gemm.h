/* Kiln's GEMM engine: fp32 weights packed once, microkernels per ISA, threads from pool.h.
 *
 * Packed-B layout (format KILN_GEMM_FMT_F32_P16): B [K, N] is cut into ceil(N / 16)
 * panels of 16 columns; panel p holds B[k, 16p .. 16p+15] for k = 0..K-1, K-major, 64
 * bytes per k. The last panel, when N is not a multiple of 16, holds only its w = N % 16
 * columns (w floats per k, not padded), so the packed weight is exactly K * N floats:
 * the storage table (kiln/core/storage.py "f32_p16") sizes it as the plain weight.
 * Panels follow each other. A full panel is one cache line per k, so a kernel streams
 * any KC-row slice of it contiguously: the kernels block K by KC at run time, and the
 * layout does not depend on KC or on the ISA (one packed weight serves the AVX-512,
 * AVX2 and portable kernels).
 *
 * The product: C = act(alpha * A @ B + bias + beta * C), A [M, K] (row stride lda),
 * C [M, N] (row stride ldc), bias [N] or NULL, beta = 0 means C is not read. Every
 * output element is computed by the same float operations whatever M, the row block
 * and the thread split are: for each KC block (fixed by K only) one FMA chain from
 * zero in k order, then T = fma(alpha, block_sum, T) with T starting at
 * bias + beta * C. So row i of a batched product equals the product of row i alone,
 * bit for bit (within one ISA path).
 */
#ifndef KILN_GEMM_H
#define KILN_GEMM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_GEMM_NR 16          /* panel width (columns) */
#define KILN_GEMM_KC 128         /* K block of every kernel: fixes the summation order */
#define KILN_GEMM_FMT_F32_P16 1  /* the packed format above */

enum { KILN_GEMM_ISA_GENERIC = 0, KILN_GEMM_ISA_AVX2 = 1, KILN_GEMM_ISA_AVX512 = 2 };

/* Error codes (negative) of the entry points below. */
#define KILN_GEMM_ERR_ARG (-1)   /* a size < 0, a NULL operand, or a stride smaller than its row */
#define KILN_GEMM_ERR_ISA (-2)   /* ISA not supported by this CPU */

/* Bytes of the packed form of a [K, N] fp32 B (either layout): 4 * K * N. */
int64_t kiln_gemm_packed_bytes(int64_t K, int64_t N);
/* Pack B: trans = 0: B is [K, N] (row stride ldb >= N); trans = 1: B is [N, K] (ldb >= K),
 * as torch's Linear weight. dst holds kiln_gemm_packed_bytes(K, N) bytes. */
int kiln_gemm_pack_b(int64_t K, int64_t N, const float *B, int64_t ldb, int trans, float *dst);
/* The inverse, into the layout given by trans (row stride ldd): for the reference executor. */
int kiln_gemm_unpack_b(int64_t K, int64_t N, const float *packed, int trans, float *dst, int64_t ldd);
/* Column n of B (row n of the [N, K] weight) out of its packed form: K floats into dst. An
 * embedding table tied to an LM head is read this way (csrc/gather.c). */
int kiln_gemm_unpack_col(int64_t K, int64_t N, const float *packed, int64_t n, float *dst);
/* Scratch for kiln_gemm_packed, whatever the tile and thread count: from KILN_GEMM_LARGE_M_MIN
 * rows, room for all of A packed once for every chunk ((M + 16) * K floats); 0 below. Given
 * less, each chunk packs its own rows into a per-thread buffer (kiln_gemm_tls_a): the same
 * results, slower when many chunks share the rows. */
#define KILN_GEMM_LARGE_M_MIN 128
int64_t kiln_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K, int threads);
/* C = act(alpha * A @ B + bias + beta * C) with B packed; act is an enum kiln_act code.
 * Threads: the pool's (inline when called from inside a pool chunk). */
int kiln_gemm_packed(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *packed, float *C,
                     int64_t ldc, float alpha, const float *bias, float beta, int act, void *scratch,
                     int64_t scratch_bytes);
/* The kernel set in use (chosen once by CPUID; KILN_FORCE_GENERIC=1 forces the portable
 * one) and a test hook to select another the CPU supports (it also selects that set's
 * default large-M tile). */
int kiln_gemm_isa(void);
int kiln_gemm_set_isa(int isa);
/* The large-M register tiles (rows > the few-row tile). Several per ISA; the one in use is
 * chosen with the kernel set, by what the CPU is (vendor; gemm.c says why), or by
 * KILN_GEMM_TILE=<name> at load. Tiles are numbered 0..kiln_gemm_tile_count()-1;
 * kiln_gemm_tile_name(i) is "<isa>-<rows>x<columns>" (NULL out of range), kiln_gemm_tile_isa(i)
 * its kernel set. set_tile is a test and benchmark hook: KILN_GEMM_ERR_ISA unless the tile's
 * kernel set is the one in use. */
int kiln_gemm_tile_count(void);
const char *kiln_gemm_tile_name(int tile);
int kiln_gemm_tile_isa(int tile);
int kiln_gemm_tile(void);
int kiln_gemm_set_tile(int tile);
/* Per-CPU tuning choices of the block functions, chosen at load by what the CPU is (gemm.c
 * says why) as a set of flags: KILN_GEMM_WALK_NEXT, the few-row tiles of a streamed weight
 * (>= 1 MB: every layer weight, cached ones aside) walk the next B block into L2 while they compute
 * (gemm_tile.h); KILN_GEMM_PREFETCH_C, each packed large-M tile prefetches its C lines for
 * writing when it starts; KILN_GEMM_STREAM_L1, the few-row tiles prefetch a streamed weight's
 * lines into L1 (prefetcht0) rather than into L2 (prefetcht1); KILN_GEMM_FEW_TALL, products of
 * 13-16 rows run the AVX-512 set's 8 x 48 few-row tiles (two row tiles) instead of its 6 x 64
 * (three). The getter is what the block functions read; set is a test and benchmark hook
 * (KILN_GEMM_ERR_ARG for unknown flags). None changes a bit of a result. */
#define KILN_GEMM_WALK_NEXT 1
#define KILN_GEMM_PREFETCH_C 2
#define KILN_GEMM_STREAM_L1 4
#define KILN_GEMM_FEW_TALL 8
int kiln_gemm_tuning(void);
int kiln_gemm_set_tuning(int flags);
/* The same flags as a variable, for loops that test them once per weight block (the quantized
 * kernels' prefetch, csrc/qgemm.c), where a call per test would cost; written only by gemm.c. */
extern int kiln_gemm_tuning_flags;

/* C = alpha * A @ B on plain (unpacked) operands, for attention (csrc/attention.c): element
 * (i, k) of A at A[i * a_i + k * a_k] (rows or columns contiguous), B row-major [K, N] (row
 * stride ldb), C [M, N] (row stride ldc) overwritten. The same register tiles as the packed
 * product (the few-row tile of the kernel set in use), but each element is one FMA chain over
 * all of K: no KC blocking, so no batch-invariance promise. On the calling thread; the caller
 * checks the arguments. */
typedef struct {
    int64_t M, N, K, a_i, a_k, ldb, ldc;
    const float *A, *B;
    float *C;
    float alpha;
} kiln_gemm_plain_args;
void kiln_gemm_plain(const kiln_gemm_plain_args *r);

/* -- internal: what each ISA file provides ------------------------------------------ */
typedef struct {
    int64_t M, N, K, lda, ldc;
    const float *A, *B, *bias;
    float *C;
    float alpha, beta;
    int act;
    /* A packed for the large-M tile in use, or NULL (each block packs its own): per K block
     * kb (offset kb * KC * mp floats), row tile t at t * MR * kc as [kc][MR]; mp = M rounded up
     * to whole tiles, whose missing rows are zeros */
    const float *ap;
    int64_t mp;
} kiln_gemm_args;

/* Rows [m0, m1) x panels [p0, p1) of C, all of K, epilogue included. */
typedef void (*kiln_gemm_block_fn)(const kiln_gemm_args *g, int64_t m0, int64_t m1, int64_t p0, int64_t p1);
#define KILN_GEMM_BLOCK(name) void name(const kiln_gemm_args *g, int64_t m0, int64_t m1, int64_t p0, int64_t p1)
KILN_GEMM_BLOCK(kiln_gemm_block_generic);
typedef void (*kiln_gemm_plain_fn)(const kiln_gemm_plain_args *r);
void kiln_gemm_plain_generic(const kiln_gemm_plain_args *r);
KILN_GEMM_BLOCK(kiln_gemm_large_generic_4x16);
#if defined(__x86_64__) || defined(__i386__)
#define KILN_GEMM_X86 1
KILN_GEMM_BLOCK(kiln_gemm_block_avx2);
void kiln_gemm_plain_avx2(const kiln_gemm_plain_args *r);
KILN_GEMM_BLOCK(kiln_gemm_large_avx2_6x16);
KILN_GEMM_BLOCK(kiln_gemm_block_avx512);
KILN_GEMM_BLOCK(kiln_gemm_block_avx512_tall);
void kiln_gemm_plain_avx512(const kiln_gemm_plain_args *r);
KILN_GEMM_BLOCK(kiln_gemm_large_avx512_6x64);
KILN_GEMM_BLOCK(kiln_gemm_large_avx512_8x48);
KILN_GEMM_BLOCK(kiln_gemm_large_avx512_14x32);
#endif
/* The large-M kernels' per-thread packing buffers: A, KILN_GEMM_PACK_ROWS x KC floats (a
 * block function takes its rows in slices of at most that many); B, KC x 8 panels. */
#define KILN_GEMM_PACK_ROWS 336
float *kiln_gemm_tls_a(void);
float *kiln_gemm_tls_b(void);

#ifdef __cplusplus
}
#endif
#endif
