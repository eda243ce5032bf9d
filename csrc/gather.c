/* Indexed reads: embedding, index_select, gather. Indices may be int64 or int32;
 * negative indices count from the end (as the numpy reference does). Every index is
 * checked before anything is written: one out of range fails the call with
 * KILN_ERR_INDEX (never a zero row, never a read outside the table). */
#include "gemm.h"
#include "kiln.h"
#include "par.h"

static inline int64_t load_index(const kiln_tensor *t, int64_t i) {
    return t->dtype == KILN_INT32 ? ((const int32_t *)t->data)[i] : ((const int64_t *)t->data)[i];
}

static inline int64_t fix_index(int64_t v, int64_t n) { return v < 0 ? v + n : v; }

/* KILN_OK when every index lies in [-n, n). Serial: one cheap pass before the parallel copy. */
static int check_indices(const kiln_tensor *I, int64_t n) {
    KILN_REQUIRE(I->dtype == KILN_INT64 || I->dtype == KILN_INT32, KILN_ERR_SHAPE);
    int64_t m = kiln_numel(I);
    for (int64_t j = 0; j < m; j++) {
        int64_t v = load_index(I, j);
        KILN_REQUIRE(v >= -n && v < n, KILN_ERR_INDEX);
    }
    return KILN_OK;
}

/* Both gathers: the table x (n rows along the axis; gather: its element strides xst,
 * esz bytes each; take: rows of `inner` bytes), the indices I, the output O. */
typedef struct {
    const char *src;
    char *dst;
    const kiln_tensor *X, *I, *O;
    int ax;
    int64_t n, nidx, inner, esz;
    const int64_t *xst;
} gather_ctx;

static void take_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const gather_ctx k = *(const gather_ctx *)p;
    for (int64_t t = begin; t < end; t++) {
        int64_t o = t / k.nidx, v = fix_index(load_index(k.I, t % k.nidx), k.n);
        memcpy(k.dst + t * k.inner, k.src + (o * k.n + v) * k.inner, (size_t)k.inner);
    }
}

/* out = x.shape[:ax] + idx.shape + x.shape[ax+1:]: out[o, j, :] = x[o, idx[j], :] with idx flat */
static int take(const kiln_tensor *X, const kiln_tensor *I, const kiln_tensor *O, int ax) {
    KILN_REQUIRE(ax >= 0 && ax < X->ndim, KILN_ERR_PARAM);
    KILN_REQUIRE(O->dtype == X->dtype && O->ndim == X->ndim - 1 + I->ndim, KILN_ERR_SHAPE);
    for (int d = 0; d < O->ndim; d++) {
        int64_t want = d < ax ? X->shape[d] : d < ax + I->ndim ? I->shape[d - ax] : X->shape[d - I->ndim + 1];
        KILN_REQUIRE(O->shape[d] == want, KILN_ERR_SHAPE);
    }
    int64_t esz = kiln_itemsize(X->dtype);
    int64_t outer = kiln_prod(X->shape, 0, ax), n = X->shape[ax];
    int64_t inner = kiln_prod(X->shape, ax + 1, X->ndim) * esz;
    int64_t nidx = kiln_numel(I);
    int rc = check_indices(I, n);
    if (rc != KILN_OK) return rc;
    int64_t tasks = outer * nidx;
    gather_ctx take_k = {(const char *)X->data, (char *)O->data, X, I, O, ax, n, nidx, inner, 1, NULL};
    kiln_par_for(tasks, tasks * inner / 4, take_range, &take_k);
    return KILN_OK;
}

/* A table packed for the GEMM (its bytes, 1-D bool; logical [V, D], kiln/passes/pack.py):
 * an embedding tied to the LM head keeps that one copy. */
static int embedding_packed(const kiln_call *c) {
    const kiln_tensor *W = &c->in[0], *I = &c->in[1], *O = &c->out;
    KILN_REQUIRE(O->dtype == KILN_FLOAT32 && O->ndim == I->ndim + 1, KILN_ERR_SHAPE);
    for (int d = 0; d < I->ndim; d++) KILN_REQUIRE(O->shape[d] == I->shape[d], KILN_ERR_SHAPE);
    int64_t D = O->shape[O->ndim - 1];
    KILN_REQUIRE(D > 0 && W->nbytes % (4 * D) == 0, KILN_ERR_SHAPE);
    int64_t V = W->nbytes / (4 * D), m = kiln_numel(I);
    int rc = check_indices(I, V);
    if (rc != KILN_OK) return rc;
    for (int64_t j = 0; j < m; j++)
        if (kiln_gemm_unpack_col(D, V, (const float *)W->data, fix_index(load_index(I, j), V),
                                 (float *)O->data + j * D) != 0)
            return KILN_ERR_SHAPE;
    return KILN_OK;
}

int kiln_k_embedding(const kiln_call *c) {
    /* weight [V, D], ids [...] -> [..., D] */
    KILN_REQUIRE(c->n_in == 2, KILN_ERR_BAD_CALL);
    if (c->in[0].dtype == KILN_BOOL && c->in[0].ndim == 1) return embedding_packed(c);
    KILN_REQUIRE(c->in[0].ndim == 2, KILN_ERR_SHAPE);
    return take(&c->in[0], &c->in[1], &c->out, 0);
}

int kiln_k_index_select(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 2 && c->params, KILN_ERR_BAD_CALL);
    int64_t ax = ((const kiln_index_select_params *)c->params)->axis;
    KILN_REQUIRE(ax >= 0 && ax < c->in[0].ndim, KILN_ERR_PARAM);
    KILN_REQUIRE(c->in[1].ndim == 1, KILN_ERR_SHAPE);
    return take(&c->in[0], &c->in[1], &c->out, (int)ax);
}

static void gath_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const gather_ctx k = *(const gather_ctx *)p;
    for (int64_t e = begin; e < end; e++) {
        int64_t r = e, off = 0;
        for (int d = k.O->ndim - 1; d >= 0; d--) {
            int64_t i = r % k.O->shape[d];
            r /= k.O->shape[d];
            if (d == k.ax) continue;
            if (k.X->shape[d] == 1) i = 0;          /* numpy broadcasts x's size-1 dims */
            off += i * k.xst[d];
        }
        int64_t v = fix_index(load_index(k.I, e), k.n);
        memcpy(k.dst + e * k.esz, k.src + (off + v * k.xst[k.ax]) * k.esz, (size_t)k.esz);
    }
}

/* torch.gather: out[i0..ik..] = x[i0..idx[i]..] along axis; other coords shared with idx
 * (x may be larger than idx off the axis, as torch allows, or size 1: broadcast). */
int kiln_k_gather(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 2 && c->params, KILN_ERR_BAD_CALL);
    const kiln_tensor *X = &c->in[0], *I = &c->in[1], *O = &c->out;
    int64_t axis = ((const kiln_gather_params *)c->params)->axis;
    int nd = O->ndim;
    KILN_REQUIRE(axis >= 0 && axis < nd, KILN_ERR_PARAM);
    int ax = (int)axis;
    KILN_REQUIRE(X->ndim == nd && I->ndim == nd && O->dtype == X->dtype, KILN_ERR_SHAPE);
    for (int d = 0; d < nd; d++) {
        KILN_REQUIRE(I->shape[d] == O->shape[d], KILN_ERR_SHAPE);
        KILN_REQUIRE(d == ax || X->shape[d] == 1 || O->shape[d] <= X->shape[d], KILN_ERR_SHAPE);
    }
    int64_t total = kiln_numel(O), n = X->shape[ax];
    int rc = check_indices(I, n);
    if (rc != KILN_OK) return rc;
    int64_t esz = kiln_itemsize(X->dtype);
    int64_t xst[KILN_MAX_DIMS];
    kiln_strides(X, xst);
    gather_ctx gath_k = {(const char *)X->data, (char *)O->data, X, I, O, ax, n, 0, 0, esz, xst};
    kiln_par_for(total, total, gath_range, &gath_k);
    return KILN_OK;
}
