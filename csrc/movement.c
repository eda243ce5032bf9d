/* Data movement: reshape/copy (memcpy), permute, expand, slice, concat. Dtype-agnostic:
 * everything moves elements of `itemsize` bytes. */
#include "kiln.h"
#include "par.h"

typedef struct {
    void *dst;
    const void *src;
    int64_t nbytes;
    int64_t chunk;
} memcpy_ctx;

static void memcpy_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const memcpy_ctx *k = (const memcpy_ctx *)p;
    void *dst = k->dst;
    const void *src = k->src;
    int64_t nbytes = k->nbytes;
    int64_t chunk = k->chunk;
    for (int64_t t = lo; t < hi; t++) {
        int64_t off = t * chunk, n = nbytes - off < chunk ? nbytes - off : chunk;
        memcpy((char *)dst + off, (const char *)src + off, (size_t)n);
    }
}

static void par_memcpy(void *dst, const void *src, int64_t nbytes) {
    if (dst == src || nbytes <= 0) return;
    const int64_t chunk = 1 << 20;
    int64_t tasks = (nbytes + chunk - 1) / chunk;
    memcpy_ctx memcpy_k = {dst, src, nbytes, chunk};
    kiln_par_for(tasks, tasks * KILN_PAR_MIN, memcpy_range, &memcpy_k);
}

int kiln_k_copy(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 1, KILN_ERR_BAD_CALL);
    KILN_REQUIRE(c->out.nbytes == c->in[0].nbytes && c->out.dtype == c->in[0].dtype, KILN_ERR_SHAPE);
    par_memcpy(c->out.data, c->in[0].data, c->out.nbytes);
    return KILN_OK;
}

int kiln_k_reshape(const kiln_call *c) { return kiln_k_copy(c); }

/* Copy one strided row of n elements (source stride `s` elements) for element size esz. */
static inline void strided_row(char *dst, const char *src, int64_t n, int64_t s, int64_t esz) {
    if (s == 1) {
        memcpy(dst, src, (size_t)(n * esz));
        return;
    }
    switch (esz) {
    case 4: {
        uint32_t *d = (uint32_t *)dst;
        const uint32_t *p = (const uint32_t *)src;
        for (int64_t i = 0; i < n; i++) d[i] = p[i * s];
        break;
    }
    case 8: {
        uint64_t *d = (uint64_t *)dst;
        const uint64_t *p = (const uint64_t *)src;
        for (int64_t i = 0; i < n; i++) d[i] = p[i * s];
        break;
    }
    case 1:
        for (int64_t i = 0; i < n; i++) dst[i] = src[i * s];
        break;
    default:
        for (int64_t i = 0; i < n; i++) memcpy(dst + i * esz, src + i * s * esz, (size_t)esz);
    }
}

typedef struct {
    const kiln_bcast *bcp;
    const kiln_tensor *out;
    const kiln_tensor *in;
    int64_t esz;
    int64_t n;
    int64_t s;
} bcopy_ctx;

static void bcopy_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const bcopy_ctx *k = (const bcopy_ctx *)p;
    const kiln_bcast *bcp = k->bcp;
    const kiln_tensor *out = k->out;
    const kiln_tensor *in = k->in;
    int64_t esz = k->esz;
    int64_t n = k->n;
    int64_t s = k->s;
    for (int64_t r = lo; r < hi; r++) {
        int64_t off[KILN_BC_MAX];
        kiln_bcast_row(bcp, r, off);
        char *d = (char *)out->data + off[0] * esz;
        const char *p = (const char *)in->data + off[1] * esz;
        if (s == 1) memcpy(d, p, (size_t)(n * esz));
        else if (esz == 4) {
            uint32_t v;
            memcpy(&v, p, 4);
            for (int64_t i = 0; i < n; i++) ((uint32_t *)d)[i] = v;
        } else
            for (int64_t i = 0; i < n; i++) memcpy(d + i * esz, p, (size_t)esz);
    }
}

/* out[...] = in[...] broadcast (same dtype). */
int kiln_broadcast_copy(const kiln_tensor *out, const kiln_tensor *in) {
    KILN_REQUIRE(in->dtype == out->dtype && kiln_broadcasts(in, out), KILN_ERR_SHAPE);
    if (kiln_numel(out) == 0) return KILN_OK;
    const kiln_tensor *ins[1] = {in};
    kiln_bcast bc;
    kiln_bcast_init(&bc, out, ins, 1);
    int64_t esz = kiln_itemsize(out->dtype);
    int64_t n = bc.shape[bc.nd - 1], rows = kiln_prod(bc.shape, 0, bc.nd - 1);
    int64_t s = bc.st[1][bc.nd - 1];
    bcopy_ctx bcopy_k = {&bc, out, in, esz, n, s};
    kiln_par_for(rows, rows * n, bcopy_range, &bcopy_k);
    return KILN_OK;
}

int kiln_k_expand(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 1, KILN_ERR_BAD_CALL);
    return kiln_broadcast_copy(&c->out, &c->in[0]);
}

typedef struct {
    const char *src;
    char *dst;
    const int64_t *shp;
    const int64_t *st;
    int m;
    int jd;
    int64_t esz;
    int64_t T;
    int64_t J;
    int64_t sj;
    int64_t inner;
    int64_t s_in;
    int64_t tiles_i;
    int64_t tiles_j;
} tile_ctx;

static void tile_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const tile_ctx *k = (const tile_ctx *)p;
    const char *src = k->src;
    char *dst = k->dst;
    const int64_t *shp = k->shp;
    const int64_t *st = k->st;
    int m = k->m;
    int jd = k->jd;
    int64_t esz = k->esz;
    int64_t T = k->T;
    int64_t J = k->J;
    int64_t sj = k->sj;
    int64_t inner = k->inner;
    int64_t s_in = k->s_in;
    int64_t tiles_i = k->tiles_i;
    int64_t tiles_j = k->tiles_j;
    for (int64_t t = lo; t < hi; t++) {
        int64_t ti = t % tiles_i, tj = (t / tiles_i) % tiles_j, o = t / (tiles_i * tiles_j);
        /* decompose o over the dims other than jd and m-1 */
        int64_t so = 0, dof = 0, r = o;
        for (int d = m - 2; d >= 0; d--) {
            if (d == jd) continue;
            int64_t i = r % shp[d];
            r /= shp[d];
            so += i * st[d];
            dof += i * kiln_prod(shp, d + 1, m);
        }
        int64_t j0 = tj * T, j1 = j0 + T < J ? j0 + T : J, i0 = ti * T, i1 = i0 + T < inner ? i0 + T : inner;
        if (esz == 4) {
            const uint32_t *s4 = (const uint32_t *)src + so;
            uint32_t *d4 = (uint32_t *)dst + dof;
            for (int64_t j = j0; j < j1; j++)
                for (int64_t i = i0; i < i1; i++) d4[j * sj + i] = s4[j + i * s_in];
        } else {
            const uint64_t *s8 = (const uint64_t *)src + so;
            uint64_t *d8 = (uint64_t *)dst + dof;
            for (int64_t j = j0; j < j1; j++)
                for (int64_t i = i0; i < i1; i++) d8[j * sj + i] = s8[j + i * s_in];
        }
    }
}

typedef struct {
    const char *src;
    char *dst;
    const int64_t *shp;
    const int64_t *st;
    int m;
    int64_t esz;
    int64_t inner;
    int64_t s_in;
} strided_ctx;

static void strided_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const strided_ctx *k = (const strided_ctx *)p;
    const char *src = k->src;
    char *dst = k->dst;
    const int64_t *shp = k->shp;
    const int64_t *st = k->st;
    int m = k->m;
    int64_t esz = k->esz;
    int64_t inner = k->inner;
    int64_t s_in = k->s_in;
    for (int64_t r = lo; r < hi; r++) {
        int64_t so = 0, q = r;
        for (int d = m - 2; d >= 0 && q; d--) {
            so += (q % shp[d]) * st[d];
            q /= shp[d];
        }
        strided_row(dst + r * inner * esz, src + so * esz, inner, s_in, esz);
    }
}

/* -- permute ------------------------------------------------------------------------ */
int kiln_k_permute(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 1 && c->params, KILN_ERR_BAD_CALL);
    const kiln_tensor *X = &c->in[0], *O = &c->out;
    const int64_t *perm = ((const kiln_permute_params *)c->params)->perm;
    int nd = X->ndim;
    KILN_REQUIRE(O->ndim == nd && O->dtype == X->dtype, KILN_ERR_SHAPE);
    int seen[KILN_MAX_DIMS] = {0};
    for (int d = 0; d < nd; d++) {   /* a permutation of 0..nd-1 */
        KILN_REQUIRE(perm[d] >= 0 && perm[d] < nd && !seen[perm[d]], KILN_ERR_PARAM);
        seen[perm[d]] = 1;
        KILN_REQUIRE(O->shape[d] == X->shape[perm[d]], KILN_ERR_SHAPE);
    }
    int64_t esz = kiln_itemsize(X->dtype);
    if (kiln_numel(O) == 0) return KILN_OK;
    int64_t xst[KILN_MAX_DIMS];
    for (int d = nd - 1, run = 1; d >= 0; d--) {
        xst[d] = run;
        run *= X->shape[d];
    }
    /* out dim d reads input dim perm[d]; drop size-1 dims and merge runs contiguous in both */
    int m = 0;
    int64_t shp[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    for (int d = 0; d < nd; d++) {
        int64_t p = perm[d];
        int64_t sz = X->shape[p], s = xst[p];
        if (sz == 1) continue;
        if (m > 0 && st[m - 1] == s * sz) {
            shp[m - 1] *= sz;
            st[m - 1] = s;
            continue;
        }
        shp[m] = sz;
        st[m] = s;
        m++;
    }
    if (m <= 1 && (m == 0 || st[0] == 1)) {
        par_memcpy(O->data, X->data, kiln_numel(O) * esz);
        return KILN_OK;
    }
    const char *src = (const char *)X->data;
    char *dst = (char *)O->data;
    int64_t inner = shp[m - 1], s_in = st[m - 1];
    /* Transpose-like (inner reads strided): tile over the inner dim and the out dim
     * whose source is contiguous, so reads and writes both stay in cache. */
    int jd = -1;
    for (int d = m - 2; d >= 0; d--)
        if (st[d] == 1) { jd = d; break; }
    if (s_in != 1 && jd >= 0 && (esz == 4 || esz == 8)) {
        const int64_t T = 32;
        int64_t J = shp[jd], sj = kiln_prod(shp, jd + 1, m);  /* out stride of dim jd */
        int64_t outer = kiln_prod(shp, 0, m - 1) / J;          /* every other dim */
        int64_t tiles_j = (J + T - 1) / T, tiles_i = (inner + T - 1) / T;
        int64_t tasks = outer * tiles_j * tiles_i;
        tile_ctx tile_k = {src, dst, shp, st, m, jd, esz, T, J, sj, inner, s_in, tiles_i, tiles_j};
        kiln_par_for(tasks, kiln_numel(O), tile_range, &tile_k);
        return KILN_OK;
    }
    int64_t rows = kiln_prod(shp, 0, m - 1);
    strided_ctx strided_k = {src, dst, shp, st, m, esz, inner, s_in};
    kiln_par_for(rows, rows * inner, strided_range, &strided_k);
    return KILN_OK;
}

/* Row copies for slice and concat: row t = (t / per, t % per) moves `bytes` bytes from
 * src + (t / per) * s_outer + (t % per) * s_inner + s_off to dst + (t / per) * d_outer + (t % per) * d_inner. */
typedef struct {
    char *dst;
    const char *src;
    int64_t bytes, per, d_outer, d_inner, s_outer, s_inner, s_off;
} rowcopy_ctx;

static void rowcopy_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const rowcopy_ctx *k = (const rowcopy_ctx *)p;
    for (int64_t t = lo; t < hi; t++) {
        int64_t o = t / k->per, j = t % k->per;
        memcpy(k->dst + o * k->d_outer + j * k->d_inner, k->src + o * k->s_outer + j * k->s_inner + k->s_off,
               (size_t)k->bytes);
    }
}

/* -- slice ---------------------------------------------------------------------------- */
int kiln_k_slice(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 1 && c->params, KILN_ERR_BAD_CALL);
    const kiln_slice_params *p = (const kiln_slice_params *)c->params;
    const kiln_tensor *X = &c->in[0], *O = &c->out;
    KILN_REQUIRE(p->axis >= 0 && p->axis < X->ndim && p->step >= 1, KILN_ERR_PARAM);
    int ax = (int)p->axis;
    KILN_REQUIRE(O->ndim == X->ndim && O->dtype == X->dtype, KILN_ERR_SHAPE);
    for (int d = 0; d < X->ndim; d++) KILN_REQUIRE(d == ax || O->shape[d] == X->shape[d], KILN_ERR_SHAPE);
    if (kiln_numel(O) == 0) return KILN_OK;
    int64_t esz = kiln_itemsize(X->dtype);
    int64_t outer = kiln_prod(X->shape, 0, ax), lin = X->shape[ax], lout = O->shape[ax];
    int64_t inner = kiln_prod(X->shape, ax + 1, X->ndim) * esz;
    int64_t start = p->start, step = p->step;
    /* the last element read, start + (lout - 1) * step, must lie in [0, lin) (no overflow: lout <= numel) */
    KILN_REQUIRE(start >= 0 && start < lin && (lout - 1) <= (lin - 1 - start) / step, KILN_ERR_PARAM);
    const char *src = (const char *)X->data;
    char *dst = (char *)O->data;
    if (step == 1) {  /* one block of lout rows per outer index */
        rowcopy_ctx rk = {dst, src, lout * inner, 1, lout * inner, 0, lin * inner, 0, start * inner};
        kiln_par_for(outer, outer * lout * inner / 4, rowcopy_range, &rk);
        return KILN_OK;
    }
    /* row t = (o, j): out row t from in row o * lin + start + j * step */
    rowcopy_ctx k = {dst, src, inner, lout, lout * inner, inner, lin * inner, step * inner, start * inner};
    kiln_par_for(outer * lout, outer * lout * inner / 4, rowcopy_range, &k);
    return KILN_OK;
}

/* -- concat ----------------------------------------------------------------------------- */
int kiln_k_concat(const kiln_call *c) {
    KILN_REQUIRE(c->n_in >= 1 && c->params, KILN_ERR_BAD_CALL);
    const kiln_tensor *O = &c->out;
    int64_t axis = ((const kiln_concat_params *)c->params)->axis;
    KILN_REQUIRE(axis >= 0 && axis < O->ndim, KILN_ERR_PARAM);
    int ax = (int)axis;
    int64_t along = 0;   /* inputs: same rank and dtype as out, same off-axis dims, axis sizes sum to out's */
    for (int k = 0; k < c->n_in; k++) {
        const kiln_tensor *X = &c->in[k];
        KILN_REQUIRE(X->ndim == O->ndim && X->dtype == O->dtype, KILN_ERR_SHAPE);
        for (int d = 0; d < O->ndim; d++) KILN_REQUIRE(d == ax || X->shape[d] == O->shape[d], KILN_ERR_SHAPE);
        along += X->shape[ax];
    }
    KILN_REQUIRE(along == O->shape[ax], KILN_ERR_SHAPE);
    if (kiln_numel(O) == 0) return KILN_OK;
    int64_t esz = kiln_itemsize(O->dtype);
    int64_t outer = kiln_prod(O->shape, 0, ax), inner = kiln_prod(O->shape, ax + 1, O->ndim) * esz;
    int64_t orow = O->shape[ax] * inner, base = 0;
    for (int k = 0; k < c->n_in; k++) {
        const kiln_tensor *X = &c->in[k];
        int64_t xrow = X->shape[ax] * inner;
        const char *src = (const char *)X->data;
        char *dst = (char *)O->data + base;
        rowcopy_ctx rk = {dst, src, xrow, 1, orow, 0, xrow, 0, 0};
        kiln_par_for(outer, outer * xrow / 4, rowcopy_range, &rk);
        base += xrow;
    }
    return KILN_OK;
}
