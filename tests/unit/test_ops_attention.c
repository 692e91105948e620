/* tests/unit/test_ops_attention.c: causal GQA attention with segments, forward (o, lse) against
 * a naive f64 softmax(QK^T*scale + mask) V, backward (dq, dk, dv) against f64 finite differences.
 * Letters: B batch rows, T sequence length, H query heads, Hkv kv heads, D head dim.
 * Query head h reads kv head h / (H/Hkv) (transformers' repeat_kv). */
#include "check.h"
#include "ops_util.h"


struct att { int64_t B, T, H, Hkv, D; double scale; const int32_t *seg; double *q, *k, *v, *gout; };

/* o (B,T,H,D) and lse (B,T,H) of the naive reference */
static void att_ref(const struct att *a, double *o, double *lse)
{
    const int64_t T = a->T, H = a->H, Hkv = a->Hkv, D = a->D, G = H / Hkv;
    double *s = malloc((size_t)T * sizeof(double));
    for (int64_t b = 0; b < a->B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                const double *q = a->q + ((b * T + t) * H + h) * D;
                double mx = -INFINITY;
                for (int64_t j = 0; j < T; j++) {
                    int ok = j <= t && (!a->seg || a->seg[b * T + j] == a->seg[b * T + t]);
                    s[j] = -INFINITY;
                    if (!ok)
                        continue;
                    const double *k = a->k + ((b * T + j) * Hkv + h / G) * D;
                    double d = 0;
                    for (int64_t e = 0; e < D; e++)
                        d += q[e] * k[e];
                    s[j] = a->scale * d;
                    if (s[j] > mx) mx = s[j];
                }
                double sum = 0;
                for (int64_t j = 0; j < T; j++)
                    sum += s[j] == -INFINITY ? 0 : exp(s[j] - mx);
                double *out = o + ((b * T + t) * H + h) * D;
                for (int64_t e = 0; e < D; e++) {
                    double acc = 0;
                    for (int64_t j = 0; j < T; j++)
                        if (s[j] != -INFINITY)
                            acc += exp(s[j] - mx) / sum * a->v[((b * T + j) * Hkv + h / G) * D + e];
                    out[e] = acc;
                }
                if (lse)
                    lse[(b * T + t) * H + h] = mx + log(sum);
            }
    free(s);
}

/* f64 analytic backward of the reference (for sizes where finite differences are too slow):
 * P = softmax, dP = dO V^T, dS = P (dP - rowsum(P dP)), dq = scale dS K, dk = scale dS^T Q, dv = P^T dO */
static void att_ref_bwd(const struct att *a, double *dq, double *dk, double *dv)
{
    const int64_t T = a->T, H = a->H, Hkv = a->Hkv, D = a->D, G = H / Hkv;
    double *p = malloc((size_t)T * sizeof(double)), *dp = malloc((size_t)T * sizeof(double));
    for (int64_t b = 0; b < a->B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                const double *q = a->q + ((b * T + t) * H + h) * D, *go = a->gout + ((b * T + t) * H + h) * D;
                double mx = -INFINITY, sum = 0, di = 0;
                for (int64_t j = 0; j < T; j++) {
                    p[j] = -INFINITY;
                    if (j > t || (a->seg && a->seg[b * T + j] != a->seg[b * T + t]))
                        continue;
                    const double *k = a->k + ((b * T + j) * Hkv + h / G) * D;
                    double d = 0;
                    for (int64_t e = 0; e < D; e++)
                        d += q[e] * k[e];
                    p[j] = a->scale * d;
                    if (p[j] > mx) mx = p[j];
                }
                for (int64_t j = 0; j < T; j++)
                    sum += p[j] == -INFINITY ? 0 : exp(p[j] - mx);
                for (int64_t j = 0; j < T; j++) {
                    p[j] = p[j] == -INFINITY ? 0 : exp(p[j] - mx) / sum;
                    const double *v = a->v + ((b * T + j) * Hkv + h / G) * D;
                    double d = 0;
                    for (int64_t e = 0; e < D; e++)
                        d += go[e] * v[e];
                    dp[j] = d;
                    di += p[j] * d;
                }
                for (int64_t j = 0; j < T; j++) {
                    if (p[j] == 0)
                        continue;
                    double ds = p[j] * (dp[j] - di);
                    const int64_t kr = ((b * T + j) * Hkv + h / G) * D, qr = ((b * T + t) * H + h) * D;
                    for (int64_t e = 0; e < D; e++) {
                        dq[qr + e] += a->scale * ds * a->k[kr + e];
                        dk[kr + e] += a->scale * ds * a->q[qr + e];
                        dv[kr + e] += p[j] * a->gout[qr + e];
                    }
                }
            }
    free(p);
    free(dp);
}

static double att_loss(void *arg)
{
    const struct att *a = arg;
    int64_t n = a->B * a->T * a->H * a->D;
    double *o = malloc((size_t)n * sizeof(double)), L = 0;
    att_ref(a, o, NULL);
    for (int64_t i = 0; i < n; i++)
        L += a->gout[i] * o[i];
    free(o);
    return L;
}

static void run_att(const struct ftk_backend *be, void *ctx, int64_t B, int64_t T, int64_t H,
                    int64_t Hkv, int64_t D, const int32_t *seg, int fd)
{
    const int64_t nq = B * T * H * D, nk = B * T * Hkv * D, nl = B * T * H;
    const float scale = 1.0f / sqrtf((float)D);
    float *q = ops_rand(nq, -1.5, 1.5), *k = ops_rand(nk, -1.5, 1.5), *v = ops_rand(nk, -1, 1);
    float *gout = ops_rand(nq, -1, 1), *o = ops_zeros(nq), *lse = ops_zeros(nl);
    float *dq = ops_zeros(nq), *dk = ops_zeros(nk), *dv = ops_zeros(nk);
    struct att a = { B, T, H, Hkv, D, scale, seg, ops_to_f64(q, nq), ops_to_f64(k, nk),
                     ops_to_f64(v, nk), ops_to_f64(gout, nq) };
    double *wo = malloc((size_t)nq * sizeof(double)), *wl = malloc((size_t)nl * sizeof(double));
    att_ref(&a, wo, wl);
    CHECK_OK(be->attention_forward(ctx, o, lse, q, k, v, seg, B, T, H, Hkv, D, scale));
    CHECK_CLOSE("attention o", o, wo, nq, OPS_FWD_TOL);
    CHECK_CLOSE("attention lse", lse, wl, nl, OPS_FWD_TOL);
    int finite = 1;
    for (int64_t i = 0; i < nq; i++)
        finite &= isfinite(o[i]);
    CHECK(finite);

    CHECK_OK(be->attention_backward(ctx, dq, dk, dv, gout, q, k, v, o, lse, seg, B, T, H, Hkv, D, scale));
    for (int64_t i = 0; i < nq; i++)
        finite &= isfinite(dq[i]);
    for (int64_t i = 0; i < nk; i++)
        finite &= isfinite(dk[i]) && isfinite(dv[i]);
    CHECK(finite);
    if (fd) {
        double *g = malloc((size_t)nq * sizeof(double));
        ops_fd_grad(att_loss, &a, a.q, nq, g, OPS_FD_H);
        CHECK_CLOSE("attention dq", dq, g, nq, OPS_GRAD_TOL);
        ops_fd_grad(att_loss, &a, a.k, nk, g, OPS_FD_H);
        CHECK_CLOSE("attention dk", dk, g, nk, OPS_GRAD_TOL);
        ops_fd_grad(att_loss, &a, a.v, nk, g, OPS_FD_H);
        CHECK_CLOSE("attention dv", dv, g, nk, OPS_GRAD_TOL);
        free(g);
    } else {
        double *rq = calloc((size_t)nq, 8), *rk = calloc((size_t)nk, 8), *rv = calloc((size_t)nk, 8);
        att_ref_bwd(&a, rq, rk, rv);
        CHECK_CLOSE("attention dq (analytic ref)", dq, rq, nq, OPS_GRAD_TOL);
        CHECK_CLOSE("attention dk (analytic ref)", dk, rk, nk, OPS_GRAD_TOL);
        CHECK_CLOSE("attention dv (analytic ref)", dv, rv, nk, OPS_GRAD_TOL);
        free(rq); free(rk); free(rv);
    }
    free(q); free(k); free(v); free(gout); free(o); free(lse); free(dq); free(dk); free(dv);
    free(a.q); free(a.k); free(a.v); free(a.gout); free(wo); free(wl);
}

/* transformers' eager_attention_forward with the packing mask (tests/oracle/ops.py) */
static void check_fixture(const struct ftk_backend *be, void *ctx)
{
    cJSON *root = ops_json(FIXTURE("ops/attention.json"));
    CHECK(root != NULL);
    const cJSON *c, *cases = cJSON_GetObjectItem(root, "cases");
    int ncases = 0;
    cJSON_ArrayForEach(c, cases) {
        static float q[1024], k[1024], v[1024], o[1024], want[1024], lse[256];
        static int32_t seg[256];
        int64_t B = (int64_t)ops_jnum(c, "B");
        int64_t T = (int64_t)ops_jnum(c, "T");
        int64_t H = (int64_t)ops_jnum(c, "H");
        int64_t Hkv = (int64_t)ops_jnum(c, "Hkv");
        int64_t D = (int64_t)ops_jnum(c, "D");
        ops_jarr(c, "q", q, NULL, 1024);
        ops_jarr(c, "k", k, NULL, 1024);
        ops_jarr(c, "v", v, NULL, 1024);
        int64_t n = ops_jarr(c, "o", want, NULL, 1024);
        ops_jarr(c, "seg", NULL, seg, 256);
        CHECK_INT(n, B * T * H * D);
        CHECK_OK(be->attention_forward(ctx, o, lse, q, k, v, seg, B, T, H, Hkv, D, 1.0f / sqrtf((float)D)));
        double *w = ops_to_f64(want, n);
        CHECK_CLOSE(cJSON_GetStringValue(cJSON_GetObjectItem(c, "name")), o, w, n, 1e-5);
        free(w);
        ncases++;
    }
    CHECK_INT(ncases, 2);
    cJSON_Delete(root);
}

int main(void)
{
    const struct ftk_backend *be;
    void *ctx = ops_ctx(&be, 2);
    ops_seed(5);

    TEST("attention MHA causal, no segments (B1 T6 H2 D4)") run_att(be, ctx, 1, 6, 2, 2, 4, NULL, 1);
    {
        /* row 0: three documents then padding; row 1: one document, no padding */
        static const int32_t seg[2 * 7] = { 1, 1, 2, 2, 2, 3, 0,   1, 1, 1, 1, 1, 1, 1 };
        TEST("attention GQA 4:2, packed segments + padding (B2 T7 D5)") run_att(be, ctx, 2, 7, 4, 2, 5, seg, 1);
        TEST("attention MQA 3:1, packed segments (B2 T7 D3)") run_att(be, ctx, 2, 7, 3, 1, 3, seg, 1);
    }
    {
        /* left padding, a one-token document, odd head dim */
        static const int32_t seg[9] = { 0, 0, 0, 5, 6, 6, 6, 7, 7 };
        TEST("attention left padding and 1-token segment (B1 T9 H2 Hkv1 D7)") run_att(be, ctx, 1, 9, 2, 1, 7, seg, 1);
    }
    {
        static const int32_t pad[4] = { 0, 0, 0, 0 };
        TEST("attention all-padding row stays finite") run_att(be, ctx, 1, 4, 2, 2, 4, pad, 1);
    }
    {
        /* longer rows: many chunks over threads; forward against the reference, backward finite
         * and equal between 1 and 2 threads */
        int32_t seg[2 * 45];
        for (int i = 0; i < 90; i++)
            seg[i] = i < 45 ? 1 + i / 13 : (i - 45 < 40 ? 1 : 0);
        TEST("attention T45 GQA 6:2 D16, analytic backward") run_att(be, ctx, 2, 45, 6, 2, 16, seg, 0);
        TEST("attention backward: 1 and 2 threads agree") {
            const struct ftk_backend *b1;
            void *c1 = ops_ctx(&b1, 1);
            const int64_t B = 2, T = 45, H = 6, Hkv = 2, D = 16, nq = B * T * H * D, nk = B * T * Hkv * D;
            float *q = ops_rand(nq, -1, 1), *k = ops_rand(nk, -1, 1), *v = ops_rand(nk, -1, 1);
            float *go = ops_rand(nq, -1, 1), *o = ops_zeros(nq), *lse = ops_zeros(B * T * H);
            float *g1[3] = { ops_zeros(nq), ops_zeros(nk), ops_zeros(nk) };
            float *g2[3] = { ops_zeros(nq), ops_zeros(nk), ops_zeros(nk) };
            CHECK_OK(be->attention_forward(ctx, o, lse, q, k, v, seg, B, T, H, Hkv, D, 0.25f));
            CHECK_OK(b1->attention_backward(c1, g1[0], g1[1], g1[2], go, q, k, v, o, lse, seg, B, T, H, Hkv, D, 0.25f));
            CHECK_OK(be->attention_backward(ctx, g2[0], g2[1], g2[2], go, q, k, v, o, lse, seg, B, T, H, Hkv, D, 0.25f));
            CHECK(memcmp(g1[0], g2[0], (size_t)nq * 4) == 0);
            CHECK(memcmp(g1[1], g2[1], (size_t)nk * 4) == 0);
            CHECK(memcmp(g1[2], g2[2], (size_t)nk * 4) == 0);
            b1->destroy(c1);
            free(q); free(k); free(v); free(go); free(o); free(lse);
            for (int i = 0; i < 3; i++) { free(g1[i]); free(g2[i]); }
        }
    }
    {
        /* several 64-row blocks: segments crossing block boundaries, a long document spanning
         * three blocks, right padding; and the same without segments */
        static int32_t seg[2 * 150];
        for (int i = 0; i < 150; i++) {
            seg[i] = i < 30 ? 1 : i < 100 ? 2 : i < 101 ? 3 : i < 140 ? 4 : 0;
            seg[150 + i] = i < 145 ? 9 : 0;
        }
        TEST("attention T150 GQA 4:2 D6, blocks and segments, analytic backward") run_att(be, ctx, 2, 150, 4, 2, 6, seg, 0);
        TEST("attention T130 MQA 2:1 D5 no segments, analytic backward") run_att(be, ctx, 1, 130, 2, 1, 5, NULL, 0);
        /* and the analytic reference agrees with finite differences at a small size */
        TEST("attention analytic reference vs finite differences (T9)") {
            static const int32_t s9[9] = { 1, 1, 1, 2, 2, 2, 2, 0, 0 };
            const int64_t B = 1, T = 9, H = 2, Hkv = 1, D = 3, nq = 54, nk = 27;
            struct att a = { B, T, H, Hkv, D, 0.5, s9, malloc(nq * 8), malloc(nk * 8), malloc(nk * 8), malloc(nq * 8) };
            for (int i = 0; i < nq; i++) { a.q[i] = ops_uniform() - 0.5; a.gout[i] = ops_uniform() - 0.5; }
            for (int i = 0; i < nk; i++) { a.k[i] = ops_uniform() - 0.5; a.v[i] = ops_uniform() - 0.5; }
            double *rq = calloc(nq, 8), *rk = calloc(nk, 8), *rv = calloc(nk, 8), *g = malloc(nq * 8);
            float *f = malloc(nq * 4);
            att_ref_bwd(&a, rq, rk, rv);
            ops_fd_grad(att_loss, &a, a.q, nq, g, OPS_FD_H);
            for (int i = 0; i < nq; i++) f[i] = (float)rq[i];
            CHECK_CLOSE("ref dq", f, g, nq, 1e-6);
            ops_fd_grad(att_loss, &a, a.k, nk, g, OPS_FD_H);
            for (int i = 0; i < nk; i++) f[i] = (float)rk[i];
            CHECK_CLOSE("ref dk", f, g, nk, 1e-6);
            ops_fd_grad(att_loss, &a, a.v, nk, g, OPS_FD_H);
            for (int i = 0; i < nk; i++) f[i] = (float)rv[i];
            CHECK_CLOSE("ref dv", f, g, nk, 1e-6);
            free(a.q); free(a.k); free(a.v); free(a.gout); free(rq); free(rk); free(rv); free(g); free(f);
        }
    }
    TEST("attention against transformers eager attention (fixtures/ops/attention.json)") check_fixture(be, ctx);
    TEST("attention rejects H not a multiple of Hkv") {
        float x[1] = { 0 };
        CHECK_ERR(be->attention_forward(ctx, x, x, x, x, x, NULL, 1, 1, 3, 2, 1, 1.0f), FTK_E_INVALID, "multiple");
    }
    be->destroy(ctx);
    return check_summary();
}
