/* ftk/threads.h: a small pthread pool with one operation, a parallel for over [0, n).
 *
 * Used by the CPU backend's ops (`--threads N`). The caller's thread takes part as thread 0, so a
 * pool of N threads starts N-1 workers. Chunks of `grain` indices are handed out dynamically (an
 * atomic counter), so uneven rows (causal attention) balance themselves.
 *
 * Ownership: ftk_threads_create makes the pool, ftk_threads_free joins and frees it (NULL is fine).
 * A pool is driven by one thread at a time. A ftk_threads_for issued from inside a running
 * ftk_threads_for (nested) runs inline on the calling thread, serially, with tid 0: an fn that
 * uses per-thread scratch must not nest. */
#ifndef FTK_THREADS_H
#define FTK_THREADS_H

#include <stdint.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_threads;

/* fn handles indices [begin, end); tid in [0, ftk_threads_count()) names the thread running it,
 * so fn may use per-thread scratch indexed by tid. */
typedef void (*ftk_range_fn)(void *arg, int64_t begin, int64_t end, int tid);

/* n <= 0: one thread per online CPU. FTK_E_NOMEM / FTK_E_IO (pthread_create) on failure. */
FTK_API ftk_status ftk_threads_create(int n, struct ftk_threads **out);
FTK_API void ftk_threads_free(struct ftk_threads *t);
/* Number of threads including the caller's; 1 for a NULL pool. */
FTK_API int ftk_threads_count(const struct ftk_threads *t);
/* Runs fn over [0, n) in chunks of `grain` (<= 0: n / (4 * threads), at least 1) and returns
 * when all chunks are done. A NULL pool runs fn(arg, 0, n, 0) inline. */
FTK_API void ftk_threads_for(struct ftk_threads *t, int64_t n, int64_t grain, ftk_range_fn fn, void *arg);

#ifdef __cplusplus
}
#endif
#endif
