/* The packed-B GEMM: kernel-set choice (once, by CPUID), argument checks, and the split of
 * C into chunks of (rows x panels) that the pool hands out dynamically. The split changes
 * which thread computes an element, never how (gemm.h), so results do not depend on it. */
#define _GNU_SOURCE /* sysconf(_SC_LEVEL2_CACHE_SIZE) */
#include <stdlib.h>
#include <unistd.h>

#include "gemm.h"
#ifdef KILN_GEMM_X86
#include <cpuid.h>
#endif
#include "kiln_ops.h"
#include "pool.h"

#define MC_MAX 256               /* rows per chunk: an MC x KC block of A (128 KB) stays in L2, and a
                                  * weight is streamed from memory once per MC rows (prefill at 256) */
#define LARGE_M_MIN KILN_GEMM_LARGE_M_MIN /* rows from which the packed large-M tiles run: with fewer, the
                                  * direct tiles (B streamed, not copied) measured faster */
#define PANEL_ALIGN 8            /* chunks start at multiples of every kernel's panel group */
#define CHUNK_MIN_FMA (1 << 18)  /* below this a chunk costs more to hand out than to run */
#define CHUNKS_PER_THREAD 8      /* enough that a descheduled thread holds up a small part */
/* Panels per chunk at most (pc_max, set at load): the chunk's C block (MC_MAX x 16 * pc_max
 * floats) fills at most half of L2, so it stays there across its K blocks; wider (an LM
 * head's N) and C would go to memory and back once per K block. 1 MB (Zen 4): 32 panels,
 * 2 MB (Intel Xeon): 64. Wider chunks amortize the A packing of the large-M kernels. */
#define PC_MIN 16
#define PC_MAX 64
static int64_t pc_max = 32;

typedef struct {
    kiln_gemm_block_fn block; /* the few-row kernels (rows <= mr) */
    int mr;
    kiln_gemm_plain_fn plain;
    kiln_gemm_block_fn tall; /* taller few-row tiles for TALL_M_MIN..TALL_M_MAX rows, or NULL */
    int tall_mr, tall_np;
} isa_t;

static const isa_t ISA_TABLE[] = {
    [KILN_GEMM_ISA_GENERIC] = {kiln_gemm_block_generic, 4, kiln_gemm_plain_generic, 0, 0, 0},
#ifdef KILN_GEMM_X86
    [KILN_GEMM_ISA_AVX2] = {kiln_gemm_block_avx2, 6, kiln_gemm_plain_avx2, 0, 0, 0},
    [KILN_GEMM_ISA_AVX512] = {kiln_gemm_block_avx512, 6, kiln_gemm_plain_avx512, kiln_gemm_block_avx512_tall, 8, 3},
#endif
};
/* Where KILN_GEMM_FEW_TALL is set: 13-16 rows in two tiles of 8 x 48 rather than three of 6 x 64
 * (gemm_avx512_tall.c; the numbers are at the tuning flags below). */
#define TALL_M_MIN 13
#define TALL_M_MAX 16

typedef struct {
    const char *name;
    int isa, mr, np; /* rows, panels */
    kiln_gemm_block_fn block;
} tile_t;

/* The large-M tiles; the first of each kernel set is its default. */
static const tile_t TILES[] = {
    {"generic-4x16", KILN_GEMM_ISA_GENERIC, 4, 1, kiln_gemm_large_generic_4x16},
#ifdef KILN_GEMM_X86
    {"avx2-6x16", KILN_GEMM_ISA_AVX2, 6, 1, kiln_gemm_large_avx2_6x16},
    {"avx512-6x64", KILN_GEMM_ISA_AVX512, 6, 4, kiln_gemm_large_avx512_6x64},
    {"avx512-8x48", KILN_GEMM_ISA_AVX512, 8, 3, kiln_gemm_large_avx512_8x48},
    {"avx512-14x32", KILN_GEMM_ISA_AVX512, 14, 2, kiln_gemm_large_avx512_14x32},
#endif
};
#define N_TILES ((int)(sizeof TILES / sizeof TILES[0]))
static int isa_now = -1, tile_now = 0;

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

static int tile_named(const char *name) {
    for (int i = 0; name && i < N_TILES; i++) {
        const char *a = TILES[i].name, *b = name;
        while (*a && *a == *b) a++, b++;
        if (!*a && !*b) return i;
    }
    return -1;
}

/* The default large-M tile of a kernel set on this CPU. On an Intel Xeon (two 512-bit FMA
 * ports, 48 KB L1, 2 MB L2) 8 x 48 measured best of the three (bench/gemm.py --tiles; 24
 * accumulators, 3 B loads and 8 broadcasts per 24 FMAs), and on a Zen 5 (CPUID family 0x1A:
 * two full-width 512-bit FMA pipes, 48 KB L1) too: 1-5 % over 6 x 64 at 256-1024 rows.
 * Zen 4 (family 0x19, 512-bit ops in two 256-bit halves) keeps the 6 x 64 it was tuned on.
 * The taller 14 x 32 stays selectable (KILN_GEMM_TILE) for other cores. */
static int amd_family(void) {
#ifdef KILN_GEMM_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    unsigned base = (a >> 8) & 0xf, ext = (a >> 20) & 0xff;
    return (int)(base == 0xf ? base + ext : base);
#else
    return 0;
#endif
}

static int tile_forced = -1; /* KILN_GEMM_TILE, read once at load */

static int default_tile(int isa) {
    int pick = tile_forced >= 0 && TILES[tile_forced].isa == isa ? tile_forced : -1;
#ifdef KILN_GEMM_X86
    __builtin_cpu_init();
    if (pick < 0 && isa == KILN_GEMM_ISA_AVX512 && (__builtin_cpu_is("intel") || amd_family() >= 0x1a))
        pick = tile_named("avx512-8x48");
#endif
    for (int i = 0; pick < 0 && i < N_TILES; i++)
        if (TILES[i].isa == isa) pick = i;
    return pick;
}

/* The two prefetches pay on one vendor and cost on the other (bench.gemm shapes through
 * kiln_gemm_packed, 2 threads, the choices alternated in fresh processes on one library):
 * the few-row walk of the next B block (gemm_tile.h) on a Zen 5 (family 0x1A): gpt2-head
 * (768 x 50257) at 8 / 16 / 32 rows +6-17 / +13-15 / +4 %; on an Intel Xeon (AMX, 2 MB L2)
 * -6 / +3 / -6 %. The C prefetch of each large-M tile on the Xeon: gpt2-head at 256 rows
 * +6-9 %, qwen3-down (3072 x 1024) at 256 / 1024 rows +1 / +2 %; on the Zen 5 it cost 3-5 %
 * (its prefetchw requests, issued together, delayed the tile's first A and B loads). On a Zen 4
 * (family 0x19, 2026-12-02; flags switched in one process, 6 alternations, median speedup over
 * C-prefetch-only) the walk paid as on the Zen 5: GPT-2 2-layer body at 16 positions 1.09
 * [1.07, 1.10], Qwen3 2-layer body 1.15, at 64 positions within noise, at 256 the C prefetch
 * off 1.03-1.07 (noisy). So every AMD part walks and skips the C prefetch; other CPUs do what
 * the Xeon measured best.
 * Where the few-row tiles prefetch a streamed weight: into L1 on the Intel Xeon, where 16 lines
 * ahead was tuned (gemm_tile.h); into L2 on AMD. On a Zen 4 (family 0x19, 2026-12-02; the two
 * alternated in one process, 10 rounds each) the L1 prefetch cost fp32 SmolLM2 decode 15-26 %
 * (no software prefetch at all was as fast as L2) and prefill at 16 positions 10-15 % (SmolLM2
 * whole, Qwen3 2-layer body), 5 % at 64: each prefetcht0 holds one of the core's few L1
 * miss buffers until its line arrives, so the eight weight streams had less memory-level
 * parallelism than the L2 streamer gives the plain loads. On the Zen 5 (stop 16) a trial of
 * L2 was inconclusive (within that host's noise).
 * The tall few-row tiles (KILN_GEMM_FEW_TALL), first on the Zen 4: weights streamed from memory
 * (several copies of each, 2 threads, the flag alternated in one process, 12 rounds, median
 * speedup), at 13 / 14 / 15 / 16 rows gpt2-head 1.05 / 1.03 / 1.05 / 1.05-1.09, gpt2-qkv 1.05 /
 * 1.07 / 1.07 / 1.09-1.16, qwen3-up 1.04 / 1.01 / 1.03 / 1.02-1.08, smollm2-down 1.05 / 1.09 /
 * 1.07 / 1.22; from 20 rows up they lost or tied (20: 0.91-0.96; 24, 29, 48: 0.91-1.0; 32 and
 * 40 mixed, 0.96-1.13), and at 8 and 12 rows, one and two 8-row tiles lost 7-27 % to the 6 x 64's
 * two (fewer panels, so fewer weight streams per tile). Why 13-16 gain is not pinned down: the
 * 6 x 64 tile's weight block (KC x 64 floats, 32 KB) fills this core's 32 KB L1, and the third
 * row tile re-reads it; the 8 x 48's (24 KB) is read twice. On the Intel Xeon (48 KB L1;
 * 2026-12-02, same method, 8 rounds) they paid too: at 13 / 16 rows gpt2-head 1.11 / 1.08,
 * gpt2-qkv 1.21 / 1.20, smollm2-down 1.19 / 1.23, qwen3-up 1.07 / 1.08, gpt2-fc 1.05 / 1.03,
 * smollm2-up 1.01 / 1.05; only GPT-2's MLP down projection (3072 x 768) lost, 0.95 / 0.96;
 * whole models at 14 and 16 positions (12 alternations) 1.02-1.06. So they are on there and
 * on other CPUs, which follow the Xeon; the Zen 5 (family 0x1A) is untried and keeps them off. */
int kiln_gemm_tuning_flags = 0;
int kiln_gemm_tuning(void) { return kiln_gemm_tuning_flags; }
int kiln_gemm_set_tuning(int flags) {
    if (flags & ~(KILN_GEMM_WALK_NEXT | KILN_GEMM_PREFETCH_C | KILN_GEMM_STREAM_L1 | KILN_GEMM_FEW_TALL))
        return KILN_GEMM_ERR_ARG;
    kiln_gemm_tuning_flags = flags;
    return 0;
}

/* Chosen when the library loads, so no call ever races the choice. */
__attribute__((constructor)) static void choose_isa(void) {
    const char *g = getenv("KILN_FORCE_GENERIC");
    if (g && g[0] == '1') isa_now = KILN_GEMM_ISA_GENERIC;
    else if (supported(KILN_GEMM_ISA_AVX512)) isa_now = KILN_GEMM_ISA_AVX512;
    else if (supported(KILN_GEMM_ISA_AVX2)) isa_now = KILN_GEMM_ISA_AVX2;
    else isa_now = KILN_GEMM_ISA_GENERIC;
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    pc_max = (l2 > 0 ? l2 : 1 << 20) / 2 / (MC_MAX * KILN_GEMM_NR * (int64_t)sizeof(float));
    pc_max = pc_max < PC_MIN ? PC_MIN : pc_max > PC_MAX ? PC_MAX : pc_max;
    tile_forced = tile_named(getenv("KILN_GEMM_TILE"));
    tile_now = default_tile(isa_now);
    kiln_gemm_tuning_flags = KILN_GEMM_PREFETCH_C | KILN_GEMM_STREAM_L1 | KILN_GEMM_FEW_TALL;
#ifdef KILN_GEMM_X86
    __builtin_cpu_init();
    if (__builtin_cpu_is("amd")) kiln_gemm_tuning_flags = KILN_GEMM_WALK_NEXT;
    if (__builtin_cpu_is("amd") && amd_family() == 0x19) kiln_gemm_tuning_flags |= KILN_GEMM_FEW_TALL;
#endif
}

int kiln_gemm_isa(void) { return isa_now; }

int kiln_gemm_set_isa(int isa) {
    if (isa < 0 || isa > KILN_GEMM_ISA_AVX512 || !supported(isa)) return KILN_GEMM_ERR_ISA;
    isa_now = isa;
    tile_now = default_tile(isa);
    return 0;
}

int kiln_gemm_tile_count(void) { return N_TILES; }
const char *kiln_gemm_tile_name(int tile) { return tile >= 0 && tile < N_TILES ? TILES[tile].name : NULL; }
int kiln_gemm_tile_isa(int tile) { return tile >= 0 && tile < N_TILES ? TILES[tile].isa : KILN_GEMM_ERR_ARG; }
int kiln_gemm_tile(void) { return tile_now; }

int kiln_gemm_set_tile(int tile) {
    if (tile < 0 || tile >= N_TILES || TILES[tile].isa != isa_now) return KILN_GEMM_ERR_ISA;
    tile_now = tile;
    return 0;
}

/* Packing buffers of the large-M kernels, one pair per thread (pool workers and callers). */
static _Thread_local float tls_a[KILN_GEMM_PACK_ROWS * KILN_GEMM_KC] __attribute__((aligned(64)));
static _Thread_local float tls_b[KILN_GEMM_KC * 8 * KILN_GEMM_NR] __attribute__((aligned(64)));
float *kiln_gemm_tls_a(void) { return tls_a; }
float *kiln_gemm_tls_b(void) { return tls_b; }

void kiln_gemm_plain(const kiln_gemm_plain_args *r) {
    if (r->M > 0 && r->N > 0) ISA_TABLE[isa_now].plain(r);
}

int64_t kiln_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K, int threads) {
    (void)N, (void)threads;
    if (M < KILN_GEMM_LARGE_M_MIN || K <= 0 || M > (INT64_MAX / 4 - 16) / K) return 0;
    return 4 * (M + 16) * K; /* 16 >= every tile's rows - 1 */
}

/* A packed once (kiln_gemm_args.ap), in units of one K block x PACK_UNIT_TILES row tiles, so
 * that every chunk of panels reads it instead of packing its rows again: on a 256-row product
 * with a vocabulary head's 3,142 panels, the 98 chunks had each packed the same A. */
#define PACK_UNIT_TILES 8
typedef struct {
    const kiln_gemm_args *g;
    float *ap;
    int64_t mr, nkb, row_units;
} pack_job_t;

static inline __attribute__((always_inline)) void pack_rows(const int MR, const kiln_gemm_args *g, int64_t r0,
                                                            int64_t r1, int64_t k0, int64_t kc, float *dst) {
    for (int64_t r = r0; r < r1; r += MR, dst += MR * kc) {
        const float *a = g->A + r * g->lda + k0;
        const int rows = g->M - r < MR ? (int)(g->M - r) : MR;
        if (rows == MR) {
            for (int64_t k = 0; k < kc; k++)
                for (int i = 0; i < MR; i++) dst[k * MR + i] = a[i * g->lda + k];
        } else {
            for (int64_t k = 0; k < kc; k++)
                for (int i = 0; i < MR; i++) dst[k * MR + i] = i < rows ? a[i * g->lda + k] : 0.0f;
        }
    }
}

static void pack_unit(void *ctx, int64_t u, int thread) {
    const pack_job_t *j = (const pack_job_t *)ctx;
    const kiln_gemm_args *g = j->g;
    (void)thread;
    int64_t kb = u / j->row_units, ru = u % j->row_units, mr = j->mr;
    int64_t r0 = ru * PACK_UNIT_TILES * mr, r1 = r0 + PACK_UNIT_TILES * mr < g->M ? r0 + PACK_UNIT_TILES * mr : g->M;
    int64_t k0 = kb * KILN_GEMM_KC, kc = g->K - k0 < KILN_GEMM_KC ? g->K - k0 : KILN_GEMM_KC;
    float *dst = j->ap + k0 * g->mp + r0 * kc;
    switch (mr) { /* the row count a constant, so the copy unrolls */
    case 4: pack_rows(4, g, r0, r1, k0, kc, dst); break;
    case 6: pack_rows(6, g, r0, r1, k0, kc, dst); break;
    case 8: pack_rows(8, g, r0, r1, k0, kc, dst); break;
    case 14: pack_rows(14, g, r0, r1, k0, kc, dst); break;
    default:
        for (int64_t r = r0; r < r1; r += mr, dst += mr * kc)
            for (int64_t k = 0; k < kc; k++)
                for (int64_t i = 0; i < mr; i++) dst[k * mr + i] = r + i < g->M ? g->A[(r + i) * g->lda + k0 + k] : 0.0f;
    }
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
    if (M < 0 || N < 0 || K < 0 || kiln_gemm_packed_bytes(K, N) < 0 || scratch_bytes < 0) return KILN_GEMM_ERR_ARG;
    /* the last act code kiln_act_apply knows: a new one must be added here, not run as identity */
    if (act < KILN_ACT_NONE || act > KILN_ACT_SILU) return KILN_GEMM_ERR_ARG;
    if (M == 0 || N == 0) return 0;
    if (!C || ldc < N || (K > 0 && (!A || !packed || lda < K))) return KILN_GEMM_ERR_ARG;
    const isa_t *isa = &ISA_TABLE[isa_now];
    const tile_t *tile = &TILES[tile_now];
    /* few rows: the GEMV / few-row path; up to LARGE_M_MIN rows the direct tiles (each weight
     * byte feeds too few rows to pay for its packing); more: the packed large-M tile */
    int few = M <= isa->mr, large = M >= LARGE_M_MIN, mr = large ? tile->mr : isa->mr;
    job_t j = {.g = {M, N, K, lda, ldc, A, packed, bias, C, alpha, beta, act},
               .block = large ? tile->block : isa->block, .P = cdiv(N, 16)};
    int tall = isa->tall && M >= TALL_M_MIN && M <= TALL_M_MAX && (kiln_gemm_tuning_flags & KILN_GEMM_FEW_TALL);
    if (tall) j.block = isa->tall, mr = isa->tall_mr;
    /* rows: one block of up to MR rows, else even chunks <= MC_MAX in whole tiles */
    j.mc = few ? M : cdiv(cdiv(M, cdiv(M, MC_MAX)), mr) * mr;
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
    /* chunks in whole panel groups of the kernel that runs them, and within the L2 budget after
     * that rounding (8 x 48 rounded 64 panels up to 72, and measured ~5 % slower than at 48).
     * The large-M tiles and the tall few-row ones need multiples of their own width only: rounded
     * to 8 of them, a 1024-wide weight (64 panels) split 24 / 24 / 16 over two threads and ran at
     * 2/3 speed, and a 576-wide one split 3 ways in the tall tiles' 12-panel multiples at 0.9x */
    int64_t align = large ? tile->np : tall ? isa->tall_np : PANEL_ALIGN;
    int64_t pc_lim = pc_max / align * align > align ? pc_max / align * align : align;
    if (!few && cdiv(j.P, p_chunks) > pc_lim) p_chunks = cdiv(j.P, pc_lim);
    j.pc = cdiv(cdiv(j.P, p_chunks), align) * align;
    int prepack = large && scratch && scratch_bytes >= 4 * cdiv(M, mr) * mr * K;
    j.p_chunks = cdiv(j.P, j.pc);
    int64_t chunks = m_chunks * j.p_chunks;
    if (prepack && j.p_chunks > 1) {
        j.g.ap = (const float *)scratch;
        j.g.mp = cdiv(M, mr) * mr;
        pack_job_t pj = {&j.g, (float *)scratch, mr, cdiv(K, KILN_GEMM_KC), cdiv(M, PACK_UNIT_TILES * mr)};
        int64_t units = pj.nkb * pj.row_units;
        if (threads == 1 || units == 1) {
            for (int64_t u = 0; u < units; u++) pack_unit(&pj, u, 0);
        } else {
            kiln_pool_parallel(units, pack_unit, &pj);
        }
    }
    if (threads == 1 || chunks == 1) {
        for (int64_t c = 0; c < chunks; c++) run_chunk(&j, c, 0);
    } else {
        kiln_pool_parallel(chunks, run_chunk, &j);
    }
    return 0;
}
