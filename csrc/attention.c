/* Scaled dot-product attention: softmax(q k^T * scale + mask) v, causal (top-left
 * aligned, like torch's is_causal), optional bool (true = keep) or float additive
 * mask broadcast to [B, Hq, Sq, Sk], grouped-query K/V (query head h reads K/V
 * head h / group, no copies). A row whose every key is masked yields zeros.
 *
 * Prefill (at least KILN_ATTN_BLOCKED_MIN_SQ queries) runs blocks of queries on the GEMM
 * microkernels (attention_blocked.c). Otherwise (decode, or no room for a block of
 * scores) two row kernels, one row of queries per task, parallel over B * Hq * Sq rows:
 *  - standard: all Sk scores of the row in scratch, exact softmax, then P @ V;
 *  - flash: keys in tiles of KILN_FLASH_BLOCK with an online softmax (running
 *    max and sum, accumulator rescaled per tile); scratch is one tile + one
 *    output row per thread, independent of Sk.
 * Scratch (planner-provided) per thread is max(Sk, FLASH_BLOCK + Dv + 2) floats, or a
 * block of scores for the blocked kernel: the formula in kiln/backends/c/kernels.py.
 */
#include <math.h>

#include "attention.h"
#include "kiln.h"
#include "par.h"
#include "vmath.h"

#define KILN_FLASH_MIN_SK 1024   /* use the flash kernel from this many keys */
#define KILN_STACK_DV 1024       /* largest head size the no-scratch fallback handles */

static int64_t flash_min_sk = -1;

/* scores for keys [j0, j1) of one query row; masked keys get -inf */
static void scores(const attn_args *a, const float *q, const float *k, int64_t moff, int64_t j0, int64_t j1,
                   float *s) {
    int64_t D = a->D, j = j0;
    /* four keys at a time: independent FMA chains sharing each load of q */
    for (; j + 4 <= j1; j += 4) {
        float d4[4];
        kiln_dot4(q, k + j * D, D, D, d4);
        for (int t = 0; t < 4; t++) s[j - j0 + t] = d4[t] * a->scale;
    }
    for (; j < j1; j++) s[j - j0] = kiln_dot(q, k + j * D, D) * a->scale;
    if (a->mask) {
        if (a->mask_bool) {
            const uint8_t *m = (const uint8_t *)a->mask + moff;
            for (int64_t j = j0; j < j1; j++)
                if (!m[j * a->ms[3]]) s[j - j0] = -INFINITY;
        } else {
            const float *m = (const float *)a->mask + moff;
            for (int64_t j = j0; j < j1; j++) s[j - j0] += m[j * a->ms[3]];
        }
    }
}

/* The largest of s[0..n) (-inf when n = 0 or every score is masked). */
static inline float max_of(const float *s, int64_t n) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    return mx;
}

/* s[j] = exp(s[j] - shift) in place; returns their sum. */
static inline float exp_shifted(float *s, int64_t n, float shift) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; j++) {
        float e = kiln_exp_ftz(s[j] - shift);
        s[j] = e;
        sum += e;
    }
    return sum;
}


/* Query row i of head h, batch b: its q, its KV head's k and v, its output row, the keys it
 * sees and its mask offset. */
typedef struct {
    const float *q, *k, *v;
    float *o;
    int64_t n, moff;
} attn_row;

static inline attn_row row_of(const attn_args *a, int64_t b, int64_t h, int64_t i) {
    int64_t hk = h / a->group;
    attn_row r = {a->q + ((b * a->Hq + h) * a->Sq + i) * a->D, a->k + (b * a->Hkv + hk) * a->Sk * a->D,
                  a->v + (b * a->Hkv + hk) * a->Sk * a->Dv, a->out + ((b * a->Hq + h) * a->Sq + i) * a->Dv,
                  visible(a, i), b * a->ms[0] + h * a->ms[1] + i * a->ms[2]};
    return r;
}

static void row_standard(const attn_args *a, int64_t b, int64_t h, int64_t i, float *s) {
    const attn_row r = row_of(a, b, h, i);
    const float *q = r.q, *k = r.k, *v = r.v;
    float *o = r.o;
    int64_t n = r.n, moff = r.moff;
    for (int64_t d = 0; d < a->Dv; d++) o[d] = 0.0f;
    if (n <= 0) return;
    scores(a, q, k, moff, 0, n, s);
    float mx = max_of(s, n);
    if (mx == -INFINITY) return;  /* every key masked */
    float sum = exp_shifted(s, n, mx);
    for (int64_t j = 0; j < n; j++) {
        float p = s[j];
        if (p == 0.0f) continue;
        const float *vj = v + j * a->Dv;
#pragma omp simd
        for (int64_t d = 0; d < a->Dv; d++) o[d] += p * vj[d];
    }
    float inv = 1.0f / sum;
    for (int64_t d = 0; d < a->Dv; d++) o[d] *= inv;
}

/* buf: KILN_FLASH_BLOCK scores then Dv accumulators */
static void row_flash(const attn_args *a, int64_t b, int64_t h, int64_t i, float *buf) {
    const attn_row r = row_of(a, b, h, i);
    const float *q = r.q, *k = r.k, *v = r.v;
    float *o = r.o, *s = buf, *acc = buf + KILN_FLASH_BLOCK;
    int64_t n = r.n, moff = r.moff;
    float m = -INFINITY, l = 0.0f;
    for (int64_t d = 0; d < a->Dv; d++) acc[d] = 0.0f;
    for (int64_t j0 = 0; j0 < n; j0 += KILN_FLASH_BLOCK) {
        int64_t j1 = j0 + KILN_FLASH_BLOCK < n ? j0 + KILN_FLASH_BLOCK : n, nt = j1 - j0;
        scores(a, q, k, moff, j0, j1, s);
        float mt = max_of(s, nt);
        if (mt == -INFINITY) continue;
        if (mt > m) {
            float corr = m == -INFINITY ? 0.0f : kiln_exp_ftz(m - mt);
            l *= corr;
#pragma omp simd
            for (int64_t d = 0; d < a->Dv; d++) acc[d] *= corr;
            m = mt;
        }
        l += exp_shifted(s, nt, m);
        for (int64_t j = 0; j < nt; j++) {
            float p = s[j];
            if (p == 0.0f) continue;
            const float *vj = v + (j0 + j) * a->Dv;
#pragma omp simd
            for (int64_t d = 0; d < a->Dv; d++) acc[d] += p * vj[d];
        }
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int64_t d = 0; d < a->Dv; d++) o[d] = acc[d] * inv;
}

static int run_rows(const attn_args *a, const kiln_call *c);

/* The fields attention and cached_attention share. q [B, Hq, Sq, D], k [B, Hkv, Sk, D],
 * v [B, Hkv, Sk, Dv], out [B, Hq, Sq, Dv], Hq = Hkv * group: anything else is an error. */
static int attn_setup(attn_args *a, const kiln_call *c, int64_t group, float scale) {
    const kiln_tensor *Q = &c->in[0], *K = &c->in[1], *V = &c->in[2], *O = &c->out;
    KILN_REQUIRE(group >= 1, KILN_ERR_PARAM);
    KILN_REQUIRE(Q->ndim == 4 && K->ndim == 4 && V->ndim == 4 && O->ndim == 4, KILN_ERR_SHAPE);
    KILN_REQUIRE(Q->dtype == KILN_FLOAT32 && K->dtype == KILN_FLOAT32 && V->dtype == KILN_FLOAT32 &&
                 O->dtype == KILN_FLOAT32, KILN_ERR_SHAPE);
    KILN_REQUIRE(K->shape[0] == Q->shape[0] && V->shape[0] == Q->shape[0] && K->shape[1] == V->shape[1] &&
                 K->shape[1] * group == Q->shape[1] && K->shape[2] == V->shape[2] && K->shape[3] == Q->shape[3],
                 KILN_ERR_SHAPE);
    KILN_REQUIRE(O->shape[0] == Q->shape[0] && O->shape[1] == Q->shape[1] && O->shape[2] == Q->shape[2] &&
                 O->shape[3] == V->shape[3], KILN_ERR_SHAPE);
    memset(a, 0, sizeof *a);
    a->q = (const float *)Q->data;
    a->k = (const float *)K->data;
    a->v = (const float *)V->data;
    a->out = (float *)c->out.data;
    a->B = Q->shape[0];
    a->Hq = Q->shape[1];
    a->Sq = Q->shape[2];
    a->D = Q->shape[3];
    a->Hkv = K->shape[1];
    a->Sk = K->shape[2];
    a->Dv = V->shape[3];
    a->group = group;
    a->scale = scale;
    a->kv_len = a->Sk;
    return KILN_OK;
}

int kiln_k_attention(const kiln_call *c) {
    KILN_REQUIRE((c->n_in == 3 || c->n_in == 4) && c->params, KILN_ERR_BAD_CALL);
    const kiln_attention_params *p = (const kiln_attention_params *)c->params;
    attn_args a;
    KILN_REQUIRE(p->causal == 0 || p->causal == 1, KILN_ERR_PARAM);
    int rc = attn_setup(&a, c, p->group, p->scale);
    if (rc != KILN_OK) return rc;
    a.causal = (int)p->causal;
    if (c->n_in > 3) {
        const kiln_tensor *Mk = &c->in[3];
        /* bool (true = keep) or float additive, broadcast to [B, Hq, Sq, Sk] */
        KILN_REQUIRE(Mk->dtype == KILN_BOOL || Mk->dtype == KILN_FLOAT32, KILN_ERR_SHAPE);
        KILN_REQUIRE(Mk->ndim <= 4, KILN_ERR_SHAPE);
        int64_t full[4] = {a.B, a.Hq, a.Sq, a.Sk};
        for (int d = 0; d < Mk->ndim; d++) {
            int64_t sz = Mk->shape[d], want = full[4 - Mk->ndim + d];
            KILN_REQUIRE(sz == 1 || sz == want, KILN_ERR_SHAPE);
        }
        a.mask = Mk->data;
        a.mask_bool = Mk->dtype == KILN_BOOL;
        for (int d = 3, run = 1; d >= 0; d--) {
            int md = d - (4 - Mk->ndim);
            int64_t sz = md >= 0 ? Mk->shape[md] : 1;
            a.ms[d] = sz == 1 ? 0 : run;
            run *= sz;
        }
    }
    return run_rows(&a, c);
}


typedef struct {
    const attn_args *a;
    float *scratch;
    int64_t per;
    int flash;  /* 0: standard, 1: flash in scratch, 2: flash in a stack tile */
} rows_ctx;

static void rows_range(void *p, int64_t begin, int64_t end, int slot) {
    const rows_ctx *k = (const rows_ctx *)p;
    const attn_args *a = k->a;
    float stack_buf[KILN_FLASH_BLOCK + KILN_STACK_DV + 2];
    float *buf = k->flash == 2 ? stack_buf : k->scratch + slot * attn_slot_floats(k->per);
    for (int64_t r = begin; r < end; r++) {
        int64_t i = r % a->Sq, bh = r / a->Sq;
        if (k->flash) row_flash(a, bh / a->Hq, bh % a->Hq, i, buf);
        else row_standard(a, bh / a->Hq, bh % a->Hq, i, buf);
    }
}

/* Shared by attention and cached_attention: all rows of queries, blocked, standard or flash. */
static int run_rows(const attn_args *pa, const kiln_call *c) {
    attn_args a = *pa;
    int64_t rows = a.B * a.Hq * a.Sq;
    if (rows == 0 || a.Dv == 0) return KILN_OK;
    if (flash_min_sk < 0 && kiln_attention_blocked(&a, c)) return KILN_OK;
    int flash = flash_min_sk >= 0 ? a.kv_len >= flash_min_sk : a.kv_len >= KILN_FLASH_MIN_SK;
    int64_t per = a.Sk > KILN_FLASH_BLOCK + a.Dv + 2 ? a.Sk : KILN_FLASH_BLOCK + a.Dv + 2;
    int64_t avail = c->scratch.data ? c->scratch.nbytes / (4 * attn_slot_floats(per)) : 0;
    int64_t work = rows * a.kv_len * (a.D + a.Dv) < (1 << 15) ? 0 : KILN_PAR_MIN;
    if (avail < 1) {
        /* no (or too little) scratch: flash with a stack tile, if the row fits */
        KILN_REQUIRE(a.Dv <= KILN_STACK_DV, KILN_ERR_UNSUPPORTED);
        flash = 2;
        avail = INT64_MAX;  /* each range has its own stack tile */
    }
    rows_ctx k = {&a, (float *)c->scratch.data, per, flash};
    kiln_par_slots(rows, work, avail, rows_range, &k);
    return KILN_OK;
}

/* The KV-cache position: one int64 in [0, limit]. */
static int load_pos(const kiln_tensor *P, int64_t limit, int64_t *pos) {
    KILN_REQUIRE(P->dtype == KILN_INT64 && kiln_numel(P) == 1, KILN_ERR_SHAPE);
    *pos = *(const int64_t *)P->data;
    KILN_REQUIRE(*pos >= 0 && *pos <= limit, KILN_ERR_INDEX);
    return KILN_OK;
}

/* q [B, Hq, S, D] at positions pos..pos+S-1 over caches [B, Hkv, L, D]: causal, keys [0, pos+S). */
int kiln_k_cached_attention(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 4 && c->params, KILN_ERR_BAD_CALL);
    const kiln_cached_attention_params *p = (const kiln_cached_attention_params *)c->params;
    attn_args a;
    int rc = attn_setup(&a, c, p->group, p->scale);
    if (rc != KILN_OK) return rc;
    int64_t pos;
    rc = load_pos(&c->in[3], a.Sk - a.Sq, &pos);  /* the session checks capacity; C checks again */
    if (rc != KILN_OK) return rc;
    a.causal = 1;
    a.kv_len = pos + a.Sq;
    a.offset = pos;
    return run_rows(&a, c);
}

/* [B, H, S, D] rows written into the cache [B, H, L, D] at positions pos..pos+S-1; out is the cache. */
int kiln_k_cache_write(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 3, KILN_ERR_BAD_CALL);
    const kiln_tensor *C = &c->in[0], *N = &c->in[1], *O = &c->out;
    KILN_REQUIRE(C->ndim == 4 && N->ndim == 4 && O->ndim == 4 && N->dtype == C->dtype && O->dtype == C->dtype,
                 KILN_ERR_SHAPE);
    for (int d = 0; d < 4; d++)
        KILN_REQUIRE(O->shape[d] == C->shape[d] && (d == 2 || N->shape[d] == C->shape[d]), KILN_ERR_SHAPE);
    int64_t L = C->shape[2], S = N->shape[2], D = N->shape[3], BH = N->shape[0] * N->shape[1];
    KILN_REQUIRE(S <= L, KILN_ERR_SHAPE);
    int64_t pos;
    int rc = load_pos(&c->in[2], L - S, &pos);
    if (rc != KILN_OK) return rc;
    char *dst = (char *)c->out.data;
    const char *src = (const char *)N->data;
    int64_t isz = kiln_itemsize(N->dtype), row = S * D * isz;
    if (dst != (char *)C->data) memcpy(dst, C->data, (size_t)kiln_numel(C) * isz);
    for (int64_t bh = 0; bh < BH; bh++) memcpy(dst + (bh * L + pos) * D * isz, src + bh * row, (size_t)row);
    return KILN_OK;
}

/* Test hook: force the kernel choice (-1 restores the default size rule). */
void kiln_set_flash_min_sk(int64_t sk) { flash_min_sk = sk; }
