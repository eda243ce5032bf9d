/* Batched KV cache over sequence slots (kiln/ops/slot_cache.py): a packed batch of S tokens
 * from several sequences, each with a slot id and a position (int64 [S] each).
 *
 *  - slot_cache_write: token t of new [1, H, S, D] goes to cache [slots, H, L, D] at
 *    (slot[t], :, pos[t]);
 *  - slot_cached_attention: token t of q [1, Hq, S, D] attends to keys 0..pos[t] of slot
 *    slot[t] (causal within its own sequence).
 *
 * Every slot id and position is checked before anything is written (KILN_ERR_INDEX). One
 * (head, token) row per task; a row's arithmetic (key tiles of SLOT_TILE, online softmax,
 * the order of every sum) depends only on its own position, never on S, the other rows or the
 * thread split, so a sequence gets bit-identical results alone or batched with others.
 */
#include <math.h>

#include "kiln.h"
#include "par.h"
#include "vmath.h"

#define SLOT_TILE 64        /* keys per tile of the online softmax */
#define SLOT_MAX_DV 1024    /* the running output row lives on the stack */

/* slot ids in [0, slots) and positions in [0, L), one of each per token */
static int check_rows(const kiln_tensor *slot, const kiln_tensor *pos, int64_t S, int64_t slots, int64_t L) {
    KILN_REQUIRE(slot->dtype == KILN_INT64 && pos->dtype == KILN_INT64 && slot->ndim == 1 && pos->ndim == 1 &&
                 slot->shape[0] == S && pos->shape[0] == S, KILN_ERR_SHAPE);
    const int64_t *sl = (const int64_t *)slot->data, *ps = (const int64_t *)pos->data;
    for (int64_t t = 0; t < S; t++)
        KILN_REQUIRE(sl[t] >= 0 && sl[t] < slots && ps[t] >= 0 && ps[t] < L, KILN_ERR_INDEX);
    return KILN_OK;
}

int kiln_k_slot_cache_write(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 4, KILN_ERR_BAD_CALL);
    const kiln_tensor *C = &c->in[0], *N = &c->in[1], *O = &c->out;
    KILN_REQUIRE(C->ndim == 4 && N->ndim == 4 && O->ndim == 4 && N->dtype == C->dtype && O->dtype == C->dtype,
                 KILN_ERR_SHAPE);
    for (int d = 0; d < 4; d++) KILN_REQUIRE(O->shape[d] == C->shape[d], KILN_ERR_SHAPE);
    KILN_REQUIRE(N->shape[0] == 1 && N->shape[1] == C->shape[1] && N->shape[3] == C->shape[3], KILN_ERR_SHAPE);
    int64_t slots = C->shape[0], H = C->shape[1], L = C->shape[2], D = C->shape[3], S = N->shape[2];
    int rc = check_rows(&c->in[2], &c->in[3], S, slots, L);
    if (rc != KILN_OK) return rc;
    const int64_t *sl = (const int64_t *)c->in[2].data, *ps = (const int64_t *)c->in[3].data;
    int64_t isz = kiln_itemsize(N->dtype), row = D * isz;
    char *dst = (char *)O->data;
    const char *src = (const char *)N->data;
    if (dst != (char *)C->data) memcpy(dst, C->data, (size_t)(kiln_numel(C) * isz));
    for (int64_t t = 0; t < S; t++)
        for (int64_t h = 0; h < H; h++)
            memcpy(dst + ((sl[t] * H + h) * L + ps[t]) * row, src + (h * S + t) * row, (size_t)row);
    return KILN_OK;
}

typedef struct {
    const float *q, *k, *v;
    float *out;
    const int64_t *slot, *pos;
    int64_t Hq, Hkv, S, L, D, Dv, group;
    float scale;
} slot_attn;

/* One (head h, token t) row: online softmax over the slot's keys 0..pos[t] in tiles. */
static void slot_row(const slot_attn *a, int64_t h, int64_t t) {
    int64_t hk = h / a->group, n = a->pos[t] + 1, D = a->D, Dv = a->Dv;
    const float *q = a->q + (h * a->S + t) * D;
    const float *k = a->k + (a->slot[t] * a->Hkv + hk) * a->L * D;
    const float *v = a->v + (a->slot[t] * a->Hkv + hk) * a->L * Dv;
    float *o = a->out + (h * a->S + t) * Dv;
    float s[SLOT_TILE], acc[SLOT_MAX_DV];
    float m = -INFINITY, l = 0.0f;
    for (int64_t d = 0; d < Dv; d++) acc[d] = 0.0f;
    for (int64_t j0 = 0; j0 < n; j0 += SLOT_TILE) {
        int64_t nt = n - j0 < SLOT_TILE ? n - j0 : SLOT_TILE;
        float mt = -INFINITY;
        for (int64_t j = 0; j < nt; j++) {
            const float *kj = k + (j0 + j) * D;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; d++) dot += q[d] * kj[d];
            s[j] = dot * a->scale;
            mt = s[j] > mt ? s[j] : mt;
        }
        if (mt > m) {
            float corr = m == -INFINITY ? 0.0f : kiln_exp(m - mt);
            l *= corr;
            for (int64_t d = 0; d < Dv; d++) acc[d] *= corr;
            m = mt;
        }
        float ls = 0.0f;
        for (int64_t j = 0; j < nt; j++) {
            s[j] = kiln_exp(s[j] - m);
            ls += s[j];
        }
        l += ls;
        for (int64_t j = 0; j < nt; j++) {
            const float *vj = v + (j0 + j) * Dv;
            float p = s[j];
#pragma omp simd
            for (int64_t d = 0; d < Dv; d++) acc[d] += p * vj[d];
        }
    }
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int64_t d = 0; d < Dv; d++) o[d] = acc[d] * inv;
}

static void slot_rows(void *p, int64_t lo, int64_t hi, int thread) {
    const slot_attn *a = (const slot_attn *)p;
    (void)thread;
    for (int64_t r = lo; r < hi; r++) slot_row(a, r / a->S, r % a->S);
}

int kiln_k_slot_cached_attention(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 5 && c->params, KILN_ERR_BAD_CALL);
    const kiln_slot_cached_attention_params *p = (const kiln_slot_cached_attention_params *)c->params;
    const kiln_tensor *Q = &c->in[0], *K = &c->in[1], *V = &c->in[2], *O = &c->out;
    KILN_REQUIRE(Q->ndim == 4 && K->ndim == 4 && V->ndim == 4 && O->ndim == 4, KILN_ERR_SHAPE);
    KILN_REQUIRE(Q->dtype == KILN_FLOAT32 && K->dtype == KILN_FLOAT32 && V->dtype == KILN_FLOAT32 &&
                 O->dtype == KILN_FLOAT32, KILN_ERR_SHAPE);
    KILN_REQUIRE(p->group >= 1, KILN_ERR_PARAM);
    KILN_REQUIRE(Q->shape[0] == 1 && K->shape[0] == V->shape[0] && K->shape[1] == V->shape[1] &&
                 K->shape[2] == V->shape[2] && K->shape[3] == Q->shape[3] && K->shape[1] * p->group == Q->shape[1],
                 KILN_ERR_SHAPE);
    KILN_REQUIRE(O->shape[0] == 1 && O->shape[1] == Q->shape[1] && O->shape[2] == Q->shape[2] &&
                 O->shape[3] == V->shape[3], KILN_ERR_SHAPE);
    KILN_REQUIRE(V->shape[3] <= SLOT_MAX_DV, KILN_ERR_UNSUPPORTED);
    slot_attn a = {(const float *)Q->data, (const float *)K->data, (const float *)V->data, (float *)O->data,
                   (const int64_t *)c->in[3].data, (const int64_t *)c->in[4].data,
                   Q->shape[1], K->shape[1], Q->shape[2], K->shape[2], Q->shape[3], V->shape[3], p->group, p->scale};
    int rc = check_rows(&c->in[3], &c->in[4], a.S, K->shape[0], a.L);
    if (rc != KILN_OK) return rc;
    int64_t rows = a.Hq * a.S, work = 0;
    for (int64_t t = 0; t < a.S; t++) work += (a.pos[t] + 1) * (a.D + a.Dv);
    work *= a.Hq;
    if (rows == 0 || a.Dv == 0) return KILN_OK;
    kiln_par_for(rows, work, slot_rows, &a);
    return KILN_OK;
}
