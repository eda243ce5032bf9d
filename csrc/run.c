/* The dispatch loop and the library's control surface (threads, BLAS, build info). */
#define _POSIX_C_SOURCE 199309L  /* clock_gettime under -std=c11 */
#include <time.h>
#include "kiln.h"
#include "pool.h"

kiln_sgemm_fn kiln_blas_sgemm = NULL;
static void (*blas_set_threads)(int) = NULL;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A tensor descriptor C can trust: rank in range, no negative dim, a known dtype and
 * exactly numel * itemsize bytes (without overflow). Every kernel relies on this. */
static int tensor_ok(const kiln_tensor *t) {
    if (t->ndim < 0 || t->ndim > KILN_MAX_DIMS) return 0;
    if (t->dtype < KILN_FLOAT32 || t->dtype > KILN_BOOL) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) return 0;
        if (t->shape[i] && n > INT64_MAX / 8 / t->shape[i]) return 0;
        n *= t->shape[i];
    }
    return t->nbytes == n * kiln_itemsize(t->dtype);
}

static int resolve(kiln_tensor *t, void *const *slots) {
    if (!tensor_ok(t)) return 0;
    t->data = (char *)slots[t->slot] + t->offset;
    return 1;
}

static int prepare(kiln_call *c, void *const *slots) {
    if (c->op < 0 || c->op >= KILN_NUM_OPS) return KILN_ERR_BAD_OP;
    if (!kiln_kernels[c->op]) return KILN_ERR_NO_KERNEL;
    if (c->n_in < 0 || c->n_in > KILN_MAX_INPUTS) return KILN_ERR_BAD_CALL;
    for (int j = 0; j < c->n_in; j++)
        if (!resolve(&c->in[j], slots)) return KILN_ERR_TENSOR;
    if (!resolve(&c->out, slots)) return KILN_ERR_TENSOR;
    if (c->scratch.nbytes > 0) {
        if (!resolve(&c->scratch, slots)) return KILN_ERR_TENSOR;
    } else {
        c->scratch.data = NULL;
    }
    return KILN_OK;
}

/* Runs calls[0..n) in order; stops at the first call that fails, stores its index in
 * *failed_at (when given) and returns its code. */
int kiln_run(kiln_call *calls, int64_t n, void *const *slots, int64_t *prof_ns, int64_t *failed_at) {
    if (failed_at) *failed_at = -1;
    if (n > 0 && (!calls || !slots)) return KILN_ERR_BAD_CALL;
    for (int64_t i = 0; i < n; i++) {
        kiln_call *c = &calls[i];
        int rc = prepare(c, slots);
        if (rc == KILN_OK) {
            int64_t t0 = prof_ns ? now_ns() : 0;
            rc = kiln_kernels[c->op](c);
            if (prof_ns) prof_ns[i] = now_ns() - t0;
        }
        if (rc != KILN_OK) {
            if (failed_at) *failed_at = i;
            return rc;
        }
    }
    return KILN_OK;
}

const char *kiln_strerror(int code) {
    switch (code) {
    case KILN_OK: return "ok";
    case KILN_ERR_BAD_OP: return "op id out of range";
    case KILN_ERR_NO_KERNEL: return "no kernel for op";
    case KILN_ERR_BAD_CALL: return "malformed call array";
    case KILN_ERR_TENSOR: return "tensor rank, shape, dtype and byte size disagree";
    case KILN_ERR_SHAPE: return "operand shapes or dtypes the op cannot combine";
    case KILN_ERR_PARAM: return "op parameter out of range";
    case KILN_ERR_INDEX: return "index or position out of range";
    case KILN_ERR_UNSUPPORTED: return "sizes this kernel does not support";
    default: return "unknown error";
    }
}

/* The op names in id order: the loader checks them against the Python declarations. */
int64_t kiln_num_ops(void) { return KILN_NUM_OPS; }
const char *kiln_op_name(int64_t id) { return id >= 0 && id < KILN_NUM_OPS ? kiln_op_names[id] : NULL; }

/* The kernels' threads are Kiln's pool (pool.h): n threads, the caller included. */
void kiln_set_num_threads(int n) {
    kiln_pool_set_threads(n < 1 ? 1 : n);
    /* The BLAS always runs in the calling thread: Kiln splits GEMMs over its own pool.
     * Two thread pools (OpenBLAS's pthreads and Kiln's) that each spin-wait between
     * calls fight over the cores, which on 2 cores cost milliseconds per switch. */
    if (blas_set_threads) blas_set_threads(1);
}

int kiln_get_num_threads(void) { return kiln_pool_threads(); }

int kiln_set_blas(void *sgemm, void *set_threads) {
    kiln_blas_sgemm = (kiln_sgemm_fn)sgemm;
    blas_set_threads = (void (*)(int))set_threads;
    if (blas_set_threads) blas_set_threads(1);
    return 0;
}

#define KILN_STR2(x) #x
#define KILN_STR(x) KILN_STR2(x)
#if defined(__AVX512F__)
#define KILN_ISA "avx512"
#elif defined(__AVX2__)
#define KILN_ISA "avx2"
#else
#define KILN_ISA "generic"
#endif
#if defined(__clang__)
#define KILN_CC "clang " __clang_version__
#elif defined(__GNUC__)
#define KILN_CC "gcc " KILN_STR(__GNUC__) "." KILN_STR(__GNUC_MINOR__) "." KILN_STR(__GNUC_PATCHLEVEL__)
#else
#define KILN_CC "cc"
#endif
#define KILN_OMP " pool"
#if defined(__SANITIZE_ADDRESS__)
#define KILN_SAN " asan"
#else
#define KILN_SAN ""
#endif

const char *kiln_build_info(void) { return KILN_ISA " " KILN_CC KILN_OMP KILN_SAN; }
int kiln_abi_version(void) { return KILN_ABI_VERSION; }
int64_t kiln_sizeof_call(void) { return (int64_t)sizeof(kiln_call); }
int64_t kiln_sizeof_tensor(void) { return (int64_t)sizeof(kiln_tensor); }

/* -- broadcasting ------------------------------------------------------------------ */
int kiln_broadcasts(const kiln_tensor *in, const kiln_tensor *out) {
    if (in->ndim > out->ndim) return 0;
    for (int d = 0; d < in->ndim; d++) {
        int64_t si = in->shape[d], so = out->shape[out->ndim - in->ndim + d];
        if (si != 1 && si != so) return 0;
    }
    return 1;
}

void kiln_bcast_init(kiln_bcast *bc, const kiln_tensor *out, const kiln_tensor *const *ins, int n_in) {
    int nd = out->ndim, nops = n_in + 1;
    int64_t shape[KILN_MAX_DIMS], st[KILN_BC_MAX][KILN_MAX_DIMS];
    kiln_strides(out, st[0]);   /* out: contiguous */
    for (int d = 0; d < nd; d++) shape[d] = out->shape[d];
    for (int k = 0; k < n_in; k++) {
        const kiln_tensor *t = ins[k];
        int64_t run = 1;
        for (int d = nd - 1; d >= 0; d--) {
            int td = d - (nd - t->ndim);
            int64_t sz = td >= 0 ? t->shape[td] : 1;
            st[k + 1][d] = (sz == 1) ? 0 : run;
            run *= sz;
        }
    }
    /* drop size-1 dims, merge dim d into the following kept one when every operand is contiguous across them */
    int m = 0;
    int64_t cs[KILN_MAX_DIMS], cst[KILN_BC_MAX][KILN_MAX_DIMS];
    for (int d = 0; d < nd; d++) {
        if (shape[d] == 1) continue;
        if (m > 0) {
            int merge = 1;
            for (int k = 0; k < nops; k++)
                if (cst[k][m - 1] != st[k][d] * shape[d]) { merge = 0; break; }
            if (merge) {
                cs[m - 1] *= shape[d];
                for (int k = 0; k < nops; k++) cst[k][m - 1] = st[k][d];
                continue;
            }
        }
        cs[m] = shape[d];
        for (int k = 0; k < nops; k++) cst[k][m] = st[k][d];
        m++;
    }
    if (m == 0) {
        cs[0] = 1;
        for (int k = 0; k < nops; k++) cst[k][0] = 0;
        m = 1;
    }
    bc->nd = m;
    bc->nops = nops;
    for (int d = 0; d < m; d++) {
        bc->shape[d] = cs[d];
        for (int k = 0; k < nops; k++) bc->st[k][d] = cst[k][d];
    }
}
