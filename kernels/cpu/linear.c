/* kernels/cpu/linear.c: torch nn.Linear, y = x W^T + b, through cblas_sgemm.
 * Letters: N rows (tokens), I in features, O out features. */
#include "cpu.h"

/* x (N,I), w (O,I), b (O) or NULL -> y (N,O) */
ftk_status cpu_linear_forward(void *ctx, float *y, const float *x, const float *w, const float *b,
                              int64_t N, int64_t I, int64_t O)
{
    float beta = 0.0f;
    if (b) {   /* y = b broadcast, then y += x W^T: one pass over y fewer than adding b after */
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++)
                y[n * O + o] = b[o];
        beta = 1.0f;
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
