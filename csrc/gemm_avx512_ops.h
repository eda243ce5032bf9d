/* The AVX-512 panel vector of gemm_tile.h (one zmm = 16 floats), for the two files that
 * instantiate its kernels (gemm_avx512.c, gemm_avx512_tall.c); each includes it inside its own
 * `#pragma GCC target` region. */
#include <immintrin.h>

typedef __m512 kt_v;
static inline kt_v kt_zero(void) { return _mm512_setzero_ps(); }
static inline kt_v kt_load(const float *p) { return _mm512_loadu_ps(p); }
static inline kt_v kt_load_n(const float *p, int n) {
    return n == 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
static inline void kt_store_n(float *p, kt_v v, int n) {
    if (n == 16) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), v);
}
static inline kt_v kt_bcast(float x) { return _mm512_set1_ps(x); }
static inline kt_v kt_fma(kt_v a, kt_v b, kt_v c) { return _mm512_fmadd_ps(a, b, c); }
