/* libcore/threads.c: the pool of ftk/threads.h.
 *
 * One job at a time: the driver publishes (fn, arg, n, grain), bumps `generation` and wakes the
 * workers; every thread (driver included) takes chunks from the atomic `next` until none is left;
 * the driver waits until all workers have checked out of this generation. */
#include "ftk/threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct ftk_threads {
    int n;                       /* threads including the driver */
    pthread_t *workers;          /* (n-1) */
    pthread_mutex_t mu;
    pthread_cond_t wake;         /* workers wait here for a new generation or quit */
    pthread_cond_t done;         /* the driver waits here for `pending` to reach 0 */
    uint64_t generation;
    int pending;                 /* workers still inside the current job */
    int quit;
    atomic_int busy;             /* a job is running: nested calls run inline */
    /* the current job */
    ftk_range_fn fn;
    void *arg;
    int64_t total, grain;
    atomic_llong next;
};

struct worker_arg { struct ftk_threads *t; int tid; };

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

static void *worker_main(void *p)
{
    struct worker_arg wa = *(struct worker_arg *)p;
    free(p);
    struct ftk_threads *t = wa.t;
    uint64_t seen = 0;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->quit && t->generation == seen)
            pthread_cond_wait(&t->wake, &t->mu);
        if (t->quit)
            break;
        seen = t->generation;
        pthread_mutex_unlock(&t->mu);
        run_chunks(t, wa.tid);
        pthread_mutex_lock(&t->mu);
        if (--t->pending == 0)
            pthread_cond_signal(&t->done);
    }
    pthread_mutex_unlock(&t->mu);
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
    if (n > 1) {
        t->workers = calloc((size_t)n - 1, sizeof *t->workers);
        if (!t->workers) {
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
    t->quit = 1;
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
    pthread_mutex_lock(&t->mu);
    t->fn = fn;
    t->arg = arg;
    t->total = n;
    t->grain = grain;
    atomic_store(&t->next, 0);
    t->pending = t->n - 1;
    t->generation++;
    pthread_cond_broadcast(&t->wake);
    pthread_mutex_unlock(&t->mu);

    run_chunks(t, 0);

    pthread_mutex_lock(&t->mu);
    while (t->pending > 0)
        pthread_cond_wait(&t->done, &t->mu);
    pthread_mutex_unlock(&t->mu);
    atomic_store(&t->busy, 0);
}
