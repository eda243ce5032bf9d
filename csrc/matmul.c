/* matmul: out = alpha * A @ B(^T) + beta * bias, batch dims broadcast.
 *
 * GEMM goes to the BLAS handed over by kiln_set_blas (any cblas_sgemm). The
 * bias is fused by first broadcasting it into `out` and then calling sgemm
 * with that beta. A 2-D B shared by a batch of A's becomes one sgemm with
 * M = batch * M. A few rows (M <= SMALL_M: decode) run our own threaded
 * skinny kernel that streams B once: measured ~5x faster than OpenBLAS's sgemm
 * for M = 1 (which does not switch to GEMV). Without a BLAS the same kernel,
 * in blocks of rows, keeps results correct (slowly).
 *
 * A constant weight packed at compile time (storage f32_p16, kiln/passes/pack.py) arrives
 * as its bytes (a 1-D bool tensor, like every stored weight) and runs Kiln's own packed GEMM
 * (csrc/gemm.c) for every M, bias and activation fused: no BLAS, nothing packed per call.
 */
#include "gemm.h"
#include "kiln.h"
#include "par.h"
#include "vmath.h"

#define SMALL_M KILN_MATMUL_SKINNY_MAX_M  /* up to this many rows: our skinny kernel (B streamed once) */
#define NB_T 16        /* B^T rows per task: 16 x K floats stay in L2 while every A row uses them */
#define NB_N 256       /* output columns per task for row-major B */

/* The skinny kernels' arguments: C[M, N] = alpha * A[M, K] @ B + beta * C (B row stride ldb). */
typedef struct {
    int tb; /* B is [N, K] (else [K, N]) */
    int64_t M, N, K, ldb;
    float alpha, beta;
    const float *A, *B;
    float *C;
} skinny_ctx;

static inline void skinny_t_task(int64_t M, int64_t N, int64_t K, int64_t ldb, float alpha, float beta, const float *A,
                                const float *B, float *C, int64_t t) {
    int64_t n0 = t * NB_T, n1 = n0 + NB_T < N ? n0 + NB_T : N;
    for (int64_t m = 0; m < M; m++) {
        const float *a = A + m * K;
        float *c = C + m * N;
        /* eight B rows at a time: eight weight streams in flight (memory-level
         * parallelism bounds GEMV), eight FMA chains share each load of a. A last group of
         * r < 8 rows repeats its last row in the spare streams (read from cache, not stored). */
        for (int64_t n = n0; n < n1; n += 8) {
            const int r = n1 - n < 8 ? (int)(n1 - n) : 8;
#define ROW(q) (B + (n + ((q) < r ? (q) : r - 1)) * ldb)
            const float *b0 = ROW(0), *b1 = ROW(1), *b2 = ROW(2), *b3 = ROW(3);
            const float *b4 = ROW(4), *b5 = ROW(5), *b6 = ROW(6), *b7 = ROW(7);
#undef ROW
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f, s5 = 0.0f, s6 = 0.0f, s7 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7)
            for (int64_t k = 0; k < K; k++) {
                float ak = a[k];
                s0 += ak * b0[k];
                s1 += ak * b1[k];
                s2 += ak * b2[k];
                s3 += ak * b3[k];
                s4 += ak * b4[k];
                s5 += ak * b5[k];
                s6 += ak * b6[k];
                s7 += ak * b7[k];
            }
            float s[8] = {s0, s1, s2, s3, s4, s5, s6, s7};
            for (int q = 0; q < r; q++)
                c[n + q] = alpha * s[q] + (beta != 0.0f ? beta * c[n + q] : 0.0f);
        }
    }
}

static inline void skinny_n_task(int64_t M, int64_t N, int64_t K, int64_t ldb, float alpha, float beta, const float *A,
                                const float *B, float *C, int64_t t) {
    int64_t lo = t * NB_N, n = N - lo < NB_N ? N - lo : NB_N;
    float acc[SMALL_M][NB_N];
    for (int64_t m = 0; m < M; m++)
        for (int64_t j = 0; j < n; j++) acc[m][j] = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        const float *b = B + k * ldb + lo;
        for (int64_t m = 0; m < M; m++) {
            float am = A[m * K + k];
            float *ac = acc[m];
#pragma omp simd
            for (int64_t j = 0; j < n; j++) ac[j] += am * b[j];
        }
    }
    for (int64_t m = 0; m < M; m++) {
        float *c = C + m * N + lo;
        for (int64_t j = 0; j < n; j++) c[j] = alpha * acc[m][j] + (beta != 0.0f ? beta * c[j] : 0.0f);
    }
}

static void skinny_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const skinny_ctx *x = (const skinny_ctx *)p;
    for (int64_t t = begin; t < end; t++) {
        if (x->tb) skinny_t_task(x->M, x->N, x->K, x->ldb, x->alpha, x->beta, x->A, x->B, x->C, t);
        else skinny_n_task(x->M, x->N, x->K, x->ldb, x->alpha, x->beta, x->A, x->B, x->C, t);
    }
}

/* C[M, N] = alpha * A[M, K] @ B + beta * C (C holds the bias when beta != 0), M <= SMALL_M.
 * B is [K, N] (ldb) or, transposed, [N, K] (ldb). Memory-bound on B: read it once for all rows. */
static void gemm_skinny(int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
                        int64_t ldb, float beta, float *C) {
    int par = M * N * K >= (1 << 16);
    int64_t tasks = tb ? (N + NB_T - 1) / NB_T : (N + NB_N - 1) / NB_N;
    skinny_ctx x = {tb, M, N, K, ldb, alpha, beta, A, B, C};
    kiln_par_for(tasks, par ? tasks * KILN_PAR_MIN : 0, skinny_range, &x);
}

/* Fallback GEMM when no BLAS is loaded: blocks of SMALL_M rows through the skinny kernel. */
static void gemm_ref(int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
                     float beta, float *C) {
    for (int64_t i = 0; i < M; i += SMALL_M)
        gemm_skinny(tb, M - i < SMALL_M ? M - i : SMALL_M, N, K, alpha, A + i * K, B, tb ? K : N, beta, C + i * N);
}
/* The BLAS splits: units of `unit` rows (or columns) of C, handed out as pool ranges; each
 * range is one single-threaded sgemm, so per-call overhead is paid once per chunk. Too small
 * a GEMM (M * N * K < 2^20) stays one call on the caller. */
typedef struct {
    int tb, split_n;
    int64_t M, N, K, unit, total;
    float alpha, beta;
    const float *A, *B;
    float *C, *T;
} blas_ctx;

static int64_t blas_work(int64_t M, int64_t N, int64_t K) { return M * N * K < (1LL << 20) ? 0 : KILN_PAR_MIN; }

static void blas_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const blas_ctx *k = (const blas_ctx *)p;
    int64_t lo = begin * k->unit, hi = end * k->unit < k->total ? end * k->unit : k->total;
    int tb = k->tb, ldb = tb ? (int)k->K : (int)k->N;
    if (lo >= hi) return;
    if (k->split_n)
        kiln_blas_sgemm(KILN_CBLAS_ROW_MAJOR, KILN_CBLAS_NO_TRANS, tb ? KILN_CBLAS_TRANS : KILN_CBLAS_NO_TRANS,
                        (int)k->M, (int)(hi - lo), (int)k->K, k->alpha, k->A, (int)k->K, tb ? k->B + lo * k->K : k->B + lo,
                        ldb, k->beta, k->C + lo, (int)k->N);
    else
        kiln_blas_sgemm(KILN_CBLAS_ROW_MAJOR, KILN_CBLAS_NO_TRANS, tb ? KILN_CBLAS_TRANS : KILN_CBLAS_NO_TRANS,
                        (int)(hi - lo), (int)k->N, (int)k->K, k->alpha, k->A + lo * k->K, (int)k->K, k->B, ldb, k->beta,
                        k->C + lo * k->N, (int)k->N);
}

/* Split the longer side of C: N in multiples of 16, or M in multiples of 8. */
static void gemm_blas(int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
                      float beta, float *C) {
    int split_n = N >= M;
    int64_t total = split_n ? N : M, unit = split_n ? 16 : 8;
    blas_ctx k = {tb, split_n, M, N, K, unit, total, alpha, beta, A, B, C, NULL};
    kiln_par_for((total + unit - 1) / unit, blas_work(M, N, K), blas_range, &k);
}

/* Few rows against B^T: OpenBLAS is markedly faster computing C^T = B @ A^T (the long side
 * as its rows) than C = A @ B^T (measured 1.3-1.4x at M = 16 and 1.1x at 64 for layer-sized
 * N on this machine; no gain for vocabulary-sized N). Each chunk (a range of N) computes its
 * share of C^T into scratch (N x M floats, planner-provided) and writes it back transposed,
 * adding the bias already in C. */
static void blas_t_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const blas_ctx *k = (const blas_ctx *)p;
    int64_t M = k->M, N = k->N, K = k->K;
    int64_t lo = begin * 16, hi = end * 16 < N ? end * 16 : N;
    if (lo >= hi) return;
    float *t = k->T + lo * M;
    kiln_blas_sgemm(KILN_CBLAS_ROW_MAJOR, KILN_CBLAS_NO_TRANS, KILN_CBLAS_TRANS, (int)(hi - lo), (int)M, (int)K,
                    k->alpha, k->B + lo * K, (int)K, k->A, (int)K, 0.0f, t, (int)M);
    for (int64_t m = 0; m < M; m++) {
        float *c = k->C + m * N;
        if (k->beta != 0.0f)
            for (int64_t n = lo; n < hi; n++) c[n] = t[(n - lo) * M + m] + k->beta * c[n];
        else
            for (int64_t n = lo; n < hi; n++) c[n] = t[(n - lo) * M + m];
    }
}

static void gemm_blas_transposed(int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B,
                                float beta, float *C, float *T) {
    blas_ctx k = {1, 1, M, N, K, 16, N, alpha, beta, A, B, C, T};
    kiln_par_for((N + 15) / 16, blas_work(M, N, K), blas_t_range, &k);
}

static void gemm(int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, const float *B, float beta,
                 float *C, const kiln_tensor *scratch) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
        for (int64_t i = 0; i < M * N; i++) C[i] = beta != 0.0f ? beta * C[i] : 0.0f;
        return;
    }
    if (M <= SMALL_M) {
        gemm_skinny(tb, M, N, K, alpha, A, B, tb ? K : N, beta, C);
    } else if (tb && kiln_blas_sgemm && M <= KILN_MATMUL_TRANSPOSED_MAX_M && N <= KILN_MATMUL_TRANSPOSED_MAX_N &&
               scratch->data && scratch->nbytes >= 4 * M * N && K < (1LL << 31)) {
        gemm_blas_transposed(M, N, K, alpha, A, B, beta, C, (float *)scratch->data);
    } else if (kiln_blas_sgemm && M < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31)) {
        gemm_blas(tb, M, N, K, alpha, A, B, beta, C);
    } else {
        gemm_ref(tb, M, N, K, alpha, A, B, beta, C);
    }
}

typedef struct {
    float *o;
    int64_t n;
    int act;
} epi_ctx;

KILN_WIDE_LOOPS static void epi_range(void *p, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const epi_ctx *k = (const epi_ctx *)p;
    for (int64_t r = begin; r < end; r++) kiln_act_span(k->o + r * k->n, k->n, k->act);
}

/* The fused activation (bias + ReLU/GELU/...), row-parallel over the finished output. */
static void epilogue(float *o, int64_t rows, int64_t n, int act) {
    if (act == KILN_ACT_NONE || rows * n == 0) return;
    epi_ctx k = {o, n, act};
    kiln_par_for(rows, rows * n, epi_range, &k);
}

/* 1 when t's batch dims (all but the last two) broadcast to out's. */
static int batch_broadcasts(const kiln_tensor *t, const kiln_tensor *out) {
    int nt = t->ndim - 2, no = out->ndim - 2;
    if (nt > no) return 0;
    for (int d = 0; d < nt; d++)
        if (t->shape[d] != 1 && t->shape[d] != out->shape[no - nt + d]) return 0;
    return 1;
}

/* 1 when bias t is one value per output column ([N], or [1, .., N]). */
static int is_column_bias(const kiln_tensor *t, int64_t n) {
    for (int d = 0; d < t->ndim - 1; d++)
        if (t->shape[d] != 1) return 0;
    return t->ndim >= 1 && t->shape[t->ndim - 1] == n;
}

/* Decode against a packed weight (rows <= GEMV_MAX_M): bound by streaming the weight once, so
 * the split is over panels only, for bandwidth: at least GEMV_CHUNKS_PER_THREAD chunks per
 * thread and none over GEMV_CHUNK_BYTES of weight, taken dynamically, so both threads stream
 * until the end (the engine's compute-sized chunks left a 576 x 576 weight on one thread and
 * an LM head's last 7 MB chunk on one). Panels p0.. of a packed B are themselves a packed B
 * (gemm.h), so each chunk is one kiln_gemm_packed call on its panels, run inline on its
 * thread: the engine's own kernel, so every element gets the same float operations as in
 * any other split or M (gemm.h). With a fused activation, chunks start at multiples of 8
 * panels, as the engine's do, so the activation sees the same spans. */
#define GEMV_MAX_M 4                  /* the generic kernel set's few-row tile (all of them: >= 4) */
#define GEMV_CHUNKS_PER_THREAD 4
#define GEMV_CHUNK_BYTES (512 << 10)  /* ~20 us of streaming: a late thread's last chunk is short */
#define GEMV_SERIAL_BYTES (64 << 10)  /* ~2 us of streaming: not worth a handoff to the pool */

typedef struct {
    int64_t M, N, K, units, chunks, align;
    const float *A, *B, *bias;
    float *C;
    float alpha, beta;
    int act, rc;
} gemv_ctx;

static void gemv_chunk(void *p, int64_t chunk, int thread) {
    (void)thread;
    gemv_ctx *x = (gemv_ctx *)p;
    int64_t p0 = chunk * x->units / x->chunks * x->align, p1 = (chunk + 1) * x->units / x->chunks * x->align;
    int64_t c0 = p0 * KILN_GEMM_NR, c1 = p1 * KILN_GEMM_NR < x->N ? p1 * KILN_GEMM_NR : x->N;
    if (c1 <= c0) return;
    int rc = kiln_gemm_packed(x->M, c1 - c0, x->K, x->A, x->K, x->B + c0 * x->K, x->C + c0, x->N, x->alpha,
                              x->bias ? x->bias + c0 : NULL, x->beta, x->act, NULL, 0);
    if (rc != 0) __atomic_store_n(&x->rc, rc, __ATOMIC_RELAXED); /* not after matmul_packed's checks */
}

/* Test and benchmark hook (ablation): 0 sends decode to kiln_gemm_packed's own split. */
static int gemv_split = 1;
void kiln_matmul_set_gemv_split(int on) { gemv_split = on != 0; }

static int gemv_packed(int64_t M, int64_t N, int64_t K, const float *A, const float *B, float *C, float alpha,
                       const float *bias, float beta, int act) {
    if (M == 0 || N == 0) return KILN_OK;
    int64_t bytes = 4 * N * K, panels = (N + KILN_GEMM_NR - 1) / KILN_GEMM_NR;
    int threads = kiln_pool_in_parallel() ? 1 : kiln_pool_threads();
    gemv_ctx x = {M, N, K, 0, 1, 8, A, B, bias, C, alpha, beta, act, 0};
    if (threads > 1 && bytes >= GEMV_SERIAL_BYTES) {
        int64_t by_size = (bytes + GEMV_CHUNK_BYTES - 1) / GEMV_CHUNK_BYTES;
        x.chunks = (int64_t)threads * GEMV_CHUNKS_PER_THREAD;
        x.chunks = by_size > x.chunks ? by_size : x.chunks;
        /* whole groups of 8 panels (the kernel's eight weight streams) where there are enough of
         * them, single panels where groups would leave a thread idle (a 576 x 576 weight: 36) */
        if (act == KILN_ACT_NONE && panels < 8 * x.chunks) x.align = 1;
    }
    x.units = (panels + x.align - 1) / x.align;
    x.chunks = x.chunks < x.units ? x.chunks : x.units;
    if (x.chunks > 1) kiln_pool_parallel(x.chunks, gemv_chunk, &x);
    else gemv_chunk(&x, 0, 0);
    return x.rc == 0 ? KILN_OK : KILN_ERR_PARAM;
}

/* B packed (gemm.h layout, logical [N, K], transposed-B semantics): one GEMM over every row of A. */
static int matmul_packed(const kiln_call *c, const kiln_matmul_params *p) {
    const kiln_tensor *A = &c->in[0], *B = &c->in[1], *O = &c->out;
    KILN_REQUIRE(p->transpose_b == 1 && A->ndim >= 2 && O->ndim == A->ndim, KILN_ERR_SHAPE);
    KILN_REQUIRE(A->dtype == KILN_FLOAT32 && O->dtype == KILN_FLOAT32, KILN_ERR_SHAPE);
    int64_t K = A->shape[A->ndim - 1], N = O->shape[O->ndim - 1];
    for (int d = 0; d < A->ndim - 1; d++) KILN_REQUIRE(A->shape[d] == O->shape[d], KILN_ERR_SHAPE);
    KILN_REQUIRE(B->nbytes == kiln_gemm_packed_bytes(K, N), KILN_ERR_SHAPE);
    int64_t rows = kiln_prod(A->shape, 0, A->ndim - 1);
    const float *bias = NULL;
    float beta = 0.0f;
    if (c->n_in > 2 && c->in[2].data) {
        const kiln_tensor *b = &c->in[2];
        if (p->beta == 1.0f && b->dtype == KILN_FLOAT32 && is_column_bias(b, N)) {
            bias = (const float *)b->data; /* added in the kernel's epilogue */
        } else {                            /* any other broadcast (a residual): through C, times beta */
            int rc = kiln_broadcast_copy(O, b);
            if (rc != KILN_OK) return rc;
            beta = p->beta;
        }
    }
    if (rows <= GEMV_MAX_M && gemv_split)
        return gemv_packed(rows, N, K, (const float *)A->data, (const float *)B->data, (float *)O->data, p->alpha,
                           bias, beta, (int)p->act);
    int rc = kiln_gemm_packed(rows, N, K, (const float *)A->data, K, (const float *)B->data, (float *)O->data, N,
                              p->alpha, bias, beta, (int)p->act, c->scratch.data, c->scratch.data ? c->scratch.nbytes : 0);
    return rc == 0 ? KILN_OK : KILN_ERR_PARAM;
}

int kiln_k_matmul(const kiln_call *c) {
    KILN_REQUIRE((c->n_in == 2 || c->n_in == 3) && c->params, KILN_ERR_BAD_CALL);
    const kiln_matmul_params *p = (const kiln_matmul_params *)c->params;
    const kiln_tensor *A = &c->in[0], *B = &c->in[1], *O = &c->out;
    KILN_REQUIRE((p->transpose_b == 0 || p->transpose_b == 1) && p->act >= KILN_ACT_NONE && p->act <= KILN_ACT_SILU,
                 KILN_ERR_PARAM);
    if (B->dtype == KILN_BOOL && B->ndim == 1) return matmul_packed(c, p); /* a stored (packed) weight */
    int tb = (int)p->transpose_b;
    KILN_REQUIRE(A->ndim >= 2 && B->ndim >= 2 && O->ndim >= 2, KILN_ERR_SHAPE);
    KILN_REQUIRE(A->dtype == KILN_FLOAT32 && B->dtype == KILN_FLOAT32 && O->dtype == KILN_FLOAT32, KILN_ERR_SHAPE);
    int64_t M = A->shape[A->ndim - 2], K = A->shape[A->ndim - 1];
    int64_t N = tb ? B->shape[B->ndim - 2] : B->shape[B->ndim - 1];
    int64_t Kb = tb ? B->shape[B->ndim - 1] : B->shape[B->ndim - 2];
    KILN_REQUIRE(Kb == K && O->shape[O->ndim - 2] == M && O->shape[O->ndim - 1] == N, KILN_ERR_SHAPE);
    KILN_REQUIRE(batch_broadcasts(A, O) && batch_broadcasts(B, O), KILN_ERR_SHAPE);
    float beta = 0.0f;
    if (c->n_in > 2 && c->in[2].data) {
        int rc = kiln_broadcast_copy(O, &c->in[2]);
        if (rc != KILN_OK) return rc;
        beta = p->beta;
    }
    const float *a = (const float *)A->data, *b = (const float *)B->data;
    float *o = (float *)O->data;
    int nb = O->ndim - 2;
    int64_t batch = kiln_prod(O->shape, 0, nb);
    int64_t a_batch = kiln_prod(A->shape, 0, A->ndim - 2), b_batch = kiln_prod(B->shape, 0, B->ndim - 2);
    if (batch == 0) return KILN_OK;
    if (b_batch == 1 && a_batch == batch) {
        /* B shared by every batch entry: one GEMM over all rows */
        gemm(tb, batch * M, N, K, p->alpha, a, b, beta, o, &c->scratch);
        epilogue(o, batch * M, N, (int)p->act);
        return KILN_OK;
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
        gemm(tb, M, N, K, p->alpha, a + ia * M * K, b + ib * K * N, beta, o + i * M * N, &c->scratch);
    }
    epilogue(o, batch * M, N, (int)p->act);
    return KILN_OK;
}
