/* The GEMM kernel, written once over a "panel vector" of 16 floats (one packed-B row of
 * a panel). Included by gemm_avx512.c, gemm_avx2.c and gemm_generic.c, each of which
 * first defines the vector type and its operations:
 *   kt_v, kt_zero(), kt_load(p), kt_load_n(p, n), kt_store_n(p, v, n), kt_bcast(x),
 *   kt_fma(a, b, c) = a * b + c,
 * the register blocking KT_MR (rows, <= 8), KT_NP (panels per tile, rows > 1) and KT_NP1
 * (panels per tile for a single row: more independent FMA chains and weight streams for
 * the bandwidth-bound GEMV), KT_BLOCK, the name of the exported block function, and, if this
 * inclusion provides one, KT_PLAIN, that of its kiln_gemm_plain (unpacked operands, for attention).
 *
 * A tile is MR rows x NP panels over one KC block of K. Its accumulators start at zero;
 * its epilogue folds them into C (see gemm.h for the exact order, which no blocking
 * choice here may change: the kernels differ only in which elements run together).
 */
#include "gemm.h"
#include "kiln_ops.h"
#include "vmath.h"

#define KT_NPMAX 8
#define KT_MRMAX 16
/* How far ahead (in 64-byte lines of each panel) the first row tile of a block prefetches B,
 * for weights of KT_PF_MIN_BYTES or more: with 4 panel streams per thread the hardware
 * prefetcher alone left a vocabulary head (150-600 MB) at 8-64 rows 7-20 % slower (16 lines
 * measured best of 8-128 on an Intel Xeon). The limit was 64 MB until stop 16: on one
 * layer-sized weight (7-13 MB) timed over and over, so in L3, the prefetch had cost up to 40 %.
 * In a model every layer's weights come from memory (a 2-layer body's already exceed L3), and
 * there prefetching them paid: whole models at 16 positions, the two limits alternated in
 * fresh processes on a Zen 5 (docs/DESIGN.md, "Few-row GEMM on streamed layer weights"),
 * Qwen3-0.6B 98.6-110 -> 80.7-91.0 ms, GPT-2 24.4-31.7 -> 20.1-22.1, SmolLM2 24.3-27.6 ->
 * 20.7-24.0; no change beyond noise at 64 and 100 positions. So only weights under 1 MB (the
 * L2's size; likely cached) keep the hardware prefetcher alone. With KT_PF_FEW_ROWS
 * rows or fewer (decode; the GEMV's chunks are 0.5 MB slices of a weight) every weight is
 * prefetched: the product is bound by the stream alone, and fp32 decode of SmolLM2 ran
 * 4 % faster (8 / 16 / 32 / 64 lines: +3.5 / +4.3 / +1.7 / +2.2 %, interleaved A/B). Those
 * lines go to L1 or to L2 by CPU (KILN_GEMM_STREAM_L1; gemm.c has the Zen 4's numbers). */
#define KT_PF_LINES 16
#define KT_PF_MIN_BYTES ((int64_t)1 << 20)
#define KT_PF_FEW_ROWS 4

/* The activation over a finished tile, kept out of line: inlined into every tile shape it
 * would multiply the code size for no speed (it runs once per tile, not per k). */
KILN_WIDE_LOOPS static __attribute__((noinline)) void kt_act(float *c, int64_t ldc, int rows, int64_t w, int act) {
    for (int i = 0; i < rows; i++) kiln_act_span(c + i * ldc, w, act);
}

/* A finished tile's accumulators into C (the order of gemm.h): its first `rows` rows and
 * `nps` panels (the rest are a padded tile's, never stored), and no column past N. */
static inline __attribute__((always_inline)) void kt_epi(const int MR, const int NP, kt_v acc[][KT_NPMAX],
                                                         const kiln_gemm_args *g, int64_t m, int64_t p, int first,
                                                         int last, int rows, int nps) {
    const int64_t ldc = g->ldc, N = g->N;
    const int64_t col0 = p * KILN_GEMM_NR;
    const kt_v alpha = kt_bcast(g->alpha), beta = kt_bcast(g->beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        if (i >= rows) break;
        float *c = g->C + (m + i) * ldc + col0;
#pragma GCC unroll 16
        for (int j = 0; j < NP; j++) {
            if (j >= nps) break;
            int64_t cj = col0 + j * KILN_GEMM_NR;
            int n = N - cj < KILN_GEMM_NR ? (int)(N - cj) : KILN_GEMM_NR;
            kt_v t;
            if (first) {
                t = g->bias ? kt_load_n(g->bias + cj, n) : kt_zero();
                if (g->beta != 0.0f) t = kt_fma(beta, kt_load_n(c + j * KILN_GEMM_NR, n), t);
            } else {
                t = kt_load_n(c + j * KILN_GEMM_NR, n);
            }
            kt_store_n(c + j * KILN_GEMM_NR, kt_fma(alpha, acc[i][j], t), n);
        }
    }
    if (last && g->act != KILN_ACT_NONE)
        kt_act(g->C + m * ldc + col0, ldc, rows, N - col0 < nps * KILN_GEMM_NR ? N - col0 : nps * KILN_GEMM_NR, g->act);
}


/* A run of cache lines to prefetch into L2 while a tile computes: the next group's B lines
 * (kt_prefetch_b), one every KT_WALK_EVERY k, so that they trickle in beside the tile's own
 * loads. Issued in one burst before each tile, as before stop 15, they measured 6 % slower on a
 * Zen 5 (gpt2-head, 256 rows, 2 threads, interleaved A/B). */
#define KT_WALK_EVERY 8
typedef struct {
    const float *b;           /* the panel of the next line */
    int64_t k, per, ps, left; /* its k in that panel, lines per panel, panel stride, lines left */
} kt_walk;

static inline __attribute__((always_inline)) void kt_walk_step(kt_walk *w) {
    __builtin_prefetch(w->b + w->k * KILN_GEMM_NR, 0, 2);
    w->left--;
    if (++w->k == w->per) w->k = 0, w->b += w->ps;
}

/* acc[i][j] += sum over k < kc of A[i * a_i + k * a_k] * (16 floats at B + j * b_j + k * b_k): the
 * one inner loop of every tile, direct (A rows lda apart, B panels) or packed (A as [kc][MR], B as
 * [kc][NP * 16]). With TAIL the single panel's loads are masked to bw floats. pfl > 0: each panel's
 * row pfl rows on is prefetched (B streaming from memory), into L2, or into L1 where
 * kiln_gemm_tuning() has KILN_GEMM_STREAM_L1 (gemm.c says which CPUs); w (or NULL): a walk to advance. The
 * strides are constants or loop invariants at each (always inlined) call. */
static inline __attribute__((always_inline)) void kt_accumulate(const int MR, const int NP, const int TAIL,
                                                                const float *A, int64_t a_i, int64_t a_k,
                                                                const float *B, int64_t b_j, int64_t b_k,
                                                                int64_t bw, int64_t kc, int64_t pfl, kt_walk *w,
                                                                const int WE, kt_v acc[KT_MRMAX][KT_NPMAX]) {
    const int l1 = pfl && (kiln_gemm_tuning() & KILN_GEMM_STREAM_L1); /* where the weight's lines go */
    for (int64_t k = 0; k < kc; k++) {
        kt_v b[KT_NPMAX];
        if (w && (k & (WE - 1)) == 0 && w->left > 0) {
            kt_walk_step(w);
            if (WE == 1 && w->left > 0) kt_walk_step(w);
        }
        if (pfl && l1)
#pragma GCC unroll 16
            for (int j = 0; j < NP; j++) __builtin_prefetch(B + j * b_j + (k + pfl) * b_k, 0, 3);
        else if (pfl)
#pragma GCC unroll 16
            for (int j = 0; j < NP; j++) __builtin_prefetch(B + j * b_j + (k + pfl) * b_k, 0, 2);
#pragma GCC unroll 16
        for (int j = 0; j < NP; j++) b[j] = TAIL ? kt_load_n(B + k * b_k, (int)bw) : kt_load(B + j * b_j + k * b_k);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            kt_v a = kt_bcast(A[i * a_i + k * a_k]);
#pragma GCC unroll 16
            for (int j = 0; j < NP; j++) acc[i][j] = kt_fma(a, b[j], acc[i][j]);
        }
    }
}

/* TAIL (a constant at each call): the tile is the last, narrower panel (NP = 1), whose rows
 * are w = N % 16 floats apart (gemm.h); its loads are masked to w. */
static inline __attribute__((always_inline)) void kt_tile(const int MR, const int NP, const int TAIL,
                                                          const kiln_gemm_args *g, int64_t m, int64_t p, int64_t k0,
                                                          int64_t kc, int first, int last, int64_t pfl, kt_walk *w) {
    const int64_t lda = g->lda, N = g->N, ps = g->K * KILN_GEMM_NR;
    const int64_t bw = TAIL ? N - p * KILN_GEMM_NR : KILN_GEMM_NR;
    const float *A = g->A + m * lda + k0;
    const float *B = g->B + p * ps + k0 * bw;
    kt_v acc[KT_MRMAX][KT_NPMAX];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
        for (int j = 0; j < NP; j++) acc[i][j] = kt_zero();
    kt_accumulate(MR, NP, TAIL, A, lda, 1, B, ps, TAIL ? bw : KILN_GEMM_NR, bw, kc, TAIL ? 0 : pfl, w, 1, acc);
    kt_epi(MR, NP, acc, g, m, p, first, last, MR, NP);
}

/* A tile on packed operands (the large-M kernels, gemm_tile_large.h): A as [kc][MR] (one
 * stream of broadcasts), B as [kc][NP * 16] (one stream, no 4K-aliased panel strides), both
 * zero-padded to the full tile, of which the first `rows` rows and `nps` panels are stored;
 * it advances the walk w. C's lines are prefetched for writing at the start where
 * kiln_gemm_tuning() says so (gemm.c: it pays on an Intel Xeon, costs on a Zen 5). */
static inline __attribute__((always_inline)) void kt_ptile(const int MR, const int NP, const float *ap,
                                                           const float *bp, int64_t kc, const kiln_gemm_args *g,
                                                           int64_t m, int64_t p, int first, int last, int rows,
                                                           int nps, kt_walk *w) {
    kt_v acc[KT_MRMAX][KT_NPMAX];
    const int pfc = kiln_gemm_tuning() & KILN_GEMM_PREFETCH_C;
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
#pragma GCC unroll 16
        for (int j = 0; j < NP; j++) {
            acc[i][j] = kt_zero();
            if (pfc && i < rows && j < nps) __builtin_prefetch(g->C + (m + i) * g->ldc + (p + j) * KILN_GEMM_NR, 1, 3);
        }
    }
    kt_accumulate(MR, NP, 0, ap, 1, MR, bp, KILN_GEMM_NR, NP * KILN_GEMM_NR, KILN_GEMM_NR, kc, 0, w, KT_WALK_EVERY, acc);
    kt_epi(MR, NP, acc, g, m, p, first, last, rows, nps);
}

/* Rows [m0, m1) x K block [k0, k0 + kc) of A into tiles of MR rows, tile t at
 * dst + t * MR * kc as [kc][MR]; the last tile's missing rows are zeros. k outer, rows inner,
 * so the stores run contiguously: the row-outer loop's strided stores cost ~10 % of the whole
 * large-M GEMM (timed beside OpenBLAS, bench/gemm.py). */
static inline __attribute__((always_inline)) void kt_pack_a(const int MR, const kiln_gemm_args *g, int64_t m0,
                                                            int64_t m1, int64_t k0, int64_t kc, float *dst) {
    const int64_t lda = g->lda;
    for (int64_t r = m0; r < m1; r += MR, dst += MR * kc) {
        const float *a = g->A + r * lda + k0;
        const int rows = m1 - r < MR ? (int)(m1 - r) : MR;
        if (rows == MR) {
            for (int64_t k = 0; k < kc; k++)
#pragma GCC unroll 16
                for (int i = 0; i < MR; i++) dst[k * MR + i] = a[i * lda + k];
        } else {
            for (int64_t k = 0; k < kc; k++)
                for (int i = 0; i < MR; i++) dst[k * MR + i] = i < rows ? a[i * lda + k] : 0.0f;
        }
    }
}

/* Part `part` of `parts` of the cache lines kt_pack_b(g, p, np, k0, kc) will read, as a walk that
 * the row tile `part` of the group before issues into L2 while it computes, one line every few k
 * (so that the next group's weights arrive from memory while this one computes: a packing that
 * waits for them stalls ~10 %). */
static inline kt_walk kt_prefetch_b(const kiln_gemm_args *g, int64_t p, int np, int64_t k0, int64_t kc, int64_t part,
                                    int64_t parts) {
    const int64_t ps = g->K * KILN_GEMM_NR, per_panel = kc; /* one 64-byte line per k (full panels) */
    int64_t lo = np * per_panel * part / parts, hi = np * per_panel * (part + 1) / parts;
    int64_t j = lo / per_panel, k = lo - j * per_panel;
    kt_walk w = {g->B + (p + j) * ps + k0 * KILN_GEMM_NR, k, per_panel, ps, hi - lo};
    return w;
}

/* Panels [p, p + np) x K block [k0, k0 + kc) of packed B as [kc][np_max * 16]; the narrower
 * last panel (w = N % 16 columns) and the panels np..np_max-1 are padded with zeros (never
 * stored). */
static void kt_pack_b(const kiln_gemm_args *g, int64_t p, int np, int np_max, int64_t k0, int64_t kc, float *dst) {
    const int64_t ps = g->K * KILN_GEMM_NR, w_row = (int64_t)np_max * KILN_GEMM_NR;
    for (int j = np; j < np_max; j++)
        for (int64_t k = 0; k < kc; k++) kt_store_n(dst + j * KILN_GEMM_NR + k * w_row, kt_zero(), KILN_GEMM_NR);
    for (int j = 0; j < np; j++) {
        int64_t col0 = (p + j) * KILN_GEMM_NR, w = g->N - col0 < KILN_GEMM_NR ? g->N - col0 : KILN_GEMM_NR;
        const float *b = g->B + (p + j) * ps + k0 * w;
        float *d = dst + j * KILN_GEMM_NR;
        if (w == KILN_GEMM_NR) {
            for (int64_t k = 0; k < kc; k++) kt_store_n(d + k * w_row, kt_load(b + k * KILN_GEMM_NR), KILN_GEMM_NR);
        } else {
            for (int64_t k = 0; k < kc; k++) kt_store_n(d + k * w_row, kt_load_n(b + k * w, (int)w), KILN_GEMM_NR);
        }
    }
}

#define KT_ARGS g, m, p, k0, kc, first, last, pfl, w
#define KT_C(MR, NP, LIM) \
    case NP:               \
        if (NP <= LIM) kt_tile(MR, NP, 0, KT_ARGS); \
        break;
#define KT_ROW(MR, LIM)                                                                                      \
    case MR:                                                                                                 \
        if (MR <= KT_MR) {                                                                                   \
            switch (np) { KT_C(MR, 1, LIM) KT_C(MR, 2, LIM) KT_C(MR, 3, LIM) KT_C(MR, 4, LIM) KT_C(MR, 5, LIM) \
                          KT_C(MR, 6, LIM) KT_C(MR, 7, LIM) KT_C(MR, 8, LIM) }                               \
        }                                                                                                    \
        break;

/* One tile with run-time mr (1..KT_MR) and np (1..KT_NP, or KT_NP1 when mr = 1), advancing the
 * walk w; kt_dispatch_nowalk is the same with no walk compiled in (its per-k test cost the
 * tiles that never walk 3-8 %: gpt2-qkv at 8-32 rows, interleaved A/B on a Zen 5). */
#define KT_DISPATCH(NAME, W)                                                                              \
    static void NAME(int mr, int np, const kiln_gemm_args *g, int64_t m, int64_t p, int64_t k0, int64_t kc, \
                     int first, int last, int64_t pfl, kt_walk *walk) {                                     \
        kt_walk *w = W;                                                                                    \
        switch (mr) {                                                                                      \
            KT_ROW(1, KT_NP1) KT_ROW(2, KT_NP) KT_ROW(3, KT_NP) KT_ROW(4, KT_NP) KT_ROW(5, KT_NP)          \
            KT_ROW(6, KT_NP) KT_ROW(7, KT_NP) KT_ROW(8, KT_NP)                                             \
        }                                                                                                  \
    }
KT_DISPATCH(kt_dispatch, walk)
KT_DISPATCH(kt_dispatch_nowalk, (kt_walk *)0)

#define KT_T(MR) \
    case MR:        \
        if (MR <= KT_MR) kt_tile(MR, 1, 1, KT_ARGS); \
        break;

/* The narrower last panel, mr (1..KT_MR) rows. */
static void kt_tail(int mr, const kiln_gemm_args *g, int64_t m, int64_t p, int64_t k0, int64_t kc, int first,
                    int last, int64_t pfl, kt_walk *w) {
    switch (mr) { KT_T(1) KT_T(2) KT_T(3) KT_T(4) KT_T(5) KT_T(6) KT_T(7) KT_T(8) }
}

#ifdef KT_PLAIN
/* kiln_gemm_plain (gemm.h): MR rows x NP panels at row m, column n0, all of K in one chain;
 * TAIL: one panel of bw < 16 columns, loaded and stored masked. */
static inline __attribute__((always_inline)) void kt_plain_tile(const int MR, const int NP, const int TAIL,
                                                                const kiln_gemm_plain_args *r, int64_t m, int64_t n0,
                                                                int bw) {
    kt_v acc[KT_MRMAX][KT_NPMAX];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
        for (int j = 0; j < NP; j++) acc[i][j] = kt_zero();
    kt_accumulate(MR, NP, TAIL, r->A + m * r->a_i, r->a_i, r->a_k, r->B + n0, KILN_GEMM_NR, r->ldb, bw, r->K, 0, 0, 1, acc);
    const kt_v alpha = kt_bcast(r->alpha), zero = kt_zero();
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 16
        for (int j = 0; j < NP; j++)
            kt_store_n(r->C + (m + i) * r->ldc + n0 + j * KILN_GEMM_NR, kt_fma(alpha, acc[i][j], zero), TAIL ? bw : KILN_GEMM_NR);
}

/* MR rows at m across all of N: groups of KT_NP panels, then single panels, then the tail. */
static inline __attribute__((always_inline)) void kt_plain_rows(const int MR, const kiln_gemm_plain_args *r, int64_t m) {
    const int64_t full = r->N / KILN_GEMM_NR;
    int64_t p = 0;
    for (; p + KT_NP <= full; p += KT_NP) kt_plain_tile(MR, KT_NP, 0, r, m, p * KILN_GEMM_NR, KILN_GEMM_NR);
    for (; p < full; p++) kt_plain_tile(MR, 1, 0, r, m, p * KILN_GEMM_NR, KILN_GEMM_NR);
    if (r->N % KILN_GEMM_NR) kt_plain_tile(MR, 1, 1, r, m, full * KILN_GEMM_NR, (int)(r->N % KILN_GEMM_NR));
}

void KT_PLAIN(const kiln_gemm_plain_args *r) {
    int64_t m = 0;
    for (; m + KT_MR <= r->M; m += KT_MR) kt_plain_rows(KT_MR, r, m);
    /* the last rows in one tile of their own height: one row at a time, each B row's loads
     * fed a single FMA chain, and attention's 64-row blocks spent a fifth of their time there */
    const int rem = (int)(r->M - m);
#define KT_PLAIN_REM(R) if ((R) < KT_MR && rem == (R)) kt_plain_rows((R) < KT_MR ? (R) : 1, r, m);
    KT_PLAIN_REM(1) KT_PLAIN_REM(2) KT_PLAIN_REM(3) KT_PLAIN_REM(4) KT_PLAIN_REM(5) KT_PLAIN_REM(6) KT_PLAIN_REM(7)
#undef KT_PLAIN_REM
}
#endif

/* Rows [m0, m1) x panels [p0, p1), all of K: each group of panels runs through every K
 * block before the next group, and each KC x (group) slice of B, while in L1, serves every
 * row tile of the chunk. So every panel's weights stream from memory once, in address order,
 * and the chunk's C tiles stay in L1 across their K blocks. (K blocks outermost, the order
 * before, jumped between panels K * 64 bytes apart for every new block; on the vocabulary
 * heads at 8-127 rows it measured 8-17 % slower, and no better on layer shapes.) */
void KT_BLOCK(const kiln_gemm_args *g, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
    const int64_t K = g->K, nkb = K > 0 ? (K + KILN_GEMM_KC - 1) / KILN_GEMM_KC : 1;
    /* full panels [p0, pf); the narrower last panel, if this chunk has it, runs on its own */
    const int64_t full = g->N / KILN_GEMM_NR, pf = p1 < full ? p1 : full, tail = p1 > full;
    const int step = m1 - m0 == 1 ? KT_NP1 : KT_NP;
    const int64_t pfl = g->M <= KT_PF_FEW_ROWS || 4 * g->N * K >= KT_PF_MIN_BYTES ? KT_PF_LINES : 0;
    const int64_t tiles = (m1 - m0 + KT_MR - 1) / KT_MR;
    /* With a streamed weight (pfl) every row tile but the first would wait on memory for its
     * panels while the others compute; instead each tile walks its share of the next B block
     * into L2 (up to 2 lines per k) so the following block finds it there (gemm.c says where
     * this is on and what it measured). */
    const int walk = pfl && tiles > 1 && (kiln_gemm_tuning() & KILN_GEMM_WALK_NEXT);
    for (int64_t p = p0, np; p < pf + tail; p += np) {
        np = p >= pf ? 1 : pf - p < step ? pf - p : step; /* p = pf: the narrow last panel */
        for (int64_t kb = 0; kb < nkb; kb++) {
            int64_t k0 = kb * KILN_GEMM_KC, kc = K - k0 < KILN_GEMM_KC ? K - k0 : KILN_GEMM_KC;
            /* the B block after this one: the next K block of these panels, else the next group's first */
            int64_t pn = kb + 1 < nkb ? p : p + np, kn = kb + 1 < nkb ? k0 + KILN_GEMM_KC : 0;
            int npn = !walk || pn >= pf ? 0 : pf - pn < step ? (int)(pf - pn) : step;
            int64_t kcn = K - kn < KILN_GEMM_KC ? K - kn : KILN_GEMM_KC;
            for (int64_t m = m0; m < m1; m += KT_MR) {
                int mr = m1 - m < KT_MR ? (int)(m1 - m) : KT_MR;
                kt_walk w = {0, 0, 1, 0, 0}, *wp = 0;
                if (npn > 0) w = kt_prefetch_b(g, pn, npn, kn, kcn, (m - m0) / KT_MR, tiles), wp = &w;
                if (p >= pf) kt_tail(mr, g, m, full, k0, kc, kb == 0, kb == nkb - 1, 0, 0);
                else if (wp) kt_dispatch(mr, (int)np, g, m, p, k0, kc, kb == 0, kb == nkb - 1, m == m0 ? pfl : 0, wp);
                else kt_dispatch_nowalk(mr, (int)np, g, m, p, k0, kc, kb == 0, kb == nkb - 1, m == m0 ? pfl : 0, 0);
                while (w.left > 0) kt_walk_step(&w);
            }
        }
    }
}
