/* tests/unit/test_ops_adamw.c: AdamW against a hand-computed step and an f64 transcription of
 * torch's _single_tensor_adamw over three steps; sumsq + ftk_clip_grad_norm_coef as
 * clip_grad_norm_; scale/axpy/add; backend lookup by name; the thread pool.
 * Letters: n elements. */
#include "check.h"
#include "ops_util.h"
#include "ftk/threads.h"

/* torch.optim.AdamW, one element, in f64 */
static void adamw_ref(double *p, double *m, double *v, double g, const struct ftk_adamw_params *h)
{
    g *= h->grad_scale;
    *p *= 1 - (double)h->lr * h->weight_decay;
    *m += (1 - (double)h->beta1) * (g - *m);
    *v = *v * h->beta2 + (1 - (double)h->beta2) * g * g;
    double bc1 = 1 - pow(h->beta1, (double)h->step), bc2 = 1 - pow(h->beta2, (double)h->step);
    *p -= h->lr / bc1 * *m / (sqrt(*v) / sqrt(bc2) + h->eps);
}

static void count_range(void *arg, int64_t b, int64_t e, int tid)
{
    (void)tid;
    int *hits = arg;
    for (int64_t i = b; i < e; i++)
        __atomic_fetch_add(&hits[i], 1, __ATOMIC_RELAXED);
}

struct nest { struct ftk_threads *t; int *hits; };

static void nested_range(void *arg, int64_t b, int64_t e, int tid)
{
    (void)tid;
    struct nest *n = arg;
    for (int64_t i = b; i < e; i++)   /* each outer index runs an inner loop over 10 */
        ftk_threads_for(n->t, 10, 1, count_range, n->hits + i * 10);
}

/* three torch.optim.AdamW steps with clip_grad_norm_(1.0) on two tensors
 * (tests/fixtures/ops/adamw.json from tests/oracle/ops.py) */
static void check_fixture(const struct ftk_backend *be, void *ctx)
{
    cJSON *root = ops_json(FIXTURE("ops/adamw.json"));
    CHECK(root != NULL);
    const cJSON *c = cJSON_GetObjectItem(root, "case");
    float p[2][8], m[2][8] = { { 0 } }, v[2][8] = { { 0 } }, g[2][8], want[2][8];
    const int64_t n[2] = { 7, 6 };
    for (int t = 0; t < 2; t++) {
        const cJSON *e;
        int64_t i = 0;
        cJSON_ArrayForEach(e, cJSON_GetArrayItem(cJSON_GetObjectItem(c, "init"), t))
            p[t][i++] = (float)cJSON_GetNumberValue(e);
        i = 0;
        cJSON_ArrayForEach(e, cJSON_GetArrayItem(cJSON_GetObjectItem(c, "final"), t))
            want[t][i++] = (float)cJSON_GetNumberValue(e);
    }
    struct ftk_adamw_params h = { .lr = (float)ops_jnum(c, "lr"), .beta1 = (float)ops_jnum(c, "beta1"),
                                  .beta2 = (float)ops_jnum(c, "beta2"), .eps = (float)ops_jnum(c, "eps"),
                                  .weight_decay = (float)ops_jnum(c, "weight_decay") };
    for (int s = 0; s < 3; s++) {
        const cJSON *gs = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "grads"), s);
        float ss[2], total, coef;
        for (int t = 0; t < 2; t++) {
            const cJSON *e;
            int64_t i = 0;
            cJSON_ArrayForEach(e, cJSON_GetArrayItem(gs, t))
                g[t][i++] = (float)cJSON_GetNumberValue(e);
            CHECK_OK(be->sumsq(ctx, &ss[t], g[t], n[t]));
        }
        CHECK_OK(ftk_clip_grad_norm_coef(ss, 2, (float)ops_jnum(c, "max_norm"), &total, &coef));
        CHECK_NEAR(total, cJSON_GetNumberValue(cJSON_GetArrayItem(cJSON_GetObjectItem(c, "grad_norms"), s)), 1e-6);
        h.step = s + 1;
        h.grad_scale = coef;
        for (int t = 0; t < 2; t++)
            CHECK_OK(be->adamw_step(ctx, p[t], m[t], v[t], g[t], n[t], &h));
    }
    for (int t = 0; t < 2; t++) {
        double *w = ops_to_f64(want[t], n[t]);
        CHECK_CLOSE("torch AdamW params after 3 clipped steps", p[t], w, n[t], 1e-6);
        free(w);
    }
    cJSON_Delete(root);
}

int main(void)
{
    const struct ftk_backend *be;
    void *ctx = ops_ctx(&be, 2);
    ops_seed(8);

    TEST("adamw: one step by hand") {
        /* p = 1, g = 0.5, lr 0.1, wd 0.01: p <- 0.999; m = 0.05; v = 0.00025;
         * step_size = 0.1 / 0.1 = 1; denom = sqrt(0.00025) / sqrt(0.001) + 1e-8 = 0.5 + 1e-8;
         * p = 0.999 - 0.05 / (0.5 + 1e-8) = 0.899000002 */
        float p = 1.0f, m = 0.0f, v = 0.0f, g = 0.5f;
        struct ftk_adamw_params h = { .lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                      .weight_decay = 0.01f, .step = 1, .grad_scale = 1.0f };
        CHECK_OK(be->adamw_step(ctx, &p, &m, &v, &g, 1, &h));
        CHECK_NEAR(p, 0.899000002, 1e-7);
        CHECK_NEAR(m, 0.05, 1e-7);
        CHECK_NEAR(v, 0.00025, 1e-7);
    }
    TEST("adamw: three steps with clipping scale against torch's formula in f64") {
        const int64_t n = 70001;   /* several chunks */
        float *p = ops_rand(n, -1, 1), *m = ops_zeros(n), *v = ops_zeros(n), *g = ops_zeros(n);
        double *pd = ops_to_f64(p, n), *md = calloc((size_t)n, 8), *vd = calloc((size_t)n, 8);
        struct ftk_adamw_params h = { .lr = 3e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-6f,
                                      .weight_decay = 0.1f, .grad_scale = 0.5f };
        for (int s = 1; s <= 3; s++) {
            ops_fill(g, n, -2, 2);
            h.step = s;
            CHECK_OK(be->adamw_step(ctx, p, m, v, g, n, &h));
            for (int64_t i = 0; i < n; i++)
                adamw_ref(&pd[i], &md[i], &vd[i], g[i], &h);
        }
        CHECK_CLOSE("adamw p", p, pd, n, 1e-6);
        CHECK_CLOSE("adamw m", m, md, n, 1e-6);
        CHECK_CLOSE("adamw v", v, vd, n, 1e-6);
        free(p); free(m); free(v); free(g); free(pd); free(md); free(vd);
    }
    TEST("adamw + clipping against torch (fixtures/ops/adamw.json)") check_fixture(be, ctx);
    TEST("adamw rejects step 0") {
        float x = 0;
        struct ftk_adamw_params h = { .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .step = 0,
                                      .grad_scale = 1 };
        CHECK_ERR(be->adamw_step(ctx, &x, &x, &x, &x, 1, &h), FTK_E_INVALID, "step");
    }
    TEST("sumsq + clip coefficient as clip_grad_norm_") {
        float a[2] = { 3, 4 }, b[1] = { 12 }, ss[2], total, coef;
        CHECK_OK(be->sumsq(ctx, &ss[0], a, 2));
        CHECK_OK(be->sumsq(ctx, &ss[1], b, 1));
        CHECK_OK(ftk_clip_grad_norm_coef(ss, 2, 1.0f, &total, &coef));
        CHECK_NEAR(total, 13.0, 1e-7);
        CHECK_NEAR(coef, 1.0 / (13.0 + 1e-6), 1e-7);
        CHECK_OK(ftk_clip_grad_norm_coef(ss, 2, 100.0f, &total, &coef));
        CHECK(coef == 1.0f);
        CHECK_OK(ftk_clip_grad_norm_coef(ss, 2, 0.0f, &total, &coef));
        CHECK(coef == 1.0f);
        float bad[1] = { NAN };
        CHECK_ERR(ftk_clip_grad_norm_coef(bad, 1, 1.0f, &total, &coef), FTK_E_INVALID, "nan");
        CHECK(coef == 1.0f);
    }
    TEST("sumsq over many chunks: f64 exact-ish and thread-count independent") {
        const int64_t n = 300007;
        float *x = ops_rand(n, -1, 1), s2, s1;
        double want = 0;
        for (int64_t i = 0; i < n; i++)
            want += (double)x[i] * x[i];
        CHECK_OK(be->sumsq(ctx, &s2, x, n));
        CHECK_NEAR(s2, want, 1e-7);
        const struct ftk_backend *b1;
        void *c1 = ops_ctx(&b1, 1);
        CHECK_OK(b1->sumsq(c1, &s1, x, n));
        CHECK(s1 == s2);
        b1->destroy(c1);
        free(x);
    }
    TEST("scale, axpy, add (in place)") {
        float y[3] = { 1, 2, 3 }, x[3] = { 10, 20, 30 };
        CHECK_OK(be->scale(ctx, y, 3, 2.0f));
        CHECK_OK(be->axpy(ctx, y, x, 3, 0.5f));
        CHECK(y[0] == 7 && y[1] == 14 && y[2] == 21);
        CHECK_OK(be->add(ctx, y, y, x, 3));
        CHECK(y[0] == 17 && y[1] == 34 && y[2] == 51);
    }
    TEST("backend lookup by name") {
        const struct ftk_backend *b = NULL;
        CHECK_OK(ftk_backend_get("cpu", &b));
        CHECK(b == ftk_backend_cpu());
        CHECK_STR(b->name, "cpu");
        CHECK_INT(b->api_version, FTK_BACKEND_API);
        CHECK(FTK_BACKEND_HAS(b, logprob_fused) && FTK_BACKEND_HAS(b, add));
        /* a table built before a slot existed does not have it */
        struct ftk_backend old = *b;
        old.struct_size = (uint32_t)offsetof(struct ftk_backend, add);
        CHECK(!FTK_BACKEND_HAS(&old, add) && FTK_BACKEND_HAS(&old, axpy));
        ftk_status st = ftk_backend_get("cuda", &b);
        CHECK(st == FTK_OK || (st == FTK_E_UNSUPPORTED && strstr(ftk_last_error(), "--device cpu")));
        CHECK_ERR(ftk_backend_get("tpu", &b), FTK_E_NOTFOUND, "unknown backend 'tpu'");
        struct ftk_backend_opts o = { .struct_size = sizeof o, .threads = -1 };
        void *c = NULL;
        CHECK_ERR(ftk_backend_cpu()->create(&o, &c), FTK_E_INVALID, "threads");
    }
    TEST("thread pool covers every index once, repeatedly, and runs nested calls inline") {
        struct ftk_threads *t = NULL;
        CHECK_OK(ftk_threads_create(3, &t));
        CHECK_INT(ftk_threads_count(t), 3);
        static int hits[10007];
        for (int rep = 0; rep < 50; rep++)
            ftk_threads_for(t, 10007, rep % 7, count_range, hits);
        int ok = 1;
        for (int i = 0; i < 10007; i++)
            ok &= hits[i] == 50;
        CHECK(ok);
        ftk_threads_for(t, 0, 0, count_range, hits);   /* empty range: no call */
        ftk_threads_for(NULL, 5, 0, count_range, hits);
        CHECK(hits[4] == 51 && hits[5] == 50);
        static int nh[200];
        struct nest ns = { t, nh };
        ftk_threads_for(t, 20, 1, nested_range, &ns);
        ok = 1;
        for (int i = 0; i < 200; i++)
            ok &= nh[i] == 1;
        CHECK(ok);
        ftk_threads_free(t);
        ftk_threads_free(NULL);
    }
    be->destroy(ctx);
    return check_summary();
}
