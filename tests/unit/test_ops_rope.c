/* tests/unit/test_ops_rope.c: RoPE. ftk_rope_inv_freq against the transformers formulas
 * evaluated by hand here in f64 (default, linear, dynamic, llama3) and against inv_freq and
 * rotated q dumped by transformers (tests/fixtures/ops/rope.json, tests/oracle/ops.py); the
 * rope op against an f64 rotation and its backward against finite differences.
 * Letters: N tokens, H heads, D head dim, R rotary dims. */
#include "check.h"
#include "ops_util.h"
#include "ftk/rope.h"

#define PI 3.14159265358979323846

/* _compute_default_rope_parameters: 1 / base^(2i/dim) */
static double inv_default(double base, int64_t dim, int64_t i) { return 1.0 / pow(base, (double)(2 * i) / dim); }

/* _compute_llama3_parameters, one frequency */
static double inv_llama3(double f, double factor, double lo, double hi, double old)
{
    double wl = 2 * PI / f, lo_wl = old / lo, hi_wl = old / hi;
    if (wl < hi_wl)
        return f;
    if (wl > lo_wl)
        return f / factor;
    double s = (old / wl - lo) / (hi - lo);
    return (1 - s) * f / factor + s * f;
}

static void check_inv(const struct ftk_rope_config *c, int64_t seq_len, const double *want, int64_t half)
{
    float got[256];
    int64_t R = 0;
    float sc = 0;
    CHECK_OK(ftk_rope_inv_freq(c, seq_len, got, &R, &sc));
    CHECK_INT(R, 2 * half);
    CHECK(sc == 1.0f);
    CHECK_CLOSE("inv_freq", got, want, half, 1e-6);
}

struct rp { int64_t N, H, D, R; const int32_t *pos; const float *inv; double *x, *gout; };

static double rp_out(const struct rp *a, int64_t n, int64_t h, int64_t d)
{
    const double *x = a->x + (n * a->H + h) * a->D;
    int64_t half = a->R / 2;
    if (d >= a->R)
        return x[d];
    double f = (double)(float)((float)a->pos[n] * a->inv[d % half]);   /* float32 product, as HF */
    return d < half ? x[d] * cos(f) - x[d + half] * sin(f) : x[d] * cos(f) + x[d - half] * sin(f);
}

static double rp_loss(void *arg)
{
    const struct rp *a = arg;
    double L = 0;
    for (int64_t n = 0; n < a->N; n++)
        for (int64_t h = 0; h < a->H; h++)
            for (int64_t d = 0; d < a->D; d++)
                L += a->gout[(n * a->H + h) * a->D + d] * rp_out(a, n, h, d);
    return L;
}

static void run_rope_op(const struct ftk_backend *be, void *ctx, int64_t N, int64_t H, int64_t D, int64_t R)
{
    int32_t pos[16];
    for (int64_t n = 0; n < N; n++)
        pos[n] = (int32_t)((n * 37) % 50);   /* not monotone: packing restarts positions */
    float inv[64];
    for (int64_t i = 0; i < R / 2; i++)
        inv[i] = (float)inv_default(10000.0, R, i);
    const int64_t n = N * H * D;
    float *x = ops_rand(n, -1, 1), *gout = ops_rand(n, -1, 1);
    struct rp a = { N, H, D, R, pos, inv, ops_to_f64(x, n), ops_to_f64(gout, n) };
    double *want = malloc((size_t)n * sizeof(double)), *g = malloc((size_t)n * sizeof(double));
    for (int64_t t = 0; t < N; t++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t d = 0; d < D; d++)
                want[(t * H + h) * D + d] = rp_out(&a, t, h, d);
    CHECK_OK(be->rope_forward(ctx, x, pos, inv, 1.0f, N, H, D, R));
    CHECK_CLOSE("rope forward", x, want, n, OPS_FWD_TOL);
    /* backward: in place on a copy of gout */
    float *dx = malloc((size_t)n * sizeof(float));
    memcpy(dx, gout, (size_t)n * sizeof(float));
    CHECK_OK(be->rope_backward(ctx, dx, pos, inv, 1.0f, N, H, D, R));
    ops_fd_grad(rp_loss, &a, a.x, n, g, OPS_FD_H);
    CHECK_CLOSE("rope backward", dx, g, n, OPS_GRAD_TOL);
    /* the rotation is orthogonal: backward undoes forward */
    CHECK_OK(be->rope_backward(ctx, x, pos, inv, 1.0f, N, H, D, R));
    CHECK_CLOSE("rope backward(forward(x)) = x", x, a.x, n, 1e-6);
    free(x); free(gout); free(a.x); free(a.gout); free(want); free(g); free(dx);
}

static void check_fixture(const struct ftk_backend *be, void *ctx)
{
    cJSON *root = ops_json(FIXTURE("ops/rope.json"));
    CHECK(root != NULL);
    const cJSON *c, *cases = cJSON_GetObjectItem(root, "cases");
    int ncases = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "name"));
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(c, "type"));
        struct ftk_rope_config cfg = {
            .type = !strcmp(type, "linear") ? FTK_ROPE_LINEAR : !strcmp(type, "dynamic") ? FTK_ROPE_DYNAMIC
                  : !strcmp(type, "llama3") ? FTK_ROPE_LLAMA3 : FTK_ROPE_DEFAULT,
            .theta = ops_jnum(c, "theta"), .head_dim = (int64_t)ops_jnum(c, "head_dim"), .partial_rotary_factor = 1.0,
            .factor = ops_jnum(c, "factor"), .low_freq_factor = ops_jnum(c, "low_freq_factor"),
            .high_freq_factor = ops_jnum(c, "high_freq_factor"),
            .original_max_position_embeddings = (int64_t)ops_jnum(c, "original_max_position_embeddings"),
            .max_position_embeddings = (int64_t)ops_jnum(c, "max_position_embeddings"),
        };
        int32_t pos[16];
        int64_t T = 0, maxpos = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "positions")) {
            pos[T] = (int32_t)cJSON_GetNumberValue(e);
            if (pos[T] > maxpos) maxpos = pos[T];
            T++;
        }
        float want_inv[128], inv[128], q[4096], want_q[4096];
        int64_t half = ops_jarr(c, "inv_freq", want_inv, NULL, 128), R = 0;
        float sc = 0;
        CHECK_OK(ftk_rope_inv_freq(&cfg, maxpos + 1, inv, &R, &sc));
        double wd[128];
        for (int64_t i = 0; i < half; i++)
            wd[i] = want_inv[i];
        int64_t w;
        double err = ops_err(inv, wd, half, &w);
        /* float32 pow may differ from torch's by an ulp: 2 ulps of slack */
        if (!(err <= 3e-7))
            CHECK_FAIL_("%s: inv_freq error %.3g at [%lld]: %.9g, transformers %.9g", name, err,
                        (long long)w, inv[w], want_inv[w]);
        CHECK(fabs(sc - ops_jnum(c, "attention_scaling")) < 1e-7);
        int64_t n = ops_jarr(c, "q", q, NULL, 4096);
        ops_jarr(c, "q_rot", want_q, NULL, 4096);
        int64_t D = cfg.head_dim, H = n / (T * D);
        CHECK_OK(be->rope_forward(ctx, q, pos, inv, sc, T, H, D, R));
        double *wq = ops_to_f64(want_q, n);
        CHECK_CLOSE(name, q, wq, n, 1e-5);
        free(wq);
        ncases++;
    }
    CHECK_INT(ncases, 6);
    cJSON_Delete(root);
}

int main(void)
{
    const struct ftk_backend *be;
    void *ctx = ops_ctx(&be, 2);
    ops_seed(7);

    TEST("inv_freq default: theta 10000, D 8 -> 1, 0.1, 0.01, 0.001") {
        struct ftk_rope_config c = { .type = FTK_ROPE_DEFAULT, .theta = 10000, .head_dim = 8 };
        const double want[4] = { 1, 0.1, 0.01, 0.001 };
        check_inv(&c, 1, want, 4);
    }
    TEST("inv_freq linear: default / factor") {
        struct ftk_rope_config c = { .type = FTK_ROPE_LINEAR, .theta = 500000, .head_dim = 64, .factor = 4 };
        double want[32];
        for (int i = 0; i < 32; i++)
            want[i] = inv_default(500000, 64, i) / 4;
        check_inv(&c, 100000, want, 32);
    }
    TEST("inv_freq dynamic: base grows only past max_position_embeddings") {
        struct ftk_rope_config c = { .type = FTK_ROPE_DYNAMIC, .theta = 10000, .head_dim = 64, .factor = 2,
                                     .max_position_embeddings = 2048 };
        double want[32];
        for (int i = 0; i < 32; i++)
            want[i] = inv_default(10000, 64, i);
        check_inv(&c, 2048, want, 32);
        /* base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2)) */
        double base = 10000 * pow(2.0 * 5000 / 2048 - 1, 64.0 / 62.0);
        for (int i = 0; i < 32; i++)
            want[i] = inv_default(base, 64, i);
        check_inv(&c, 5000, want, 32);
    }
    TEST("inv_freq dynamic, bit for bit: torch raises the float32 ratio to dim/(dim-2) in double") {
        /* transformers 5.23 _compute_dynamic_ntk_parameters, head_dim 128, seq_len tensor(5000) */
        struct ftk_rope_config c = { .type = FTK_ROPE_DYNAMIC, .theta = 10000, .head_dim = 128, .factor = 2,
                                     .max_position_embeddings = 2048, .partial_rotary_factor = 1 };
        float got[64], sc;
        int64_t R;
        CHECK_OK(ftk_rope_inv_freq(&c, 5000, got, &R, &sc));
        CHECK(got[11] == 0.16204407811164856f);
        CHECK(got[13] == 0.11639387160539627f);
        CHECK(got[15] == 0.08360400050878525f);
    }
    TEST("inv_freq llama3: Llama-3.1-8B's rope_scaling") {
        struct ftk_rope_config c = { .type = FTK_ROPE_LLAMA3, .theta = 500000, .head_dim = 128, .factor = 8,
                                     .low_freq_factor = 1, .high_freq_factor = 4,
                                     .original_max_position_embeddings = 8192 };
        double want[64];
        int lo = 0, mid = 0, hi = 0;
        for (int i = 0; i < 64; i++) {
            double f = inv_default(500000, 128, i), g = inv_llama3(f, 8, 1, 4, 8192);
            want[i] = g;
            lo += g == f / 8; hi += g == f; mid += g != f && g != f / 8;
        }
        CHECK(lo > 0 && mid > 0 && hi > 0);   /* all three bands are exercised */
        check_inv(&c, 1, want, 64);
    }
    TEST("inv_freq partial_rotary_factor 0.5 -> R = D/2") {
        struct ftk_rope_config c = { .type = FTK_ROPE_DEFAULT, .theta = 10000, .head_dim = 16,
                                     .partial_rotary_factor = 0.5 };
        const double want[4] = { 1, 0.1, 0.01, 0.001 };
        check_inv(&c, 1, want, 4);
    }
    TEST("inv_freq bad configs are errors") {
        float f[8];
        int64_t R;
        float sc;
        struct ftk_rope_config c = { .type = FTK_ROPE_DEFAULT, .theta = 0, .head_dim = 8 };
        CHECK_ERR(ftk_rope_inv_freq(&c, 1, f, &R, &sc), FTK_E_INVALID, "rope_theta");
        c.theta = 10000;
        c.head_dim = 7;
        CHECK_ERR(ftk_rope_inv_freq(&c, 1, f, &R, &sc), FTK_E_INVALID, "even");
        struct ftk_rope_config l3 = { .type = FTK_ROPE_LLAMA3, .theta = 10000, .head_dim = 8, .factor = 8,
                                      .low_freq_factor = 1, .high_freq_factor = 1,
                                      .original_max_position_embeddings = 8192 };
        CHECK_ERR(ftk_rope_inv_freq(&l3, 1, f, &R, &sc), FTK_E_INVALID, "high_freq_factor");
    }
    TEST("rope against transformers (fixtures/ops/rope.json)") check_fixture(be, ctx);
    TEST("rope op N5 H3 D8") run_rope_op(be, ctx, 5, 3, 8, 8);
    TEST("rope op N7 H2 D10 R6 (partial rotary)") run_rope_op(be, ctx, 7, 2, 10, 6);
    TEST("rope op N1 H1 D2") run_rope_op(be, ctx, 1, 1, 2, 2);
    TEST("rope op rejects odd R") {
        float x[6] = { 0 };
        int32_t p[1] = { 0 };
        CHECK_ERR(be->rope_forward(ctx, x, p, x, 1.0f, 1, 1, 6, 3), FTK_E_INVALID, "even");
    }
    be->destroy(ctx);
    return check_summary();
}
