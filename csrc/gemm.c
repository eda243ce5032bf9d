/* The packed-B GEMM: kernel-set choice (once, by CPUID), argument checks, and the split of
 * C into chunks of (rows x panels) that the pool hands out dynamically. The split changes
 * which thread computes an element, never how (gemm.h), so results do not depend on it. */
#include <stdlib.h>

#include "gemm.h"
#include "kiln_ops.h"
#include "pool.h"

#define MC_MAX 256               /* rows per chunk: an MC x KC block of A (128 KB) stays in L2, and a
                                  * weight is streamed from memory once per MC rows (prefill at 256) */
#define PANEL_ALIGN 8            /* chunks start at multiples of every kernel's panel group */
#define CHUNK_MIN_FMA (1 << 18)  /* below this a chunk costs more to hand out than to run */
#define CHUNKS_PER_THREAD 8      /* enough that a descheduled thread holds up a small part */
#define PC_MAX 32                /* panels per chunk at most: the chunk's C block (<= MC_MAX x 512
                                  * floats, 512 KB) stays in L2 across its K blocks; wider (an LM
                                  * head's N) and C would go to memory and back once per K block */

typedef struct {
    kiln_gemm_block_fn block;
    int mr;
} isa_t;

static const isa_t ISA_TABLE[] = {
    [KILN_GEMM_ISA_GENERIC] = {kiln_gemm_block_generic, 4},
#ifdef KILN_GEMM_X86
    [KILN_GEMM_ISA_AVX2] = {kiln_gemm_block_avx2, 6},
    [KILN_GEMM_ISA_AVX512] = {kiln_gemm_block_avx512, 6},
#endif
};
static int isa_now = -1;

static int supported(int isa) {
    if (isa == KILN_GEMM_ISA_GENERIC) return 1;
#ifdef KILN_GEMM_X86
    __builtin_cpu_init();
    if (isa == KILN_GEMM_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == KILN_GEMM_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma");
#endif
    return 0;
}

/* Chosen when the library loads, so no call ever races the choice. */
__attribute__((constructor)) static void choose_isa(void) {
    const char *g = getenv("KILN_FORCE_GENERIC");
    if (g && g[0] == '1') isa_now = KILN_GEMM_ISA_GENERIC;
    else if (supported(KILN_GEMM_ISA_AVX512)) isa_now = KILN_GEMM_ISA_AVX512;
    else if (supported(KILN_GEMM_ISA_AVX2)) isa_now = KILN_GEMM_ISA_AVX2;
    else isa_now = KILN_GEMM_ISA_GENERIC;
}

int kiln_gemm_isa(void) { return isa_now; }

int kiln_gemm_set_isa(int isa) {
    if (isa < 0 || isa > KILN_GEMM_ISA_AVX512 || !supported(isa)) return KILN_GEMM_ERR_ISA;
    isa_now = isa;
    return 0;
}

int64_t kiln_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K, int threads) {
    (void)M, (void)N, (void)K, (void)threads;
    return 0;
}

typedef struct {
    kiln_gemm_args g;
    kiln_gemm_block_fn block;
    int64_t mc, pc, p_chunks, P;
} job_t;

static void run_chunk(void *ctx, int64_t chunk, int thread) {
    const job_t *j = (const job_t *)ctx;
    (void)thread;
    int64_t mi = chunk / j->p_chunks, pi = chunk % j->p_chunks;
    int64_t m0 = mi * j->mc, m1 = m0 + j->mc < j->g.M ? m0 + j->mc : j->g.M;
    int64_t p0 = pi * j->pc, p1 = p0 + j->pc < j->P ? p0 + j->pc : j->P;
    j->block(&j->g, m0, m1, p0, p1);
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int kiln_gemm_packed(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *packed, float *C,
                     int64_t ldc, float alpha, const float *bias, float beta, int act, void *scratch,
                     int64_t scratch_bytes) {
    (void)scratch;
    if (M < 0 || N < 0 || K < 0 || kiln_gemm_packed_bytes(K, N) < 0 || scratch_bytes < 0) return KILN_GEMM_ERR_ARG;
    /* the last act code kiln_act_apply knows: a new one must be added here, not run as identity */
    if (act < KILN_ACT_NONE || act > KILN_ACT_SILU) return KILN_GEMM_ERR_ARG;
    if (M == 0 || N == 0) return 0;
    if (!C || ldc < N || (K > 0 && (!A || !packed || lda < K))) return KILN_GEMM_ERR_ARG;
    const isa_t *isa = &ISA_TABLE[isa_now];
    job_t j = {.g = {M, N, K, lda, ldc, A, packed, bias, C, alpha, beta, act}, .block = isa->block, .P = cdiv(N, 16)};
    /* rows: one block of up to MR rows (the GEMV / few-row path), else even chunks <= MC_MAX */
    j.mc = M <= isa->mr ? M : cdiv(cdiv(M, cdiv(M, MC_MAX)), isa->mr) * isa->mr;
    int64_t m_chunks = cdiv(M, j.mc);
    int threads = kiln_pool_in_parallel() ? 1 : kiln_pool_threads();
    int64_t p_chunks = 1;
    if (threads > 1) {
        int64_t want = cdiv(CHUNKS_PER_THREAD * threads, m_chunks);
        int64_t most = cdiv(j.P, PANEL_ALIGN);
        int64_t fma_per_group = j.mc * PANEL_ALIGN * 16 * (K > 0 ? K : 1);
        int64_t min_groups = cdiv(CHUNK_MIN_FMA, fma_per_group);
        if (most / min_groups < most) most = most / min_groups > 0 ? most / min_groups : 1;
        p_chunks = want < most ? want : most;
    }
    if (M > isa->mr && cdiv(j.P, p_chunks) > PC_MAX) p_chunks = cdiv(j.P, PC_MAX);
    j.pc = cdiv(cdiv(j.P, p_chunks), PANEL_ALIGN) * PANEL_ALIGN;
    j.p_chunks = cdiv(j.P, j.pc);
    int64_t chunks = m_chunks * j.p_chunks;
    if (threads == 1 || chunks == 1) {
        for (int64_t c = 0; c < chunks; c++) run_chunk(&j, c, 0);
    } else {
        kiln_pool_parallel(chunks, run_chunk, &j);
    }
    return 0;
}
