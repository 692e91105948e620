/* tests/unit/test_ops_linear.c: linear (torch nn.Linear) forward/backward and gemm on the CPU
 * backend, against a naive f64 reference and f64 finite differences.
 * Letters: N rows, I in features, O out features. */
#include "check.h"
#include "ops_util.h"

struct lin { int64_t N, I, O; double *x, *w, *b, *gout; };

/* L = sum gout * (x w^T + b) */
static double lin_loss(void *arg)
{
    const struct lin *a = arg;
    double L = 0;
    for (int64_t n = 0; n < a->N; n++)
        for (int64_t o = 0; o < a->O; o++) {
            double y = a->b ? a->b[o] : 0;
            for (int64_t i = 0; i < a->I; i++)
                y += a->x[n * a->I + i] * a->w[o * a->I + i];
            L += a->gout[n * a->O + o] * y;
        }
    return L;
}

static void run_linear(const struct ftk_backend *be, void *ctx, int64_t N, int64_t I, int64_t O,
                       int bias)
{
    float *x = ops_rand(N * I, -1, 1), *w = ops_rand(O * I, -1, 1), *b = bias ? ops_rand(O, -1, 1) : NULL;
    float *gout = ops_rand(N * O, -1, 1), *y = ops_zeros(N * O);
    struct lin a = { N, I, O, ops_to_f64(x, N * I), ops_to_f64(w, O * I), bias ? ops_to_f64(b, O) : NULL,
                     ops_to_f64(gout, N * O) };
    CHECK_OK(be->linear_forward(ctx, y, x, w, b, N, I, O));
    double *want = malloc((size_t)(N * O) * sizeof(double));
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++) {
            double s = bias ? a.b[o] : 0;
            for (int64_t i = 0; i < I; i++)
                s += a.x[n * I + i] * a.w[o * I + i];
            want[n * O + o] = s;
        }
    CHECK_CLOSE("linear y", y, want, N * O, OPS_FWD_TOL);

    float *dx = ops_zeros(N * I), *dw = ops_zeros(O * I), *db = ops_zeros(O);
    CHECK_OK(be->linear_backward(ctx, dx, dw, bias ? db : NULL, gout, x, w, N, I, O));
    double *gx = malloc((size_t)(N * I) * sizeof(double)), *gw = malloc((size_t)(O * I) * sizeof(double));
    double *gb = malloc((size_t)O * sizeof(double));
    ops_fd_grad(lin_loss, &a, a.x, N * I, gx, OPS_FD_H);
    ops_fd_grad(lin_loss, &a, a.w, O * I, gw, OPS_FD_H);
    CHECK_CLOSE("linear dx", dx, gx, N * I, OPS_GRAD_TOL);
    CHECK_CLOSE("linear dw", dw, gw, O * I, OPS_GRAD_TOL);
    if (bias) {
        ops_fd_grad(lin_loss, &a, a.b, O, gb, OPS_FD_H);
        CHECK_CLOSE("linear db", db, gb, O, OPS_GRAD_TOL);
    }
    /* backward accumulates: a second call doubles the gradients; NULL skips */
    CHECK_OK(be->linear_backward(ctx, dx, NULL, NULL, gout, x, w, N, I, O));
    for (int64_t i = 0; i < N * I; i++)
        gx[i] *= 2;
    CHECK_CLOSE("linear dx accumulated", dx, gx, N * I, OPS_GRAD_TOL);
    CHECK_CLOSE("linear dw untouched by NULL", dw, gw, O * I, OPS_GRAD_TOL);
    free(x); free(w); free(b); free(gout); free(y); free(dx); free(dw); free(db);
    free(a.x); free(a.w); free(a.b); free(a.gout); free(want); free(gx); free(gw); free(gb);
}

int main(void)
{
    const struct ftk_backend *be;
    void *ctx = ops_ctx(&be, 2);
    ops_seed(1);

    TEST("linear 5x7 -> 3 with bias") run_linear(be, ctx, 5, 7, 3, 1);
    TEST("linear 1x1 -> 1 no bias") run_linear(be, ctx, 1, 1, 1, 0);
    TEST("linear 13x17 -> 11 with bias") run_linear(be, ctx, 13, 17, 11, 1);
    TEST("linear 21x24 -> 18 no bias") run_linear(be, ctx, 21, 24, 18, 0);
    TEST("linear 4x3 -> 600 with bias (db over several column chunks)") run_linear(be, ctx, 4, 3, 600, 1);
    /* up to 4 rows take the matrix-vector path, split over threads by output ranges */
    TEST("linear 1x70 -> 300 with bias (decode step, gemv over 2 threads)") run_linear(be, ctx, 1, 70, 300, 1);
    TEST("linear 3x33 -> 129 no bias (gemv, ragged last range)") run_linear(be, ctx, 3, 33, 129, 0);
    TEST("linear 2x40 -> 200: gemv rows equal the same rows through gemm") {
        float *x = ops_rand(2 * 40, -1, 1), *w = ops_rand(200 * 40, -1, 1), *b = ops_rand(200, -1, 1);
        float *y1 = ops_zeros(2 * 200), *y6 = ops_zeros(6 * 200), *x6 = ops_zeros(6 * 40);
        for (int i = 0; i < 6 * 40; i++)
            x6[i] = x[i % (2 * 40)];
        CHECK_OK(be->linear_forward(ctx, y1, x, w, b, 2, 40, 200));
        CHECK_OK(be->linear_forward(ctx, y6, x6, w, b, 6, 40, 200));   /* 6 rows: sgemm */
        double md = 0;
        for (int i = 0; i < 2 * 200; i++)
            md = fmax(md, fabs((double)y1[i] - y6[i]));
        CHECK(md < 1e-5);
        free(x); free(w); free(b); free(y1); free(y6); free(x6);
    }

    TEST("gemm transposes, alpha, beta, strides") {
        /* C (M,N) = alpha op(A) op(B) + beta C with padded leading dimensions */
        const int64_t M = 3, N = 5, K = 4, lda = 7, ldb = 9, ldc = 6;
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                float *A = ops_rand(9 * lda, -1, 1), *B = ops_rand(9 * ldb, -1, 1), *C = ops_rand(M * ldc, -1, 1);
                double want[3 * 6];
                for (int64_t i = 0; i < M; i++)
                    for (int64_t j = 0; j < ldc; j++) {
                        if (j >= N) { want[i * ldc + j] = C[i * ldc + j]; continue; }
                        double s = 0;
                        for (int64_t k = 0; k < K; k++) {
                            double av = ta ? A[k * lda + i] : A[i * lda + k];
                            double bv = tb ? B[j * ldb + k] : B[k * ldb + j];
                            s += av * bv;
                        }
                        want[i * ldc + j] = 0.5 * s + 2.0 * C[i * ldc + j];
                    }
                CHECK_OK(be->gemm(ctx, ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 2.0f, C, ldc));
                CHECK_CLOSE(ta ? (tb ? "gemm TT" : "gemm TN") : (tb ? "gemm NT" : "gemm NN"), C, want, M * ldc, OPS_FWD_TOL);
                free(A); free(B); free(C);
            }
    }

    be->destroy(ctx);
    return check_summary();
}
