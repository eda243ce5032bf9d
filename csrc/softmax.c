/* softmax / log_softmax over any axis, max-subtracted. log_softmax is computed as
 * (x - max) - log(sum): adding log(sum) to a large max first would round it away
 * (at |max| = 1e8 a float's spacing is 8, so log 2 vanishes). The axis splits the tensor
 * into [outer, L, inner]: inner == 1 is a contiguous row; otherwise the work is
 * vectorized across `inner` with the axis walked at stride `inner`. Safe in place. */
#include <math.h>

#include "kiln.h"
#include "par.h"
#include "vmath.h"

/* One contiguous row of L. */
static void softmax_row(float *y, const float *x, int64_t L, int logsm) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < L; i++) mx = x[i] > mx ? x[i] : mx;
    if (mx == -INFINITY) mx = 0.0f;  /* all -inf: keep exp() finite-argument */
    double s = 0;
    if (logsm) {
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < L; i++) s += kiln_exp_ftz(x[i] - mx);
        float ls = (float)log(s);
#pragma omp simd
        for (int64_t i = 0; i < L; i++) y[i] = (x[i] - mx) - ls;
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < L; i++) {
            float e = kiln_exp_ftz(x[i] - mx);
            y[i] = e;
            s += e;
        }
        float inv = (float)(1.0 / s);
#pragma omp simd
        for (int64_t i = 0; i < L; i++) y[i] *= inv;
    }
}

/* [L, n] block with row stride `inner`: softmax down each column, n <= 64 columns. */
static void softmax_cols(float *y, const float *x, int64_t L, int64_t inner, int64_t n, int logsm) {
    float mx[64];
    double s[64];
    for (int64_t i = 0; i < n; i++) { mx[i] = -INFINITY; s[i] = 0; }
    for (int64_t l = 0; l < L; l++)
        for (int64_t i = 0; i < n; i++) mx[i] = x[l * inner + i] > mx[i] ? x[l * inner + i] : mx[i];
    for (int64_t i = 0; i < n; i++) if (mx[i] == -INFINITY) mx[i] = 0.0f;
    for (int64_t l = 0; l < L; l++) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float e = kiln_exp_ftz(x[l * inner + i] - mx[i]);
            if (!logsm) y[l * inner + i] = e;
            s[i] += e;
        }
    }
    if (logsm) {
        float ls[64];
        for (int64_t i = 0; i < n; i++) ls[i] = (float)log(s[i]);
        for (int64_t l = 0; l < L; l++)
#pragma omp simd
            for (int64_t i = 0; i < n; i++) y[l * inner + i] = (x[l * inner + i] - mx[i]) - ls[i];
    } else {
        float inv[64];
        for (int64_t i = 0; i < n; i++) inv[i] = (float)(1.0 / s[i]);
        for (int64_t l = 0; l < L; l++)
#pragma omp simd
            for (int64_t i = 0; i < n; i++) y[l * inner + i] *= inv[i];
    }
}

typedef struct {
    float *y;
    const float *x;
    int64_t L, inner, per;
    int logsm;
} softmax_ctx;

static void rows_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const softmax_ctx *k = (const softmax_ctx *)p;
    for (int64_t o = begin; o < end; o++) softmax_row(k->y + o * k->L, k->x + o * k->L, k->L, k->logsm);
}

/* task t: columns [lo, lo + 64) of outer slice t / per */
static void cols_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const softmax_ctx *k = (const softmax_ctx *)p;
    int64_t L = k->L, inner = k->inner, per = k->per;
    for (int64_t t = begin; t < end; t++) {
        int64_t o = t / per, lo = (t % per) * 64, n = inner - lo < 64 ? inner - lo : 64;
        softmax_cols(k->y + o * L * inner + lo, k->x + o * L * inner + lo, L, inner, n, k->logsm);
    }
}

static int softmax(const kiln_call *c, int logsm, int64_t axis) {
    const kiln_tensor *X = &c->in[0], *O = &c->out;
    KILN_REQUIRE(c->n_in == 1, KILN_ERR_BAD_CALL);
    KILN_REQUIRE(axis >= 0 && axis < X->ndim, KILN_ERR_PARAM);
    KILN_REQUIRE(X->dtype == KILN_FLOAT32 && O->dtype == KILN_FLOAT32 && kiln_numel(O) == kiln_numel(X), KILN_ERR_SHAPE);
    int ax = (int)axis;
    if (kiln_numel(X) == 0) return KILN_OK;
    int64_t outer = kiln_prod(X->shape, 0, ax), L = X->shape[ax];
    int64_t inner = kiln_prod(X->shape, ax + 1, X->ndim);
    const float *x = (const float *)X->data;
    float *y = (float *)c->out.data;
    int64_t total = outer * L * inner;
    if (inner == 1) {
        softmax_ctx k = {y, x, L, 1, 1, logsm};
        kiln_par_for(outer, total, rows_range, &k);
        return KILN_OK;
    }
    int64_t per = (inner + 63) / 64;
    softmax_ctx k = {y, x, L, inner, per, logsm};
    kiln_par_for(outer * per, total, cols_range, &k);
    return KILN_OK;
}

int kiln_k_softmax(const kiln_call *c) {
    KILN_REQUIRE(c->params, KILN_ERR_BAD_CALL);
    return softmax(c, 0, ((const kiln_softmax_params *)c->params)->axis);
}
int kiln_k_log_softmax(const kiln_call *c) {
    KILN_REQUIRE(c->params, KILN_ERR_BAD_CALL);
    return softmax(c, 1, ((const kiln_log_softmax_params *)c->params)->axis);
}
