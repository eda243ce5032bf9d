/* Kiln's thread pool: one per process, persistent workers, dynamic chunks.
 *
 * kiln_pool_parallel(n, fn, ctx) runs fn(ctx, chunk, thread) for chunk = 0..n-1 on the
 * calling thread (thread 0) and the workers (threads 1..threads-1). Chunks are claimed
 * one at a time from a shared counter, so a worker the OS deschedules delays only the
 * chunk it holds, not a fixed share of the op. Split work into several chunks per
 * thread. Calls from inside a chunk (nesting) and calls racing another caller run
 * inline on the calling thread, with thread = 0. No allocation per call; workers spin
 * briefly after a call, then sleep (futex), so an idle Kiln leaves the cores alone.
 */
#ifndef KILN_POOL_H
#define KILN_POOL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One unit of work: `thread` in [0, kiln_pool_threads()) indexes per-thread scratch. */
typedef void (*kiln_pool_fn)(void *ctx, int64_t chunk, int thread);

/* Threads (caller included) for later calls: n < 1 means the default, KILN_NUM_THREADS or
 * the CPUs this process may use. Blocks until a running call ends; stops the workers,
 * which are started again, n - 1 of them, by the next call that needs them. */
void kiln_pool_set_threads(int n);
int kiln_pool_threads(void);
/* Spin time of an idle worker before it sleeps, in microseconds (default 20,
 * KILN_POOL_SPIN_US). 0: sleep at once. */
void kiln_pool_set_spin_us(int us);
void kiln_pool_parallel(int64_t n_chunks, kiln_pool_fn fn, void *ctx);
/* A parallel region: fn(ctx, seat, thread) runs once on the caller and once on each worker
 * that wakes before the caller's own call returns; seats no worker has taken by then are
 * dropped, so a descheduled worker never holds the region up. Every running seat must
 * share the work dynamically (e.g. per-op chunk counters in ctx: this is how a whole graph
 * can run as one region, see docs/DESIGN.md). Nested or racing calls run fn once, inline.
 * Returns the number of seats offered (threads). */
int kiln_pool_region(kiln_pool_fn fn, void *ctx);
/* 1 inside a chunk run by kiln_pool_parallel (on any thread), else 0. */
int kiln_pool_in_parallel(void);
/* The sum of x[0..n), every pool thread streaming 1 MiB chunks (csrc/probe.c): the
 * benchmarks' read-bandwidth probe, timed by the caller. */
double kiln_read_probe(const float *x, int64_t n);
double kiln_read_probe_ahead(const float *x, int64_t n, int64_t lines);

#ifdef __cplusplus
}
#endif
#endif
