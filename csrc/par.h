/* Range loops over Kiln's thread pool (pool.h): the kernels' replacement for
 * `omp parallel for`.
 *
 * kiln_par_for(n, work, fn, ctx) runs fn(ctx, lo, hi, thread) over disjoint ranges
 * covering [0, n). When `work` (about how many elements the whole loop touches) is under
 * KILN_PAR_MIN, n < 2 or the pool has one thread, it is one call on the caller, with no
 * fork/join. Otherwise [0, n) is cut into up to KILN_PAR_SPLIT chunks per thread, taken
 * dynamically, so a thread the OS deschedules delays only the chunk it holds. Results
 * must not depend on the split: each index is computed the same way whoever runs it.
 */
#ifndef KILN_PAR_H
#define KILN_PAR_H

#include <stdint.h>

#include "pool.h"

/* Chunks per thread: enough that a late thread's share is picked up by the others. */
#define KILN_PAR_SPLIT 4

typedef void (*kiln_range_fn)(void *ctx, int64_t lo, int64_t hi, int thread);

void kiln_par_for(int64_t n, int64_t work, kiln_range_fn fn, void *ctx);

/* kiln_par_for for kernels with per-thread scratch: `slot` in fn's `thread` argument is
 * below `slots`, and no two ranges running at once share a slot. With at least as many
 * slots as pool threads the slot is the thread; with fewer, [0, n) is cut into `slots`
 * contiguous shares (static), one per slot. */
void kiln_par_slots(int64_t n, int64_t work, int64_t slots, kiln_range_fn fn, void *ctx);

#endif
