/* Packing a constant fp32 weight into the panel layout of gemm.h, and back. Runs once per
 * weight (at compile or load time), so it favours clarity over speed. */
#include <string.h>

#include "gemm.h"

#define NR KILN_GEMM_NR

static int64_t panels(int64_t N) { return (N + NR - 1) / NR; }

int64_t kiln_gemm_packed_bytes(int64_t K, int64_t N) {
    if (K < 0 || N < 0) return KILN_GEMM_ERR_ARG;
    if (K > 0 && N > INT64_MAX / 4 / K) return KILN_GEMM_ERR_ARG;
    return K * N * (int64_t)sizeof(float);
}

static int check(int64_t K, int64_t N, const void *b, int64_t ld, int trans, const void *dst) {
    if (kiln_gemm_packed_bytes(K, N) < 0 || (trans != 0 && trans != 1)) return KILN_GEMM_ERR_ARG;
    if (K == 0 || N == 0) return 0;
    if (!b || !dst || ld < (trans ? K : N)) return KILN_GEMM_ERR_ARG;
    return 0;
}

int kiln_gemm_pack_b(int64_t K, int64_t N, const float *B, int64_t ldb, int trans, float *dst) {
    int rc = check(K, N, B, ldb, trans, dst);
    if (rc || K == 0 || N == 0) return rc;
    for (int64_t p = 0; p < panels(N); p++) {
        float *d = dst + p * K * NR;
        int64_t n0 = p * NR, w = N - n0 < NR ? N - n0 : NR;
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < w; j++) d[k * w + j] = trans ? B[(n0 + j) * ldb + k] : B[k * ldb + n0 + j];
    }
    return 0;
}

int kiln_gemm_unpack_b(int64_t K, int64_t N, const float *packed, int trans, float *dst, int64_t ldd) {
    int rc = check(K, N, dst, ldd, trans, packed);
    if (rc || K == 0 || N == 0) return rc;
    for (int64_t n = 0; n < N; n++) {
        int64_t n0 = n / NR * NR, w = N - n0 < NR ? N - n0 : NR; /* the panel's width: its row stride */
        const float *s = packed + n0 * K + n % NR;
        for (int64_t k = 0; k < K; k++) {
            if (trans) dst[n * ldd + k] = s[k * w];
            else dst[k * ldd + n] = s[k * w];
        }
    }
    return 0;
}

int kiln_gemm_unpack_col(int64_t K, int64_t N, const float *packed, int64_t n, float *dst) {
    if (kiln_gemm_packed_bytes(K, N) < 0 || n < 0 || n >= N) return KILN_GEMM_ERR_ARG;
    if (K == 0) return 0;
    if (!packed || !dst) return KILN_GEMM_ERR_ARG;
    int64_t n0 = n / NR * NR, w = N - n0 < NR ? N - n0 : NR;
    const float *s = packed + n0 * K + n % NR;
    for (int64_t k = 0; k < K; k++) dst[k] = s[k * w];
    return 0;
}
