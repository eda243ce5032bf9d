/* Kiln C runtime: shared declarations for the dispatch loop and the kernels.
 *
 * The op ids, tensor/call layout and per-op params structs come from
 * generated/kiln_ops.h (python -m kiln.ops.codegen); nothing here numbers ops
 * by hand. Kernels never allocate: outputs and scratch come from the planner.
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kiln_ops.h"

#define KILN_ABI_VERSION 2

/* Status codes: kernels and kiln_run return 0 or one of these (kiln_strerror names
 * them). A kernel that returns an error has written nothing it promises; kiln_run
 * stops at the first failing call and reports its index, so no caller ever reads an
 * output a kernel left unwritten. */
#define KILN_OK 0
#define KILN_ERR_BAD_OP (-1)      /* op id out of range */
#define KILN_ERR_NO_KERNEL (-2)   /* no kernel for the op */
#define KILN_ERR_BAD_CALL (-3)    /* NULL call/slot array, n_in out of range */
#define KILN_ERR_TENSOR (-4)      /* a tensor's rank, shape, dtype and byte size disagree */
#define KILN_ERR_SHAPE (-5)       /* operand shapes or dtypes the op cannot combine */
#define KILN_ERR_PARAM (-6)       /* a param (axis, perm, step, activation, ...) out of range */
#define KILN_ERR_INDEX (-7)       /* an index or position read from a tensor is out of range */
#define KILN_ERR_UNSUPPORTED (-8) /* sizes this kernel has no path for */

/* Kernels check before they write: return `err` unless `cond` holds. */
#define KILN_REQUIRE(cond, err)       \
    do {                              \
        if (!(cond)) return (err);    \
    } while (0)

/* Below this many elements a kernel runs on one thread (kiln_par_for, par.h): waking the
 * pool's workers costs more than the work. */
#define KILN_PAR_MIN 32768
/* Elementwise work is split into chunks of this many elements per task. */
#define KILN_CHUNK 16384

#ifdef __cplusplus
extern "C" {
#endif

int kiln_run(kiln_call *calls, int64_t n, void *const *slots, int64_t *prof_ns, int64_t *failed_at);
const char *kiln_strerror(int code);
int64_t kiln_num_ops(void);
const char *kiln_op_name(int64_t id);
void kiln_set_num_threads(int n);
int kiln_get_num_threads(void);
int kiln_set_blas(void *sgemm, void *set_threads);
void kiln_set_flash_min_sk(int64_t sk);
void kiln_set_attention_blocked(int on);
const char *kiln_build_info(void);
int kiln_abi_version(void);
int64_t kiln_sizeof_call(void);
int64_t kiln_sizeof_tensor(void);

/* -- BLAS (loaded at run time by Python, never linked) ----------------------- */
enum { KILN_CBLAS_ROW_MAJOR = 101, KILN_CBLAS_NO_TRANS = 111, KILN_CBLAS_TRANS = 112 };
typedef void (*kiln_sgemm_fn)(int order, int ta, int tb, int m, int n, int k, float alpha,
                              const float *a, int lda, const float *b, int ldb, float beta,
                              float *c, int ldc);
extern kiln_sgemm_fn kiln_blas_sgemm;

/* -- small helpers ------------------------------------------------------------ */
static inline int64_t kiln_numel(const kiln_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static inline int64_t kiln_itemsize(int dtype) {
    switch (dtype) {
    case KILN_FLOAT32: return 4;
    case KILN_INT64: return 8;
    case KILN_INT32: return 4;
    case KILN_BOOL: return 1;
    default: return 1;
    }
}

/* product of shape[lo..hi) */
static inline int64_t kiln_prod(const int64_t *shape, int lo, int hi) {
    int64_t n = 1;
    for (int i = lo; i < hi; i++) n *= shape[i];
    return n;
}

/* Element strides of `t` laid out contiguously (row-major) into st[0..ndim). */
static inline void kiln_strides(const kiln_tensor *t, int64_t *st) {
    int64_t run = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        st[d] = run;
        run *= t->shape[d];
    }
}

/* Load any dtype element as double / int64 (slow mixed-dtype paths only). */
static inline double kiln_load_f64(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case KILN_FLOAT32: return ((const float *)p)[i];
    case KILN_INT64: return (double)((const int64_t *)p)[i];
    case KILN_INT32: return ((const int32_t *)p)[i];
    default: return ((const uint8_t *)p)[i] != 0;
    }
}
static inline int64_t kiln_load_i64(const void *p, int dtype, int64_t i) {
    switch (dtype) {
    case KILN_FLOAT32: {
        float v = ((const float *)p)[i];
        return (v == v && v > -9.2233720e18f && v < 9.2233720e18f) ? (int64_t)v : INT64_MIN;
    }
    case KILN_INT64: return ((const int64_t *)p)[i];
    case KILN_INT32: return ((const int32_t *)p)[i];
    default: return ((const uint8_t *)p)[i] != 0;
    }
}
/* double -> int64 the way numpy's astype does on x86: out of range / NaN -> INT64_MIN. */
static inline int64_t kiln_f2i64(double v) {
    return (v == v && v > -9.2233720368547758e18 && v < 9.2233720368547758e18) ? (int64_t)v : INT64_MIN;
}
static inline void kiln_store_f64(void *p, int dtype, int64_t i, double v) {
    switch (dtype) {
    case KILN_FLOAT32: ((float *)p)[i] = (float)v; break;
    case KILN_INT64: ((int64_t *)p)[i] = kiln_f2i64(v); break;
    case KILN_INT32: ((int32_t *)p)[i] = (int32_t)(uint32_t)(uint64_t)kiln_f2i64(v); break;
    default: ((uint8_t *)p)[i] = v != 0; break;
    }
}
static inline void kiln_store_i64(void *p, int dtype, int64_t i, int64_t v) {
    switch (dtype) {
    case KILN_FLOAT32: ((float *)p)[i] = (float)v; break;
    case KILN_INT64: ((int64_t *)p)[i] = v; break;
    case KILN_INT32: ((int32_t *)p)[i] = (int32_t)(uint32_t)(uint64_t)v; break;
    default: ((uint8_t *)p)[i] = v != 0; break;
    }
}

/* -- broadcasting iteration ------------------------------------------------------
 * Describes out[...] = f(in0[...], in1[...], ...) with numpy broadcasting, as
 * `nd` coalesced dims (size-1 dims dropped, dims contiguous in every operand
 * merged) and per-operand element strides (0 on broadcast dims). Operand 0 is
 * the output. Same-shape operands coalesce to one dim, a last-dim bias to two
 * dims with strides (0, 1), and so on: the fast paths fall out of the shape. */
#define KILN_BC_MAX 4
typedef struct {
    int nd;
    int nops;
    int64_t shape[KILN_MAX_DIMS];
    int64_t st[KILN_BC_MAX][KILN_MAX_DIMS];
} kiln_bcast;

void kiln_bcast_init(kiln_bcast *bc, const kiln_tensor *out, const kiln_tensor *const *ins, int n_in);
/* Element offsets of the start of row r (a row is the last coalesced dim). */
static inline void kiln_bcast_row(const kiln_bcast *bc, int64_t r, int64_t *off) {
    for (int k = 0; k < bc->nops; k++) off[k] = 0;
    for (int d = bc->nd - 2; d >= 0 && r; d--) {
        int64_t i = r % bc->shape[d];
        r /= bc->shape[d];
        for (int k = 0; k < bc->nops; k++) off[k] += i * bc->st[k][d];
    }
}
/* 1 when `in` broadcasts to `out`'s shape (numpy rules: aligned from the right, each dim 1 or equal). */
int kiln_broadcasts(const kiln_tensor *in, const kiln_tensor *out);
/* Copy `in` broadcast to `out`'s shape (same dtype); used by expand and matmul's bias.
 * KILN_ERR_SHAPE unless kiln_broadcasts(in, out) and the dtypes match. */
int kiln_broadcast_copy(const kiln_tensor *out, const kiln_tensor *in);

/* Fast float32 exp for vectorized loops (max rel. error ~2 ulp). */
float kiln_expf_scalar(float x);
void kiln_vexp(float *y, const float *x, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
