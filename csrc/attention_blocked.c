/* Blocked attention for many queries (prefill), on Kiln's GEMM microkernels (kiln_gemm_plain;
 * attention.c holds the op entry points and the row kernels):
 * tasks are (head, block of at most KILN_ATTN_BLOCK_ROWS query rows), parallel over threads.
 * Per block the scores are computed transposed, S^T = K Q^T (one row per key, one column per
 * query, Q^T copied once per block), so the softmax runs down the columns with 16 queries per
 * vector; then O = P V reads P through S^T's columns, and each output row is divided by its
 * sum. K and V are read in place: the heads of a GQA group share them, nothing is copied.
 * Causal blocks stop at the last key their last row sees, so the upper triangle is mostly
 * skipped. Scratch: one block of scores per thread, BR x Sk floats (the formula in
 * kiln/backends/c/kernels.py), and Q^T of one block in a per-thread buffer, which bounds the
 * head size (KILN_ATTN_MAX_D; wider heads run the row kernels). */
#include <math.h>
#include <string.h>

#include "attention.h"
#include "gemm.h"
#include "par.h"
#include "vmath.h"

#define KILN_ATTN_MAX_D 256
#define ATTN_SUB 64  /* queries per GEMM call: a multiple of 16 (S^T's vectors) */
static int blocked_enabled = 1;
static _Thread_local float q_t[KILN_ATTN_MAX_D * KILN_ATTN_BLOCK_ROWS] __attribute__((aligned(64)));

/* Columns of S^T row j (key j) that causal masking hides: the first ones, queries c with
 * offset + i0 + c < j (0 when not causal). */
static inline int64_t hidden_cols(const attn_args *a, int64_t i0, int64_t nr, int64_t j) {
    int64_t h = a->causal ? j - a->offset - i0 : 0;
    return h < 0 ? 0 : h > nr ? nr : h;
}

/* The explicit mask on S^T (n keys x ld columns, the first nr queries from i0): -inf where a
 * bool mask is false, added where it is float. Causal masking is not written here: the
 * softmax skips each row's hidden columns (hidden_cols). */
static void mask_block(const attn_args *a, int64_t b, int64_t h, int64_t i0, int64_t nr, int64_t n, float *S,
                       int64_t ld) {
    for (int64_t j = 0; j < n; j++) {
        float *s = S + j * ld;
        int64_t moff = b * a->ms[0] + h * a->ms[1] + i0 * a->ms[2] + j * a->ms[3];
        if (a->mask_bool) {
            const uint8_t *m = (const uint8_t *)a->mask + moff;
            for (int64_t c = 0; c < nr; c++)
                if (!m[c * a->ms[2]]) s[c] = -INFINITY;
        } else {
            const float *m = (const float *)a->mask + moff;
            for (int64_t c = 0; c < nr; c++) s[c] += m[c * a->ms[2]];
        }
    }
}

/* One query block of one head: S^T = scale K Q^T, column softmax, O = P V / sum. */
KILN_WIDE_LOOPS static void block_rows(const attn_args *a, int64_t b, int64_t h, int64_t i0, int64_t nr, float *S) {
    int64_t hk = h / a->group, D = a->D, ld = (nr + 15) / 16 * 16; /* S^T's row: whole vectors */
    const float *q = a->q + ((b * a->Hq + h) * a->Sq + i0) * D;
    const float *k = a->k + (b * a->Hkv + hk) * a->Sk * D;
    const float *v = a->v + (b * a->Hkv + hk) * a->Sk * a->Dv;
    float *o = a->out + ((b * a->Hq + h) * a->Sq + i0) * a->Dv;
    int64_t n = visible(a, i0 + nr - 1); /* keys the block's last row sees */
    if (n <= 0) {
        memset(o, 0, (size_t)(nr * a->Dv) * sizeof(float));
        return;
    }
    /* Q^T, in 16 x 16 tiles (each read and written within L1; ~2 % faster than a copy down
     * Q's columns); padded queries are zeros: their scores are never used */
    for (int64_t c0 = 0; c0 < ld; c0 += 16)
        for (int64_t d0 = 0; d0 < D; d0 += 16)
            for (int64_t c = c0; c < c0 + 16; c++) {
                const int64_t dn = D - d0 < 16 ? D - d0 : 16;
                if (c < nr)
                    for (int64_t d = d0; d < d0 + dn; d++) q_t[d * ld + c] = q[c * D + d];
                else
                    for (int64_t d = d0; d < d0 + dn; d++) q_t[d * ld + c] = 0.0f;
            }
    /* per 64 queries (the plain tile's width), only the keys they see: a causal block skips
     * most of its upper triangle (scores never computed are hidden, and never read) */
    int64_t nk[(KILN_ATTN_BLOCK_ROWS + ATTN_SUB - 1) / ATTN_SUB];
    for (int64_t c0 = 0; c0 < ld; c0 += ATTN_SUB) {
        const int64_t c1 = c0 + ATTN_SUB < ld ? c0 + ATTN_SUB : ld;
        const int64_t last = (c1 < nr ? c1 : nr) - 1, vis = visible(a, i0 + last);
        nk[c0 / ATTN_SUB] = vis < n ? vis : n;
        if (nk[c0 / ATTN_SUB] > 0)
            kiln_gemm_plain(&(kiln_gemm_plain_args){.M = nk[c0 / ATTN_SUB], .N = c1 - c0, .K = D, .a_i = D, .a_k = 1,
                                                    .ldb = ld, .ldc = ld, .A = k, .B = q_t + c0, .C = S + c0,
                                                    .alpha = a->scale});
    }
    if (a->mask) mask_block(a, b, h, i0, nr, n, S, ld);
    float mx[KILN_ATTN_BLOCK_ROWS], sum[KILN_ATTN_BLOCK_ROWS];
    for (int64_t c = 0; c < ld; c++) mx[c] = -INFINITY, sum[c] = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float *s = S + j * ld;
#pragma omp simd
        for (int64_t c = hidden_cols(a, i0, nr, j); c < ld; c++) mx[c] = s[c] > mx[c] ? s[c] : mx[c];
    }
    for (int64_t c = 0; c < ld; c++) mx[c] = mx[c] == -INFINITY ? 0.0f : mx[c]; /* every key masked: P = 0 */
    for (int64_t j = 0; j < n; j++) {
        float *s = S + j * ld;
        const int64_t c0 = hidden_cols(a, i0, nr, j);  /* hidden: weight 0, no exp */
        for (int64_t c = 0; c < c0; c++) s[c] = 0.0f;
#pragma omp simd
        for (int64_t c = c0; c < ld; c++) {
            float e = kiln_exp_ftz(s[c] - mx[c]);
            s[c] = e;
            sum[c] += e;
        }
    }
    /* O = P V per 64 queries over the keys they see: the weights past them are zeros, so the
     * shorter sums are the same floats */
    for (int64_t c0 = 0; c0 < nr; c0 += ATTN_SUB) {
        const int64_t c1 = c0 + ATTN_SUB < nr ? c0 + ATTN_SUB : nr, kk = nk[c0 / ATTN_SUB];
        if (kk > 0)
            kiln_gemm_plain(&(kiln_gemm_plain_args){.M = c1 - c0, .N = a->Dv, .K = kk, .a_i = 1, .a_k = ld,
                                                    .ldb = a->Dv, .ldc = a->Dv, .A = S + c0, .B = v,
                                                    .C = o + c0 * a->Dv, .alpha = 1.0f});
        else
            memset(o + c0 * a->Dv, 0, (size_t)((c1 - c0) * a->Dv) * sizeof(float));
    }
    for (int64_t r = 0; r < nr; r++) { /* a row with every key masked has sum 0 and output 0 */
        float inv = sum[r] > 0.0f ? 1.0f / sum[r] : 0.0f, *orow = o + r * a->Dv;
#pragma omp simd
        for (int64_t d = 0; d < a->Dv; d++) orow[d] *= inv;
    }
}

typedef struct {
    const attn_args *a;
    float *scratch;
    int64_t per, nblocks, BR;
} blocked_ctx;

static void blocked_range(void *p, int64_t begin, int64_t end, int slot) {
    const blocked_ctx *k = (const blocked_ctx *)p;
    const attn_args *a = k->a;
    float *S = k->scratch + slot * attn_slot_floats(k->per);
    for (int64_t t = begin; t < end; t++) {
        int64_t blk = t % k->nblocks, bh = t / k->nblocks;
        int64_t i0 = blk * k->BR, nr = a->Sq - i0 < k->BR ? a->Sq - i0 : k->BR;
        block_rows(a, bh / a->Hq, bh % a->Hq, i0, nr, S);
    }
}

int kiln_attention_blocked(const attn_args *a, const kiln_call *c) {
    if (!blocked_enabled || a->Sq < KILN_ATTN_BLOCKED_MIN_SQ || a->D > KILN_ATTN_MAX_D) return 0;
    /* scratch per thread: BR x Sk floats, BR = min(Sq, KILN_ATTN_BLOCK_ROWS) (the planner's rule); a
     * block of QB rows needs n x ceil16(QB) <= Sk x BR, so QB is BR rounded down to whole vectors */
    int64_t BR = KILN_ATTN_BLOCK_ROWS < a->Sq ? KILN_ATTN_BLOCK_ROWS : a->Sq, QB = BR / 16 * 16;
    int64_t per = BR * a->Sk;   /* floats of scores per thread */
    int64_t avail = c->scratch.data ? c->scratch.nbytes / (4 * attn_slot_floats(per)) : 0;
    if (avail < 1) return 0;
    int64_t nblocks = (a->Sq + QB - 1) / QB, tasks = a->B * a->Hq * nblocks;
    /* Causal blocks further down see more keys: small dynamic chunks even them out. */
    blocked_ctx k = {a, (float *)c->scratch.data, per, nblocks, QB};
    kiln_par_slots(tasks, tasks * per, avail, blocked_range, &k);
    return 1;
}

/* Test hook: 0 forces the row kernels even where the blocked one applies. */
void kiln_set_attention_blocked(int on) { blocked_enabled = on; }
