/* layer_norm / rms_norm over the last axis, optional weight (and bias). Statistics in
 * double; safe when out == x (each row is read fully before it is written). */
#include <math.h>

#include "kiln.h"
#include "par.h"

typedef struct {
    const float *x, *w, *b;   /* w, b: NULL when absent */
    float *y;
    int64_t D;
    int layer;
    float eps;
} norm_ctx;

static void norm_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const norm_ctx k = *(const norm_ctx *)p;
    const int64_t D = k.D;
    const float *w = k.w, *b = k.b;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = k.x + r * D;
        float *y = k.y + r * D;
        double mean = 0, ss = 0;
        if (k.layer) {
#pragma omp simd reduction(+ : mean)
            for (int64_t i = 0; i < D; i++) mean += x[i];
            mean /= (double)D;
            float mf = (float)mean;
            /* second pass on the centred values: no cancellation */
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < D; i++) {
                double d = (double)(x[i] - mf);
                ss += d * d;
            }
            /* correct for mean's rounding to float: sum(x - mf) = D*(mean - mf) */
            double dm = mean - (double)mf;
            ss -= (double)D * dm * dm;
            if (ss < 0) ss = 0;
        } else {
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < D; i++) ss += (double)x[i] * x[i];
        }
        float rstd = (float)(1.0 / sqrt(ss / (double)D + (double)k.eps));
        float mf = (float)mean;
        if (w && b) {
#pragma omp simd
            for (int64_t i = 0; i < D; i++) y[i] = (x[i] - mf) * rstd * w[i] + b[i];
        } else if (w) {
#pragma omp simd
            for (int64_t i = 0; i < D; i++) y[i] = (x[i] - mf) * rstd * w[i];
        } else {
#pragma omp simd
            for (int64_t i = 0; i < D; i++) y[i] = (x[i] - mf) * rstd;
        }
    }
}

static int norm(const kiln_call *c, int layer, float eps) {
    KILN_REQUIRE(c->n_in >= 1 && c->n_in <= 3, KILN_ERR_BAD_CALL);
    const kiln_tensor *X = &c->in[0];
    int64_t D = X->ndim ? X->shape[X->ndim - 1] : 1;
    KILN_REQUIRE(X->dtype == KILN_FLOAT32 && c->out.dtype == KILN_FLOAT32 && kiln_numel(&c->out) == kiln_numel(X),
                 KILN_ERR_SHAPE);
    for (int k = 1; k < c->n_in; k++)   /* weight (and bias): D floats */
        KILN_REQUIRE(c->in[k].dtype == KILN_FLOAT32 && kiln_numel(&c->in[k]) == D, KILN_ERR_SHAPE);
    if (D == 0) return KILN_OK;
    int64_t rows = kiln_numel(X) / D;
    const float *w = c->n_in > 1 ? (const float *)c->in[1].data : NULL;
    const float *b = (layer && c->n_in > 2) ? (const float *)c->in[2].data : NULL;
    norm_ctx norm_k = {(const float *)X->data, w, b, (float *)c->out.data, D, layer, eps};
    kiln_par_for(rows, rows * D, norm_range, &norm_k);
    return KILN_OK;
}

int kiln_k_layer_norm(const kiln_call *c) {
    return c->params ? norm(c, 1, ((const kiln_layer_norm_params *)c->params)->eps) : KILN_ERR_BAD_CALL;
}
int kiln_k_rms_norm(const kiln_call *c) {
    return c->params ? norm(c, 0, ((const kiln_rms_norm_params *)c->params)->eps) : KILN_ERR_BAD_CALL;
}
