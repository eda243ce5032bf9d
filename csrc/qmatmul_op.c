/* Op kernels over weights in a storage type (kiln/ops/quant.py): qmatmul, qembedding,
 * dequantize. Thin adapters from a kiln_call to the quantized kernels (quant.h); every
 * size is checked here against the call's tensors before the kernels run.
 *
 * A stored weight arrives as its bytes (ndim 1, dtype bool = 1-byte items); its logical
 * [N, K] comes from the other operands: K from the activations (or the output), N from
 * the output. */
#include "kiln.h"
#include "quant.h"
#include "vmath.h"

/* KILN_OK when W holds exactly n rows of k elements in fmt. */
static int check_weight(const kiln_tensor *W, int64_t fmt, int64_t n, int64_t k) {
    KILN_REQUIRE(fmt >= 0 && fmt < KILN_QFMT_COUNT, KILN_ERR_PARAM);
    int64_t rowb = kiln_qrow_bytes((int)fmt, k);
    KILN_REQUIRE(rowb > 0 && k % KILN_QK == 0, KILN_ERR_UNSUPPORTED);
    KILN_REQUIRE(W->nbytes == n * rowb, KILN_ERR_SHAPE);
    return KILN_OK;
}

int kiln_k_qmatmul(const kiln_call *c) {
    /* x [..., K], W [N, K] stored, bias [N]? -> out [..., N] */
    KILN_REQUIRE((c->n_in == 2 || c->n_in == 3) && c->params, KILN_ERR_BAD_CALL);
    const kiln_qmatmul_params *p = (const kiln_qmatmul_params *)c->params;
    const kiln_tensor *X = &c->in[0], *W = &c->in[1], *O = &c->out;
    KILN_REQUIRE(X->dtype == KILN_FLOAT32 && O->dtype == KILN_FLOAT32 && X->ndim >= 1 && O->ndim == X->ndim,
                 KILN_ERR_SHAPE);
    int64_t K = X->shape[X->ndim - 1], N = O->shape[O->ndim - 1];
    int64_t M = kiln_prod(X->shape, 0, X->ndim - 1);
    KILN_REQUIRE(kiln_prod(O->shape, 0, O->ndim - 1) == M, KILN_ERR_SHAPE);
    KILN_REQUIRE(p->mode == KILN_QMODE_EXACT || p->mode == KILN_QMODE_INT8, KILN_ERR_PARAM);
    KILN_REQUIRE(p->act >= 0 && p->act <= KILN_ACT_SILU, KILN_ERR_PARAM);
    KILN_REQUIRE(p->threads >= 1, KILN_ERR_PARAM);
    int rc = check_weight(W, p->fmt, N, K);
    if (rc != KILN_OK) return rc;
    const float *bias = NULL;
    if (c->n_in == 3) {
        KILN_REQUIRE(c->in[2].dtype == KILN_FLOAT32 && kiln_numel(&c->in[2]) == N, KILN_ERR_SHAPE);
        bias = (const float *)c->in[2].data;
    }
    if (M == 0 || N == 0) return KILN_OK;
    int threads = kiln_get_num_threads();
    if (threads > p->threads) threads = (int)p->threads;
    if (threads < 1) threads = 1;
    int64_t need = kiln_qmm_scratch_bytes((int)p->fmt, (int)p->mode, M, K, threads);
    KILN_REQUIRE(need >= 0 && c->scratch.data && c->scratch.nbytes >= need, KILN_ERR_BAD_CALL);
    kiln_qmm_args a = {(int)p->fmt, (int)p->mode, M, N, K, (const float *)X->data, K,
                       (const uint8_t *)W->data, bias, (float *)O->data, N, c->scratch.data};
    int q = threads > 1 ? kiln_qmm_threaded(&a, threads) : kiln_qmm(&a);
    if (q == -6) return KILN_ERR_BAD_CALL;    /* scratch not 64-byte aligned */
    KILN_REQUIRE(q == 0, KILN_ERR_SHAPE);
    if (p->act) kiln_act_span((float *)O->data, M * N, (int)p->act);
    return KILN_OK;
}

int kiln_k_qembedding(const kiln_call *c) {
    /* W [V, K] stored, ids [...] -> [..., K] */
    KILN_REQUIRE(c->n_in == 2 && c->params, KILN_ERR_BAD_CALL);
    const kiln_qembedding_params *p = (const kiln_qembedding_params *)c->params;
    const kiln_tensor *W = &c->in[0], *I = &c->in[1], *O = &c->out;
    KILN_REQUIRE(I->dtype == KILN_INT64 || I->dtype == KILN_INT32, KILN_ERR_SHAPE);
    KILN_REQUIRE(O->dtype == KILN_FLOAT32 && O->ndim == I->ndim + 1, KILN_ERR_SHAPE);
    for (int d = 0; d < I->ndim; d++) KILN_REQUIRE(O->shape[d] == I->shape[d], KILN_ERR_SHAPE);
    int64_t K = O->shape[O->ndim - 1], n = kiln_numel(I);
    KILN_REQUIRE(p->fmt >= 0 && p->fmt < KILN_QFMT_COUNT, KILN_ERR_PARAM);
    int64_t rowb = kiln_qrow_bytes((int)p->fmt, K);
    KILN_REQUIRE(rowb > 0 && K % KILN_QK == 0 && W->nbytes % rowb == 0, KILN_ERR_SHAPE);
    int64_t V = W->nbytes / rowb;
    /* every id is checked before a row is written (negative ids count from the end) */
    for (int64_t j = 0; j < n; j++) {
        int64_t v = I->dtype == KILN_INT32 ? ((const int32_t *)I->data)[j] : ((const int64_t *)I->data)[j];
        KILN_REQUIRE(v >= -V && v < V, KILN_ERR_INDEX);
    }
    for (int64_t j = 0; j < n; j++) {
        int64_t v = I->dtype == KILN_INT32 ? ((const int32_t *)I->data)[j] : ((const int64_t *)I->data)[j];
        if (v < 0) v += V;
        int rc = kiln_qembed((int)p->fmt, (const uint8_t *)W->data, V, K, &v, 1, (float *)O->data + j * K);
        KILN_REQUIRE(rc == 0, KILN_ERR_SHAPE);
    }
    return KILN_OK;
}

int kiln_k_dequantize(const kiln_call *c) {
    /* W [N, K] stored -> float32 [N, K] */
    KILN_REQUIRE(c->n_in == 1 && c->params, KILN_ERR_BAD_CALL);
    const kiln_dequantize_params *p = (const kiln_dequantize_params *)c->params;
    const kiln_tensor *O = &c->out;
    KILN_REQUIRE(O->dtype == KILN_FLOAT32 && O->ndim == 2, KILN_ERR_SHAPE);
    int64_t N = O->shape[0], K = O->shape[1];
    int rc = check_weight(&c->in[0], p->fmt, N, K);
    if (rc != KILN_OK) return rc;
    for (int64_t i = 0; i < N; i++) {
        int q = kiln_qembed((int)p->fmt, (const uint8_t *)c->in[0].data, N, K, &i, 1, (float *)O->data + i * K);
        KILN_REQUIRE(q == 0, KILN_ERR_SHAPE);
    }
    return KILN_OK;
}
