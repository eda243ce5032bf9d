/* Portable GEMM kernels (any CPU, and KILN_FORCE_GENERIC=1): a panel vector is 16 floats the
 * compiler vectorizes as the target allows. kt_fma is a multiply then an add, never
 * contracted, so every element sees the same two roundings per step on every target. */
#pragma GCC optimize("fp-contract=off")
#include "gemm.h"

typedef struct {
    float v[16];
} kt_v;
static inline kt_v kt_zero(void) { return (kt_v){{0}}; }
static inline kt_v kt_load(const float *p) {
    kt_v r;
    for (int i = 0; i < 16; i++) r.v[i] = p[i];
    return r;
}
static inline kt_v kt_load_n(const float *p, int n) {
    kt_v r = {{0}};
    for (int i = 0; i < n; i++) r.v[i] = p[i];
    return r;
}
static inline void kt_store_n(float *p, kt_v v, int n) {
    for (int i = 0; i < n; i++) p[i] = v.v[i];
}
static inline kt_v kt_bcast(float x) {
    kt_v r;
    for (int i = 0; i < 16; i++) r.v[i] = x;
    return r;
}
static inline kt_v kt_fma(kt_v a, kt_v b, kt_v c) {
    kt_v r;
    for (int i = 0; i < 16; i++) {
        float t = a.v[i] * b.v[i];
        r.v[i] = t + c.v[i];
    }
    return r;
}

#define KT_MR 4
#define KT_NP 1
#define KT_NP1 2
#define KT_BLOCK kiln_gemm_block_generic
#include "gemm_tile.h"
