/* Fused ops produced by the rewrite passes: gated activations (SwiGLU/GeGLU) and RoPE. */
#include "kiln.h"
#include "vmath.h"

#define GATED_ROW(ACT)                                                              \
    _Pragma("omp simd") for (int64_t i = 0; i < n; i++) o[i] = kiln_act_apply(ACT, g[i]) * u[i];

/* out = act(gate) * up; one input: gate and up are the two halves of its last axis.
 * Safe when out == gate (two-input form: same index read before write). */
void kiln_k_gated_act(const kiln_call *c) {
    int act = (int)((const kiln_gated_act_params *)c->params)->act;
    const kiln_tensor *O = &c->out;
    int64_t n = O->ndim ? O->shape[O->ndim - 1] : 1;
    if (n == 0 || kiln_numel(O) == 0) return;
    int64_t rows = kiln_numel(O) / n;
    int packed = c->n_in < 2;
    int64_t stride = packed ? 2 * n : n;
    const float *G = (const float *)c->in[0].data;
    const float *U = packed ? G + n : (const float *)c->in[1].data;
#pragma omp parallel for schedule(static) if(rows > 1 && rows * n >= KILN_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = G + r * stride, *u = U + r * stride;
        float *o = (float *)O->data + r * n;
        /* the activation is fixed per call: one vectorized loop per kind */
        switch (act) {
        case KILN_ACT_RELU: GATED_ROW(KILN_ACT_RELU) break;
        case KILN_ACT_GELU: GATED_ROW(KILN_ACT_GELU) break;
        case KILN_ACT_GELU_TANH: GATED_ROW(KILN_ACT_GELU_TANH) break;
        case KILN_ACT_SILU: GATED_ROW(KILN_ACT_SILU) break;
        default: GATED_ROW(KILN_ACT_NONE) break;
        }
    }
}

/* rope, rotate-half form over [..., S, D] with cos/sin [S, D]:
 * out[:h] = x[:h]*cos[:h] - x[h:]*sin[:h]; out[h:] = x[h:]*cos[h:] + x[:h]*sin[h:]. */
void kiln_k_rope(const kiln_call *c) {
    const kiln_tensor *X = &c->in[0];
    if (X->ndim < 2) return;
    int64_t S = X->shape[X->ndim - 2], D = X->shape[X->ndim - 1], h = D / 2;
    if (S * D == 0) return;
    int64_t rows = kiln_numel(X) / D;
    const float *cs = (const float *)c->in[1].data, *sn = (const float *)c->in[2].data;
#pragma omp parallel for schedule(static) if(rows > 1 && rows * D >= KILN_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *x = (const float *)X->data + r * D;
        float *o = (float *)c->out.data + r * D;
        const float *cr = cs + (r % S) * D, *sr = sn + (r % S) * D;
        /* in place (out == x) is safe: each pair (i, i + h) is read before either is written */
#pragma omp simd
        for (int64_t i = 0; i < h; i++) {
            float a = x[i], b = x[i + h];
            o[i] = a * cr[i] - b * sr[i];
            o[i + h] = b * cr[i + h] + a * sr[i + h];
        }
    }
}
