/* tests/unit/test_ops_attention_prefix.c: attention_prefix_forward/backward (prefix tuning's
 * keys and values seen by every query; one prefix for all rows, or one per row as UniPELT's gated
 * prefix needs) against a naive f64 attention over [prefix; causal keys] written here, and its
 * gradients (q, k, v, prefix k and v, through attention_backward plus attention_prefix_backward)
 * against f64 central differences of that reference. */
#include "check.h"
#include "ops_util.h"

struct ref {
    int64_t B, T, H, Hkv, D, P, R;   /* R prefix sets: 1 (shared) or B (one per row) */
    const int32_t *seg;
    double *q, *k, *v, *pk, *pv, *gout;
    double scale;
};

/* o (B,T,H,D) of the naive attention: query (b,t,h) sees every prefix key (of its row's set)
 * and keys t' <= t of its segment. */
static void ref_forward(const struct ref *r, double *o)
{
    int64_t group = r->H / r->Hkv, D = r->D, n = r->P + r->T;
    double *s = malloc((size_t)n * sizeof *s);
    for (int64_t b = 0; b < r->B; b++)
        for (int64_t t = 0; t < r->T; t++)
            for (int64_t h = 0; h < r->H; h++) {
                int64_t g = h / group, off = (r->R == 1 ? 0 : b) * r->P * r->Hkv * D;
                const double *q = r->q + ((b * r->T + t) * r->H + h) * D;
                double mx = -INFINITY;
                for (int64_t j = 0; j < n; j++) {
                    const double *k;
                    if (j < r->P)
                        k = r->pk + off + (j * r->Hkv + g) * D;
                    else {
                        int64_t tt = j - r->P;
                        if (tt > t || (r->seg && r->seg[b * r->T + tt] != r->seg[b * r->T + t])) {
                            s[j] = -INFINITY;
                            continue;
                        }
                        k = r->k + ((b * r->T + tt) * r->Hkv + g) * D;
                    }
                    double d = 0;
                    for (int64_t e = 0; e < D; e++)
                        d += q[e] * k[e];
                    s[j] = d * r->scale;
                    if (s[j] > mx)
                        mx = s[j];
                }
                double sum = 0;
                for (int64_t j = 0; j < n; j++)
                    sum += s[j] = exp(s[j] - mx);
                double *out = o + ((b * r->T + t) * r->H + h) * D;
                for (int64_t e = 0; e < D; e++)
                    out[e] = 0;
                for (int64_t j = 0; j < n; j++) {
                    if (s[j] == 0)
                        continue;
                    const double *v = j < r->P ? r->pv + off + (j * r->Hkv + g) * D
                                               : r->v + ((b * r->T + j - r->P) * r->Hkv + g) * D;
                    for (int64_t e = 0; e < D; e++)
                        out[e] += s[j] / sum * v[e];
                }
            }
    free(s);
}

static double ref_loss(void *arg)
{
    const struct ref *r = arg;
    int64_t n = r->B * r->T * r->H * r->D;
    double *o = malloc((size_t)n * sizeof *o), L = 0;
    ref_forward(r, o);
    for (int64_t i = 0; i < n; i++)
        L += r->gout[i] * o[i];
    free(o);
    return L;
}

static void run(const struct ftk_backend *be, void *ctx, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                int64_t P, int64_t R, const int32_t *seg)
{
    int64_t nq = B * T * H * D, nk = B * T * Hkv * D, np = R * P * Hkv * D;
    struct ref r = {.B = B, .T = T, .H = H, .Hkv = Hkv, .D = D, .P = P, .R = R, .seg = seg,
                    .scale = 1.0 / sqrt((double)D)};
    float *fq = ops_rand(nq, -1, 1), *fk = ops_rand(nk, -1, 1), *fv = ops_rand(nk, -1, 1);
    float *fpk = ops_rand(np > 0 ? np : 1, -1, 1), *fpv = ops_rand(np > 0 ? np : 1, -1, 1), *fg = ops_rand(nq, -1, 1);
    r.q = ops_to_f64(fq, nq);
    r.k = ops_to_f64(fk, nk);
    r.v = ops_to_f64(fv, nk);
    r.pk = ops_to_f64(fpk, np);
    r.pv = ops_to_f64(fpv, np);
    r.gout = ops_to_f64(fg, nq);
    double *want = malloc((size_t)nq * sizeof *want);
    ref_forward(&r, want);

    float *o = ops_zeros(nq), *lse = ops_zeros(B * T * H);
    CHECK_OK(be->attention_forward(ctx, o, lse, fq, fk, fv, seg, B, T, H, Hkv, D, (float)r.scale));
    CHECK_OK(be->attention_prefix_forward(ctx, o, lse, fq, fpk, fpv, B * T, R, P, H, Hkv, D, (float)r.scale));
    CHECK_CLOSE("o", o, want, nq, 2e-6);

    float *dq = ops_zeros(nq), *dk = ops_zeros(nk), *dv = ops_zeros(nk), *dpk = ops_zeros(np), *dpv = ops_zeros(np);
    CHECK_OK(be->attention_backward(ctx, dq, dk, dv, fg, fq, fk, fv, o, lse, seg, B, T, H, Hkv, D, (float)r.scale));
    CHECK_OK(be->attention_prefix_backward(ctx, dq, dpk, dpv, fg, fq, fpk, fpv, o, lse, B * T, R, P, H, Hkv, D,
                                           (float)r.scale));
    struct { const char *name; double *x; float *got; int64_t n; } g[] = {
        {"dq", r.q, dq, nq}, {"dk", r.k, dk, nk}, {"dv", r.v, dv, nk}, {"dpk", r.pk, dpk, np}, {"dpv", r.pv, dpv, np}};
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
        if (!g[i].n)
            continue;
        double *fd = malloc((size_t)g[i].n * sizeof *fd);
        ops_fd_grad(ref_loss, &r, g[i].x, g[i].n, fd, 1e-5);
        CHECK_CLOSE(g[i].name, g[i].got, fd, g[i].n, 2e-5);
        free(fd);
    }
    free(fq); free(fk); free(fv); free(fpk); free(fpv); free(fg);
    free(r.q); free(r.k); free(r.v); free(r.pk); free(r.pv); free(r.gout); free(want);
    free(o); free(lse); free(dq); free(dk); free(dv); free(dpk); free(dpv);
}

int main(void)
{
    const struct ftk_backend *be;
    void *ctx = ops_ctx(&be, 2);
    ops_seed(77);
    TEST("prefix attention MHA, P3 (B1 T5 H2 D4)") run(be, ctx, 1, 5, 2, 2, 4, 3, 1, NULL);
    TEST("prefix attention GQA 4:2, P2, packed segments (B2 T6 D3)") {
        int32_t seg[12] = {1, 1, 2, 2, 2, 0, 1, 1, 1, 1, 3, 3};
        run(be, ctx, 2, 6, 4, 2, 3, 2, 1, seg);
    }
    TEST("prefix attention MQA 3:1, P1 (B2 T4 D5)") run(be, ctx, 2, 4, 3, 1, 5, 1, 1, NULL);
    TEST("prefix attention P0 leaves the causal result") run(be, ctx, 1, 4, 2, 2, 4, 0, 1, NULL);
    TEST("prefix attention, a prefix per row: GQA 4:2, P3 (B3 T4 D3)") run(be, ctx, 3, 4, 4, 2, 3, 3, 3, NULL);
    TEST("prefix attention, a prefix per row: MHA, P2, packed segments (B2 T6 D4)") {
        int32_t seg[12] = {1, 1, 1, 2, 2, 0, 1, 1, 1, 1, 1, 1};
        run(be, ctx, 2, 6, 2, 2, 4, 2, 2, seg);
    }
    TEST("prefix attention: bad shape is an error") {
        float x[4] = {0};
        CHECK_ERR(be->attention_prefix_forward(ctx, x, x, x, x, x, 1, 1, 1, 3, 2, 1, 1.0f), FTK_E_INVALID, "bad shape");
        CHECK_ERR(be->attention_prefix_forward(ctx, x, x, x, x, x, 3, 2, 1, 2, 2, 1, 1.0f), FTK_E_INVALID, "R=2");
    }
    be->destroy(ctx);
    return check_summary();
}
