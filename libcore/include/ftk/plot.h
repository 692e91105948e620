/* ftk/plot.h: training curves from metrics JSONL (ftk train-step --metrics) as an SVG image.
 *
 * Ownership: a struct ftk_plot made by ftk_plot_init is freed by ftk_plot_free (NULL is fine);
 * strings passed in are copied. Nothing here prints: the SVG goes to the FILE the caller gives. */
#ifndef FTK_PLOT_H
#define FTK_PLOT_H

#include <stddef.h>
#include <stdio.h>
#include "ftk/error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_plot;

FTK_API ftk_status ftk_plot_init(struct ftk_plot **out);
FTK_API void ftk_plot_free(struct ftk_plot *p);

/* Reads one run's metrics: JSON lines, each an object with numeric "step" and "loss"; every other
 * numeric field is a series (non-numeric fields are ignored). `name` labels the run in the legend
 * and in errors ("NAME:LINE: ..."). Blank lines are skipped. Up to FTK_PLOT_MAX_RUNS runs. */
#define FTK_PLOT_MAX_RUNS 8
FTK_API ftk_status ftk_plot_read_jsonl(struct ftk_plot *p, FILE *in, const char *name);

/* What to draw. `metrics` NULL: the default panels, each drawn when the runs have its fields:
 * loss, rewards/margins, rewards/chosen + rewards/rejected, rewards/accuracies, grad_norm, lr.
 * Otherwise a comma-separated list of fields, one panel each. */
struct ftk_plot_style {
    const char *title;     /* NULL: none */
    const char *metrics;   /* NULL: the default panels */
    int width;             /* pixels; 0: 720 */
    int panel_height;      /* pixels per panel; 0: 180 */
};
FTK_API ftk_status ftk_plot_write_svg(const struct ftk_plot *p, const struct ftk_plot_style *style, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
