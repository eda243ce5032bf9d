/* Batched KV cache over sequence slots (kiln/ops/slot_cache.py): a packed batch of S tokens
 * from several sequences, each with a slot id and a position (int64 [S] each).
 *
 *  - slot_cache_write: token t of new [1, H, S, D] goes to cache [slots, H, L, D] at
 *    (slot[t], :, pos[t]);
 *  - slot_cached_attention: token t of q [1, Hq, S, D] attends to keys 0..pos[t] of slot
 *    slot[t] (causal within its own sequence).
 *
 * Every slot id and position is checked before anything is written (KILN_ERR_INDEX). A task is
 * one token and the query heads of one K/V head (GQA: they share each K and V load); a (head,
 * token) row's arithmetic (key tiles of SLOT_TILE, online softmax, the order of every sum) depends
 * only on its own position, never on S, the other rows, the head share or the thread split, so a
 * sequence gets bit-identical results alone or batched with others.
 */
#include <math.h>

#include "kiln.h"
#include "par.h"
#include "vmath.h"

#define SLOT_TILE 64        /* keys per tile of the online softmax */
#define SLOT_HEADS 8        /* query heads of one K/V head per task, at most */
#define SLOT_ACC 2048       /* floats of running output rows on the stack: heads x Dv */

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
    int64_t Hq, Hkv, S, L, D, Dv, group, heads; /* heads: query heads per task (a share of a group) */
    float scale;
} slot_attn;

/* Query heads h0..h0+nh-1 (one K/V head) of token t: scores over the slot's keys 0..pos[t] in tiles,
 * online softmax per head. The heads share each load of K and V; a head's arithmetic (4 keys per
 * dot block from each tile's start, then single keys; sums in key order) is fixed by pos[t] alone. */
static void slot_heads(const slot_attn *a, int64_t h0, int64_t nh, int64_t t) {
    int64_t hk = h0 / a->group, n = a->pos[t] + 1, D = a->D, Dv = a->Dv;
    const float *k = a->k + (a->slot[t] * a->Hkv + hk) * a->L * D;
    const float *v = a->v + (a->slot[t] * a->Hkv + hk) * a->L * Dv;
    float s[SLOT_HEADS][SLOT_TILE], acc[SLOT_ACC], m[SLOT_HEADS], l[SLOT_HEADS];
    const float *q[SLOT_HEADS];
    for (int64_t g = 0; g < nh; g++) {
        q[g] = a->q + ((h0 + g) * a->S + t) * D;
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }
    for (int64_t d = 0; d < nh * Dv; d++) acc[d] = 0.0f;
    for (int64_t j0 = 0; j0 < n; j0 += SLOT_TILE) {
        int64_t nt = n - j0 < SLOT_TILE ? n - j0 : SLOT_TILE, j = 0;
        for (; j + 4 <= nt; j += 4)
            for (int64_t g = 0; g < nh; g++) {
                float d4[4];
                kiln_dot4(q[g], k + (j0 + j) * D, D, D, d4);
                for (int t = 0; t < 4; t++) s[g][j + t] = d4[t] * a->scale;
            }
        for (; j < nt; j++) {
            const float *kj = k + (j0 + j) * D;
            for (int64_t g = 0; g < nh; g++) s[g][j] = kiln_dot(q[g], kj, D) * a->scale;
        }
        for (int64_t g = 0; g < nh; g++) {
            float mt = -INFINITY, *sg = s[g], *ag = acc + g * Dv;
            for (j = 0; j < nt; j++) mt = sg[j] > mt ? sg[j] : mt;
            if (mt > m[g]) {
                float corr = m[g] == -INFINITY ? 0.0f : kiln_exp_ftz(m[g] - mt);
                l[g] *= corr;
                for (int64_t d = 0; d < Dv; d++) ag[d] *= corr;
                m[g] = mt;
            }
            float ls = 0.0f;
            for (j = 0; j < nt; j++) {
                sg[j] = kiln_exp_ftz(sg[j] - m[g]);
                ls += sg[j];
            }
            l[g] += ls;
        }
        for (j = 0; j < nt; j++) {
            const float *vj = v + (j0 + j) * Dv;
            for (int64_t g = 0; g < nh; g++) {
                float p = s[g][j], *ag = acc + g * Dv;
#pragma omp simd
                for (int64_t d = 0; d < Dv; d++) ag[d] += p * vj[d];
            }
        }
    }
    for (int64_t g = 0; g < nh; g++) {
        float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f, *o = a->out + ((h0 + g) * a->S + t) * Dv;
        for (int64_t d = 0; d < Dv; d++) o[d] = acc[g * Dv + d] * inv;
    }
}

/* task r: token r % S, head share r / S (shares of `heads` query heads, never across a K/V head) */
static void slot_rows(void *p, int64_t lo, int64_t hi, int thread) {
    const slot_attn *a = (const slot_attn *)p;
    int64_t shares = (a->group + a->heads - 1) / a->heads;
    (void)thread;
    for (int64_t r = lo; r < hi; r++) {
        int64_t t = r % a->S, share = r / a->S, hk = share / shares, first = (share % shares) * a->heads;
        int64_t nh = a->group - first < a->heads ? a->group - first : a->heads;
        slot_heads(a, hk * a->group + first, nh, t);
    }
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
    KILN_REQUIRE(V->shape[3] <= SLOT_ACC, KILN_ERR_UNSUPPORTED);
    int64_t heads = V->shape[3] ? SLOT_ACC / V->shape[3] : SLOT_HEADS;
    heads = heads < SLOT_HEADS ? heads : SLOT_HEADS;
    heads = heads < p->group ? heads : p->group;
    slot_attn a = {(const float *)Q->data, (const float *)K->data, (const float *)V->data, (float *)O->data,
                   (const int64_t *)c->in[3].data, (const int64_t *)c->in[4].data, Q->shape[1], K->shape[1],
                   Q->shape[2], K->shape[2], Q->shape[3], V->shape[3], p->group, heads, p->scale};
    int rc = check_rows(&c->in[3], &c->in[4], a.S, K->shape[0], a.L);
    if (rc != KILN_OK) return rc;
    int64_t rows = a.Hkv * ((a.group + heads - 1) / heads) * a.S, work = 0;
    for (int64_t t = 0; t < a.S; t++) work += (a.pos[t] + 1) * (a.D + a.Dv);
    work *= a.Hq;
    if (rows == 0 || a.Dv == 0) return KILN_OK;
    kiln_par_for(rows, work, slot_rows, &a);
    return KILN_OK;
}
