/* Indexed reads: embedding, index_select, gather. Indices may be int64 or int32;
 * negative indices count from the end (as the numpy reference does). An index
 * still out of range never reads out of bounds: its output is zeros. */
#include "kiln.h"

static inline int64_t load_index(const kiln_tensor *t, int64_t i) {
    return t->dtype == KILN_INT32 ? ((const int32_t *)t->data)[i] : ((const int64_t *)t->data)[i];
}

/* -1 when out of range */
static inline int64_t fix_index(int64_t v, int64_t n) {
    if (v < 0) v += n;
    return (v >= 0 && v < n) ? v : -1;
}

static void take(const kiln_tensor *X, const kiln_tensor *I, const kiln_tensor *O, int ax) {
    /* out[o, j, :] = x[o, idx[j], :] with idx flat */
    int64_t esz = kiln_itemsize(X->dtype);
    int64_t outer = kiln_prod(X->shape, 0, ax), n = X->shape[ax];
    int64_t inner = kiln_prod(X->shape, ax + 1, X->ndim) * esz;
    int64_t nidx = kiln_numel(I);
    if (kiln_numel(O) * esz < outer * nidx * inner) return; /* shapes disagree: write nothing */
    const char *src = (const char *)X->data;
    char *dst = (char *)O->data;
    int64_t tasks = outer * nidx;
#pragma omp parallel for schedule(static) if(tasks > 1 && tasks * inner >= 4 * KILN_PAR_MIN)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t o = t / nidx, j = t % nidx;
        int64_t v = fix_index(load_index(I, j), n);
        if (v < 0) memset(dst + t * inner, 0, (size_t)inner);
        else memcpy(dst + t * inner, src + (o * n + v) * inner, (size_t)inner);
    }
}

void kiln_k_embedding(const kiln_call *c) {
    /* weight [V, D], ids [...] -> [..., D] */
    if (c->in[0].ndim != 2) return;
    take(&c->in[0], &c->in[1], &c->out, 0);
}

void kiln_k_index_select(const kiln_call *c) {
    int ax = (int)((const kiln_index_select_params *)c->params)->axis;
    if (ax < 0 || ax >= c->in[0].ndim) return;
    take(&c->in[0], &c->in[1], &c->out, ax);
}

/* torch.gather: out[i0..ik..] = x[i0..idx[i]..] along axis; other coords shared with idx */
void kiln_k_gather(const kiln_call *c) {
    const kiln_tensor *X = &c->in[0], *I = &c->in[1], *O = &c->out;
    int ax = (int)((const kiln_gather_params *)c->params)->axis;
    int nd = O->ndim;
    if (ax < 0 || ax >= nd || X->ndim != nd) return;
    int64_t esz = kiln_itemsize(X->dtype);
    int64_t xst[KILN_MAX_DIMS];
    for (int d = nd - 1, run = 1; d >= 0; d--) {
        xst[d] = run;
        run *= X->shape[d];
    }
    int64_t total = kiln_numel(O), n = X->shape[ax];
    const char *src = (const char *)X->data;
    char *dst = (char *)O->data;
#pragma omp parallel for schedule(static) if(total >= KILN_PAR_MIN)
    for (int64_t e = 0; e < total; e++) {
        int64_t r = e, off = 0, ok = 1;
        for (int d = nd - 1; d >= 0; d--) {
            int64_t i = r % O->shape[d];
            r /= O->shape[d];
            if (d == ax) continue;
            if (X->shape[d] == 1) i = 0;          /* numpy broadcasts x's size-1 dims */
            else if (i >= X->shape[d]) ok = 0;
            off += i * xst[d];
        }
        int64_t v = fix_index(load_index(I, e), n);
        if (v < 0 || !ok) memset(dst + e * esz, 0, (size_t)esz);
        else memcpy(dst + e * esz, src + (off + v * xst[ax]) * esz, (size_t)esz);
    }
}
