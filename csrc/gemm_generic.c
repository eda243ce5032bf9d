/* Portable GEMM kernels (any CPU, and KILN_FORCE_GENERIC=1): a panel vector is a 16-float GCC
 * vector, which the compiler maps onto whatever SIMD the target has. kt_fma is a multiply
 * then an add, never contracted, so every element sees the same two roundings per step. */
#pragma GCC optimize("fp-contract=off")
#pragma GCC diagnostic ignored "-Wpsabi" /* the vector type never crosses a non-inline call */
#include <string.h>

#include "gemm.h"

typedef float kt_v __attribute__((vector_size(64)));  /* GCC/Clang lower it to the target's SIMD */
static inline kt_v kt_zero(void) { return (kt_v){0}; }
static inline kt_v kt_load(const float *p) {
    kt_v r;
    memcpy(&r, p, sizeof r);
    return r;
}
static inline kt_v kt_load_n(const float *p, int n) {
    kt_v r = {0};
    memcpy(&r, p, (size_t)n * sizeof(float));
    return r;
}
static inline kt_v kt_bcast(float x) { return (kt_v){0} + x; }
/* macros, not functions: a by-value 64-byte vector parameter draws a psABI note */
#define kt_fma(a, b, c) ((a) * (b) + (c))
#define kt_store_n(p, v, n)                                   \
    do {                                                      \
        kt_v kt_t_ = (v);                                     \
        memcpy((p), &kt_t_, (size_t)(n) * sizeof(float));     \
    } while (0)

#define KT_MR 4
#define KT_NP 1
#define KT_NP1 1
#define KT_BLOCK kiln_gemm_block_generic
#define KT_PLAIN kiln_gemm_plain_generic
#include "gemm_tile.h"

#define KT_LMR 4
#define KT_LNP 1
#define KT_LBLOCK kiln_gemm_large_generic_4x16
#include "gemm_tile_large.h"
