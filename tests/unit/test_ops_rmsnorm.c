/* tests/unit/test_ops_rmsnorm.c: LlamaRMSNorm forward/backward against an f64 reference and
 * finite differences, including Qwen3's q/k norm shape (rows = tokens*heads, C = head_dim).
 * Letters: N rows, C normalised channels. */
#include <string.h>
#include "check.h"
#include "ops_util.h"

struct rms { int64_t N, C; double eps, *x, *w, *gout; };

static double rms_ref(const struct rms *a, int64_t n, int64_t c)
{
    double ss = 0;
    for (int64_t k = 0; k < a->C; k++)
        ss += a->x[n * a->C + k] * a->x[n * a->C + k];
    return a->w[c] * a->x[n * a->C + c] / sqrt(ss / a->C + a->eps);
}

static double rms_loss(void *arg)
{
    const struct rms *a = arg;
    double L = 0;
    for (int64_t n = 0; n < a->N; n++)
        for (int64_t c = 0; c < a->C; c++)
            L += a->gout[n * a->C + c] * rms_ref(a, n, c);
    return L;
}

static void run_rms(const struct ftk_backend *be, void *ctx, int64_t N, int64_t C, float eps)
{
    float *x = ops_rand(N * C, -2, 2), *w = ops_rand(C, 0.5, 1.5), *gout = ops_rand(N * C, -1, 1);
    float *y = ops_zeros(N * C), *rstd = ops_zeros(N), *dx = ops_zeros(N * C), *dw = ops_zeros(C);
    struct rms a = { N, C, eps, ops_to_f64(x, N * C), ops_to_f64(w, C), ops_to_f64(gout, N * C) };
    double *want = malloc((size_t)(N * C) * sizeof(double)), *wr = malloc((size_t)N * sizeof(double));
    for (int64_t n = 0; n < N; n++) {
        double ss = 0;
        for (int64_t c = 0; c < C; c++) {
            want[n * C + c] = rms_ref(&a, n, c);
            ss += a.x[n * C + c] * a.x[n * C + c];
        }
        wr[n] = 1 / sqrt(ss / C + eps);
    }
    CHECK_OK(be->rmsnorm_forward(ctx, y, rstd, x, w, N, C, eps));
    CHECK_CLOSE("rmsnorm y", y, want, N * C, OPS_FWD_TOL);
    CHECK_CLOSE("rmsnorm rstd", rstd, wr, N, OPS_FWD_TOL);

    CHECK_OK(be->rmsnorm_backward(ctx, dx, dw, gout, x, w, rstd, N, C));
    double *gx = malloc((size_t)(N * C) * sizeof(double)), *gw = malloc((size_t)C * sizeof(double));
    ops_fd_grad(rms_loss, &a, a.x, N * C, gx, OPS_FD_H);
    ops_fd_grad(rms_loss, &a, a.w, C, gw, OPS_FD_H);
    CHECK_CLOSE("rmsnorm dx", dx, gx, N * C, OPS_GRAD_TOL);
    CHECK_CLOSE("rmsnorm dw", dw, gw, C, OPS_GRAD_TOL);

    /* in place (y aliases x) gives the same y */
    CHECK_OK(be->rmsnorm_forward(ctx, x, NULL, x, w, N, C, eps));
    CHECK_CLOSE("rmsnorm in place", x, want, N * C, OPS_FWD_TOL);
    free(x); free(w); free(gout); free(y); free(rstd); free(dx); free(dw);
    free(a.x); free(a.w); free(a.gout); free(want); free(wr); free(gx); free(gw);
}

int main(void)
{
    const struct ftk_backend *be;
    void *ctx = ops_ctx(&be, 2);
    ops_seed(2);
    TEST("rmsnorm 4x8 eps 1e-5") run_rms(be, ctx, 4, 8, 1e-5f);
    TEST("rmsnorm 7x13 (odd) eps 1e-6") run_rms(be, ctx, 7, 13, 1e-6f);
    /* C = 1 with a tiny eps makes y = w sign(x) and dx ~ eps: pure cancellation; a large eps
     * keeps the single-channel case meaningful */
    TEST("rmsnorm 1x1 eps 0.5") run_rms(be, ctx, 1, 1, 0.5f);
    /* Qwen3 q_norm: (tokens=5, heads=3, head_dim=16) normalised over head_dim */
    TEST("rmsnorm qk-norm shape 15x16") run_rms(be, ctx, 5 * 3, 16, 1e-6f);
    TEST("rmsnorm 19x40") run_rms(be, ctx, 19, 40, 1e-5f);

    /* dw sums over rows: bit-identical whatever the thread count and however the pool hands out
     * the rows (resume and reruns are exact) */
    TEST("rmsnorm dw with 1, 2 and 3 threads: bit-identical") {
        const struct ftk_backend *b1, *b3;
        void *c1 = ops_ctx(&b1, 1), *c3 = ops_ctx(&b3, 3);
        int64_t N = 4096, C = 64;
        float *x = ops_rand(N * C, -1, 1), *w = ops_rand(C, 0.5, 1.5), *gout = ops_rand(N * C, -1, 1);
        float *y = ops_zeros(N * C), *r = ops_zeros(N), *dw1 = ops_zeros(C), *dw2 = ops_zeros(C), *dw3 = ops_zeros(C);
        CHECK_OK(b1->rmsnorm_forward(c1, y, r, x, w, N, C, 1e-5f));
        CHECK_OK(b1->rmsnorm_backward(c1, NULL, dw1, gout, x, w, r, N, C));
        CHECK_OK(be->rmsnorm_backward(ctx, NULL, dw2, gout, x, w, r, N, C));
        CHECK_OK(b3->rmsnorm_backward(c3, NULL, dw3, gout, x, w, r, N, C));
        double *d1 = ops_to_f64(dw1, C);
        CHECK_CLOSE("dw threads", dw2, d1, C, 1e-6);
        CHECK(memcmp(dw1, dw2, (size_t)C * sizeof *dw1) == 0);
        CHECK(memcmp(dw1, dw3, (size_t)C * sizeof *dw1) == 0);
        b1->destroy(c1);
        b3->destroy(c3);
        free(x); free(w); free(gout); free(y); free(r); free(dw1); free(dw2); free(dw3); free(d1);
    }
    be->destroy(ctx);
    return check_summary();
}
