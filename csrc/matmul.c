/* matmul: out = alpha * A @ B(^T) + beta * bias, batch dims broadcast.
 *
 * GEMM goes to the BLAS handed over by kiln_set_blas (any cblas_sgemm). The
 * bias is fused by first broadcasting it into `out` and then calling sgemm
 * with that beta. A 2-D B shared by a batch of A's becomes one sgemm with
 * M = batch * M. A single row (M == 1, decode) runs our own threaded GEMV,
 * which avoids BLAS's dispatch overhead for this memory-bound case. Without a
 * BLAS, a plain vectorized loop keeps results correct (slowly).
 */
#include "kiln.h"

/* y[N] = alpha * x[K] @ B, B is [K, N] (ldb) or, transposed, [N, K]; beta: y += (y already bias) */
static void gemv(int tb, int64_t N, int64_t K, float alpha, const float *x, const float *B, int64_t ldb,
                 float beta, float *y) {
    int par = N * K >= (1 << 16);
    if (tb) {
#pragma omp parallel for schedule(static) if(par)
        for (int64_t n = 0; n < N; n++) {
            const float *b = B + n * ldb;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t k = 0; k < K; k++) s += x[k] * b[k];
            y[n] = alpha * s + (beta != 0.0f ? beta * y[n] : 0.0f);
        }
        return;
    }
    const int64_t CH = 512;
    int64_t tasks = (N + CH - 1) / CH;
#pragma omp parallel for schedule(static) if(par && tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t lo = t * CH, n = N - lo < CH ? N - lo : CH;
        float acc[512];
        for (int64_t j = 0; j < n; j++) acc[j] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            const float *b = B + k * ldb + lo;
            float xk = x[k];
#pragma omp simd
            for (int64_t j = 0; j < n; j++) acc[j] += xk * b[j];
        }
        float *yo = y + lo;
        for (int64_t j = 0; j < n; j++) yo[j] = alpha * acc[j] + (beta != 0.0f ? beta * yo[j] : 0.0f);
    }
}

/* Fallback GEMM when no BLAS is loaded: row-parallel, vectorized over N (or K for B^T). */
static void gemm_ref(int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
                     float beta, float *C) {
#pragma omp parallel for schedule(static) if(M > 1 && M * N * K >= (1 << 16))
    for (int64_t i = 0; i < M; i++) gemv(tb, N, K, alpha, A + i * K, B, tb ? K : N, beta, C + i * N);
}

static void gemm(int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B, float beta,
                 float *C) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
        for (int64_t i = 0; i < M * N; i++) C[i] = beta != 0.0f ? beta * C[i] : 0.0f;
        return;
    }
    if (M == 1) {
        gemv(tb, N, K, alpha, A, B, tb ? K : N, beta, C);
    } else if (kiln_blas_sgemm && M < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31)) {
        kiln_blas_sgemm(KILN_CBLAS_ROW_MAJOR, KILN_CBLAS_NO_TRANS, tb ? KILN_CBLAS_TRANS : KILN_CBLAS_NO_TRANS,
                        (int)M, (int)N, (int)K, alpha, A, (int)K, B, tb ? (int)K : (int)N, beta, C, (int)N);
    } else {
        gemm_ref(tb, M, N, K, alpha, A, B, beta, C);
    }
}

void kiln_k_matmul(const kiln_call *c) {
    const kiln_matmul_params *p = (const kiln_matmul_params *)c->params;
    const kiln_tensor *A = &c->in[0], *B = &c->in[1], *O = &c->out;
    int tb = p->transpose_b != 0;
    if (A->ndim < 2 || B->ndim < 2 || O->ndim < 2) return;
    int64_t M = A->shape[A->ndim - 2], K = A->shape[A->ndim - 1];
    int64_t N = tb ? B->shape[B->ndim - 2] : B->shape[B->ndim - 1];
    int64_t Kb = tb ? B->shape[B->ndim - 1] : B->shape[B->ndim - 2];
    if (Kb != K || O->shape[O->ndim - 2] != M || O->shape[O->ndim - 1] != N) return;
    float beta = 0.0f;
    if (c->n_in > 2 && c->in[2].data) {
        kiln_broadcast_copy(O, &c->in[2]);
        beta = p->beta;
    }
    const float *a = (const float *)A->data, *b = (const float *)B->data;
    float *o = (float *)O->data;
    int nb = O->ndim - 2;
    int64_t batch = kiln_prod(O->shape, 0, nb);
    int64_t a_batch = kiln_prod(A->shape, 0, A->ndim - 2), b_batch = kiln_prod(B->shape, 0, B->ndim - 2);
    if (batch == 0) return;
    if (b_batch == 1 && a_batch == batch) {
        /* B shared by every batch entry: one GEMM over all rows */
        gemm(tb, batch * M, N, K, p->alpha, a, b, beta, o);
        return;
    }
    /* broadcast batch strides (in matrices) for A and B over out's batch dims */
    int64_t sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS];
    for (int d = nb - 1, ra = 1, rb = 1; d >= 0; d--) {
        int da = d - (nb - (A->ndim - 2)), db = d - (nb - (B->ndim - 2));
        int64_t za = da >= 0 ? A->shape[da] : 1, zb = db >= 0 ? B->shape[db] : 1;
        sa[d] = za == 1 ? 0 : ra;
        sb[d] = zb == 1 ? 0 : rb;
        ra *= za;
        rb *= zb;
    }
    for (int64_t i = 0; i < batch; i++) {
        int64_t ia = 0, ib = 0, r = i;
        for (int d = nb - 1; d >= 0; d--) {
            int64_t x = r % O->shape[d];
            r /= O->shape[d];
            ia += x * sa[d];
            ib += x * sb[d];
        }
        gemm(tb, M, N, K, p->alpha, a + ia * M * K, b + ib * K * N, beta, o + i * M * N);
    }
}
