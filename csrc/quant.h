/* Quantized weights: the GGUF block layouts, Kiln's int8 per-row layout, and the
 * quantized matmul / embedding-gather kernels.
 *
 * Block layouts are ggml's (ggml-common.h; QK_K = 256) so GGUF tensor bytes are used
 * as they are in the file. kiln/core/storage.py holds the same table in numpy; a test
 * compares the two through kiln_qrow_bytes.
 *
 * Every format unpacks to one common form, per row: q (uint8, one per element) and,
 * per 16 elements, D and M (fp32) with value = D * q + M. Q8_0 stores q + 128 and
 * Q4_0 / Q5_0 / Q6_K their unsigned codes, the bias going into M, so the int8 path always
 * multiplies unsigned weights by signed activations (what vpdpbusd takes).
 */
#ifndef KILN_QUANT_H
#define KILN_QUANT_H

#include <stdint.h>

#define KILN_QK 32      /* legacy block (Q8_0, Q4_0, Q4_1) and int8 group size */
#define KILN_QK_K 256   /* K-quant super-block */

typedef uint16_t kiln_half; /* IEEE fp16 bits */

typedef struct { kiln_half d; int8_t qs[KILN_QK]; } kiln_block_q8_0;
typedef struct { kiln_half d; uint8_t qs[KILN_QK / 2]; } kiln_block_q4_0;
typedef struct { kiln_half d, m; uint8_t qs[KILN_QK / 2]; } kiln_block_q4_1;
/* Q5_0/Q5_1: the fifth bit of element i is bit i of the little-endian 32-bit qh; the low
 * four bits are nibbles as in Q4_0 (low nibbles elements 0-15, high 16-31). */
typedef struct { kiln_half d; uint8_t qh[4]; uint8_t qs[KILN_QK / 2]; } kiln_block_q5_0;
typedef struct { kiln_half d, m; uint8_t qh[4]; uint8_t qs[KILN_QK / 2]; } kiln_block_q5_1;
/* Q4_K/Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes. */
typedef struct { kiln_half d, dmin; uint8_t scales[12]; uint8_t qs[KILN_QK_K / 2]; } kiln_block_q4_K;
typedef struct { kiln_half d, dmin; uint8_t scales[12]; uint8_t qh[KILN_QK_K / 8]; uint8_t qs[KILN_QK_K / 2]; } kiln_block_q5_K;
/* Q6_K: 16 sub-blocks of 16 with int8 scales; 4 low bits in ql, 2 high bits in qh. */
typedef struct { uint8_t ql[KILN_QK_K / 2]; uint8_t qh[KILN_QK_K / 4]; int8_t scales[KILN_QK_K / 16]; kiln_half d; } kiln_block_q6_K;

_Static_assert(sizeof(kiln_block_q8_0) == 34, "block_q8_0 is 34 bytes");
_Static_assert(sizeof(kiln_block_q4_0) == 18, "block_q4_0 is 18 bytes");
_Static_assert(sizeof(kiln_block_q4_1) == 20, "block_q4_1 is 20 bytes");
_Static_assert(sizeof(kiln_block_q5_0) == 22, "block_q5_0 is 22 bytes");
_Static_assert(sizeof(kiln_block_q5_1) == 24, "block_q5_1 is 24 bytes");
_Static_assert(sizeof(kiln_block_q4_K) == 144, "block_q4_K is 144 bytes");
_Static_assert(sizeof(kiln_block_q5_K) == 176, "block_q5_K is 176 bytes");
_Static_assert(sizeof(kiln_block_q6_K) == 210, "block_q6_K is 210 bytes");

/* Format ids (stable: tests and the params structs use them; new ones go at the end).
 * I8_ROW: each row is its fp32 scale then K int8 values. */
enum { KILN_Q8_0 = 0, KILN_Q4_0, KILN_Q4_1, KILN_Q4_K, KILN_Q5_K, KILN_Q6_K, KILN_I8_ROW, KILN_Q5_0, KILN_Q5_1,
       KILN_QFMT_COUNT };

/* Activation modes: EXACT keeps fp32 activations (weights dequantized on the fly);
 * INT8 quantizes each 32-activation group to int8 (scale max|a|/127) and dots integers. */
enum { KILN_QMODE_EXACT = 0, KILN_QMODE_INT8 = 1 };

/* ISA levels of the kernel table (kiln_qmm_set_isa forces one for tests). */
enum { KILN_QISA_GENERIC = 0, KILN_QISA_AVX2 = 1, KILN_QISA_AVX512 = 2 };

typedef struct {
    int block;        /* elements per block */
    int block_bytes;  /* bytes per block */
    int row_extra;    /* bytes per row besides its blocks */
} kiln_qformat;

extern const kiln_qformat kiln_qformats[KILN_QFMT_COUNT];

/* One quantized matmul: out[M, N] = A[M, K] . W[N, K]^T (+ bias[N]).
 * W rows are kiln_qrow_bytes(fmt, K) apart. scratch: kiln_qmm_scratch_bytes for the
 * same (fmt, mode, M, K, nthreads), 64-byte aligned; its first part holds the int8
 * activations (shared), then one panel per thread. */
typedef struct {
    int fmt, mode;
    int64_t M, N, K;
    const float *a; int64_t lda;
    const uint8_t *w;
    const float *bias;
    float *out; int64_t ldo;
    void *scratch;
} kiln_qmm_args;

#define KILN_QMM_NR 4   /* weight rows per panel (a chunk is a multiple of this) */
#define KILN_QMM_NR_WIDE 8  /* weight rows per GEMV tile (M = 1) where the ISA has the registers */

int64_t kiln_qrow_bytes(int fmt, int64_t K);
int64_t kiln_qmm_scratch_bytes(int fmt, int mode, int64_t M, int64_t K, int nthreads);
int kiln_qmm_check(const kiln_qmm_args *p);
void kiln_qmm_prepare(const kiln_qmm_args *p, int64_t m0, int64_t m1);
void kiln_qmm_rows(const kiln_qmm_args *p, int64_t n0, int64_t n1, int thread);
int kiln_qmm(const kiln_qmm_args *p);
int kiln_qmm_threaded(const kiln_qmm_args *p, int nthreads);
int kiln_qembed(int fmt, const uint8_t *table, int64_t n_rows, int64_t K,
                const int64_t *ids, int64_t n_ids, float *out);
int kiln_qmm_set_isa(int isa);
int kiln_qmm_get_isa(void);

/* Per-ISA kernel table (filled once at load from the CPU's features). */
typedef struct {
    void (*prepare)(const kiln_qmm_args *p, int64_t m0, int64_t m1);
    void (*rows)(const kiln_qmm_args *p, int64_t n0, int64_t n1, int thread);
    void (*dequant_row)(int fmt, const uint8_t *row, int64_t K, float *out);
} kiln_qkernels;

extern const kiln_qkernels kiln_qk_generic, kiln_qk_avx2, kiln_qk_avx512;

/* Exact mode from this many rows (prefill) runs the outer-product path (qgemm_outer.h), whose
 * outputs sum in another order than the M <= 8 paths'. 8: the serving runner batches up to
 * SKINNY_MAX_M = 8 decode rows per call and needs each row bitwise equal to its one-row
 * product (kiln/serve/runner.py), which the M <= 8 paths give. */
#define KILN_QMM_OUTER_MIN_M 9
#define KILN_QMM_OUTER_P 24     /* weight rows per dequantized panel (a chunk is a multiple of this) */
#define KILN_QMM_OUTER_KC 256   /* K block of the panel: one K-quant super-block, 24 KB of fp32 */
#define KILN_QMM_OUTER_MB 128   /* activation rows per pass over a panel (a multiple of 16) */

static inline int kiln_qmm_outer(const kiln_qmm_args *p) {
    return p->mode == KILN_QMODE_EXACT && p->M >= KILN_QMM_OUTER_MIN_M;
}
/* Its scratch: shared, the rearranged activations (rows padded to 16); per thread, the panel
 * and the parked accumulators (KILN_QMM_OUTER_P x 4 k phases x padded rows of one block).
 * All multiples of 64 bytes. */
static inline int64_t kiln_qouter_mpad(int64_t M) { return (M + 15) / 16 * 16; }
static inline int64_t kiln_qouter_shared_bytes(int64_t M, int64_t K) { return kiln_qouter_mpad(M) * K * 4; }
static inline int64_t kiln_qouter_thread_bytes(int64_t M) {
    const int64_t rows = kiln_qouter_mpad(M) < KILN_QMM_OUTER_MB ? kiln_qouter_mpad(M) : KILN_QMM_OUTER_MB;
    return (int64_t)KILN_QMM_OUTER_P * (KILN_QMM_OUTER_KC + 4 * rows) * 4;
}

/* Per-thread scratch follows the shared part, each thread's region starting a page past the
 * previous one's last page, so no 4 KiB page holds two threads' bytes. With the regions back
 * to back the exact outer-product path at 16 rows ran at 226 GFLOP/s on 2 threads, against
 * 272-286 for two single-thread calls on their own buffers, or with 8 KiB between the regions
 * (most likely the hardware prefetchers, which work within a page, pulling the neighbour's
 * lines across while it writes them). SmolLM2's Q4_0 prefill of 16-64 tokens: +13-18 %. */
static inline int64_t kiln_qpage_up(int64_t b) { return (b + 4095) / 4096 * 4096; }
static inline int64_t kiln_qthread_offset(int64_t shared, int64_t per_thread, int64_t thread) {
    return kiln_qpage_up(shared) + 4096 + thread * (kiln_qpage_up(per_thread) + 4096);
}

void kiln_qmm_prepare_generic(const kiln_qmm_args *p, int64_t m0, int64_t m1);

/* Layout of the shared int8-activation scratch, per A row of K: K int8, then K/32 fp32
 * group scales, then K/4 fp32 lane sums (scale * sum of 4 int8). */
static inline int64_t kiln_qact_row_bytes(int64_t K) { return K + K / 32 * 4 + K / 4 * 4; }
/* Per-thread panel: KILN_QMM_NR rows of q (K bytes), D and M (K/16 floats each), and
 * their fp32 dequantization for the large-M path. */
static inline int64_t kiln_qpanel_bytes(int64_t K) { return KILN_QMM_NR * (K + K / 16 * 8 + K * 4); }

/* int8 mode from KILN_QMM_OUTER_MIN_M rows (prefill): on AVX-512 VNNI an outer-product tile
 * (qgemm_outer_i8.h) over the activations' codes rearranged per 16 rows (below); the other
 * ISAs keep the 4 x 4 tile. The scratch and the N chunks are the same on every ISA. */
static inline int kiln_qmm_i8outer(const kiln_qmm_args *p) {
    return p->mode == KILN_QMODE_INT8 && p->M >= KILN_QMM_OUTER_MIN_M;
}
/* Per group of 16 A rows (rows past M zero): K/4 vectors of 16 rows x 4 codes (64 bytes),
 * then per 32 of K the 16 rows' scales, then per 16 of K the 16 rows' scale * sum of codes,
 * then the same per 32 of K. */
static inline int64_t kiln_qi8t_group_bytes(int64_t K) { return K * 16 + K / 32 * 128 + K / 16 * 64; }
static inline int64_t kiln_qi8t_offset(int64_t M, int64_t K) { return (M * kiln_qact_row_bytes(K) + 63) / 64 * 64; }
static inline int64_t kiln_qi8t_bytes(int64_t M, int64_t K) { return kiln_qouter_mpad(M) / 16 * kiln_qi8t_group_bytes(K); }
/* Per thread: KILN_QMM_OUTER_P rows of a K block's codes, D and M per 16, and the parked
 * accumulators (16 rows a vector, at most KILN_QMM_OUTER_MB rows). */
static inline int64_t kiln_qi8outer_thread_bytes(int64_t M) {
    const int64_t rows = kiln_qouter_mpad(M) < KILN_QMM_OUTER_MB ? kiln_qouter_mpad(M) : KILN_QMM_OUTER_MB;
    return (int64_t)KILN_QMM_OUTER_P * (KILN_QMM_OUTER_KC + KILN_QMM_OUTER_KC / 16 * 8 + 4 * rows);
}

#endif
