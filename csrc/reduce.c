/* sum / mean / max over an axes bitmask. float32 accumulates in double (the
 * reference does); int64/int32/bool inputs produce int64.
 *
 * After dropping size-1 dims and merging neighbours of the same kind, one
 * reduced run between kept runs is the common case: [outer, R, inner]. With
 * inner == 1 it is a row reduction; otherwise R rows of `inner` accumulate into
 * one output row. Several reduced runs take a slower odometer path.
 */
#include <math.h>

#include "kiln.h"
#include "par.h"

enum { R_SUM, R_MEAN, R_MAX };

static int64_t ld(const kiln_tensor *t, int64_t i) { return kiln_load_i64(t->data, t->dtype, i); }

/* One step of an integer reduction (sums wrap, as numpy's int64 does) and its mean over R. */
static inline int64_t acc_i64(int kind, int64_t acc, int64_t v) {
    return kind == R_MAX ? (v > acc ? v : acc) : (int64_t)((uint64_t)acc + (uint64_t)v);
}
static inline int64_t mean_i64(int64_t acc, int64_t R) { return kiln_f2i64(R ? (double)acc / (double)R : NAN); }

/* [outer, R, inner] after coalescing: inner == 1 reduces rows, else columns in chunks of CH. */
typedef struct {
    const kiln_tensor *X, *O;
    int isf, kind;
    int64_t R, inner, per, CH;
} reduce_ctx;

static void rowred_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const reduce_ctx k = *(const reduce_ctx *)p;
    const int64_t R = k.R;
    for (int64_t o = begin; o < end; o++) {
        int64_t base = o * R;
        if (k.isf) {
            const float *x = (const float *)k.X->data + base;
            float *y = (float *)k.O->data;
            if (k.kind == R_MAX) {
                float mx = -INFINITY;
                int nan = 0;
                for (int64_t r = 0; r < R; r++) {
                    mx = x[r] > mx ? x[r] : mx;
                    nan |= x[r] != x[r];
                }
                y[o] = nan ? NAN : mx;
            } else {
                double s = 0;
#pragma omp simd reduction(+ : s)
                for (int64_t r = 0; r < R; r++) s += x[r];
                y[o] = (float)(k.kind == R_MEAN ? s / (double)R : s);
            }
        } else {
            int64_t acc = k.kind == R_MAX ? INT64_MIN : 0;
            for (int64_t r = 0; r < R; r++) acc = acc_i64(k.kind, acc, ld(k.X, base + r));
            ((int64_t *)k.O->data)[o] = k.kind == R_MEAN ? mean_i64(acc, R) : acc;
        }
    }
}

static void colred_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const reduce_ctx k = *(const reduce_ctx *)p;
    const int64_t R = k.R, inner = k.inner;
    for (int64_t t = begin; t < end; t++) {
        int64_t o = t / k.per, lo = (t % k.per) * k.CH, n = inner - lo < k.CH ? inner - lo : k.CH;
        double acc[256];
        const float *x = (const float *)k.X->data + o * R * inner + lo;
        float *y = (float *)k.O->data + o * inner + lo;
        if (k.kind == R_MAX) {
            for (int64_t i = 0; i < n; i++) acc[i] = -INFINITY;
            for (int64_t r = 0; r < R; r++) {
                const float *xr = x + r * inner;
                for (int64_t i = 0; i < n; i++)
                    acc[i] = (xr[i] > acc[i] || xr[i] != xr[i]) ? xr[i] : acc[i];
            }
            for (int64_t i = 0; i < n; i++) y[i] = (float)acc[i];
        } else {
            for (int64_t i = 0; i < n; i++) acc[i] = 0;
            for (int64_t r = 0; r < R; r++) {
                const float *xr = x + r * inner;
#pragma omp simd
                for (int64_t i = 0; i < n; i++) acc[i] += xr[i];
            }
            double div = k.kind == R_MEAN ? (double)R : 1.0;
            for (int64_t i = 0; i < n; i++) y[i] = (float)(acc[i] / div);
        }
    }
}

/* The general path's odometer: advance the input coords idx over sz[0..m) by one element
 * and return the output offset oi moved along (ost: output strides, 0 on reduced runs). */
static inline int64_t odometer_step(int m, const int64_t *sz, const int64_t *ost, int64_t *idx, int64_t oi) {
    for (int d = m - 1; d >= 0; d--) {
        oi += ost[d];
        if (++idx[d] < sz[d]) break;
        oi -= ost[d] * sz[d];
        idx[d] = 0;
    }
    return oi;
}

static int reduce(const kiln_call *c, int kind, int64_t mask) {
    KILN_REQUIRE(c->n_in == 1, KILN_ERR_BAD_CALL);
    const kiln_tensor *X = &c->in[0], *O = &c->out;
    int nd = X->ndim;
    int64_t nout = kiln_numel(O), nin = kiln_numel(X);
    int isf = X->dtype == KILN_FLOAT32;
    KILN_REQUIRE(mask >= 0 && (mask >> nd) == 0, KILN_ERR_PARAM);
    /* out holds the kept dims (float32 stays float32; integers and bool accumulate in int64) */
    KILN_REQUIRE(O->dtype == (isf ? KILN_FLOAT32 : KILN_INT64), KILN_ERR_SHAPE);
    int64_t kept = 1;
    for (int d = 0; d < nd; d++)
        if (!((mask >> d) & 1)) kept *= X->shape[d];
    KILN_REQUIRE(kept == nout, KILN_ERR_SHAPE);
    if (nout == 0) return KILN_OK;
    int64_t cnt = nout ? nin / nout : 0;
    /* coalesce into runs of (size, reduced?) */
    int m = 0;
    int64_t sz[KILN_MAX_DIMS];
    int red[KILN_MAX_DIMS];
    for (int d = 0; d < nd; d++) {
        int r = (int)((mask >> d) & 1);
        if (X->shape[d] == 1) continue;
        if (m > 0 && red[m - 1] == r) {
            sz[m - 1] *= X->shape[d];
            continue;
        }
        sz[m] = X->shape[d];
        red[m] = r;
        m++;
    }
    int nred = 0;
    for (int d = 0; d < m; d++) nred += red[d];
    if (nred <= 1) {
        int64_t outer = 1, R = 1, inner = 1;
        int seen = 0;
        for (int d = 0; d < m; d++) {
            if (red[d]) { R = sz[d]; seen = 1; }
            else if (seen) inner *= sz[d];
            else outer *= sz[d];
        }
        if (nin == 0) R = 0;
        if (inner == 1) {
            reduce_ctx rowred_k = {X, O, isf, kind, R, 1, 1, 1};
            kiln_par_for(outer, nin, rowred_range, &rowred_k);
            return KILN_OK;
        }
        /* [outer, R, inner]: accumulate whole rows of `inner` (vectorized over inner) */
        if (isf) {
            const int64_t CH = 256;
            int64_t per = (inner + CH - 1) / CH;
            reduce_ctx colred_k = {X, O, isf, kind, R, inner, per, CH};
            kiln_par_for(outer * per, nin, colred_range, &colred_k);
        } else {
            int64_t *y = (int64_t *)O->data;
            for (int64_t o = 0; o < outer; o++)
                for (int64_t i = 0; i < inner; i++) {
                    int64_t acc = kind == R_MAX ? INT64_MIN : 0;
                    for (int64_t r = 0; r < R; r++) acc = acc_i64(kind, acc, ld(X, (o * R + r) * inner + i));
                    y[o * inner + i] = kind == R_MEAN ? mean_i64(acc, R) : acc;
                }
        }
        return KILN_OK;
    }
    /* general: odometer over the input, output index from the kept coords (single thread) */
    int64_t ost[KILN_MAX_DIMS], idx[KILN_MAX_DIMS] = {0};
    int64_t run = 1;   /* (an int would overflow past 2^31 kept elements) */
    for (int d = m - 1; d >= 0; d--) {
        ost[d] = red[d] ? 0 : run;
        if (!red[d]) run *= sz[d];
    }
    if (isf) {
        float *y = (float *)O->data;
        for (int64_t i = 0; i < nout; i++) y[i] = kind == R_MAX ? -INFINITY : 0.0f;
        const float *x = (const float *)X->data;
        int64_t oi = 0;
        for (int64_t e = 0; e < nin; e++) {
            float v = x[e];
            if (kind == R_MAX) y[oi] = (v > y[oi] || v != v) ? v : y[oi];
            else y[oi] += v;
            oi = odometer_step(m, sz, ost, idx, oi);
        }
        if (kind == R_MEAN)
            for (int64_t i = 0; i < nout; i++) y[i] = (float)((double)y[i] / (double)cnt);
    } else {
        int64_t *y = (int64_t *)O->data;
        for (int64_t i = 0; i < nout; i++) y[i] = kind == R_MAX ? INT64_MIN : 0;
        int64_t oi = 0;
        for (int64_t e = 0; e < nin; e++) {
            y[oi] = acc_i64(kind, y[oi], ld(X, e));
            oi = odometer_step(m, sz, ost, idx, oi);
        }
        if (kind == R_MEAN)
            for (int64_t i = 0; i < nout; i++) y[i] = mean_i64(y[i], cnt);
    }
    return KILN_OK;
}

int kiln_k_sum(const kiln_call *c) {
    return c->params ? reduce(c, R_SUM, ((const kiln_sum_params *)c->params)->axes_mask) : KILN_ERR_BAD_CALL;
}
int kiln_k_mean(const kiln_call *c) {
    return c->params ? reduce(c, R_MEAN, ((const kiln_mean_params *)c->params)->axes_mask) : KILN_ERR_BAD_CALL;
}
int kiln_k_max(const kiln_call *c) {
    return c->params ? reduce(c, R_MAX, ((const kiln_max_params *)c->params)->axes_mask) : KILN_ERR_BAD_CALL;
}
