/* Drivers for the quantized matmul: argument checks, scratch sizes, the ISA table chosen
 * once at load, the single-thread and threaded entry points and the embedding gather.
 *
 * The threaded driver splits N into chunks of whole KILN_QMM_NR-row panels (more chunks
 * than threads, taken dynamically; an even number of panels for the GEMV, so its 8-row
 * tiles fit; KILN_QMM_OUTER_P-row panels for the outer-product path) over Kiln's thread
 * pool (pool.h), after the activations are prepared (int8 rows, or the outer-product
 * path's rearrangement) in chunks of 16 rows.
 */
#include <stdint.h>

#include "pool.h"
#include "quant.h"

static const kiln_qkernels *qk = &kiln_qk_generic;
static int qisa = KILN_QISA_GENERIC;

static int cpu_has(int isa) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (isa == KILN_QISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (isa == KILN_QISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
#endif
    return isa == KILN_QISA_GENERIC;
}

/* Force an ISA level (tests); -1 when the CPU lacks it. Not thread-safe with running kernels. */
int kiln_qmm_set_isa(int isa) {
    if (isa < KILN_QISA_GENERIC || isa > KILN_QISA_AVX512 || !cpu_has(isa)) return -1;
    static const kiln_qkernels *const table[] = {&kiln_qk_generic, &kiln_qk_avx2, &kiln_qk_avx512};
    qk = table[isa];
    qisa = isa;
    return 0;
}

int kiln_qmm_get_isa(void) { return qisa; }

__attribute__((constructor)) static void qmm_pick_isa(void) {
    for (int isa = KILN_QISA_AVX512; isa > KILN_QISA_GENERIC; isa--)
        if (kiln_qmm_set_isa(isa) == 0) return;
}

int64_t kiln_qmm_scratch_bytes(int fmt, int mode, int64_t M, int64_t K, int nthreads) {
    if (kiln_qrow_bytes(fmt, K) < 0 || K % KILN_QK || M < 0 || nthreads < 1) return -1;
    if (mode == KILN_QMODE_EXACT && M >= KILN_QMM_OUTER_MIN_M)
        return kiln_qthread_offset(kiln_qouter_shared_bytes(M, K), kiln_qouter_thread_bytes(M), nthreads);
    int64_t act = mode == KILN_QMODE_INT8 ? kiln_qi8t_offset(M, K) : 0, panel = (kiln_qpanel_bytes(K) + 63) / 64 * 64;
    if (mode == KILN_QMODE_INT8 && M >= KILN_QMM_OUTER_MIN_M) {
        act += kiln_qi8t_bytes(M, K);
        if (kiln_qi8outer_thread_bytes(M) > panel) panel = kiln_qi8outer_thread_bytes(M);
    }
    return kiln_qthread_offset(act, panel, nthreads);
}

/* 0 when the call is well formed, else a negative code naming the first problem:
 * -1 format, -2 mode, -3 sizes (K not whole blocks / groups of 32), -4 strides, -5 null pointer, -6 scratch not 64-byte aligned. */
int kiln_qmm_check(const kiln_qmm_args *p) {
    if (!p || p->fmt < 0 || p->fmt >= KILN_QFMT_COUNT) return -1;
    if (p->mode != KILN_QMODE_EXACT && p->mode != KILN_QMODE_INT8) return -2;
    if (p->M < 0 || p->N < 0 || p->K <= 0 || p->K % KILN_QK || kiln_qrow_bytes(p->fmt, p->K) < 0) return -3;
    if (p->lda < p->K || p->ldo < p->N) return -4;
    if ((p->M && p->N) && (!p->a || !p->w || !p->out || !p->scratch)) return -5;
    if (((uintptr_t)p->scratch) % 64) return -6;
    return 0;
}

void kiln_qmm_prepare(const kiln_qmm_args *p, int64_t m0, int64_t m1) {
    if (p->mode == KILN_QMODE_INT8 || kiln_qmm_outer(p)) qk->prepare(p, m0, m1);
}

void kiln_qmm_rows(const kiln_qmm_args *p, int64_t n0, int64_t n1, int thread) { qk->rows(p, n0, n1, thread); }

int kiln_qmm(const kiln_qmm_args *p) {
    int rc = kiln_qmm_check(p);
    if (rc || !p->M || !p->N) return rc;
    kiln_qmm_prepare(p, 0, p->M);
    kiln_qmm_rows(p, 0, p->N, 0);
    return 0;
}

/* ---- the pool stand-in ---- */
typedef void (*qpool_fn)(void *ctx, int64_t chunk, int thread);

/* Kiln's pool, when its thread indices fit the nthreads panels in scratch; else inline. */
static void qpool_parallel(int64_t n_chunks, int nthreads, qpool_fn fn, void *ctx) {
    if (nthreads > 1 && n_chunks > 1 && kiln_pool_threads() <= nthreads) {
        kiln_pool_parallel(n_chunks, fn, ctx);
        return;
    }
    for (int64_t c = 0; c < n_chunks; c++) fn(ctx, c, 0);
}

typedef struct { const kiln_qmm_args *p; int64_t rows_per_chunk; } qmm_job;

static void qmm_chunk(void *ctx, int64_t c, int thread) {
    const qmm_job *j = ctx;
    int64_t n0 = c * j->rows_per_chunk, n1 = n0 + j->rows_per_chunk;
    kiln_qmm_rows(j->p, n0, n1 < j->p->N ? n1 : j->p->N, thread);
}

/* chunk c: rows [16c, 16c + 16) (whole A^T vectors of any ISA for the outer-product path) */
static void qprep_chunk(void *ctx, int64_t c, int thread) {
    (void)thread;
    const kiln_qmm_args *p = ctx;
    kiln_qmm_prepare(p, 16 * c, 16 * c + 16 < p->M ? 16 * c + 16 : p->M);
}

/* nthreads workers, each with its own panel in scratch (size it for nthreads). */
int kiln_qmm_threaded(const kiln_qmm_args *p, int nthreads) {
    int rc = kiln_qmm_check(p);
    if (rc || !p->M || !p->N) return rc;
    if (nthreads < 1) return -3;
    if (p->mode == KILN_QMODE_INT8 || kiln_qmm_outer(p))
        qpool_parallel((p->M + 15) / 16, p->M >= 8 ? nthreads : 1, qprep_chunk, (void *)p);
    /* ~4 chunks per thread, each a whole number of panels */
    const int64_t nr = kiln_qmm_outer(p) || kiln_qmm_i8outer(p) ? KILN_QMM_OUTER_P : KILN_QMM_NR;
    int64_t panels = (p->N + nr - 1) / nr, want = 4 * (int64_t)nthreads;
    int64_t per = (panels + want - 1) / want;
    if (p->M == 1 && per % 2) per++;   /* whole KILN_QMM_NR_WIDE tiles for the GEMV */
    qmm_job job = {p, per * nr};
    qpool_parallel((p->N + job.rows_per_chunk - 1) / job.rows_per_chunk, nthreads, qmm_chunk, &job);
    return 0;
}

/* out[i, :] = dequantized table row ids[i] (table [n_rows, K] in fmt). -1 bad format or K,
 * -2 an id out of [0, n_rows) (nothing written), -5 null pointer. */
int kiln_qembed(int fmt, const uint8_t *table, int64_t n_rows, int64_t K,
                const int64_t *ids, int64_t n_ids, float *out) {
    int64_t rowb = kiln_qrow_bytes(fmt, K);
    if (rowb < 0 || K % KILN_QK || n_rows < 0 || n_ids < 0) return -1;
    if (n_ids && (!table || !ids || !out)) return -5;
    for (int64_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= n_rows) return -2;
    for (int64_t i = 0; i < n_ids; i++) qk->dequant_row(fmt, table + ids[i] * rowb, K, out + i * K);
    return 0;
}
