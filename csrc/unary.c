/* Unary float32 math and dtype casts. Safe when out == in (same index read then write). */
#include <math.h>

#include "kiln.h"
#include "par.h"
#include "vmath.h"

typedef struct {
    void *y;
    const void *x;
} unary_ctx;

/* Ranges of elements over the pool; tiny tensors stay on the caller. */
#define UNARY_KERNEL(name, EXPR)                                                    \
    KILN_WIDE_LOOPS static void name##_range(void *p, int64_t lo, int64_t hi, int thread) { \
        (void)thread;                                                               \
        const unary_ctx *u = (const unary_ctx *)p;                                  \
        float *y = (float *)u->y;                                                   \
        const float *x = (const float *)u->x;                                       \
        _Pragma("omp simd")                                                         \
        for (int64_t i = lo; i < hi; i++) {                                         \
            float v = x[i];                                                         \
            y[i] = (EXPR);                                                          \
        }                                                                           \
    }                                                                               \
    int kiln_k_##name(const kiln_call *c) {                                         \
        KILN_REQUIRE(c->n_in == 1, KILN_ERR_BAD_CALL);                              \
        KILN_REQUIRE(c->in[0].dtype == KILN_FLOAT32 && c->out.dtype == KILN_FLOAT32 && \
                     kiln_numel(&c->in[0]) == kiln_numel(&c->out), KILN_ERR_SHAPE);  \
        unary_ctx u = {c->out.data, c->in[0].data};                                 \
        int64_t n = kiln_numel(&c->out);                                            \
        kiln_par_for(n, n, name##_range, &u);                                       \
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

KILN_WIDE_LOOPS void kiln_vexp(float *y, const float *x, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = kiln_exp(x[i]);
}

/* -- cast ---------------------------------------------------------------------------- */
/* Casts run over element ranges too: one range function per (from, to) pair. */
#define CAST_FN(name, TI, TO, EXPR)                                                 \
    static void name(void *p, int64_t lo, int64_t hi, int thread) {                 \
        (void)thread;                                                               \
        const unary_ctx *u = (const unary_ctx *)p;                                  \
        const TI *x = (const TI *)u->x;                                             \
        TO *y = (TO *)u->y;                                                         \
        _Pragma("omp simd")                                                         \
        for (int64_t i = lo; i < hi; i++) {                                         \
            TI v = x[i];                                                            \
            y[i] = (EXPR);                                                          \
        }                                                                           \
    }

CAST_FN(f32_i64, float, int64_t, (v == v && v >= -9.2233720e18f && v < 9.2233720e18f) ? (int64_t)v : INT64_MIN)
/* numpy goes through int64 then wraps on x86 for moderate values; out of range -> INT32_MIN */
CAST_FN(f32_i32, float, int32_t, (v == v && v > -2147483904.0f && v < 2147483648.0f) ? (int32_t)v : INT32_MIN)
CAST_FN(f32_b, float, uint8_t, v != 0.0f)
CAST_FN(i64_f32, int64_t, float, (float)v)
CAST_FN(i64_i32, int64_t, int32_t, (int32_t)(uint32_t)(uint64_t)v)
CAST_FN(i64_b, int64_t, uint8_t, v != 0)
CAST_FN(i32_f32, int32_t, float, (float)v)
CAST_FN(i32_i64, int32_t, int64_t, (int64_t)v)
CAST_FN(i32_b, int32_t, uint8_t, v != 0)
CAST_FN(b_f32, uint8_t, float, v ? 1.0f : 0.0f)
CAST_FN(b_i64, uint8_t, int64_t, v ? 1 : 0)
CAST_FN(b_i32, uint8_t, int32_t, v ? 1 : 0)

/* [from][to]; NULL: the same dtype (a copy) or a pair without a fast path. */
#define N_DTYPES (KILN_BOOL + 1)
static const kiln_range_fn CASTS[N_DTYPES][N_DTYPES] = {
    [KILN_FLOAT32] = {[KILN_INT64] = f32_i64, [KILN_INT32] = f32_i32, [KILN_BOOL] = f32_b},
    [KILN_INT64] = {[KILN_FLOAT32] = i64_f32, [KILN_INT32] = i64_i32, [KILN_BOOL] = i64_b},
    [KILN_INT32] = {[KILN_FLOAT32] = i32_f32, [KILN_INT64] = i32_i64, [KILN_BOOL] = i32_b},
    [KILN_BOOL] = {[KILN_FLOAT32] = b_f32, [KILN_INT64] = b_i64, [KILN_INT32] = b_i32},
};

int kiln_k_cast(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 1, KILN_ERR_BAD_CALL);
    KILN_REQUIRE(kiln_numel(&c->in[0]) == kiln_numel(&c->out), KILN_ERR_SHAPE);
    int64_t n = kiln_numel(&c->out);
    int di = c->in[0].dtype, dout = c->out.dtype;
    if (di == dout) {
        if (c->out.data != c->in[0].data) memmove(c->out.data, c->in[0].data, (size_t)(n * kiln_itemsize(di)));
        return KILN_OK;
    }
    kiln_range_fn f = di >= 0 && di < N_DTYPES && dout >= 0 && dout < N_DTYPES ? CASTS[di][dout] : NULL;
    if (!f) {
        for (int64_t i = 0; i < n; i++) kiln_store_f64(c->out.data, dout, i, kiln_load_f64(c->in[0].data, di, i));
        return KILN_OK;
    }
    unary_ctx u = {c->out.data, c->in[0].data};
    kiln_par_for(n, n / 4, f, &u);  /* a cast is cheap per element: split only large ones */
    return KILN_OK;
}
