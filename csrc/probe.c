/* The read-bandwidth probe of the benchmarks' roofline (bench/machine.py read_bandwidth).
 *
 * kiln_read_probe(x, n) sums n floats over the pool, every thread streaming: chunks of
 * PROBE_CHUNK bytes taken dynamically (a late thread costs one chunk, as in the GEMV), each
 * read front to back with four independent vector accumulators, so neither an add chain
 * nor a float -> double conversion (the `sum` kernel's) can cap the rate below memory's.
 * The sum (accumulated per thread, in whatever chunk order) is returned so that the reads
 * cannot be optimized away, and tests can check it.
 *
 * kiln_read_probe_ahead(x, n, lines) does the same with a software prefetch `lines` 64-byte
 * lines ahead of the loads: the decode GEMV prefetches its weights (gemm_tile.h), and measured
 * faster than the plain probe with it, so the roofline offers the prefetching rate too and
 * the bound stays the faster of the two.
 */
#include <string.h>

#include "kiln.h"
#include "pool.h"

#define PROBE_CHUNK (1 << 20) /* bytes: ~30 us of streaming, many per thread for a GiB buffer */
#define PROBE_THREADS 256     /* partial sums, one per pool thread (pool.c's MAX_THREADS) */

typedef float v16 __attribute__((vector_size(64)));

typedef struct {
    const float *x;
    int64_t n, per, ahead; /* ahead: prefetch distance in floats (0: none) */
    double part[PROBE_THREADS];
} probe_job;

static double sum_span(const float *x, int64_t n, int64_t ahead) {
    v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        if (ahead) /* a prefetch never faults: it may look past the span */
            for (int l = 0; l < 4; l++) __builtin_prefetch(x + i + ahead + 16 * l, 0, 3);
        v16 b0, b1, b2, b3;
        memcpy(&b0, x + i, 64);
        memcpy(&b1, x + i + 16, 64);
        memcpy(&b2, x + i + 32, 64);
        memcpy(&b3, x + i + 48, 64);
        a0 += b0;
        a1 += b1;
        a2 += b2;
        a3 += b3;
    }
    v16 a = (a0 + a1) + (a2 + a3);
    double s = 0.0;
    for (int j = 0; j < 16; j++) s += a[j];
    for (; i < n; i++) s += x[i];
    return s;
}

static void probe_chunk(void *p, int64_t chunk, int thread) {
    probe_job *j = (probe_job *)p;
    int64_t lo = chunk * j->per, hi = lo + j->per < j->n ? lo + j->per : j->n;
    j->part[thread % PROBE_THREADS] += sum_span(j->x + lo, hi - lo, j->ahead); /* one thread per slot at a time */
}

double kiln_read_probe_ahead(const float *x, int64_t n, int64_t lines) {
    if (!x || n <= 0 || lines < 0) return 0.0;
    probe_job job = {x, n, PROBE_CHUNK / (int64_t)sizeof(float), lines * 16, {0}};
    kiln_pool_parallel((n + job.per - 1) / job.per, probe_chunk, &job);
    double s = 0.0;
    for (int i = 0; i < PROBE_THREADS; i++) s += job.part[i];
    return s;
}

double kiln_read_probe(const float *x, int64_t n) { return kiln_read_probe_ahead(x, n, 0); }
