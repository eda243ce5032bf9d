/* Unary float32 math and dtype casts. Safe when out == in (same index read then write). */
#include <math.h>

#include "kiln.h"
#include "vmath.h"

/* Each task handles one KILN_CHUNK-sized slice; tiny tensors stay on one thread. */
#define UNARY_KERNEL(name, EXPR)                                                    \
    static void name##_span(float *y, const float *x, int64_t n) {                  \
        _Pragma("omp simd")                                                         \
        for (int64_t i = 0; i < n; i++) {                                           \
            float v = x[i];                                                         \
            y[i] = (EXPR);                                                          \
        }                                                                           \
    }                                                                               \
    int kiln_k_##name(const kiln_call *c) {                                         \
        KILN_REQUIRE(c->n_in == 1, KILN_ERR_BAD_CALL);                              \
        KILN_REQUIRE(c->in[0].dtype == KILN_FLOAT32 && c->out.dtype == KILN_FLOAT32 && \
                     kiln_numel(&c->in[0]) == kiln_numel(&c->out), KILN_ERR_SHAPE);  \
        const float *x = (const float *)c->in[0].data;                              \
        float *y = (float *)c->out.data;                                            \
        int64_t n = kiln_numel(&c->out);                                            \
        int64_t nchunks = (n + KILN_CHUNK - 1) / KILN_CHUNK;                        \
        _Pragma("omp parallel for schedule(static) if(n >= KILN_PAR_MIN)")          \
        for (int64_t t = 0; t < nchunks; t++) {                                     \
            int64_t lo = t * KILN_CHUNK, hi = lo + KILN_CHUNK < n ? lo + KILN_CHUNK : n; \
            name##_span(y + lo, x + lo, hi - lo);                                   \
        }                                                                           \
        return KILN_OK;                                                             \
    }

UNARY_KERNEL(neg, -v)
UNARY_KERNEL(abs, fabsf(v))
UNARY_KERNEL(relu, v > 0.0f ? v : (v != v ? v : 0.0f))
UNARY_KERNEL(exp, kiln_exp(v))
UNARY_KERNEL(sqrt, sqrtf(v))
UNARY_KERNEL(rsqrt, 1.0f / sqrtf(v))
UNARY_KERNEL(reciprocal, 1.0f / v)
UNARY_KERNEL(tanh, kiln_tanh(v))
UNARY_KERNEL(sigmoid, kiln_sigmoid(v))
UNARY_KERNEL(silu, v * kiln_sigmoid(v))
UNARY_KERNEL(erf, kiln_erf(v))
UNARY_KERNEL(gelu, kiln_gelu(v))
UNARY_KERNEL(gelu_tanh, kiln_gelu_tanh(v))
/* libm: correctly handles any argument range; these ops are rare on hot paths (RoPE tables fold). */
UNARY_KERNEL(log, logf(v))
UNARY_KERNEL(sin, sinf(v))
UNARY_KERNEL(cos, cosf(v))

float kiln_expf_scalar(float x) { return kiln_exp(x); }

void kiln_vexp(float *y, const float *x, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = kiln_exp(x[i]);
}

/* -- cast ---------------------------------------------------------------------------- */
#define CAST_LOOP(TI, TO, EXPR)                                                     \
    do {                                                                            \
        const TI *x = (const TI *)c->in[0].data;                                    \
        TO *y = (TO *)c->out.data;                                                  \
        _Pragma("omp parallel for simd schedule(static) if(n >= 4 * KILN_PAR_MIN)") \
        for (int64_t i = 0; i < n; i++) {                                           \
            TI v = x[i];                                                            \
            y[i] = (EXPR);                                                          \
        }                                                                           \
    } while (0)

#define PAIR(a, b) ((a) * 8 + (b))

int kiln_k_cast(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 1, KILN_ERR_BAD_CALL);
    KILN_REQUIRE(kiln_numel(&c->in[0]) == kiln_numel(&c->out), KILN_ERR_SHAPE);
    int64_t n = kiln_numel(&c->out);
    int di = c->in[0].dtype, dout = c->out.dtype;
    if (di == dout) {
        if (c->out.data != c->in[0].data) memmove(c->out.data, c->in[0].data, (size_t)(n * kiln_itemsize(di)));
        return KILN_OK;
    }
    switch (PAIR(di, dout)) {
    case PAIR(KILN_FLOAT32, KILN_INT64):
        CAST_LOOP(float, int64_t, (v == v && v >= -9.2233720e18f && v < 9.2233720e18f) ? (int64_t)v : INT64_MIN);
        break;
    case PAIR(KILN_FLOAT32, KILN_INT32):
        /* numpy goes through int64 then wraps on x86 for moderate values; out of range -> INT32_MIN */
        CAST_LOOP(float, int32_t, (v == v && v > -2147483904.0f && v < 2147483648.0f) ? (int32_t)v : INT32_MIN);
        break;
    case PAIR(KILN_FLOAT32, KILN_BOOL): CAST_LOOP(float, uint8_t, v != 0.0f); break;
    case PAIR(KILN_INT64, KILN_FLOAT32): CAST_LOOP(int64_t, float, (float)v); break;
    case PAIR(KILN_INT64, KILN_INT32): CAST_LOOP(int64_t, int32_t, (int32_t)(uint32_t)(uint64_t)v); break;
    case PAIR(KILN_INT64, KILN_BOOL): CAST_LOOP(int64_t, uint8_t, v != 0); break;
    case PAIR(KILN_INT32, KILN_FLOAT32): CAST_LOOP(int32_t, float, (float)v); break;
    case PAIR(KILN_INT32, KILN_INT64): CAST_LOOP(int32_t, int64_t, (int64_t)v); break;
    case PAIR(KILN_INT32, KILN_BOOL): CAST_LOOP(int32_t, uint8_t, v != 0); break;
    case PAIR(KILN_BOOL, KILN_FLOAT32): CAST_LOOP(uint8_t, float, v ? 1.0f : 0.0f); break;
    case PAIR(KILN_BOOL, KILN_INT64): CAST_LOOP(uint8_t, int64_t, v ? 1 : 0); break;
    case PAIR(KILN_BOOL, KILN_INT32): CAST_LOOP(uint8_t, int32_t, v ? 1 : 0); break;
    default:
        for (int64_t i = 0; i < n; i++) kiln_store_f64(c->out.data, dout, i, kiln_load_f64(c->in[0].data, di, i));
    }
    return KILN_OK;
}
