/* Data movement: reshape/copy (memcpy), permute, expand, slice, concat. Dtype-agnostic:
 * everything moves elements of `itemsize` bytes. */
#include "kiln.h"
#include "par.h"

typedef struct {
    char *dst;
    const char *src;
    int64_t nbytes, chunk;
} memcpy_ctx;

static void memcpy_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const memcpy_ctx k = *(const memcpy_ctx *)p;
    for (int64_t t = lo; t < hi; t++) {
        int64_t off = t * k.chunk, n = k.nbytes - off < k.chunk ? k.nbytes - off : k.chunk;
        memcpy(k.dst + off, k.src + off, (size_t)n);
    }
}

static void par_memcpy(void *dst, const void *src, int64_t nbytes) {
    if (dst == src || nbytes <= 0) return;
    const int64_t chunk = 1 << 20;
    int64_t tasks = (nbytes + chunk - 1) / chunk;
    memcpy_ctx memcpy_k = {(char *)dst, (const char *)src, nbytes, chunk};
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
    const kiln_bcast *bc;
    char *out;
    const char *in;
    int64_t esz, n, s;
} bcopy_ctx;

static void bcopy_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const bcopy_ctx k = *(const bcopy_ctx *)p;
    for (int64_t r = lo; r < hi; r++) {
        int64_t off[KILN_BC_MAX];
        kiln_bcast_row(k.bc, r, off);
        char *d = k.out + off[0] * k.esz;
        const char *src = k.in + off[1] * k.esz;
        if (k.s == 1) memcpy(d, src, (size_t)(k.n * k.esz));
        else if (k.esz == 4) {
            uint32_t v;
            memcpy(&v, src, 4);
            for (int64_t i = 0; i < k.n; i++) ((uint32_t *)d)[i] = v;
        } else
            for (int64_t i = 0; i < k.n; i++) memcpy(d + i * k.esz, src, (size_t)k.esz);
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
    bcopy_ctx bcopy_k = {&bc, (char *)out->data, (const char *)in->data, esz, n, s};
    kiln_par_for(rows, rows * n, bcopy_range, &bcopy_k);
    return KILN_OK;
}

int kiln_k_expand(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 1, KILN_ERR_BAD_CALL);
    return kiln_broadcast_copy(&c->out, &c->in[0]);
}

/* Permute's two loops over the coalesced output dims shp[0..m) (source strides st). */
typedef struct {
    const char *src;
    char *dst;
    const int64_t *shp, *st;
    int m, jd;                      /* tiled: jd is the out dim whose source is contiguous */
    int64_t esz, inner, s_in;       /* the last dim: its size and source stride */
    int64_t T, J, sj, tiles_i, tiles_j;
} permute_ctx;

/* Tiles of T x T over (dim jd, the last dim), so reads and writes both stay in cache. */
static void tile_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const permute_ctx k = *(const permute_ctx *)p;
    for (int64_t t = lo; t < hi; t++) {
        int64_t ti = t % k.tiles_i, tj = (t / k.tiles_i) % k.tiles_j, o = t / (k.tiles_i * k.tiles_j);
        /* decompose o over the dims other than jd and m-1 */
        int64_t so = 0, dof = 0, r = o;
        for (int d = k.m - 2; d >= 0; d--) {
            if (d == k.jd) continue;
            int64_t i = r % k.shp[d];
            r /= k.shp[d];
            so += i * k.st[d];
            dof += i * kiln_prod(k.shp, d + 1, k.m);
        }
        int64_t j0 = tj * k.T, j1 = j0 + k.T < k.J ? j0 + k.T : k.J;
        int64_t i0 = ti * k.T, i1 = i0 + k.T < k.inner ? i0 + k.T : k.inner;
        if (k.esz == 4) {
            const uint32_t *s4 = (const uint32_t *)k.src + so;
            uint32_t *d4 = (uint32_t *)k.dst + dof;
            for (int64_t j = j0; j < j1; j++)
                for (int64_t i = i0; i < i1; i++) d4[j * k.sj + i] = s4[j + i * k.s_in];
        } else {
            const uint64_t *s8 = (const uint64_t *)k.src + so;
            uint64_t *d8 = (uint64_t *)k.dst + dof;
            for (int64_t j = j0; j < j1; j++)
                for (int64_t i = i0; i < i1; i++) d8[j * k.sj + i] = s8[j + i * k.s_in];
        }
    }
}

/* One output row (the last dim) per index, read with the source stride s_in. */
static void strided_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const permute_ctx k = *(const permute_ctx *)p;
    for (int64_t r = lo; r < hi; r++) {
        int64_t so = 0, q = r;
        for (int d = k.m - 2; d >= 0 && q; d--) {
            so += (q % k.shp[d]) * k.st[d];
            q /= k.shp[d];
        }
        strided_row(k.dst + r * k.inner * k.esz, k.src + so * k.esz, k.inner, k.s_in, k.esz);
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
    kiln_strides(X, xst);
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
        permute_ctx tile_k = {src, dst, shp, st, m, jd, esz, inner, s_in, T, J, sj, tiles_i, tiles_j};
        kiln_par_for(tasks, kiln_numel(O), tile_range, &tile_k);
        return KILN_OK;
    }
    int64_t rows = kiln_prod(shp, 0, m - 1);
    permute_ctx strided_k = {src, dst, shp, st, m, -1, esz, inner, s_in, 0, 0, 0, 0, 0};
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
