/* Broadcast binary arithmetic (float32/int64/int32, any mix via a slow path) and where.
 *
 * kiln_bcast coalesces the operands' shapes, so the fast paths are just the
 * inner-row variants: both operands contiguous (same shape), one of them a
 * scalar along the row (scalar operand, or one broadcast axis), and a
 * last-dim bias (rows of `a` against one row of `b`). Anything else is the
 * same row loop driven by an N-d odometer.
 */
#include <math.h>

#include "kiln.h"
#include "par.h"

enum { B_ADD, B_SUB, B_MUL, B_DIV, B_POW, B_MAX, B_MIN };

typedef void (*row_fn)(void *o, const void *a, const void *b, int64_t n, int sa, int sb);

#define ROW_FN(NAME, T, EXPR)                                                       \
    static void NAME(void *o_, const void *a_, const void *b_, int64_t n, int sa, int sb) { \
        T *o = (T *)o_;                                                             \
        const T *a = (const T *)a_, *b = (const T *)b_;                             \
        if (sa && sb) {                                                             \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) { T x = a[i], y = b[i]; o[i] = (EXPR); } \
        } else if (sa) {                                                            \
            T y = b[0];                                                             \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) { T x = a[i]; o[i] = (EXPR); } \
        } else if (sb) {                                                            \
            T x = a[0];                                                             \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) { T y = b[i]; o[i] = (EXPR); } \
        } else {                                                                    \
            T x = a[0], y = b[0];                                                   \
            T r = (EXPR);                                                           \
            for (int64_t i = 0; i < n; i++) o[i] = r;                               \
        }                                                                           \
    }

/* integer arithmetic wraps like numpy (done in unsigned to stay defined) */
#define IADD(T, U) (T)((U)x + (U)y)
#define ISUB(T, U) (T)((U)x - (U)y)
#define IMUL(T, U) (T)((U)x * (U)y)

static int64_t ipow64(int64_t x, int64_t y) {
    if (y < 0) return x == 1 ? 1 : (x == -1 ? ((y & 1) ? -1 : 1) : 0);
    uint64_t r = 1, b = (uint64_t)x;
    while (y) {
        if (y & 1) r *= b;
        b *= b;
        y >>= 1;
    }
    return (int64_t)r;
}

static double int_div(double x, double y) { return x / y; }

ROW_FN(f32_add, float, x + y)
ROW_FN(f32_sub, float, x - y)
ROW_FN(f32_mul, float, x * y)
ROW_FN(f32_div, float, x / y)
ROW_FN(f32_pow, float, (y == 2.0f ? x * x : powf(x, y)))
ROW_FN(f32_max, float, (x > y || x != x) ? x : y)
ROW_FN(f32_min, float, (x < y || x != x) ? x : y)
ROW_FN(i64_add, int64_t, IADD(int64_t, uint64_t))
ROW_FN(i64_sub, int64_t, ISUB(int64_t, uint64_t))
ROW_FN(i64_mul, int64_t, IMUL(int64_t, uint64_t))
ROW_FN(i64_div, int64_t, kiln_f2i64(int_div((double)x, (double)y)))
ROW_FN(i64_pow, int64_t, ipow64(x, y))
ROW_FN(i64_max, int64_t, x > y ? x : y)
ROW_FN(i64_min, int64_t, x < y ? x : y)
ROW_FN(i32_add, int32_t, IADD(int32_t, uint32_t))
ROW_FN(i32_sub, int32_t, ISUB(int32_t, uint32_t))
ROW_FN(i32_mul, int32_t, IMUL(int32_t, uint32_t))
ROW_FN(i32_div, int32_t, (int32_t)(uint32_t)(uint64_t)kiln_f2i64(int_div((double)x, (double)y)))
ROW_FN(i32_pow, int32_t, (int32_t)(uint32_t)(uint64_t)ipow64(x, y))
ROW_FN(i32_max, int32_t, x > y ? x : y)
ROW_FN(i32_min, int32_t, x < y ? x : y)

static const row_fn F32[] = {f32_add, f32_sub, f32_mul, f32_div, f32_pow, f32_max, f32_min};
static const row_fn I64[] = {i64_add, i64_sub, i64_mul, i64_div, i64_pow, i64_max, i64_min};
static const row_fn I32[] = {i32_add, i32_sub, i32_mul, i32_div, i32_pow, i32_max, i32_min};

typedef struct {
    const kiln_bcast *bc;
    row_fn f;
    char *o;
    const char *a, *b;
    int64_t esz, inner, per;
} rows_ctx;

static void rows_range(void *p, int64_t lo_t, int64_t hi_t, int thread) {
    (void)thread;
    const rows_ctx *k = (const rows_ctx *)p;
    const kiln_bcast *bc = k->bc;
    int64_t inner = k->inner, per = k->per, esz = k->esz;
    int sa = bc->st[1][bc->nd - 1] != 0, sb = bc->st[2][bc->nd - 1] != 0;
    for (int64_t t = lo_t; t < hi_t; t++) {
        int64_t r = t / per, lo = (t % per) * KILN_CHUNK;
        int64_t n = inner - lo < KILN_CHUNK ? inner - lo : KILN_CHUNK;
        int64_t off[KILN_BC_MAX];
        kiln_bcast_row(bc, r, off);
        k->f(k->o + (off[0] + lo) * esz, k->a + (off[1] + lo * sa) * esz, k->b + (off[2] + lo * sb) * esz, n, sa, sb);
    }
}

/* Split rows into tasks of at most KILN_CHUNK elements so one long row still uses every thread. */
static void run_rows(const kiln_bcast *bc, row_fn f, char *o, const char *a, const char *b, int64_t esz) {
    int64_t inner = bc->shape[bc->nd - 1];
    int64_t rows = kiln_prod(bc->shape, 0, bc->nd - 1);
    int64_t per = (inner + KILN_CHUNK - 1) / KILN_CHUNK;
    rows_ctx k = {bc, f, o, a, b, esz, inner, per};
    kiln_par_for(rows * per, rows * inner, rows_range, &k);
}

static float op_f32(int op, float x, float y) {
    switch (op) {
    case B_ADD: return x + y;
    case B_SUB: return x - y;
    case B_MUL: return x * y;
    case B_DIV: return x / y;
    case B_POW: return powf(x, y);
    case B_MAX: return (x > y || x != x) ? x : y;
    default: return (x < y || x != x) ? x : y;
    }
}

static int64_t op_i64(int op, int64_t x, int64_t y) {
    switch (op) {
    case B_ADD: return IADD(int64_t, uint64_t);
    case B_SUB: return ISUB(int64_t, uint64_t);
    case B_MUL: return IMUL(int64_t, uint64_t);
    case B_DIV: return kiln_f2i64((double)x / (double)y);
    case B_POW: return ipow64(x, y);
    case B_MAX: return x > y ? x : y;
    default: return x < y ? x : y;
    }
}

/* Mixed dtypes (or bool): convert per element to the promoted type. Rare; correctness over speed. */
static void binary_mixed(const kiln_call *c, const kiln_bcast *bc, int op) {
    const kiln_tensor *A = &c->in[0], *B = &c->in[1], *O = &c->out;
    int64_t inner = bc->shape[bc->nd - 1], rows = kiln_prod(bc->shape, 0, bc->nd - 1);
    int64_t sa = bc->st[1][bc->nd - 1], sb = bc->st[2][bc->nd - 1];
    for (int64_t r = 0; r < rows; r++) {
        int64_t off[KILN_BC_MAX];
        kiln_bcast_row(bc, r, off);
        for (int64_t i = 0; i < inner; i++) {
            int64_t ia = off[1] + i * sa, ib = off[2] + i * sb, io = off[0] + i;
            if (O->dtype == KILN_FLOAT32)
                ((float *)O->data)[io] = op_f32(op, (float)kiln_load_f64(A->data, A->dtype, ia),
                                                (float)kiln_load_f64(B->data, B->dtype, ib));
            else if (O->dtype == KILN_BOOL && op == B_DIV)
                kiln_store_f64(O->data, O->dtype, io,
                               kiln_load_f64(A->data, A->dtype, ia) / kiln_load_f64(B->data, B->dtype, ib));
            else
                kiln_store_i64(O->data, O->dtype, io,
                               op_i64(op, kiln_load_i64(A->data, A->dtype, ia), kiln_load_i64(B->data, B->dtype, ib)));
        }
    }
}

static int binary(const kiln_call *c, int op) {
    KILN_REQUIRE(c->n_in == 2, KILN_ERR_BAD_CALL);
    KILN_REQUIRE(kiln_broadcasts(&c->in[0], &c->out) && kiln_broadcasts(&c->in[1], &c->out), KILN_ERR_SHAPE);
    if (kiln_numel(&c->out) == 0) return KILN_OK;
    const kiln_tensor *ins[2] = {&c->in[0], &c->in[1]};
    kiln_bcast bc;
    kiln_bcast_init(&bc, &c->out, ins, 2);
    int dt = c->out.dtype;
    if (c->in[0].dtype != dt || c->in[1].dtype != dt || dt == KILN_BOOL) {
        binary_mixed(c, &bc, op);
        return KILN_OK;
    }
    const row_fn *tab = dt == KILN_FLOAT32 ? F32 : dt == KILN_INT64 ? I64 : I32;
    run_rows(&bc, tab[op], (char *)c->out.data, (const char *)c->in[0].data, (const char *)c->in[1].data,
             kiln_itemsize(dt));
    return KILN_OK;
}

int kiln_k_add(const kiln_call *c) { return binary(c, B_ADD); }
int kiln_k_sub(const kiln_call *c) { return binary(c, B_SUB); }
int kiln_k_mul(const kiln_call *c) { return binary(c, B_MUL); }
int kiln_k_div(const kiln_call *c) { return binary(c, B_DIV); }
int kiln_k_pow(const kiln_call *c) { return binary(c, B_POW); }
int kiln_k_maximum(const kiln_call *c) { return binary(c, B_MAX); }
int kiln_k_minimum(const kiln_call *c) { return binary(c, B_MIN); }

/* -- where(cond, a, b) ------------------------------------------------------------------ */
#define WHERE_ROW(T)                                                                \
    do {                                                                            \
        T *o = (T *)O->data + off[0];                                               \
        const T *a = (const T *)A->data + off[2], *b = (const T *)B->data + off[3]; \
        _Pragma("omp simd") for (int64_t i = 0; i < n; i++)                         \
            o[i] = cd[i * sc] ? a[i * sa] : b[i * sb];                              \
    } while (0)

typedef struct {
    const kiln_call *c;
    const kiln_bcast *bc;
    int same;
    int64_t esz;
} where_ctx;

static void where_range(void *p, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const where_ctx k = *(const where_ctx *)p;
    const kiln_bcast *bcp = k.bc;
    const kiln_tensor *C = &k.c->in[0], *A = &k.c->in[1], *B = &k.c->in[2], *O = &k.c->out;
    int64_t n = bcp->shape[bcp->nd - 1];
    int64_t sc = bcp->st[1][bcp->nd - 1], sa = bcp->st[2][bcp->nd - 1], sb = bcp->st[3][bcp->nd - 1];
    const int same = k.same;
    const int64_t esz = k.esz;
    for (int64_t r = lo; r < hi; r++) {
        int64_t off[KILN_BC_MAX];
        kiln_bcast_row(bcp, r, off);
        const uint8_t *cd = (const uint8_t *)C->data + off[1];
        if (same && esz == 4) WHERE_ROW(int32_t);
        else if (same && esz == 8) WHERE_ROW(int64_t);
        else if (same) WHERE_ROW(uint8_t);
        else if (O->dtype == KILN_FLOAT32)
            for (int64_t i = 0; i < n; i++)
                kiln_store_f64(O->data, O->dtype, off[0] + i,
                               cd[i * sc] ? kiln_load_f64(A->data, A->dtype, off[2] + i * sa)
                                          : kiln_load_f64(B->data, B->dtype, off[3] + i * sb));
        else
            for (int64_t i = 0; i < n; i++)
                kiln_store_i64(O->data, O->dtype, off[0] + i,
                               cd[i * sc] ? kiln_load_i64(A->data, A->dtype, off[2] + i * sa)
                                          : kiln_load_i64(B->data, B->dtype, off[3] + i * sb));
    }
}

int kiln_k_where(const kiln_call *c) {
    KILN_REQUIRE(c->n_in == 3, KILN_ERR_BAD_CALL);
    const kiln_tensor *C = &c->in[0], *A = &c->in[1], *B = &c->in[2], *O = &c->out;
    KILN_REQUIRE(C->dtype == KILN_BOOL && kiln_broadcasts(C, O) && kiln_broadcasts(A, O) && kiln_broadcasts(B, O),
                 KILN_ERR_SHAPE);
    if (kiln_numel(O) == 0) return KILN_OK;
    const kiln_tensor *ins[3] = {C, A, B};
    kiln_bcast bc;
    kiln_bcast_init(&bc, O, ins, 3);
    int64_t n = bc.shape[bc.nd - 1], rows = kiln_prod(bc.shape, 0, bc.nd - 1);
    int same = A->dtype == O->dtype && B->dtype == O->dtype;
    int64_t esz = kiln_itemsize(O->dtype);
    where_ctx k = {c, &bc, same, esz};
    kiln_par_for(rows, rows * n, where_range, &k);
    return KILN_OK;
}
