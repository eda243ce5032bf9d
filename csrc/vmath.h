/* Branch-free float32 math the compiler can vectorize inside `#pragma omp simd`
 * loops (libm calls would keep loops scalar). Each is accurate to a few ulp over
 * the whole float range, including inf/NaN/underflow; tests check them against
 * the numpy references.
 */
#ifndef KILN_VMATH_H
#define KILN_VMATH_H

#include <math.h>
#include <stdint.h>

/* Loops that are mostly math (exp over softmax weights) run faster in 512-bit vectors where
 * the CPU has them; gcc's tuning for Intel server cores prefers 256 bits otherwise. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KILN_WIDE_LOOPS __attribute__((target("prefer-vector-width=512")))
#else
#define KILN_WIDE_LOOPS
#endif

static inline float kiln_bits2f(int32_t i) {
    union { int32_t i; float f; } u = {i};
    return u.f;
}

/* exp: x = n*ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r, 2^n by exponent bits. */
static inline float kiln_exp(float x) {
    /* clamp with compares, not fminf/fmaxf: gcc keeps those as libm calls, which blocks vectorizing */
    float xc = x > -103.9721f ? x : -103.9721f;  /* NaN -> finite here; restored at the end */
    xc = xc > 88.7228f ? 88.7228f : xc;
    float n = rintf(xc * 1.44269504088896341f);
    float r = fmaf(n, -0.693359375f, xc);       /* ln2 split in two: exact product for hi */
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p * r, r, r) + 1.0f;
    /* 2^n with n in [-150, 128]: split as 2^(n/2) * 2^(n - n/2) so both factors are normal floats
     * (n = 128 stays finite, results down to the denormal range keep their value) */
    int32_t ni = (int32_t)n;
    int32_t h = ni >> 1;
    float y = p * kiln_bits2f((int32_t)((uint32_t)(h + 127) << 23)) * kiln_bits2f((int32_t)((uint32_t)(ni - h + 127) << 23));
    y = x > 88.7228f ? INFINITY : y;
    y = x < -103.9721f ? 0.0f : y;
    return x != x ? x : y;
}

/* exp for softmax weights: 0 below e^-86 (< 2^-124), so no step of kiln_exp produces a
 * denormal. On Intel cores each denormal result costs a microcode assist (~150 cycles), and
 * every masked (-inf) score made one: it was half the time of causal prefill attention.
 * A weight below e^-86 beside the row's largest (e^0) changes no float sum. */
static inline float kiln_exp_ftz(float x) {
    float xc = x < -86.0f ? -86.0f : x;  /* NaN stays NaN */
    float y = kiln_exp(xc);
    return x < -86.0f ? 0.0f : y;
}

/* tanh: odd polynomial near 0 (Cephes), 1 - 2/(e^{2|x|}+1) elsewhere. */
static inline float kiln_tanh(float x) {
    float a = fabsf(x);
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = fmaf(p, z, 2.06390887954e-2f);
    p = fmaf(p, z, -5.37397155531e-2f);
    p = fmaf(p, z, 1.33314422036e-1f);
    p = fmaf(p, z, -3.33332819422e-1f);
    float small = fmaf(p * z, x, x);
    float e = kiln_exp(2.0f * (a < 20.0f ? a : 20.0f));
    float big = copysignf(1.0f - 2.0f / (e + 1.0f), x);
    big = x != x ? x : big;
    return a < 0.625f ? small : big;
}

static inline float kiln_sigmoid(float x) {
    return 1.0f / (1.0f + kiln_exp(-x));
}

/* erfc(a) for a >= 0 (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7). */
static inline float kiln_erfc_pos(float a) {
    float t = 1.0f / fmaf(0.5f, a, 1.0f);
    float p = 0.17087277f;
    p = fmaf(p, t, -0.82215223f);
    p = fmaf(p, t, 1.48851587f);
    p = fmaf(p, t, -1.13520398f);
    p = fmaf(p, t, 0.27886807f);
    p = fmaf(p, t, -0.18628806f);
    p = fmaf(p, t, 0.09678418f);
    p = fmaf(p, t, 0.37409196f);
    p = fmaf(p, t, 1.00002368f);
    p = fmaf(p, t, -1.26551223f);
    return t * kiln_exp(fmaf(-a, a, p));
}

/* erf: Taylor series of x*(2/sqrt(pi))*(...) below 0.5 (relative accuracy near 0), 1 - erfc above. */
static inline float kiln_erf(float x) {
    float a = fabsf(x);
    float z = x * x;
    float p = 1.0f / 75600.0f;
    p = fmaf(p, z, -1.0f / 9360.0f);
    p = fmaf(p, z, 1.0f / 1320.0f);
    p = fmaf(p, z, -1.0f / 216.0f);
    p = fmaf(p, z, 1.0f / 42.0f);
    p = fmaf(p, z, -1.0f / 10.0f);
    p = fmaf(p, z, 1.0f / 3.0f);
    float small = x * 1.12837916709551257f * fmaf(-p, z, 1.0f);
    float big = copysignf(1.0f - kiln_erfc_pos(a), x);
    big = x != x ? x : big;
    return a < 0.5f ? small : big;
}

/* gelu(x) = x * Phi(x); for x < 0 use erfc directly so the tail keeps relative accuracy. */
static inline float kiln_gelu(float x) {
    float a = fabsf(x) * 0.70710678118654752f;
    float e = kiln_erf(x * 0.70710678118654752f);
    float c = kiln_erfc_pos(a);
    float pos = 0.5f * x * (1.0f + e);
    float neg = 0.5f * x * c;
    return x < -0.5f ? neg : pos;
}

/* gelu_tanh: 0.5x(1 + tanh(u)) == x * sigmoid(2u), which has no cancellation for x < 0. */
static inline float kiln_gelu_tanh(float x) {
    float u = 0.79788456080286536f * fmaf(0.044715f * x, x * x, x);
    return x * kiln_sigmoid(2.0f * u);
}

/* An activation by its code (enum kiln_act, generated from kiln/ops/fused.py). */
static inline float kiln_act_apply(int act, float v) {
    switch (act) {
    case KILN_ACT_RELU: return v > 0.0f ? v : (v != v ? v : 0.0f);
    case KILN_ACT_GELU: return kiln_gelu(v);
    case KILN_ACT_GELU_TANH: return kiln_gelu_tanh(v);
    case KILN_ACT_SILU: return v * kiln_sigmoid(v);
    default: return v;
    }
}

/* y = act(y) over n floats; one switch per span so each loop vectorizes. */
static inline void kiln_act_span(float *y, int64_t n, int act) {
#define KILN_ACT_LOOP(CODE) _Pragma("omp simd") for (int64_t i = 0; i < n; i++) y[i] = kiln_act_apply(CODE, y[i]);
    switch (act) {
    case KILN_ACT_RELU: KILN_ACT_LOOP(KILN_ACT_RELU) break;
    case KILN_ACT_GELU: KILN_ACT_LOOP(KILN_ACT_GELU) break;
    case KILN_ACT_GELU_TANH: KILN_ACT_LOOP(KILN_ACT_GELU_TANH) break;
    case KILN_ACT_SILU: KILN_ACT_LOOP(KILN_ACT_SILU) break;
    default: break;
    }
#undef KILN_ACT_LOOP
}

/* q . k over n floats (one vectorized sum). */
static inline float kiln_dot(const float *q, const float *k, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += q[i] * k[i];
    return s;
}

/* out[j] = q . k_j for four keys k_j = k + j * ld: four FMA chains share each load of q.
 * Its sums may round differently from kiln_dot's; the attention kernels pick one of the two
 * by key position alone, so a key's score does not depend on the batch or the split. */
static inline void kiln_dot4(const float *q, const float *k, int64_t ld, int64_t n, float out[4]) {
    const float *k0 = k, *k1 = k0 + ld, *k2 = k1 + ld, *k3 = k2 + ld;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < n; i++) {
        float qi = q[i];
        s0 += qi * k0[i];
        s1 += qi * k1[i];
        s2 += qi * k2[i];
        s3 += qi * k3[i];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

#endif
