/* kernels/cpu/reduce.c: the small element-wise and reduction ops: sum of squares (for
 * clip_grad_norm_), scale, axpy, add (the residual stream).
 * Letters: n elements. */
#include "cpu.h"

#include <string.h>

struct red_args { float *y; const float *x, *b; double *part; float a; };

/* Per-chunk partial sums go to part[chunk], summed in chunk order afterwards, so the result does
 * not depend on the number of threads (bit-identical resume across --threads). */
#define SUMSQ_GRAIN ((int64_t)1 << 16)

static void sumsq_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    const struct red_args *a = arg;
    for (int64_t c = i0 / SUMSQ_GRAIN; c * SUMSQ_GRAIN < i1; c++) {
        int64_t lo = c * SUMSQ_GRAIN, hi = lo + SUMSQ_GRAIN < i1 ? lo + SUMSQ_GRAIN : i1;
        double s = 0.0;
        for (int64_t i = lo; i < hi; i++)
            s += (double)a->x[i] * a->x[i];
        a->part[c] = s;
    }
}

/* x (n) -> out (1) = sum x^2 */
ftk_status cpu_sumsq(void *ctx, float *out, const float *x, int64_t n)
{
    struct cpu_ctx *c = ctx;
    int64_t nchunks = (n + SUMSQ_GRAIN - 1) / SUMSQ_GRAIN;
    double *part = cpu_scratch(c, (size_t)(nchunks > 0 ? nchunks : 1) * sizeof(double));
    if (!part)
        return FTK_E_NOMEM;
    struct red_args a = { .x = x, .part = part };
    cpu_for(c, n, SUMSQ_GRAIN, sumsq_range, &a);
    double s = 0.0;
    for (int64_t i = 0; i < nchunks; i++)
        s += part[i];
    *out = (float)s;
    return FTK_OK;
}

static void scale_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    const struct red_args *a = arg;
    for (int64_t i = i0; i < i1; i++)
        a->y[i] *= a->a;
}

/* x (n) *= a */
ftk_status cpu_scale(void *ctx, float *x, int64_t n, float a)
{
    struct red_args r = { .y = x, .a = a };
    cpu_for(ctx, n, 1 << 16, scale_range, &r);
    return FTK_OK;
}

static void axpy_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    const struct red_args *a = arg;
    for (int64_t i = i0; i < i1; i++)
        a->y[i] += a->a * a->x[i];
}

/* y (n) += a * x (n) */
ftk_status cpu_axpy(void *ctx, float *y, const float *x, int64_t n, float a)
{
    struct red_args r = { .y = y, .x = x, .a = a };
    cpu_for(ctx, n, 1 << 16, axpy_range, &r);
    return FTK_OK;
}

static void add_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    const struct red_args *a = arg;
    for (int64_t i = i0; i < i1; i++)
        a->y[i] = a->x[i] + a->b[i];
}

/* a (n) + b (n) -> y (n); y may alias a or b */
ftk_status cpu_add(void *ctx, float *y, const float *a, const float *b, int64_t n)
{
    struct red_args r = { .y = y, .x = a, .b = b };
    cpu_for(ctx, n, 1 << 16, add_range, &r);
    return FTK_OK;
}
