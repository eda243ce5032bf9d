/* Kiln's thread pool (see pool.h for the contract).
 *
 * One job at a time is published as a 64-bit ticket: generation (24 bits) | next unit
 * (20 bits) | units (20 bits). Threads claim units by compare-and-swap on the whole
 * ticket, so a worker that slept through a job can never claim from a newer one by
 * mistake (a stale ticket value fails the CAS), and the job's fields (fn, ctx, per) are
 * read only by a thread holding a valid claim, while the caller still waits for that
 * unit. The caller works too and then waits only for units in flight: there is no
 * barrier over the workers, so a descheduled worker costs the chunk it holds.
 * Idle workers spin (spin_us), then sleep on a futex keyed by wake_seq; the caller
 * wakes them only when some are asleep.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include "pool.h"

#define MAX_THREADS 256
#define UNIT_BITS 20
#define UNIT_MAX ((1LL << UNIT_BITS) - 1)
#define GEN_MASK ((1u << 24) - 1)

static struct {
    _Atomic uint64_t ticket;
    _Atomic int64_t done;
    _Atomic uint32_t wake_seq;
    _Atomic int sleepers;
    _Atomic int quit;
    _Atomic int spin_us;
    /* the current job: written before the ticket is published */
    kiln_pool_fn fn;
    void *ctx;
    int64_t n, per;
    int region;
    uint32_t gen;
    /* the workers: changed only under `submit` */
    pthread_mutex_t submit;
    pthread_t tid[MAX_THREADS];
    int n_workers;
    _Atomic int want;  /* read without the lock: a GEMM asks it on every call */
} P = {.submit = PTHREAD_MUTEX_INITIALIZER, .spin_us = -1};
static pthread_once_t init_once_flag = PTHREAD_ONCE_INIT;

static _Thread_local int tl_in_pool;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t expect) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, expect, NULL, NULL, 0);
#else
    struct timespec ts = {0, 100000};
    if (atomic_load(addr) == expect) nanosleep(&ts, NULL);
#endif
}

static void futex_wake(_Atomic uint32_t *addr, int n) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
#else
    (void)addr;
    (void)n;
#endif
}

static int default_threads(void) {
    const char *env = getenv("KILN_NUM_THREADS");
    if (env && atoi(env) >= 1) return atoi(env);
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) >= 1) return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n >= 1 ? (int)n : 1;
}

static void after_fork_child(void);

static void init(void) {
    int n = default_threads();
    atomic_store(&P.want, n < MAX_THREADS ? n : MAX_THREADS);
    if (atomic_load(&P.spin_us) < 0) {
        const char *env = getenv("KILN_POOL_SPIN_US");
        /* 20 us: fp32 SmolLM2 decode (~200 pool jobs a token, a few us apart) kept 0.66x of its
         * speed beside one busy process, against 0.54x at 50 us, where the spinning worker
         * took a core from the busy loop and the caller between every job; quiet it lost 2.6 %
         * (docs/DESIGN.md, "One thread pool") */
        int us = env && atoi(env) >= 0 ? atoi(env) : 20;
        int unset = -1;
        atomic_compare_exchange_strong(&P.spin_us, &unset, us);  /* kiln_pool_set_spin_us wins */
    }
    pthread_atfork(NULL, NULL, after_fork_child);
}

static void init_once(void) { pthread_once(&init_once_flag, init); }

/* Claim and run units of the published job until none is left; returns how many ran.
 * region_seat (workers only): the generation of the last region job this thread took a
 * seat in; a region seat is taken at most once per thread. */
static int64_t work(int thread, uint32_t *region_seat) {
    int64_t ran = 0;
    uint64_t t = atomic_load_explicit(&P.ticket, memory_order_acquire);
    for (;;) {
        int64_t next = (int64_t)((t >> UNIT_BITS) & UNIT_MAX), units = (int64_t)(t & UNIT_MAX);
        uint32_t gen = (uint32_t)(t >> (2 * UNIT_BITS));
        if (next >= units || (region_seat && *region_seat == gen)) return ran;
        if (!atomic_compare_exchange_weak_explicit(&P.ticket, &t, t + (1ull << UNIT_BITS), memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        int64_t lo = next * P.per, hi = lo + P.per < P.n ? lo + P.per : P.n;
        for (int64_t c = lo; c < hi; c++) P.fn(P.ctx, c, thread);
        int region = P.region;  /* read before `done` releases the job to the caller */
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
        ran++;
        if (region) {
            *region_seat = gen;
            return ran;
        }
        t = atomic_load_explicit(&P.ticket, memory_order_acquire);
    }
}

static void *worker_main(void *arg) {
    int thread = (int)(intptr_t)arg;
    uint32_t region_seat = UINT32_MAX;
    tl_in_pool = 1;
    for (;;) {
        uint32_t seq = atomic_load(&P.wake_seq);
        if (atomic_load(&P.quit)) return NULL;
        if (work(thread, &region_seat)) continue;
        int64_t spin_ns = (int64_t)atomic_load_explicit(&P.spin_us, memory_order_relaxed) * 1000;
        int64_t t0 = spin_ns > 0 ? now_ns() : 0;
        int woke = 0;
        for (int i = 1; spin_ns > 0; i++) {
            if (atomic_load_explicit(&P.wake_seq, memory_order_acquire) != seq) {
                woke = 1;
                break;
            }
            cpu_relax();
            if ((i & 63) == 0 && now_ns() - t0 > spin_ns) break;
        }
        if (woke) continue;
        atomic_fetch_add(&P.sleepers, 1);
        futex_wait(&P.wake_seq, seq);
        atomic_fetch_sub(&P.sleepers, 1);
    }
}

static void stop_workers(void) {
    if (P.n_workers == 0) return;
    atomic_store(&P.quit, 1);
    atomic_fetch_add(&P.wake_seq, 1);
    futex_wake(&P.wake_seq, MAX_THREADS);
    for (int i = 0; i < P.n_workers; i++) pthread_join(P.tid[i], NULL);
    P.n_workers = 0;
    atomic_store(&P.quit, 0);
}

static void start_workers(void) {
    while (P.n_workers < atomic_load(&P.want) - 1) {
        if (pthread_create(&P.tid[P.n_workers], NULL, worker_main, (void *)(intptr_t)(P.n_workers + 1)) != 0)
            break;  /* fewer workers: the caller claims what they would have */
        P.n_workers++;
    }
}

/* A forked child has no workers (and may hold a copy of a locked mutex). */
static void after_fork_child(void) {
    pthread_mutex_init(&P.submit, NULL);
    P.n_workers = 0;
}

void kiln_pool_set_threads(int n) {
    init_once();
    pthread_mutex_lock(&P.submit);
    stop_workers();
    if (n < 1) n = default_threads();
    atomic_store(&P.want, n < MAX_THREADS ? n : MAX_THREADS);
    pthread_mutex_unlock(&P.submit);
}

int kiln_pool_threads(void) {
    init_once();
    return atomic_load(&P.want);
}

void kiln_pool_set_spin_us(int us) {
    atomic_store(&P.spin_us, us < 0 ? 0 : us);
}

int kiln_pool_in_parallel(void) {
    return tl_in_pool;
}

static void run_inline(int64_t n, kiln_pool_fn fn, void *ctx) {
    int saved = tl_in_pool;
    tl_in_pool = 1;
    for (int64_t c = 0; c < n; c++) fn(ctx, c, 0);
    tl_in_pool = saved;
}

/* Publish a job of n units, take part, and return when every claimed unit is done.
 * region: unit 0 is the caller's seat, taken at once; a worker takes at most one seat; the
 * seats still free when the caller's own returns are closed unrun (see kiln_pool_region). */
static void run_job(int64_t n, kiln_pool_fn fn, void *ctx, int region) {
    int64_t per = region ? 1 : (n + UNIT_MAX - 1) / UNIT_MAX, units = (n + per - 1) / per;
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.per = per;
    P.region = region;
    P.gen = (P.gen + 1) & GEN_MASK;
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    uint64_t first = region ? 1 : 0;
    atomic_store_explicit(&P.ticket, ((uint64_t)P.gen << (2 * UNIT_BITS)) | (first << UNIT_BITS) | (uint64_t)units,
                          memory_order_release);
    atomic_fetch_add(&P.wake_seq, 1);
    if (atomic_load(&P.sleepers) > 0) futex_wake(&P.wake_seq, (int)(units - 1 < P.n_workers ? units - 1 : P.n_workers));
    tl_in_pool = 1;
    if (!region) {
        work(0, NULL);
    } else {
        fn(ctx, 0, 0);
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
        uint64_t t = atomic_load_explicit(&P.ticket, memory_order_acquire);
        for (;;) {
            int64_t next = (int64_t)((t >> UNIT_BITS) & UNIT_MAX);
            if (next >= units) break;
            if (atomic_compare_exchange_weak_explicit(&P.ticket, &t, t + (1ull << UNIT_BITS), memory_order_acq_rel,
                                                      memory_order_acquire))
                atomic_fetch_add_explicit(&P.done, 1, memory_order_release);  /* closed, not run */
        }
    }
    tl_in_pool = 0;
    /* only units already claimed by others are left: spin a little, then yield the core
     * (a preempted worker holding one needs it on a busy machine) */
    for (int i = 0; atomic_load_explicit(&P.done, memory_order_acquire) < units; i++) {
        if (i < 4096) cpu_relax();
        else sched_yield();
    }
}

void kiln_pool_parallel(int64_t n, kiln_pool_fn fn, void *ctx) {
    if (n <= 0 || !fn) return;
    init_once();
    if (n == 1 || tl_in_pool || atomic_load(&P.want) <= 1 || pthread_mutex_trylock(&P.submit) != 0) {
        run_inline(n, fn, ctx);
        return;
    }
    start_workers();
    run_job(n, fn, ctx, 0);
    pthread_mutex_unlock(&P.submit);
}

int kiln_pool_region(kiln_pool_fn fn, void *ctx) {
    if (!fn) return 0;
    init_once();
    if (tl_in_pool || pthread_mutex_trylock(&P.submit) != 0) {
        run_inline(1, fn, ctx);
        return 1;
    }
    start_workers();
    int seats = P.n_workers + 1;
    if (seats == 1) {
        pthread_mutex_unlock(&P.submit);
        run_inline(1, fn, ctx);
        return 1;
    }
    run_job(seats, fn, ctx, 1);
    pthread_mutex_unlock(&P.submit);
    return seats;
}
