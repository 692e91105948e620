/* libcore/threads.c: the pool of ftk/threads.h.
 *
 * One job at a time: the driver publishes (fn, arg, n, grain) and bumps `generation`; every
 * thread (driver included) takes chunks from the atomic `next` until none is left; the driver
 * waits until all workers have checked out of this generation (`pending` 0).
 *
 * Hand-offs spin before they sleep: a worker watches `generation`, and the driver `pending`, for
 * up to SPIN_NS before blocking on a condition variable. A decode step is dozens of small jobs
 * a few microseconds apart; waking a sleeping thread costs 20-40 us on a virtual machine, more
 * than a 256 x 256 matrix-vector product, so without the spin two threads decoded slower than
 * one. The spin yields the CPU each round, so a thread that needs it (OpenBLAS's) still runs. */
#include "ftk/threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 200000   /* 0.2 ms: longer than the gaps inside a decode step, short when idle */

struct ftk_threads {
    int n;                       /* threads including the driver */
    pthread_t *workers;          /* (n-1) */
    pthread_mutex_t mu;          /* guards the sleeps: sleepers, driver_waits, quit */
    pthread_cond_t wake;         /* workers sleep here for a new generation or quit */
    pthread_cond_t done;         /* the driver sleeps here for `pending` to reach 0 */
    atomic_uint_least64_t generation;
    atomic_int pending;          /* workers still inside the current job */
    atomic_int quit;
    int sleepers;                /* workers asleep on `wake` */
    int driver_waits;            /* the driver asleep on `done` */
    atomic_int busy;             /* a job is running: nested calls run inline */
    /* the current job, published before `generation` is bumped */
    ftk_range_fn fn;
    void *arg;
    int64_t total, grain;
    atomic_llong next;
};

struct worker_arg { struct ftk_threads *t; int tid; };

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void run_chunks(struct ftk_threads *t, int tid)
{
    for (;;) {
        int64_t b = atomic_fetch_add(&t->next, t->grain);
        if (b >= t->total)
            break;
        int64_t e = b + t->grain < t->total ? b + t->grain : t->total;
        t->fn(t->arg, b, e, tid);
    }
}

/* One round of a bounded spin: 0 once SPIN_NS have passed since the spin began. Every 64
 * rounds it reads the clock and yields the CPU. */
struct spin { int i; int64_t t0; };

static int spin_more(struct spin *sp)
{
    if ((++sp->i & 63) != 0)
        return 1;
    if (!sp->t0)
        sp->t0 = now_ns();
    else if (now_ns() - sp->t0 > SPIN_NS)
        return 0;
    sched_yield();
    return 1;
}

/* The next generation after `seen` (or `seen` when told to quit): spin a while, then sleep. */
static uint64_t await_job(struct ftk_threads *t, uint64_t seen)
{
    struct spin sp = {0};
    do {
        uint64_t g = atomic_load_explicit(&t->generation, memory_order_acquire);
        if (g != seen || atomic_load(&t->quit))
            return g;
    } while (spin_more(&sp));
    pthread_mutex_lock(&t->mu);
    t->sleepers++;
    while (!atomic_load(&t->quit) && atomic_load(&t->generation) == seen)
        pthread_cond_wait(&t->wake, &t->mu);
    t->sleepers--;
    pthread_mutex_unlock(&t->mu);
    return atomic_load_explicit(&t->generation, memory_order_acquire);
}

static void *worker_main(void *p)
{
    struct worker_arg wa = *(struct worker_arg *)p;
    free(p);
    struct ftk_threads *t = wa.t;
    uint64_t seen = 0;
    for (;;) {
        seen = await_job(t, seen);
        if (atomic_load(&t->quit))
            break;
        run_chunks(t, wa.tid);
        if (atomic_fetch_sub_explicit(&t->pending, 1, memory_order_acq_rel) == 1) {   /* the last one out */
            pthread_mutex_lock(&t->mu);
            if (t->driver_waits)
                pthread_cond_signal(&t->done);
            pthread_mutex_unlock(&t->mu);
        }
    }
    return NULL;
}

ftk_status ftk_threads_create(int n, struct ftk_threads **out)
{
    *out = NULL;
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    struct ftk_threads *t = calloc(1, sizeof *t);
    FTK_FAIL_IF(!t, FTK_E_NOMEM, "thread pool: out of memory");
    t->n = n;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->wake, NULL);
    pthread_cond_init(&t->done, NULL);
    atomic_init(&t->busy, 0);
    atomic_init(&t->next, 0);
    atomic_init(&t->generation, 0);
    atomic_init(&t->pending, 0);
    atomic_init(&t->quit, 0);
    if (n > 1) {
        t->workers = calloc((size_t)n - 1, sizeof *t->workers);
        if (!t->workers) {
            t->n = 1;    /* no workers to join */
            ftk_threads_free(t);
            FTK_FAIL(FTK_E_NOMEM, "thread pool: out of memory");
        }
    }
    for (int i = 1; i < n; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (wa) {
            wa->t = t;
            wa->tid = i;
        }
        int rc = wa ? pthread_create(&t->workers[i - 1], NULL, worker_main, wa) : -1;
        if (rc != 0) {
            free(wa);
            t->n = i;    /* join only the ones started */
            ftk_threads_free(t);
            FTK_FAIL(FTK_E_IO, "thread pool: cannot start thread %d of %d", i, n);
        }
    }
    *out = t;
    return FTK_OK;
}

void ftk_threads_free(struct ftk_threads *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    atomic_store(&t->quit, 1);
    pthread_cond_broadcast(&t->wake);
    pthread_mutex_unlock(&t->mu);
    for (int i = 1; i < t->n; i++)
        pthread_join(t->workers[i - 1], NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->wake);
    pthread_cond_destroy(&t->done);
    free(t->workers);
    free(t);
}

int ftk_threads_count(const struct ftk_threads *t) { return t ? t->n : 1; }

void ftk_threads_for(struct ftk_threads *t, int64_t n, int64_t grain, ftk_range_fn fn, void *arg)
{
    if (n <= 0)
        return;
    int expect = 0;
    if (!t || t->n == 1 || n == 1 || !atomic_compare_exchange_strong(&t->busy, &expect, 1)) {
        fn(arg, 0, n, 0);
        return;
    }
    if (grain <= 0) {
        grain = n / (4 * (int64_t)t->n);
        if (grain < 1)
            grain = 1;
    }
    if (grain > n)   /* each thread adds grain once past the end: a huge one would wrap `next` */
        grain = n;
    t->fn = fn;
    t->arg = arg;
    t->total = n;
    t->grain = grain;
    atomic_store(&t->next, 0);
    atomic_store(&t->pending, t->n - 1);
    pthread_mutex_lock(&t->mu);   /* a worker deciding to sleep sees the new generation or is counted */
    atomic_fetch_add_explicit(&t->generation, 1, memory_order_release);
    if (t->sleepers)
        pthread_cond_broadcast(&t->wake);
    pthread_mutex_unlock(&t->mu);

    run_chunks(t, 0);

    struct spin sp = {0};
    while (atomic_load_explicit(&t->pending, memory_order_acquire) > 0 && spin_more(&sp))
        ;
    if (atomic_load_explicit(&t->pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&t->mu);
        t->driver_waits = 1;
        while (atomic_load(&t->pending) > 0)
            pthread_cond_wait(&t->done, &t->mu);
        t->driver_waits = 0;
        pthread_mutex_unlock(&t->mu);
    }
    atomic_store(&t->busy, 0);
}
