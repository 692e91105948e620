/* tests/unit/test_ops_logprob.c: the chunked log-prob head. logp against a naive f64
 * log_softmax over the full logits; dh and dw against f64 finite differences of
 * L = sum_n dlogp[n] * logp[n]; chunk sizes 1, 2, 3 and the default give the same; the fused op
 * equals forward + backward; ignored labels cost nothing and get logp 0.
 * Letters: N tokens, C channels, V vocabulary. */
#include "check.h"
#include "ops_util.h"

struct lp { int64_t N, C, V; const int32_t *labels; double *h, *w, *dlogp; };

static double lp_ref(const struct lp *a, int64_t n)   /* log_softmax(h w^T)[n, label] */
{
    const int64_t C = a->C;
    double mx = -INFINITY, *z = malloc((size_t)a->V * sizeof(double));
    for (int64_t v = 0; v < a->V; v++) {
        double s = 0;
        for (int64_t c = 0; c < C; c++)
            s += a->h[n * C + c] * a->w[v * C + c];
        z[v] = s;
        if (s > mx) mx = s;
    }
    double sum = 0;
    for (int64_t v = 0; v < a->V; v++)
        sum += exp(z[v] - mx);
    double r = z[a->labels[n]] - mx - log(sum);
    free(z);
    return r;
}

static double lp_loss(void *arg)
{
    const struct lp *a = arg;
    double L = 0;
    for (int64_t n = 0; n < a->N; n++)
        if (a->labels[n] != FTK_IGNORE_INDEX)
            L += a->dlogp[n] * lp_ref(a, n);
    return L;
}

static void run_lp(const struct ftk_backend *be, void *ctx, int64_t N, int64_t C, int64_t V,
                   const int32_t *labels)
{
    float *h = ops_rand(N * C, -1, 1), *w = ops_rand(V * C, -1, 1), *dlogp = ops_rand(N, -1, 1);
    struct lp a = { N, C, V, labels, ops_to_f64(h, N * C), ops_to_f64(w, V * C), ops_to_f64(dlogp, N) };
    double *want = malloc((size_t)N * sizeof(double));
    for (int64_t n = 0; n < N; n++)
        want[n] = labels[n] == FTK_IGNORE_INDEX ? 0.0 : lp_ref(&a, n);
    double *gh = malloc((size_t)(N * C) * sizeof(double)), *gw = malloc((size_t)(V * C) * sizeof(double));
    ops_fd_grad(lp_loss, &a, a.h, N * C, gh, OPS_FD_H);
    ops_fd_grad(lp_loss, &a, a.w, V * C, gw, OPS_FD_H);

    const int64_t chunks[4] = { 1, 2, 3, 0 };
    for (int ci = 0; ci < 4; ci++) {
        float *logp = ops_zeros(N), *lse = ops_zeros(N), *dh = ops_zeros(N * C), *dw = ops_zeros(V * C);
        for (int64_t n = 0; n < N; n++)
            logp[n] = 99.0f;   /* ignored tokens must be written as 0 */
        CHECK_OK(be->logprob_forward(ctx, logp, lse, h, w, labels, N, C, V, chunks[ci]));
        CHECK_CLOSE("logprob logp", logp, want, N, OPS_FWD_TOL);
        CHECK_OK(be->logprob_backward(ctx, dh, dw, dlogp, h, w, labels, lse, N, C, V, chunks[ci]));
        CHECK_CLOSE("logprob dh", dh, gh, N * C, OPS_GRAD_TOL);
        CHECK_CLOSE("logprob dw", dw, gw, V * C, OPS_GRAD_TOL);

        float *logp2 = ops_zeros(N), *dh2 = ops_zeros(N * C), *dw2 = ops_zeros(V * C);
        CHECK_OK(be->logprob_fused(ctx, logp2, dh2, dw2, dlogp, h, w, labels, N, C, V, chunks[ci]));
        CHECK_CLOSE("fused logp", logp2, want, N, OPS_FWD_TOL);
        CHECK_CLOSE("fused dh", dh2, gh, N * C, OPS_GRAD_TOL);
        CHECK_CLOSE("fused dw", dw2, gw, V * C, OPS_GRAD_TOL);
        /* frozen lm_head: dw NULL still gives dh */
        float *dh3 = ops_zeros(N * C);
        CHECK_OK(be->logprob_fused(ctx, logp2, dh3, NULL, dlogp, h, w, labels, N, C, V, chunks[ci]));
        CHECK_CLOSE("fused dh, dw NULL", dh3, gh, N * C, OPS_GRAD_TOL);
        free(logp); free(lse); free(dh); free(dw); free(logp2); free(dh2); free(dw2); free(dh3);
    }
    free(h); free(w); free(dlogp); free(a.h); free(a.w); free(a.dlogp); free(want); free(gh); free(gw);
}

/* transformers-side reference: torch log_softmax + gather, autograd gradients
 * (tests/fixtures/ops/logprob.json from tests/oracle/ops.py) */
static void check_fixture(const struct ftk_backend *be, void *ctx)
{
    cJSON *root = ops_json(FIXTURE("ops/logprob.json"));
    CHECK(root != NULL);
    const cJSON *c, *cases = cJSON_GetObjectItem(root, "cases");
    int ncases = 0;
    cJSON_ArrayForEach(c, cases) {
        static float h[256], w[256], dl[64], want_lp[64], want_dh[256], want_dw[256];
        static float logp[64], dh[256], dw[256];
        static int32_t labels[64];
        const int64_t N = (int64_t)ops_jnum(c, "N"), C = (int64_t)ops_jnum(c, "C"), V = (int64_t)ops_jnum(c, "V");
        ops_jarr(c, "h", h, NULL, 256);
        ops_jarr(c, "w", w, NULL, 256);
        ops_jarr(c, "dlogp", dl, NULL, 64);
        ops_jarr(c, "labels", NULL, labels, 64);
        ops_jarr(c, "logp", want_lp, NULL, 64);
        ops_jarr(c, "dh", want_dh, NULL, 256);
        ops_jarr(c, "dw", want_dw, NULL, 256);
        memset(dh, 0, sizeof dh);
        memset(dw, 0, sizeof dw);
        CHECK_OK(be->logprob_fused(ctx, logp, dh, dw, dl, h, w, labels, N, C, V, 2));
        double *a = ops_to_f64(want_lp, N), *b = ops_to_f64(want_dh, N * C), *d = ops_to_f64(want_dw, V * C);
        CHECK_CLOSE("torch logp", logp, a, N, 1e-5);
        CHECK_CLOSE("torch dh", dh, b, N * C, 1e-5);
        CHECK_CLOSE("torch dw", dw, d, V * C, 1e-5);
        /* SFT: dlogp = -1/n_scored gives F.cross_entropy's mean */
        int64_t ns = 0;
        for (int64_t n = 0; n < N; n++)
            ns += labels[n] != FTK_IGNORE_INDEX;
        for (int64_t n = 0; n < N; n++)
            dl[n] = -1.0f / (float)ns;
        CHECK_OK(be->logprob_fused(ctx, logp, NULL, NULL, dl, h, w, labels, N, C, V, 0));
        double loss = 0;
        for (int64_t n = 0; n < N; n++)
            loss += dl[n] * logp[n];
        CHECK_NEAR(loss, ops_jnum(c, "sft_loss"), 1e-5);
        free(a); free(b); free(d);
        ncases++;
    }
    CHECK_INT(ncases, 2);
    cJSON_Delete(root);
}

int main(void)
{
    const struct ftk_backend *be;
    void *ctx = ops_ctx(&be, 2);
    ops_seed(6);
    {
        static const int32_t labels[5] = { 2, 0, 6, 3, 6 };
        TEST("logprob N5 C4 V7, all scored") run_lp(be, ctx, 5, 4, 7, labels);
    }
    {
        /* a prompt (ignored), an answer, padding (ignored): HF's -100 */
        static const int32_t labels[8] = { -100, -100, 4, 1, 10, -100, 0, -100 };
        TEST("logprob N8 C5 V11 with ignored tokens") run_lp(be, ctx, 8, 5, 11, labels);
    }
    {
        static const int32_t labels[1] = { 0 };
        TEST("logprob N1 C1 V1") run_lp(be, ctx, 1, 1, 1, labels);
    }
    TEST("logprob all ignored: logp 0, gradients untouched") {
        static const int32_t labels[3] = { -100, -100, -100 };
        float h[6] = { 1, 2, 3, 4, 5, 6 }, w[4] = { 1, 1, 1, 1 }, logp[3] = { 5, 5, 5 }, dl[3] = { 1, 1, 1 };
        float dh[6] = { 0 };
        CHECK_OK(be->logprob_fused(ctx, logp, dh, NULL, dl, h, w, labels, 3, 2, 2, 0));
        CHECK(logp[0] == 0 && logp[1] == 0 && logp[2] == 0 && dh[0] == 0 && dh[5] == 0);
    }
    TEST("logprob SFT weights: loss = mean NLL, matches a large-logit row") {
        /* dlogp = -1/count makes sum dlogp*logp the token-mean cross-entropy; big logits must not
         * overflow (log-sum-exp with the max subtracted) */
        static const int32_t labels[2] = { 1, 0 };
        float h[2] = { 100.0f, -50.0f }, w[2] = { 1.0f, -1.0f }, logp[2], dl[2] = { -0.5f, -0.5f };
        float dh[2] = { 0 }, dw[2] = { 0 };
        CHECK_OK(be->logprob_fused(ctx, logp, dh, dw, dl, h, w, labels, 2, 1, 2, 0));
        /* row 0: logits (100,-100), label 1: logp = -200 - log1p(e^-200) */
        CHECK_NEAR(logp[0], -200.0, 1e-6);
        CHECK_NEAR(logp[1], -100.0, 1e-6);
        CHECK(isfinite(dh[0]) && isfinite(dh[1]) && isfinite(dw[0]) && isfinite(dw[1]));
        double loss = -0.5 * (logp[0] + logp[1]);
        CHECK_NEAR(loss, 150.0, 1e-6);
    }
    TEST("logprob against torch (fixtures/ops/logprob.json)") check_fixture(be, ctx);
    TEST("logprob rejects labels outside the vocabulary") {
        static const int32_t bad[2] = { 1, 7 };
        float h[2] = { 0 }, w[7] = { 0 }, logp[2];
        CHECK_ERR(be->logprob_forward(ctx, logp, NULL, h, w, bad, 2, 1, 7, 0), FTK_E_INVALID, "label 7");
    }
    be->destroy(ctx);
    return check_summary();
}
