/* kiln_par_for: contiguous ranges handed out as pool chunks (see par.h). */
#include "par.h"

#include "kiln.h"

typedef struct {
    kiln_range_fn fn;
    void *ctx;
    int64_t n, chunks;
} range_job;

static void range_chunk(void *p, int64_t chunk, int thread) {
    const range_job *j = (const range_job *)p;
    /* balanced cut: chunk sizes differ by at most one */
    int64_t lo = chunk * j->n / j->chunks, hi = (chunk + 1) * j->n / j->chunks;
    if (hi > lo) j->fn(j->ctx, lo, hi, thread);
}

void kiln_par_for(int64_t n, int64_t work, kiln_range_fn fn, void *ctx) {
    if (n <= 0) return;
    int threads = work >= KILN_PAR_MIN && n > 1 && !kiln_pool_in_parallel() ? kiln_pool_threads() : 1;
    if (threads <= 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    int64_t chunks = (int64_t)threads * KILN_PAR_SPLIT;
    if (chunks > n) chunks = n;
    range_job j = {fn, ctx, n, chunks};
    kiln_pool_parallel(chunks, range_chunk, &j);
}

static void share_chunk(void *p, int64_t chunk, int thread) {
    (void)thread;
    const range_job *j = (const range_job *)p;
    int64_t lo = chunk * j->n / j->chunks, hi = (chunk + 1) * j->n / j->chunks;
    if (hi > lo) j->fn(j->ctx, lo, hi, (int)chunk);
}

void kiln_par_slots(int64_t n, int64_t work, int64_t slots, kiln_range_fn fn, void *ctx) {
    if (n <= 0) return;
    int threads = work >= KILN_PAR_MIN && n > 1 && !kiln_pool_in_parallel() ? kiln_pool_threads() : 1;
    if (slots >= threads || threads <= 1) {
        kiln_par_for(n, work, fn, ctx);
        return;
    }
    if (slots <= 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    range_job j = {fn, ctx, n, slots < n ? slots : n};
    kiln_pool_parallel(j.chunks, share_chunk, &j);
}
