/* GEMM kernels for AVX2 + FMA: a panel vector is two ymm. 6 rows x 1 panel (6 x 16) keep 12
 * accumulators in the 16 registers; a single row (decode GEMV) takes 4 panels (8 chains).
 * Compiled for AVX2 whatever the build flags; called only when CPUID says so. */
#include "gemm.h"

#ifdef KILN_GEMM_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

typedef struct {
    __m256 lo, hi;
} kt_v;
static inline kt_v kt_zero(void) { return (kt_v){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline kt_v kt_load(const float *p) { return (kt_v){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline kt_v kt_load_n(const float *p, int n) {
    if (n == 16) return kt_load(p);
    float t[16] = {0};
    for (int i = 0; i < n; i++) t[i] = p[i];
    return kt_load(t);
}
static inline void kt_store_n(float *p, kt_v v, int n) {
    if (n == 16) {
        _mm256_storeu_ps(p, v.lo);
        _mm256_storeu_ps(p + 8, v.hi);
        return;
    }
    float t[16];
    _mm256_storeu_ps(t, v.lo);
    _mm256_storeu_ps(t + 8, v.hi);
    for (int i = 0; i < n; i++) p[i] = t[i];
}
static inline kt_v kt_bcast(float x) {
    __m256 b = _mm256_set1_ps(x);
    return (kt_v){b, b};
}
static inline kt_v kt_fma(kt_v a, kt_v b, kt_v c) {
    return (kt_v){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}

#define KT_MR 6
#define KT_NP 1
#define KT_NP1 4
#define KT_BLOCK kiln_gemm_block_avx2
#define KT_PLAIN kiln_gemm_plain_avx2
#include "gemm_tile.h"

#define KT_LMR 6
#define KT_LNP 1
#define KT_LBLOCK kiln_gemm_large_avx2_6x16
#include "gemm_tile_large.h"

#pragma GCC pop_options
#endif
