/* tests/unit/test_threads.c: the thread pool (ftk/threads.h): every index runs exactly once
 * whatever n and grain, thread ids stay in range, nested calls run inline, and jobs handed over
 * back to back (workers spinning) or after a pause (workers asleep) all complete, also with
 * several pools driven at once and chunks as long as the spin. */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "check.h"
#include "ftk/threads.h"

struct job {
    atomic_int *hits;    /* per index */
    atomic_int bad_tid, bad_range;
    atomic_llong sum;
    int64_t n;           /* the job's length: fn must see ranges inside [0, n) */
    int nthreads;
    struct ftk_threads *pool;
    atomic_int nested_ran, nested_tid_nonzero;
};

static void count(void *arg, int64_t b, int64_t e, int tid)
{
    struct job *j = arg;
    if (tid < 0 || tid >= j->nthreads)
        atomic_fetch_add(&j->bad_tid, 1);
    if (b < 0 || b >= e || e > j->n) {
        atomic_fetch_add(&j->bad_range, 1);
        return;
    }
    for (int64_t i = b; i < e; i++) {
        atomic_fetch_add(&j->hits[i], 1);
        atomic_fetch_add(&j->sum, i);
    }
}

static void inner(void *arg, int64_t b, int64_t e, int tid)
{
    struct job *j = arg;
    atomic_fetch_add(&j->nested_ran, (int)(e - b));
    if (tid != 0)
        atomic_fetch_add(&j->nested_tid_nonzero, 1);
}

static void outer(void *arg, int64_t b, int64_t e, int tid)
{
    struct job *j = arg;
    (void)tid;
    for (int64_t i = b; i < e; i++)
        ftk_threads_for(j->pool, 10, 3, inner, j);   /* nested: inline on this thread */
}

static void pause_us(long us)
{
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

static void pause_ms(int ms) { pause_us(ms * 1000L); }

/* count, with a pause of 0-0.4 ms on some indices: around the 0.2 ms spin, so threads (the
 * driver too) go from spinning to sleeping while others still work */
static void count_slow(void *arg, int64_t b, int64_t e, int tid)
{
    count(arg, b, e, tid);
    const struct job *j = arg;
    for (int64_t i = b; i < e; i++)
        if ((i * 2654435761u + (uint64_t)j->n) % 5 == 0)
            pause_us((long)((i * 97 + j->n * 31) % 400));
}

/* One pool driven by its own thread: jobs with slow chunks and pauses around the spin between
 * them, the pool freed and made again now and then. */
struct driver { int nthreads, jobs, bad; };

static void *drive(void *p)
{
    struct driver *d = p;
    struct ftk_threads *pool = NULL;
    for (int i = 0; i < d->jobs; i++) {
        if (i % 50 == 0) {
            ftk_threads_free(pool);
            if (ftk_threads_create(d->nthreads, &pool) != FTK_OK) {
                d->bad++;
                return NULL;
            }
        }
        struct job j = {.nthreads = d->nthreads, .n = 1 + (i * 7 + d->nthreads) % 13};
        atomic_int hits[13] = {0};
        j.hits = hits;
        ftk_threads_for(pool, j.n, 1, count_slow, &j);
        int ok = atomic_load(&j.bad_tid) == 0 && atomic_load(&j.bad_range) == 0;
        for (int64_t k = 0; k < j.n; k++)
            ok &= atomic_load(&hits[k]) == 1;
        d->bad += !ok;
        if (i % 3)
            pause_us((i * 131 + d->nthreads * 17) % 450);
    }
    ftk_threads_free(pool);
    return NULL;
}

/* One job over [0, n): every index exactly once, sums right, tids in range. */
static int one_job(struct ftk_threads *pool, int nthreads, int64_t n, int64_t grain)
{
    struct job j = {.nthreads = nthreads, .n = n};
    j.hits = calloc((size_t)(n > 0 ? n : 1), sizeof *j.hits);
    ftk_threads_for(pool, n, grain, count, &j);
    int ok = atomic_load(&j.bad_tid) == 0 && atomic_load(&j.bad_range) == 0 && atomic_load(&j.sum) == (n > 0 ? n * (n - 1) / 2 : 0);
    for (int64_t i = 0; i < n; i++)
        ok &= atomic_load(&j.hits[i]) == 1;
    free(j.hits);
    return ok;
}

/* Not under ASan/TSan: their shadow memory needs more address space than the cap leaves. */
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)

/* In a child whose address space is capped `extra` bytes above what it uses: create a pool of n
 * threads, which must fail with `code` (a crash or another status fails the test). */
static int create_fails_when_capped(int n, size_t extra, ftk_status code)
{
    pid_t pid = fork();
    if (pid == 0) {
        long pages = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (!f || fscanf(f, "%ld", &pages) != 1)
            _exit(3);
        fclose(f);
        struct rlimit rl = {.rlim_cur = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + extra};
        rl.rlim_max = rl.rlim_cur;
        if (setrlimit(RLIMIT_AS, &rl) != 0)
            _exit(3);
        struct ftk_threads *pool = (struct ftk_threads *)1;
        ftk_status st = ftk_threads_create(n, &pool);
        _exit(st == code && pool == NULL ? 0 : 1);
    }
    int ws = 0;
    if (pid < 0 || waitpid(pid, &ws, 0) != pid)
        return 0;
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
        printf("  child: %s %d\n", WIFEXITED(ws) ? "exit" : "signal", WIFEXITED(ws) ? WEXITSTATUS(ws) : WTERMSIG(ws));
    return WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
}
#define HAVE_AS_LIMIT 1
#endif

int main(void)
{
#ifdef HAVE_AS_LIMIT
    TEST("create fails cleanly: no memory for the thread table, or a thread that cannot start") {
        CHECK(create_fails_when_capped(INT_MAX, (size_t)64 << 20, FTK_E_NOMEM));   /* (INT_MAX-1) pthread_t */
        CHECK(create_fails_when_capped(64, (size_t)24 << 20, FTK_E_IO));           /* 8 MiB stacks */
    }
#endif
    static const int sizes[] = {1, 2, 4};
    for (int s = 0; s < 3; s++) {
        int nt = sizes[s];
        char name[120];
        snprintf(name, sizeof name, "%d thread(s): every index once for n 0..300 and grains 0, 1, 7, n", nt);
        struct ftk_threads *pool;
        CHECK_OK(ftk_threads_create(nt, &pool));
        CHECK_INT(ftk_threads_count(pool), nt);
        TEST(name) {
            int bad = 0;
            for (int64_t n = 0; n <= 300; n += (n < 20 ? 1 : 37)) {
                const int64_t grains[] = {0, 1, 7, n};
                for (int g = 0; g < 4; g++)
                    bad += !one_job(pool, nt, n, grains[g]);
            }
            CHECK_INT(bad, 0);
        }
        snprintf(name, sizeof name, "%d thread(s): a grain far past n (up to INT64_MAX) is one chunk", nt);
        TEST(name) {
            /* every thread adds the grain to the shared counter once more than it takes a chunk:
               a huge grain wrapped it negative and handed out [-2, n) */
            const int64_t grains[] = {INT64_MAX, INT64_MAX / 2, INT64_MAX / 3, ((int64_t)1 << 62) + 1};
            int bad = 0;
            for (int g = 0; g < 4; g++)
                for (int64_t n = 2; n <= 40; n += 19)
                    bad += !one_job(pool, nt, n, grains[g]);
            CHECK_INT(bad, 0);
        }
        snprintf(name, sizeof name, "%d thread(s): 20000 jobs back to back (workers spinning) all complete", nt);
        TEST(name) {
            int bad = 0;
            for (int i = 0; i < 20000; i++)
                bad += !one_job(pool, nt, 1 + i % 97, 1 + i % 5);
            CHECK_INT(bad, 0);
        }
        snprintf(name, sizeof name, "%d thread(s): jobs after pauses longer than the spin (workers asleep)", nt);
        TEST(name) {
            int bad = 0;
            for (int i = 0; i < 20; i++) {
                pause_ms(i % 2 ? 2 : 1);
                bad += !one_job(pool, nt, 64 + i, 1);
            }
            CHECK_INT(bad, 0);
        }
        snprintf(name, sizeof name, "%d thread(s): a nested call runs inline, thread 0", nt);
        TEST(name) {
            struct job j = {.nthreads = nt, .pool = pool};
            ftk_threads_for(pool, 8, 1, outer, &j);
            CHECK_INT(atomic_load(&j.nested_ran), 80);
            CHECK_INT(atomic_load(&j.nested_tid_nonzero), 0);
        }
        ftk_threads_free(pool);   /* workers may be spinning or asleep: both must quit */
    }
    TEST("three pools driven from three threads at once, slow chunks and pauses around the spin") {
        struct driver d[3] = {{.nthreads = 2, .jobs = 200}, {.nthreads = 3, .jobs = 200}, {.nthreads = 4, .jobs = 200}};
        pthread_t th[3];
        for (int i = 0; i < 3; i++)
            CHECK_INT(pthread_create(&th[i], NULL, drive, &d[i]), 0);
        for (int i = 0; i < 3; i++) {
            pthread_join(th[i], NULL);
            CHECK_INT(d[i].bad, 0);
        }
    }
    TEST("a NULL pool runs inline; freeing a sleeping pool returns") {
        CHECK(one_job(NULL, 1, 50, 4));
        CHECK_INT(ftk_threads_count(NULL), 1);
        struct ftk_threads *pool;
        CHECK_OK(ftk_threads_create(3, &pool));
        CHECK(one_job(pool, 3, 100, 2));
        pause_ms(5);   /* past the spin: the workers sleep */
        ftk_threads_free(pool);
        ftk_threads_free(NULL);
    }
    return check_summary();
}
