/* ftk/progress.h: progress of long-running tools on stderr.
 *
 * On a terminal: one line redrawn in place (a bar when the total is known, the count, the rate,
 * the ETA, and a short status such as the current loss), at most 10 times a second. Not on a
 * terminal (logs, CI): a plain line every `interval` seconds, no control characters. Quiet: no
 * output. The last state is printed once more by ftk_progress_done. */
#ifndef FTK_PROGRESS_H
#define FTK_PROGRESS_H

#include <stdint.h>
#include <stdio.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_progress {
    FILE *out;
    const char *label;      /* "train-step" */
    const char *unit;       /* "steps", "examples", "tokens" */
    int64_t total;          /* <= 0: unknown */
    int64_t done;
    int tty, quiet;
    double interval;        /* seconds between log lines when not a terminal (default 10) */
    double t0, last;
    char status[96];
};

/* quiet: print nothing. The stream is stderr; FTK_PROGRESS_INTERVAL overrides the interval. */
FTK_API void ftk_progress_start(struct ftk_progress *p, const char *label, const char *unit, int64_t total, int quiet);
/* Sets the count (absolute) and an optional status text (may be NULL), redrawing if due. */
FTK_API void ftk_progress_update(struct ftk_progress *p, int64_t done, const char *status);
FTK_API void ftk_progress_done(struct ftk_progress *p);

#ifdef __cplusplus
}
#endif
#endif
