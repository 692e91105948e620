/* libcore/progress.c: a progress line on stderr (ftk/progress.h). The one place in libcore that
 * prints: tools opt in, and --quiet turns it off. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "ftk/progress.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_time(char *b, size_t n, double s)
{
    if (s < 0 || s > 360000)
        snprintf(b, n, "--:--");
    else if (s >= 3600)
        snprintf(b, n, "%d:%02d:%02d", (int)s / 3600, ((int)s / 60) % 60, (int)s % 60);
    else
        snprintf(b, n, "%02d:%02d", (int)s / 60, (int)s % 60);
}

static void draw(struct ftk_progress *p, int final)
{
    double t = now(), el = t - p->t0, rate = el > 0 ? (double)p->done / el : 0;
    char eta[16], elapsed[16];
    fmt_time(elapsed, sizeof elapsed, el);
    fmt_time(eta, sizeof eta, p->total > 0 && rate > 0 ? (double)(p->total - p->done) / rate : -1);
    if (p->tty) {
        char bar[32] = "";
        if (p->total > 0) {
            int w = 20, f = (int)((double)w * (double)p->done / (double)p->total);
            if (f > w)
                f = w;
            bar[0] = '[';
            for (int i = 0; i < w; i++)
                bar[1 + i] = i < f ? '#' : '.';
            bar[w + 1] = ']';
            bar[w + 2] = '\0';
        }
        fprintf(p->out, "\r\033[K%s %s %lld", p->label, bar, (long long)p->done);
        if (p->total > 0)
            fprintf(p->out, "/%lld", (long long)p->total);
        fprintf(p->out, " %s, %.3g/s, %s", p->unit, rate, elapsed);
        if (p->total > 0 && !final)
            fprintf(p->out, ", eta %s", eta);
        if (p->status[0])
            fprintf(p->out, ", %s", p->status);
        if (final)
            fputc('\n', p->out);
    } else {
        fprintf(p->out, "%s: %lld", p->label, (long long)p->done);
        if (p->total > 0)
            fprintf(p->out, "/%lld", (long long)p->total);
        fprintf(p->out, " %s, %.3g/s, elapsed %s", p->unit, rate, elapsed);
        if (p->total > 0 && !final)
            fprintf(p->out, ", eta %s", eta);
        if (p->status[0])
            fprintf(p->out, ", %s", p->status);
        fputc('\n', p->out);
    }
    fflush(p->out);
    p->last = t;
}

void ftk_progress_start(struct ftk_progress *p, const char *label, const char *unit, int64_t total, int quiet)
{
    memset(p, 0, sizeof *p);
    p->out = stderr;
    p->label = label;
    p->unit = unit;
    p->total = total;
    p->quiet = quiet;
    p->tty = isatty(fileno(stderr));
    const char *iv = getenv("FTK_PROGRESS_INTERVAL");
    p->interval = iv && atof(iv) >= 0 ? atof(iv) : 10.0;
    p->t0 = p->last = now();
}

void ftk_progress_update(struct ftk_progress *p, int64_t done, const char *status)
{
    p->done = done;
    if (status)
        snprintf(p->status, sizeof p->status, "%s", status);
    if (p->quiet)
        return;
    double t = now();
    if (t - p->last >= (p->tty ? 0.1 : p->interval))
        draw(p, 0);
}

/* The final state: on a terminal always; in a log only for runs long enough to have logged. */
void ftk_progress_done(struct ftk_progress *p)
{
    if (!p->quiet && (p->tty || now() - p->t0 >= p->interval))
        draw(p, 1);
}
