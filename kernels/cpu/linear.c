/* kernels/cpu/linear.c: torch nn.Linear, y = x W^T + b, through cblas_sgemm, or cblas_sgemv
 * for the few rows of a decode step. Letters: N rows (tokens), I in features, O out features. */
#include "cpu.h"

#include <cblas.h>
#include <limits.h>
#undef I   /* complex.h (through cblas.h) defines it; here it is the in-feature count */

/* Up to this many rows, matrix-vector products: sgemm packs (copies) all of W for every call,
 * which for one token costs more than the product itself (a decode step is N = 1). */
#define LINEAR_GEMV_ROWS 4

struct gemv_args { float *y; const float *x, *w; int64_t N, I, O; float beta; };

/* threads own output ranges [o0,o1) of every row */
static void gemv_rows(void *arg, int64_t o0, int64_t o1, int tid)
{
    (void)tid;
    const struct gemv_args *a = arg;
    for (int64_t n = 0; n < a->N; n++)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(o1 - o0), (int)a->I, 1.0f, a->w + o0 * a->I, (int)a->I,
                    a->x + n * a->I, 1, a->beta, a->y + n * a->O + o0, 1);
}

/* x (N,I), w (O,I), b (O) or NULL -> y (N,O) */
ftk_status cpu_linear_forward(void *ctx, float *y, const float *x, const float *w, const float *b,
                              int64_t N, int64_t I, int64_t O)
{
    struct cpu_ctx *c = ctx;
    float beta = 0.0f;
    if (b) {   /* y = b broadcast, then y += x W^T: one pass over y fewer than adding b after */
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++)
                y[n * O + o] = b[o];
        beta = 1.0f;
    }
    if (N > 0 && N <= LINEAR_GEMV_ROWS && I > 0 && I <= INT_MAX && O <= INT_MAX) {
        struct gemv_args a = {y, x, w, N, I, O, beta};
        openblas_set_num_threads(1);   /* our pool splits O; BLAS threads inside it would oversubscribe */
        cpu_for(c, O, 64, gemv_rows, &a);
        openblas_set_num_threads(c->nthreads);
        return FTK_OK;
    }
    return cpu_gemm(ctx, 0, 1, N, O, I, 1.0f, x, I, w, I, beta, y, O);
}

struct db_args { float *db; const float *dy; int64_t N, O; };

/* threads own column ranges [o0,o1) of db */
static void db_cols(void *arg, int64_t o0, int64_t o1, int tid)
{
    (void)tid;
    const struct db_args *a = arg;
    for (int64_t n = 0; n < a->N; n++)
        for (int64_t o = o0; o < o1; o++)
            a->db[o] += a->dy[n * a->O + o];
}

/* dy (N,O), x (N,I), w (O,I) -> dx (N,I) += dy w, dw (O,I) += dy^T x, db (O) += sum_n dy.
 * Any of dx, dw, db may be NULL (frozen weight, or no gradient needed below). */
ftk_status cpu_linear_backward(void *ctx, float *dx, float *dw, float *db, const float *dy,
                               const float *x, const float *w, int64_t N, int64_t I, int64_t O)
{
    if (dx)
        FTK_TRY(cpu_gemm(ctx, 0, 0, N, I, O, 1.0f, dy, O, w, I, 1.0f, dx, I));
    if (dw)
        FTK_TRY(cpu_gemm(ctx, 1, 0, O, I, N, 1.0f, dy, O, x, I, 1.0f, dw, I));
    if (db) {
        struct db_args a = { db, dy, N, O };
        cpu_for(ctx, O, 256, db_cols, &a);
    }
    return FTK_OK;
}
