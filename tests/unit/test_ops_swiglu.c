/* tests/unit/test_ops_swiglu.c: h = silu(gate) * up forward/backward against f64 and finite
 * differences. Letters: n elements. */
#include "check.h"
#include "ops_util.h"

struct sw { int64_t n; double *g, *u, *gout; };

static double silu(double x) { return x / (1 + exp(-x)); }

static double sw_loss(void *arg)
{
    const struct sw *a = arg;
    double L = 0;
    for (int64_t i = 0; i < a->n; i++)
        L += a->gout[i] * silu(a->g[i]) * a->u[i];
    return L;
}

static void run_sw(const struct ftk_backend *be, void *ctx, int64_t n)
{
    float *g = ops_rand(n, -6, 6), *u = ops_rand(n, -2, 2), *gout = ops_rand(n, -1, 1);
    float *h = ops_zeros(n), *dg = ops_zeros(n), *du = ops_zeros(n);
    struct sw a = { n, ops_to_f64(g, n), ops_to_f64(u, n), ops_to_f64(gout, n) };
    double *want = malloc((size_t)n * sizeof(double)), *gg = malloc((size_t)n * sizeof(double));
    double *gu = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        want[i] = silu(a.g[i]) * a.u[i];
    CHECK_OK(be->swiglu_forward(ctx, h, g, u, n));
    CHECK_CLOSE("swiglu h", h, want, n, OPS_FWD_TOL);
    CHECK_OK(be->swiglu_backward(ctx, dg, du, gout, g, u, n));
    if (n <= 1000) {
        ops_fd_grad(sw_loss, &a, a.g, n, gg, OPS_FD_H);
        ops_fd_grad(sw_loss, &a, a.u, n, gu, OPS_FD_H);
    } else {   /* element-wise: the same differences, one element's term at a time (O(n)) */
        const double hh = OPS_FD_H;
        for (int64_t i = 0; i < n; i++) {
            gg[i] = a.gout[i] * (silu(a.g[i] + hh) - silu(a.g[i] - hh)) * a.u[i] / (2 * hh);
            gu[i] = a.gout[i] * silu(a.g[i]) * ((a.u[i] + hh) - (a.u[i] - hh)) / (2 * hh);
        }
    }
    CHECK_CLOSE("swiglu dgate", dg, gg, n, OPS_GRAD_TOL);
    CHECK_CLOSE("swiglu dup", du, gu, n, OPS_GRAD_TOL);
    free(g); free(u); free(gout); free(h); free(dg); free(du);
    free(a.g); free(a.u); free(a.gout); free(want); free(gg); free(gu);
}

int main(void)
{
    const struct ftk_backend *be;
    void *ctx = ops_ctx(&be, 2);
    ops_seed(4);
    TEST("swiglu 1") run_sw(be, ctx, 1);
    TEST("swiglu 3x17") run_sw(be, ctx, 3 * 17);
    TEST("swiglu 40000 (several chunks)") run_sw(be, ctx, 40000);
    TEST("swiglu large |gate| stays finite") {
        float g[4] = { -100.0f, 100.0f, -1e30f, 88.0f }, u[4] = { 1, 1, 1, 1 }, h[4], dg[4] = { 0 }, du[4] = { 0 };
        float one[4] = { 1, 1, 1, 1 };
        CHECK_OK(be->swiglu_forward(ctx, h, g, u, 4));
        CHECK_OK(be->swiglu_backward(ctx, dg, du, one, g, u, 4));
        for (int i = 0; i < 4; i++)
            CHECK(isfinite(h[i]) && isfinite(dg[i]) && isfinite(du[i]));
        CHECK_NEAR(h[1], 100.0, 1e-6);
    }
    be->destroy(ctx);
    return check_summary();
}
