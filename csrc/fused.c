/* Fused ops produced by the rewrite passes: gated activations (SwiGLU/GeGLU) and RoPE. */
#include "kiln.h"
#include "par.h"
#include "vmath.h"

#define GATED_ROW(ACT)                                                              \
    _Pragma("omp simd") for (int64_t i = 0; i < n; i++) o[i] = kiln_act_apply(ACT, g[i]) * u[i];

typedef struct {
    const float *G, *U;   /* rows of gate and up, `stride` floats apart */
    float *O;
    int64_t n, stride;
    int act;
} gated_ctx;

KILN_WIDE_LOOPS static void gated_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const gated_ctx k = *(const gated_ctx *)p;
    const int64_t n = k.n;
    for (int64_t r = begin; r < end; r++) {
        const float *g = k.G + r * k.stride, *u = k.U + r * k.stride;
        float *o = k.O + r * n;
        /* the activation is fixed per call: one vectorized loop per kind */
        switch (k.act) {
        case KILN_ACT_RELU: GATED_ROW(KILN_ACT_RELU) break;
        case KILN_ACT_GELU: GATED_ROW(KILN_ACT_GELU) break;
        case KILN_ACT_GELU_TANH: GATED_ROW(KILN_ACT_GELU_TANH) break;
        case KILN_ACT_SILU: GATED_ROW(KILN_ACT_SILU) break;
        default: GATED_ROW(KILN_ACT_NONE) break;
        }
    }
}

/* out = act(gate) * up; one input: gate and up are the two halves of its last axis.
 * Safe when out == gate (two-input form: same index read before write). */
int kiln_k_gated_act(const kiln_call *c) {
    KILN_REQUIRE((c->n_in == 1 || c->n_in == 2) && c->params, KILN_ERR_BAD_CALL);
    int64_t a = ((const kiln_gated_act_params *)c->params)->act;
    KILN_REQUIRE(a >= KILN_ACT_NONE && a <= KILN_ACT_SILU, KILN_ERR_PARAM);
    int act = (int)a;
    const kiln_tensor *O = &c->out;
    int packed = c->n_in < 2;
    KILN_REQUIRE(O->ndim >= 1 && O->dtype == KILN_FLOAT32, KILN_ERR_SHAPE);
    int64_t n = O->shape[O->ndim - 1];
    for (int k = 0; k < c->n_in; k++) {  /* packed: [..., 2n] -> [..., n]; else gate, up and out alike */
        const kiln_tensor *X = &c->in[k];
        KILN_REQUIRE(X->dtype == KILN_FLOAT32 && X->ndim == O->ndim, KILN_ERR_SHAPE);
        for (int d = 0; d < O->ndim; d++)
            KILN_REQUIRE(X->shape[d] == (packed && d == O->ndim - 1 ? 2 * n : O->shape[d]), KILN_ERR_SHAPE);
    }
    if (n == 0 || kiln_numel(O) == 0) return KILN_OK;
    int64_t rows = kiln_numel(O) / n;
    int64_t stride = packed ? 2 * n : n;
    const float *G = (const float *)c->in[0].data;
    const float *U = packed ? G + n : (const float *)c->in[1].data;
    gated_ctx gated_k = {G, U, (float *)O->data, n, stride, act};
    /* an exp/erf per element costs ~10 adds: at 16 prompt rows of SmolLM2's FFN (24,576 SiLUs,
     * ~20 us on one thread) the split pays, which counting elements alone would not allow */
    int64_t cost = act == KILN_ACT_NONE || act == KILN_ACT_RELU ? 1 : 8;
    kiln_par_for(rows, rows * n * cost, gated_range, &gated_k);
    return KILN_OK;
}

typedef struct {
    const float *x, *cs, *sn;
    float *out;
    int64_t S, D, h;
} rope_ctx;

static void rope_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const rope_ctx k = *(const rope_ctx *)p;
    const int64_t D = k.D, h = k.h;
    for (int64_t r = begin; r < end; r++) {
        const float *x = k.x + r * D;
        float *o = k.out + r * D;
        const float *cr = k.cs + (r % k.S) * D, *sr = k.sn + (r % k.S) * D;
        /* in place (out == x) is safe: each pair (i, i + h) is read before either is written */
#pragma omp simd
        for (int64_t i = 0; i < h; i++) {
            float a = x[i], b = x[i + h];
            o[i] = a * cr[i] - b * sr[i];
            o[i + h] = b * cr[i + h] + a * sr[i + h];
        }
    }
}

/* rope, rotate-half form over [..., S, D] with cos/sin [S, D]:
 * out[:h] = x[:h]*cos[:h] - x[h:]*sin[:h]; out[h:] = x[h:]*cos[h:] + x[:h]*sin[h:]. */
int kiln_k_rope(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 3, KILN_ERR_BAD_CALL);
    const kiln_tensor *X = &c->in[0], *O = &c->out;
    KILN_REQUIRE(X->ndim >= 2 && X->dtype == KILN_FLOAT32 && O->dtype == KILN_FLOAT32 &&
                 kiln_numel(O) == kiln_numel(X), KILN_ERR_SHAPE);
    int64_t S = X->shape[X->ndim - 2], D = X->shape[X->ndim - 1], h = D / 2;
    /* an odd D would leave the last column unwritten; cos/sin must cover [S, D] */
    for (int k = 1; k < 3; k++)
        KILN_REQUIRE(c->in[k].dtype == KILN_FLOAT32 && kiln_numel(&c->in[k]) == S * D, KILN_ERR_SHAPE);
    KILN_REQUIRE(D % 2 == 0, KILN_ERR_SHAPE);
    if (S * D == 0 || kiln_numel(X) == 0) return KILN_OK;
    int64_t rows = kiln_numel(X) / D;
    const float *cs = (const float *)c->in[1].data, *sn = (const float *)c->in[2].data;
    rope_ctx rope_k = {(const float *)X->data, cs, sn, (float *)c->out.data, S, D, h};
    kiln_par_for(rows, rows * D, rope_range, &rope_k);
    return KILN_OK;
}
