/* tests/unit/test_plugin_diffprune.c: diff pruning (plugins/peft/diffprune.c; Guo, Rush, Kim
 * 2021) on the tiny llama of tests/fixtures/hf_tiny (F32, CPU backend):
 * - the hard-concrete formulas (Louizos et al. 2018) against numbers computed by hand;
 * - the plugin's gates at every site: z_hat in evaluation, the step's samples in training,
 *   and the sampled gates' frequencies against P(z != 0) and P(z = 1);
 * - one site by hand: y, dx, dw, dalpha and the group gate's dalpha;
 * - central differences of the loss against the plugin's backward (w, alpha, group alpha) and
 *   of the L0 penalty against before_update's gradient;
 * - training: the penalty lowers the expected L0; the magnitude projection (global top-k by
 *   hand, ties, fixed mask afterwards); save + load (dense and sparse) and merge give the same
 *   logits; reproducibility; bad options and bad adapter files. */
#include "check.h"
#include "ftk/trainer.h"
#include "plugin_check.h"
#include "../../plugins/peft/hard_concrete.h"

static struct ftk_st_model *fx;   /* the batch: tests/fixtures/peft_methods/llama/expected.safetensors */

#define TINY PC_TINY "llama"

static const struct hc_params HC_PAPER = {1.0, -1.5, 1.5};   /* the plugin's defaults */

static struct ftk_model *model_with(const struct ftk_kv *opts, uint64_t seed)
{
    return model_at(TINY, "diffprune", opts, NULL, seed);
}

static struct ftk_param *param_of(struct ftk_model *m, const struct ftk_site *s, const char *what)
{
    char n[300];
    snprintf(n, sizeof n, "base_model.model.%s.%s", s->module, what);
    return ftk_model_find_param(m, n);
}

/* A deterministic value in [lo, hi) from (a, b). */
static float val(uint64_t a, uint64_t b, double lo, double hi)
{
    return (float)(lo + (hi - lo) * hc_u(hc_mix(a * 7919 + 13), b));
}

/* w in [-wr, wr), alpha in [alo, ahi) at every site (group alphas too). */
static void randomize(struct ftk_model *m, double wr, double alo, double ahi, uint64_t salt)
{
    struct ftk_peft *p = ftk_model_peft(m);
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        struct ftk_param *w = param_of(m, s, "diff_w"), *a = param_of(m, s, "diff_alpha"), *g = param_of(m, s, "diff_alpha_group");
        for (int64_t j = 0; w && j < w->numel; j++) {
            w->w[j] = val(salt + i, (uint64_t)j, -wr, wr);
            a->w[j] = val(salt + 1000 + i, (uint64_t)j, alo, ahi);
        }
        if (g)
            g->w[0] = val(salt + 2000 + i, 0, alo, ahi);
    }
}

/* The logits of the batch and their count. */
static float *fx_logits(struct ftk_model *m)
{
    struct ftk_batch_view b = batch_of(fx);
    return logits_of(m, &b);
}

static int64_t n_logits(struct ftk_model *m)
{
    struct ftk_batch_view b = batch_of(fx);
    return b.B * b.T * ftk_model_get_config(m)->V;
}

/* Expected L0 of the model's gates: sum over sites of P(z_g != 0) sum_i P(z_i != 0). */
static double expected_l0(struct ftk_model *m, const struct hc_params *hc)
{
    struct ftk_peft *p = ftk_model_peft(m);
    double e = 0;
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        struct ftk_param *a = param_of(m, s, "diff_alpha"), *g = param_of(m, s, "diff_alpha_group");
        double sum = 0;
        for (int64_t j = 0; a && j < a->numel; j++)
            sum += 1.0 / (1.0 + exp(-(a->w[j] - hc->beta * log(-hc->gamma / hc->zeta))));
        e += sum * (g ? 1.0 / (1.0 + exp(-(g->w[0] - hc->beta * log(-hc->gamma / hc->zeta)))) : 1.0);
    }
    return e;
}

static char *tmpdir(void)
{
    static char d[64];
    snprintf(d, sizeof d, "/tmp/ftk_diffprune_XXXXXX");
    return mkdtemp(d) ? d : NULL;
}

/* ---- the formulas ------------------------------------------------------------------------- */

static void check_formulas(void)
{
    /* By hand (f64): a = 0.5, u = 0.6, beta 1, (gamma, zeta) = (-1.5, 1.5): logit(0.6) = ln 1.5 =
     * 0.405465; s = sigmoid(0.905465) = 0.712071; s_bar = 3 s - 1.5 = 0.636214 = z;
     * dz/da = 3 s (1 - s) = 0.615077. a = -0.5: s = 0.476384, s_bar = -0.070848 -> z = 0.
     * a = 1, u = 0.7: s = 0.863810, s_bar = 1.091429 -> z = 1. Louizos' (beta 2/3, gamma -0.1,
     * zeta 1.1): a = 2, u = 0.3: s = 0.849291, z = 0.919150, dz = 0.230392; a = -1, u = 0.45:
     * z = 0.070074, dz = 0.218955. */
    static const struct { double a, u; int louizos; double z, dz; } c[] = {
        {0.5, 0.6, 0, 0.636213863896, 0.615077306462}, {-0.5, 0.6, 0, 0.0, 0.0}, {1.0, 0.7, 0, 1.0, 0.0},
        {2.0, 0.3, 1, 0.919149530352, 0.230392089007}, {-1.0, 0.45, 1, 0.070074372856, 0.218954943906}};
    const struct hc_params lz = {2.0 / 3.0, -0.1, 1.1};
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        double dz, z = hc_z(c[i].a, c[i].u, c[i].louizos ? &lz : &HC_PAPER, &dz);
        CHECK_NEAR(z, c[i].z, 1e-10);
        CHECK_NEAR(dz, c[i].dz, 1e-10);
        /* dz/da against a central difference of z where z is inside (0,1) */
        double zp, zm, t;
        zp = hc_z(c[i].a + 1e-6, c[i].u, c[i].louizos ? &lz : &HC_PAPER, &t);
        zm = hc_z(c[i].a - 1e-6, c[i].u, c[i].louizos ? &lz : &HC_PAPER, &t);
        CHECK_NEAR((zp - zm) / 2e-6, dz, 1e-6);
    }
    /* z_hat = clamp(sigmoid(a) (zeta - gamma) + gamma): a = 0.2 -> 0.549834 * 3 - 1.5 = 0.149502;
     * Louizos a = 2 -> 0.880797 * 1.2 - 0.1 = 0.956956; a = -2 -> 0. Expected L0 =
     * sigmoid(a - beta ln(-gamma/zeta)): paper's stretch: ln 1 = 0, so sigmoid(0.2) = 0.549834;
     * Louizos a = 0: sigmoid(-(2/3) ln(1/11)) = sigmoid(1.598573) = 0.831822; a = 2: 0.973367. */
    CHECK_NEAR(hc_z_hat(0.2, &HC_PAPER), 0.149501991937, 1e-10);
    CHECK_NEAR(hc_z_hat(2.0, &lz), 0.956956493573, 1e-10);
    CHECK_NEAR(hc_z_hat(-2.0, &HC_PAPER), 0.0, 1e-12);
    CHECK_NEAR(hc_z_hat(9.0, &HC_PAPER), 1.0, 1e-12);
    CHECK_NEAR(hc_l0(0.2, &HC_PAPER), 0.549833997312, 1e-10);
    CHECK_NEAR(hc_l0(0.0, &lz), 0.831822183992, 1e-10);
    CHECK_NEAR(hc_l0(2.0, &lz), 0.973366655261, 1e-10);
    CHECK_NEAR(hc_l0(-2.0, &HC_PAPER), 0.119202922022, 1e-10);
    /* u stays inside (0,1) and the key depends on every input */
    for (uint64_t j = 0; j < 1000; j++) {
        double u = hc_u(hc_key(3, 1, 0, 2), j);
        CHECK(u > 0 && u < 1);
    }
    CHECK(hc_key(1, 0, 0, 0) != hc_key(2, 0, 0, 0));
    CHECK(hc_key(1, 0, 0, 0) != hc_key(1, 1, 0, 0));
    CHECK(hc_key(1, 0, 0, 0) != hc_key(1, 0, 1, 0));
    CHECK(hc_key(1, 0, 0, 0) != hc_key(1, 0, 0, 1));
}

/* ---- the gates of every site ----------------------------------------------------------------- */

/* delta (O,I) of a site as the plugin applies it, read back through linear_forward with
 * x = the identity (N = I rows): y[n,o] = delta[o,n]. */
static void delta_of(struct ftk_peft *p, const struct ftk_site *s, int train, float *delta)
{
    int64_t I = s->in, O = s->out;
    float *x = calloc((size_t)(I * I), sizeof *x), *y = calloc((size_t)(I * O), sizeof *y);
    for (int64_t i = 0; i < I; i++)
        x[i * I + i] = 1;
    CHECK_OK(ftk_peft_get_plugin(p)->linear_forward(p, s, y, x, I, train));
    for (int64_t n = 0; n < I; n++)
        for (int64_t o = 0; o < O; o++)
            delta[o * I + n] = y[n * O + o];
    free(x);
    free(y);
}

static void check_gates(void)
{
    const uint64_t seed = 42;
    const int64_t step = 3;
    struct ftk_model *m = model_with((const struct ftk_kv[]){{NULL, NULL}}, seed);
    if (!m)
        return;
    struct ftk_peft *p = ftk_model_peft(m);
    CHECK_INT(ftk_peft_n_sites(p), 15);   /* 7 per layer + lm_head; diffprune on the 14 linears */
    CHECK_INT(ftk_model_n_trainable(m), 28);
    ftk_model_set_step(m, step);
    randomize(m, 1.0, -3.0, 3.0, 7);
    double worst_hat = 0, worst_train = 0;
    int64_t n_sites = 0, n_inside = 0, n_clamped = 0;
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        struct ftk_param *w = param_of(m, s, "diff_w"), *a = param_of(m, s, "diff_alpha");
        if (!w) {
            CHECK_INT(s->kind, FTK_LIN_LM_HEAD);
            continue;
        }
        n_sites++;
        CHECK(w->decay == 1 && a->decay == 0);
        CHECK_NEAR(a->lr_scale, 1e4, 1e-6);   /* alpha_lr_ratio: the paper's 0.1 for alpha at lr 1e-5 */
        float *got = malloc((size_t)w->numel * sizeof *got), *want = malloc((size_t)w->numel * sizeof *want);
        delta_of(p, s, 0, got);
        for (int64_t j = 0; j < w->numel; j++)
            want[j] = (float)(hc_z_hat(a->w[j], &HC_PAPER) * w->w[j]);
        worst_hat = fmax(worst_hat, rel_err(got, want, w->numel));
        delta_of(p, s, 1, got);
        uint64_t key = hc_key(seed, step, s->layer, (int)s->kind);
        for (int64_t j = 0; j < w->numel; j++) {
            double dz, z = hc_z(a->w[j], hc_u(key, (uint64_t)j), &HC_PAPER, &dz);
            want[j] = (float)(z * w->w[j]);
            n_inside += z > 0 && z < 1;
            n_clamped += z == 0 || z == 1;
        }
        worst_train = fmax(worst_train, rel_err(got, want, w->numel));
        free(got);
        free(want);
    }
    printf("  %lld sites: evaluation delta = z_hat w, rel err %.1e; training delta = z(u(seed, step, site, j)) w, rel err %.1e "
           "(%lld gates inside (0,1), %lld clamped)\n", (long long)n_sites, worst_hat, worst_train, (long long)n_inside,
           (long long)n_clamped);
    CHECK_INT(n_sites, 14);
    CHECK(worst_hat <= 1e-6);
    CHECK(worst_train <= 1e-6);
    CHECK(n_inside > 100 && n_clamped > 100);

    /* frequencies of the sampled gates at alpha = 0.3 over 5 steps and all 3840 gates:
     * P(z != 0) = sigmoid(a - beta ln(-gamma/zeta)) = sigmoid(0.3) = 0.574443;
     * P(z = 1) = P(s_bar >= 1) = sigmoid(a - beta ln((1 - gamma)/(zeta - 1))) = sigmoid(0.3 - ln 5) = 0.212687 */
    int64_t n = 0, nz = 0, n1 = 0;
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        struct ftk_param *w = param_of(m, s, "diff_w"), *a = param_of(m, s, "diff_alpha");
        for (int64_t j = 0; w && j < w->numel; j++) {
            w->w[j] = 1;
            a->w[j] = 0.3f;
        }
    }
    for (int64_t st = 0; st < 5; st++) {
        ftk_model_set_step(m, st);
        for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
            const struct ftk_site *s = ftk_peft_site(p, i);
            if (s->kind == FTK_LIN_LM_HEAD)
                continue;
            float *d = malloc((size_t)(s->in * s->out) * sizeof *d);
            delta_of(p, s, 1, d);
            for (int64_t j = 0; j < s->in * s->out; j++) {
                n++;
                nz += d[j] != 0;
                n1 += d[j] == 1;
            }
            free(d);
        }
    }
    double pz = 1.0 / (1.0 + exp(-0.3)), p1 = 1.0 / (1.0 + exp(-(0.3 - log(5.0))));
    double fz = (double)nz / (double)n, f1 = (double)n1 / (double)n;
    printf("  %lld sampled gates at alpha 0.3: P(z != 0) %.4f (expected L0 %.4f), P(z = 1) %.4f (%.4f)\n", (long long)n, fz, pz, f1,
           p1);
    CHECK_INT(n, 5 * 3840);
    CHECK(fabs(fz - pz) <= 4 * sqrt(pz * (1 - pz) / (double)n));
    CHECK(fabs(f1 - p1) <= 4 * sqrt(p1 * (1 - p1) / (double)n));
    ftk_model_free(m);
}

/* ---- one site by hand ---------------------------------------------------------------------- */

static void check_site(int structured)
{
    const uint64_t seed = 5;
    const int64_t step = 1, N = 3;
    const struct ftk_kv o[] = {{"target_modules", "q_proj,down_proj"}, {"structured", structured ? "true" : "false"}, {NULL, NULL}};
    struct ftk_model *m = model_with(o, seed);
    if (!m)
        return;
    struct ftk_peft *p = ftk_model_peft(m);
    const struct ftk_peft_plugin *pl = ftk_peft_get_plugin(p);
    ftk_model_set_step(m, step);
    randomize(m, 0.5, -2.0, 3.0, 11);
    double worst = 0;
    for (size_t si = 0; si < ftk_peft_n_sites(p); si++) {
        const struct ftk_site *s = ftk_peft_site(p, si);
        if (s->layer != 0 || (s->kind != FTK_LIN_Q && s->kind != FTK_LIN_DOWN))
            continue;
        struct ftk_param *w = param_of(m, s, "diff_w"), *a = param_of(m, s, "diff_alpha"), *g = param_of(m, s, "diff_alpha_group");
        CHECK((g != NULL) == structured);
        int64_t I = s->in, O = s->out;
        uint64_t key = hc_key(seed, step, s->layer, (int)s->kind);
        if (g) {   /* put the group gate inside (0,1): s = 0.6 for its u */
            double u = hc_u(key, (uint64_t)(O * I));
            g->w[0] = (float)(log(0.6 / 0.4) - log(u / (1 - u)));
        }
        float *x = malloc((size_t)(N * I) * sizeof *x), *y = malloc((size_t)(N * O) * sizeof *y), *yw = malloc((size_t)(N * O) * sizeof *yw),
              *dy = malloc((size_t)(N * O) * sizeof *dy), *dx = malloc((size_t)(N * I) * sizeof *dx),
              *dxw = malloc((size_t)(N * I) * sizeof *dxw), *gw = malloc((size_t)(O * I) * sizeof *gw),
              *ga = malloc((size_t)(O * I) * sizeof *ga);
        for (int64_t j = 0; j < N * I; j++) {
            x[j] = (float)((j * 7) % 5 - 2) / 2;
            dx[j] = dxw[j] = 0.25f;   /* backward accumulates */
        }
        for (int64_t j = 0; j < N * O; j++) {
            dy[j] = (float)((j * 3) % 4 - 1);
            y[j] = (float)(j % 3);
        }
        double dzg = 0, zg = 1, gsum = 0;
        if (g) {
            zg = hc_z(g->w[0], hc_u(key, (uint64_t)(O * I)), &HC_PAPER, &dzg);
            CHECK(zg > 0 && zg < 1);
        }
        for (int64_t n = 0; n < N; n++)
            for (int64_t oo = 0; oo < O; oo++) {
                double acc = y[n * O + oo];
                for (int64_t i = 0; i < I; i++) {
                    double dz, z = hc_z(a->w[oo * I + i], hc_u(key, (uint64_t)(oo * I + i)), &HC_PAPER, &dz);
                    acc += (double)x[n * I + i] * z * zg * w->w[oo * I + i];
                }
                yw[n * O + oo] = (float)acc;
            }
        for (int64_t oo = 0; oo < O; oo++)
            for (int64_t i = 0; i < I; i++) {
                double dz, z = hc_z(a->w[oo * I + i], hc_u(key, (uint64_t)(oo * I + i)), &HC_PAPER, &dz), G = 0;
                for (int64_t n = 0; n < N; n++) {
                    G += (double)dy[n * O + oo] * x[n * I + i];
                    dxw[n * I + i] += (float)((double)dy[n * O + oo] * z * zg * w->w[oo * I + i]);
                }
                gw[oo * I + i] = (float)(G * z * zg);
                ga[oo * I + i] = (float)(G * w->w[oo * I + i] * zg * dz);
                gsum += G * w->w[oo * I + i] * z;
            }
        CHECK_OK(ftk_model_zero_grad(m));
        CHECK_OK(pl->linear_forward(p, s, y, x, N, 1));
        CHECK_OK(pl->linear_backward(p, s, dx, dy, x, N));
        double e1 = rel_err(y, yw, N * O), e2 = rel_err(dx, dxw, N * I), e3 = rel_err(w->g, gw, O * I), e4 = rel_err(a->g, ga, O * I);
        double e5 = g ? fabs(g->g[0] - gsum * dzg) / fmax(1e-12, fabs(gsum * dzg)) : 0;
        printf("  %s%s: y %.1e, dx %.1e, dw %.1e, dalpha %.1e%s", s->module, structured ? " (structured)" : "", e1, e2, e3, e4,
               g ? "" : "\n");
        if (g)
            printf(", dalpha_group %.1e (z_g %.3f)\n", e5, zg);
        worst = fmax(worst, fmax(fmax(e1, e2), fmax(fmax(e3, e4), e5)));
        free(x), free(y), free(yw), free(dy), free(dx), free(dxw), free(gw), free(ga);
    }
    CHECK(worst <= 2e-6);
    ftk_model_free(m);
}

/* ---- central differences ---------------------------------------------------------------------- */

/* The loss (train-mode forwards: the step's gates, fixed u) against the backward, at `count`
 * entries of each parameter named `what`; alpha entries whose gate is within `margin` of a
 * clamp (where the loss has a kink) are moved to the next entry. */
static void fd_gates(struct ftk_model *m, uint64_t seed, int64_t step, const char *what, int count, double eps, double *worst_out,
                     int *picked_out, int *zero_out)
{
    struct ftk_batch_view b = batch_of(fx);
    ftk_model_set_step(m, step);
    step_grads(m, &b);
    struct ftk_peft *p = ftk_model_peft(m);
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        struct ftk_param *q = param_of(m, s, what), *a = param_of(m, s, "diff_alpha");
        if (!q)
            continue;
        uint64_t key = hc_key(seed, step, s->layer, (int)s->kind);
        int is_alpha = !strcmp(what, "diff_alpha"), is_group = !strcmp(what, "diff_alpha_group");
        int64_t j = (int64_t)((i * 131) % (size_t)q->numel);
        for (int k = 0; k < count; k++, j = (j + 37) % q->numel) {
            if (is_alpha || is_group) {   /* skip kinks; keep one clamped gate per site (gradient 0) */
                double a0 = is_alpha ? a->w[j] : q->w[0], u = hc_u(key, is_alpha ? (uint64_t)j : (uint64_t)(s->in * s->out));
                for (int tries = 0; tries < q->numel; tries++) {
                    double sv = 1.0 / (1.0 + exp(-(log(u) - log1p(-u) + a0))), sb = 3 * sv - 1.5;
                    int clamped = sb < -0.05 || sb > 1.05, inside = sb > 0.05 && sb < 0.95;
                    if ((k == 0 && clamped && !is_group) || (k > 0 && inside) || is_group)
                        break;
                    j = (j + 1) % q->numel;
                    a0 = a->w[j];
                    u = hc_u(key, (uint64_t)j);
                }
            }
            double lp, lm;
            loss_pm(m, &b, q, j, eps, 1, &lp, &lm);
            double fd = (lp - lm) / (2 * eps), g = q->g[j];
            double d = fabs(fd - g) / fmax(1e-2, fabs(g));
            if (!(d <= *worst_out)) *worst_out = d;
            if (!(fabs(fd - g) <= 1e-4 + 1e-2 * fabs(g)))
                printf("  %s %s[%lld]: fd %.6g, backward %.6g\n", s->module, what, (long long)j, fd, g);
            CHECK(fabs(fd - g) <= 1e-4 + 1e-2 * fabs(g));
            (*picked_out)++;
            *zero_out += g == 0;
            if (is_group)
                break;
        }
    }
}

static void check_fd(int structured)
{
    const uint64_t seed = 9;
    const struct ftk_kv o[] = {{"structured", structured ? "true" : "false"}, {NULL, NULL}};
    struct ftk_model *m = model_with(o, seed);
    if (!m)
        return;
    randomize(m, 0.3, -1.0, 2.5, 21);
    struct ftk_peft *p = ftk_model_peft(m);
    if (structured)   /* group gates inside (0,1) at step 2 */
        for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
            const struct ftk_site *s = ftk_peft_site(p, i);
            struct ftk_param *g = param_of(m, s, "diff_alpha_group");
            if (!g)
                continue;
            double u = hc_u(hc_key(seed, 2, s->layer, (int)s->kind), (uint64_t)(s->in * s->out));
            g->w[0] = (float)(log(0.7 / 0.3) - log(u / (1 - u)));
        }
    static const char *const what[] = {"diff_w", "diff_alpha", "diff_alpha_group"};
    for (int k = 0; k < (structured ? 3 : 2); k++) {
        double worst = 0;
        int picked = 0, zero = 0;
        fd_gates(m, seed, 2, what[k], 3, k == 0 ? 1e-2 : 3e-3, &worst, &picked, &zero);
        printf("  %s%s: %d entries (%d with gradient 0: clamped gates), worst |fd - g| / max(|g|, 1e-2) = %.2e\n", what[k],
               structured ? " (structured)" : "", picked, zero, worst);
        CHECK(picked >= 14);
        if (k == 1)
            CHECK(zero >= 10);   /* a clamped gate per site: dz/da = 0 and the loss is flat there */
    }
    ftk_model_free(m);
}

/* before_update: lambda * sum P(z != 0) [* P(z_g != 0)] into the loss, its gradient into alpha. */
static void check_penalty(int structured)
{
    const struct ftk_kv o[] = {{"sparsity_pen", "0.01"},     {"concrete_lower", "-0.1"},
                               {"concrete_upper", "1.1"},    {"temperature", "0.6666666666666666"},
                               {"target_modules", "v_proj"}, {"structured", structured ? "true" : "false"},
                               {NULL, NULL}};
    struct ftk_model *m = model_with(o, 1);
    if (!m)
        return;
    const struct hc_params lz = {0.6666666666666666, -0.1, 1.1};
    randomize(m, 0.1, -3.0, 3.0, 33);
    struct ftk_peft *p = ftk_model_peft(m);
    const struct ftk_peft_plugin *pl = ftk_peft_get_plugin(p);
    CHECK_OK(ftk_model_zero_grad(m));
    double L = 0.25;
    CHECK_OK(pl->before_update(p, &L));
    double want = 0.25 + 0.01 * expected_l0(m, &lz);
    printf("  penalty%s: %.9f (by hand %.9f)\n", structured ? " (structured)" : "", L - 0.25, want - 0.25);
    CHECK_NEAR(L, want, 1e-9);
    double worst = 0;
    int picked = 0;
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        struct ftk_param *q[2] = {param_of(m, s, "diff_alpha"), param_of(m, s, "diff_alpha_group")};
        for (int k = 0; k < 2; k++)
            for (int64_t j = 0; q[k] && j < q[k]->numel; j += 17) {
                float a0 = q[k]->w[j];
                double e = 1e-3, lp, lm;
                q[k]->w[j] = a0 + (float)e;
                lp = 0.01 * expected_l0(m, &lz);
                q[k]->w[j] = a0 - (float)e;
                lm = 0.01 * expected_l0(m, &lz);
                q[k]->w[j] = a0;
                double fd = (lp - lm) / (2 * e);
                worst = fmax(worst, fabs(fd - q[k]->g[j]) / fmax(1e-6, fabs(fd)));
                picked++;
            }
    }
    printf("  penalty gradient%s: %d entries against central differences, worst rel err %.1e\n", structured ? " (structured)" : "",
           picked, worst);
    CHECK(worst <= 1e-3);
    ftk_model_free(m);
}

/* ---- training -------------------------------------------------------------------------------- */

/* A trainer of AdamW steps (lr 1e-3, alpha at 1e-3 * alpha_lr_ratio, clipping at 1) */
static struct ftk_trainer *trainer_of(struct ftk_model *m, int total)
{
    struct ftk_train_config tc = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .max_grad_norm = 1.0,
                                  .grad_accum = 1, .total_steps = total, .schedule = FTK_SCHED_CONSTANT};
    struct ftk_trainer *t = NULL;
    CHECK_OK(ftk_trainer_create(m, loss, &tc, &t));
    return t;
}

/* `steps` optimizer steps on the fixture batch; their losses into losses[] */
static void run_steps(struct ftk_trainer *t, int steps, double *losses)
{
    struct ftk_message msg;
    batch_message(fx, &msg);
    for (int i = 0; t && i < steps; i++) {
        int stepped = 0;
        struct ftk_step_result r;
        CHECK_OK(ftk_trainer_feed(t, &msg, &stepped, &r));
        CHECK_INT(stepped, 1);
        losses[i] = r.loss;
    }
    ftk_message_free(&msg);
}

static void train(struct ftk_model *m, int steps, double *losses)
{
    struct ftk_trainer *t = trainer_of(m, steps);
    run_steps(t, steps, losses);
    ftk_trainer_free(t);
}

static void check_training(void)
{
    enum { STEPS = 12 };
    double lp[STEPS], l0[STEPS];
    const struct ftk_kv with_pen[] = {{"sparsity_pen", "1e-3"}, {"alpha_lr_ratio", "100"}, {NULL, NULL}};
    const struct ftk_kv no_pen[] = {{"sparsity_pen", "0"}, {"alpha_lr_ratio", "100"}, {NULL, NULL}};
    struct ftk_model *a = model_with(with_pen, 3), *b = model_with(no_pen, 3);
    if (!a || !b) {
        ftk_model_free(a);
        ftk_model_free(b);
        return;
    }
    double e0 = expected_l0(a, &HC_PAPER);
    train(a, STEPS, lp);
    train(b, STEPS, l0);
    double ea = expected_l0(a, &HC_PAPER), eb = expected_l0(b, &HC_PAPER);
    /* step 1: w = 0, so both models are the base model; the losses differ by the penalty */
    double pen0 = 1e-3 * 3840 / (1 + exp(-5.0));
    printf("  step 1 loss %.7f with the penalty, %.7f without: difference %.7f (lambda E[L0] = %.7f)\n", lp[0], l0[0], lp[0] - l0[0],
           pen0);
    CHECK_NEAR(lp[0] - l0[0], pen0, 1e-6);
    printf("  expected L0 (of 3840 gates): %.2f at init, after %d steps %.2f with sparsity_pen 1e-3, %.2f with 0; task loss %.5f -> %.5f\n",
           e0, STEPS, ea, eb, l0[0], l0[STEPS - 1]);
    CHECK(ea < e0 - 10);
    CHECK(ea < eb - 10);
    CHECK(l0[STEPS - 1] < l0[0]);
    ftk_model_free(a);
    ftk_model_free(b);
}

/* ---- the magnitude projection ------------------------------------------------------------- */

struct cand { double mag; int site; int64_t j; };
static int by_mag(const void *x, const void *y)
{
    const struct cand *a = x, *b = y;
    if (a->mag != b->mag)
        return a->mag < b->mag ? 1 : -1;
    if (a->site != b->site)
        return a->site - b->site;
    return a->j < b->j ? -1 : a->j > b->j;
}

/* The nonzero deterministic diffs (float, as the plugin rounds them) of every site, sorted by
 * magnitude, ties by site then index: the projection keeps the first k. *n_out their count. */
static struct cand *candidates(struct ftk_model *m, int *n_out)
{
    struct ftk_peft *p = ftk_model_peft(m);
    struct cand *c = malloc(3840 * sizeof *c);
    int n = 0, site = 0;
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        struct ftk_param *w = param_of(m, s, "diff_w"), *a = param_of(m, s, "diff_alpha"), *g = param_of(m, s, "diff_alpha_group");
        if (!w)
            continue;
        double zg = g ? hc_z_hat(g->w[0], &HC_PAPER) : 1;
        for (int64_t j = 0; j < w->numel; j++) {
            float d = (float)(hc_z_hat(a->w[j], &HC_PAPER) * zg * w->w[j]);
            if (d != 0)
                c[n++] = (struct cand){fabsf(d), site, j};
        }
        site++;
    }
    qsort(c, (size_t)n, sizeof *c, by_mag);
    *n_out = n;
    return c;
}

/* After the projection: entries kept (w != 0) and how many differ from the first k of c. */
static int topk_mismatch(struct ftk_model *m, const struct cand *c, int k, int *kept)
{
    struct ftk_peft *p = ftk_model_peft(m);
    int wrong = 0, site = 0;
    *kept = 0;
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        struct ftk_param *w = param_of(m, ftk_peft_site(p, i), "diff_w");
        if (!w)
            continue;
        char *want = calloc((size_t)w->numel, 1);
        for (int t = 0; t < k; t++)
            if (c[t].site == site)
                want[c[t].j] = 1;
        for (int64_t j = 0; j < w->numel; j++) {
            *kept += w->w[j] != 0;
            wrong += want[j] != (w->w[j] != 0);
        }
        free(want);
        site++;
    }
    return wrong;
}

static void check_projection(void)
{
    const struct ftk_kv o[] = {{"target_modules", "q_proj,v_proj"}, {"target_sparsity", "0.05"}, {"projection_step", "4"}, {NULL, NULL}};
    struct ftk_model *m = model_with(o, 2);
    if (!m)
        return;
    struct ftk_peft *p = ftk_model_peft(m);
    const struct ftk_peft_plugin *pl = ftk_peft_get_plugin(p);
    /* w in multiples of 1/64 (many ties), alpha 5 (z_hat = 1) except every 7th at -5 (z_hat = 0:
     * a large w there must not be kept) */
    int n = 0, site = 0;
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        struct ftk_param *w = param_of(m, s, "diff_w"), *a = param_of(m, s, "diff_alpha");
        if (!w)
            continue;
        for (int64_t j = 0; j < w->numel; j++) {
            w->w[j] = (float)((int)((j * 37 + (int64_t)i * 11) % 41) - 20) / 64;
            a->w[j] = j % 7 == 3 ? -5.0f : 5.0f;
        }
        site++;
    }
    CHECK_INT(site, 4);
    struct cand *c = candidates(m, &n);
    int k = (int)floor(0.05 * 768 + 0.5);   /* 38 */
    float *before = fx_logits(m);
    CHECK_OK(pl->after_update(p, 3));       /* not the projection step: nothing happens */
    float *same = fx_logits(m);
    CHECK(rel_err(same, before, n_logits(m)) == 0);
    CHECK_OK(pl->after_update(p, 4));
    int kept, wrong = topk_mismatch(m, c, k, &kept);
    printf("  top-%d of %d nonzero diffs (768 entries, the %d-th and %d-th magnitudes %.6f, %.6f: a tie at the threshold): kept %d, "
           "%d differ from the sort\n", k, n, k, k + 1, c[k - 1].mag, c[k].mag, kept, wrong);
    CHECK(c[k - 1].mag == c[k].mag);   /* the case exercises the tie rule */
    CHECK_INT(kept, k);
    CHECK_INT(wrong, 0);
    /* the fixed mask: delta = w on the kept entries in training and evaluation, no penalty,
     * no gradient outside the mask, alpha untouched */
    struct ftk_batch_view b = batch_of(fx);
    double le = loss_of_mode(m, &b, 0), lt = loss_of_mode(m, &b, 1);
    CHECK(le == lt);
    double L = 0;
    CHECK_OK(ftk_model_zero_grad(m));
    CHECK_OK(pl->before_update(p, &L));
    CHECK(L == 0);
    step_grads(m, &b);
    int g_out = 0, g_in = 0, g_alpha = 0;
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        struct ftk_param *w = param_of(m, s, "diff_w"), *a = param_of(m, s, "diff_alpha");
        for (int64_t j = 0; w && j < w->numel; j++) {
            g_out += w->w[j] == 0 && w->g[j] != 0;
            g_in += w->w[j] != 0 && w->g[j] != 0;
            g_alpha += a->g[j] != 0;
        }
    }
    printf("  after the projection: loss %.7f (evaluation = training), gradients: %d kept entries nonzero, %d outside, alpha %d\n", le,
           g_in, g_out, g_alpha);
    CHECK(g_in > 0);
    CHECK_INT(g_out, 0);
    CHECK_INT(g_alpha, 0);
    free(before);
    free(same);
    free(c);
    ftk_model_free(m);

    /* target_sparsity 1 keeps every nonzero diff and nothing else */
    const struct ftk_kv all[] = {{"target_modules", "k_proj"}, {"target_sparsity", "1"}, {"projection_step", "0"}, {NULL, NULL}};
    m = model_with(all, 2);
    if (m) {
        randomize(m, 1.0, -3.0, 3.0, 5);
        p = ftk_model_peft(m);
        float *l1 = fx_logits(m);
        int nonzero = 0, kept1 = 0;
        for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
            const struct ftk_site *s = ftk_peft_site(p, i);
            struct ftk_param *w = param_of(m, s, "diff_w"), *a = param_of(m, s, "diff_alpha");
            for (int64_t j = 0; w && j < w->numel; j++)
                nonzero += hc_z_hat(a->w[j], &HC_PAPER) * w->w[j] != 0;
        }
        CHECK_OK(ftk_peft_get_plugin(p)->after_update(p, 0));
        for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
            struct ftk_param *w = param_of(m, ftk_peft_site(p, i), "diff_w");
            for (int64_t j = 0; w && j < w->numel; j++)
                kept1 += w->w[j] != 0;
        }
        float *l2 = fx_logits(m);
        double e = rel_err(l2, l1, n_logits(m));
        printf("  target_sparsity 1: %d of 256 diffs nonzero, %d kept; logits unchanged (rel err %.1e)\n", nonzero, kept1, e);
        CHECK_INT(kept1, nonzero);
        CHECK(nonzero > 50 && nonzero < 256);
        CHECK(e <= 1e-6);
        free(l1);
        free(l2);
        ftk_model_free(m);
    }

    /* in a training run: projection after step 2's update (0-based), then the mask stays fixed
     * and w outside it stays 0 (AdamW's moments from before the projection would move it) */
    const struct ftk_kv run[] = {{"target_sparsity", "0.1"}, {"projection_step", "2"}, {"alpha_lr_ratio", "100"}, {NULL, NULL}};
    m = model_with(run, 4);
    struct ftk_trainer *t = m ? trainer_of(m, 6) : NULL;
    if (t) {
        double ls[6];
        run_steps(t, 3, ls);
        p = ftk_model_peft(m);
        int k3 = 0, off = 0;
        char *mask = calloc(3840, 1);
        for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
            struct ftk_param *w = param_of(m, ftk_peft_site(p, i), "diff_w");
            for (int64_t j = 0; w && j < w->numel; j++, off++) {
                mask[off] = w->w[j] != 0;
                k3 += mask[off];
            }
        }
        float *l3 = fx_logits(m);
        run_steps(t, 3, ls + 3);
        float *l6 = fx_logits(m);
        int outside = 0, inside = 0;
        off = 0;
        for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
            struct ftk_param *w = param_of(m, ftk_peft_site(p, i), "diff_w");
            for (int64_t j = 0; w && j < w->numel; j++, off++) {
                outside += !mask[off] && w->w[j] != 0;
                inside += mask[off] && w->w[j] != 0;
            }
        }
        double moved = rel_err(l6, l3, n_logits(m));
        printf("  training run: projected after step 3 to %d of 3840 entries (target 384); steps 4-6 train the %d kept entries "
               "(logits move by %.1e), %d entries outside the mask nonzero; loss %.5f -> %.5f -> %.5f\n", k3, inside, moved, outside,
               ls[0], ls[2], ls[5]);
        CHECK_INT(k3, 384);
        CHECK_INT(inside, 384);
        CHECK_INT(outside, 0);
        CHECK(moved > 1e-6);
        free(mask);
        free(l3);
        free(l6);
    }
    ftk_trainer_free(t);
    ftk_model_free(m);
}

/* ---- files and merging ---------------------------------------------------------------------- */

static int cfg_has(const char *dir, const char *text)
{
    char path[200], buf[8192];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, text) != NULL;
}

static void check_files(int structured, int projected)
{
    const struct ftk_kv o[] = {{"structured", structured ? "true" : "false"},
                               {projected ? "target_sparsity" : "alpha_init", projected ? "0.02" : "5"},
                               {projected ? "projection_step" : "temperature", projected ? "0" : "1"},
                               {NULL, NULL}};
    struct ftk_model *m = model_with(o, 6);
    if (!m)
        return;
    struct ftk_peft *p = ftk_model_peft(m);
    randomize(m, 0.2, -1.0, 2.0, 77);
    if (projected) {   /* random magnitudes: the select's second (low 16 bits) level decides */
        int n, kept;
        struct cand *c = candidates(m, &n);
        CHECK_OK(ftk_peft_get_plugin(p)->after_update(p, 0));
        int wrong = topk_mismatch(m, c, 77, &kept);
        printf("  projection of random diffs: top-77 of %d nonzero, kept %d, %d differ from the sort (77th, 78th: %.9g, %.9g)\n", n,
               kept, wrong, c[76].mag, c[77].mag);
        CHECK_INT(kept, 77);
        CHECK_INT(wrong, 0);
        free(c);
    }
    char *d = tmpdir(), dir[64];
    CHECK(d != NULL);
    if (!d)
        return;
    snprintf(dir, sizeof dir, "%s", d);
    CHECK_OK(ftk_peft_get_plugin(p)->save(p, dir, TINY));
    CHECK(cfg_has(dir, "\"peft_type\":\t\"DIFF_PRUNING\""));
    CHECK(cfg_has(dir, projected ? "\"projected\":\ttrue" : "\"projected\":\tfalse"));
    char path[128];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    struct ftk_st_model *st = NULL;
    CHECK_OK(ftk_st_file_open(path, &st));
    int64_t stored = 0;
    if (st) {
        CHECK_INT(ftk_st_model_count(st), projected ? 28 : (structured ? 42 : 28));
        const struct ftk_tensor *ti = ftk_st_model_find(st, "base_model.model.model.layers.1.mlp.up_proj.diff_indices"),
                                *tw = ftk_st_model_find(st, "base_model.model.model.layers.1.mlp.up_proj.diff_w");
        CHECK(projected ? (ti && ti->dtype == FTK_DTYPE_I32 && ti->ndim == 1) : (tw && tw->dtype == FTK_DTYPE_F32 && tw->ndim == 2));
        for (size_t i = 0; i < ftk_st_model_count(st); i++) {
            const char *nm;
            const struct ftk_tensor *t = ftk_st_model_at(st, i, &nm);
            if (!projected || strstr(nm, "diff_values"))
                stored += ftk_tensor_numel(t);
        }
        ftk_st_model_close(st);
    }
    /* loaded through adapter_config.json (peft_type DIFF_PRUNING -> diffprune) */
    struct ftk_model *r = NULL;
    CHECK_OK(ftk_model_load(TINY, be, ctx, &r));
    if (r) {
        CHECK_OK(ftk_model_load_adapter(r, dir, 0));
        struct ftk_batch_view b = batch_of(fx);
        double e = logits_vs(r, m, &b);
        int same = 1;
        for (size_t i = 0; i < ftk_model_n_trainable(m) && !projected; i++) {   /* the training state comes back exactly */
            struct ftk_param *q = ftk_model_trainable(m, i), *q2 = ftk_model_find_param(r, q->name);
            same &= q2 && !memcmp(q->w, q2->w, (size_t)q->numel * sizeof(float));
        }
        double em = merged_err(m, TINY, &b), em2 = merged_err(r, TINY, &b);
        printf("  %s%s: %lld numbers stored; loaded back, logits rel err %.1e%s; merged = unmerged: %.1e (loaded: %.1e)\n",
               projected ? "projected (sparse)" : "dense", structured ? ", structured" : "", (long long)stored, e,
               projected ? "" : ", w and alpha bit-identical", em, em2);
        CHECK(e == 0);
        CHECK(same);
        CHECK(em <= 1e-5);
        CHECK(em2 <= 1e-5);
        if (projected)
            CHECK_INT(stored, 77);   /* round(0.02 * 3840) */
        ftk_model_free(r);
    }
    rm_dir(dir);
    ftk_model_free(m);
}

/* ---- reproducibility -------------------------------------------------------------------------- */

static void check_repro(void)
{
    struct ftk_model *a = model_with((const struct ftk_kv[]){{NULL, NULL}}, 11), *b = model_with((const struct ftk_kv[]){{NULL, NULL}}, 11),
                     *c = model_with((const struct ftk_kv[]){{NULL, NULL}}, 12);
    if (a && b && c) {
        randomize(a, 0.5, -1.0, 2.0, 3);
        randomize(b, 0.5, -1.0, 2.0, 3);
        randomize(c, 0.5, -1.0, 2.0, 3);
        struct ftk_batch_view bt = batch_of(fx);
        ftk_model_set_step(a, 5);
        ftk_model_set_step(b, 5);
        ftk_model_set_step(c, 5);
        double la = loss_of_mode(a, &bt, 1), lb = loss_of_mode(b, &bt, 1), lc = loss_of_mode(c, &bt, 1);
        ftk_model_set_step(b, 6);
        double lb6 = loss_of_mode(b, &bt, 1);
        printf("  training loss at step 5: seed 11 %.9f twice %.9f, seed 12 %.9f; seed 11 at step 6 %.9f\n", la, lb, lc, lb6);
        CHECK(la == lb);
        CHECK(la != lc);
        CHECK(la != lb6);
    }
    ftk_model_free(a);
    ftk_model_free(b);
    ftk_model_free(c);
}

/* ---- errors ------------------------------------------------------------------------------------ */

static void check_errors(void)
{
    const struct bad_option bad[] = {
        {"diffprune", {{"sparsity_penalty", "1e-7"}}, FTK_E_INVALID, "unknown option \"sparsity_penalty\""},
        {"diffprune", {{"peft_type", "LORA"}}, FTK_E_INVALID, "peft_type LORA given to the diffprune plugin"},
        {"diffprune", {{"sparsity_pen", "-1"}}, FTK_E_INVALID, "sparsity_pen=-1"},
        {"diffprune", {{"sparsity_pen", "lots"}}, FTK_E_INVALID, "sparsity_pen=lots: not a number"},
        {"diffprune", {{"concrete_lower", "0.1"}}, FTK_E_INVALID, "concrete_lower=0.1 must be < 0"},
        {"diffprune", {{"concrete_upper", "1"}}, FTK_E_INVALID, "concrete_upper=1 must be > 1"},
        {"diffprune", {{"temperature", "0"}}, FTK_E_INVALID, "temperature=0"},
        {"diffprune", {{"alpha_lr_ratio", "0"}}, FTK_E_INVALID, "alpha_lr_ratio=0"},
        {"diffprune", {{"structured", "maybe"}}, FTK_E_INVALID, "structured"},
        {"diffprune", {{"target_sparsity", "1.5"}, {"projection_step", "3"}}, FTK_E_INVALID, "target_sparsity=1.5 must be in (0, 1]"},
        {"diffprune", {{"target_sparsity", "0"}, {"projection_step", "3"}}, FTK_E_INVALID, "target_sparsity=0 must be in (0, 1]"},
        {"diffprune", {{"target_sparsity", "0.005"}}, FTK_E_INVALID, "target_sparsity needs projection_step"},
        {"diffprune", {{"projection_step", "3"}}, FTK_E_INVALID, "projection_step needs target_sparsity"},
        {"diffprune", {{"target_sparsity", "0.1"}, {"projection_step", "-2"}}, FTK_E_INVALID, "projection_step=-2"},
        {"diffprune", {{"target_modules", "lm_head"}}, FTK_E_UNSUPPORTED, "lm_head"},
        {"diffprune", {{"target_modules", "qproj"}}, FTK_E_INVALID, "target_modules=qproj matches no linear"},
    };
    check_bad_options(bad, sizeof bad / sizeof *bad);

    /* bad adapter files: a sparse diff whose indices do not increase; a dense adapter under
     * structured=true (the group gates missing); projected=true over dense tensors */
    struct ftk_model *m = model_with((const struct ftk_kv[]){{"target_modules", "q_proj"}, {"target_sparsity", "0.5"},
                                                             {"projection_step", "0"}, {NULL, NULL}}, 1);
    char *d = tmpdir(), dir[64];
    if (!m || !d)
        return;
    snprintf(dir, sizeof dir, "%s", d);
    struct ftk_peft *p = ftk_model_peft(m);
    randomize(m, 1.0, 4.0, 5.0, 8);
    CHECK_OK(ftk_peft_get_plugin(p)->after_update(p, 0));
    CHECK_OK(ftk_peft_get_plugin(p)->save(p, dir, TINY));
    char path[128];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    struct ftk_st_model *st = NULL;
    CHECK_OK(ftk_st_file_open(path, &st));
    struct ftk_message msg;
    ftk_message_init(&msg);
    for (size_t i = 0; st && i < ftk_st_model_count(st); i++) {
        const char *nm;
        const struct ftk_tensor *t = ftk_st_model_at(st, i, &nm);
        struct ftk_tensor *c;
        CHECK_OK(ftk_message_add(&msg, nm, t->dtype, t->ndim, t->shape, t->data, &c));
        if (strstr(nm, "layers.1.self_attn.q_proj.diff_indices")) {
            int32_t *ix = (int32_t *)c->data;
            int32_t tmp = ix[3];
            ix[3] = ix[4];
            ix[4] = tmp;
        }
    }
    ftk_st_model_close(st);
    CHECK_OK(ftk_st_write(path, &msg));
    ftk_message_free(&msg);
    check_adapter_refused("llama", dir, FTK_E_FORMAT, "layers.1.self_attn.q_proj.diff_indices[4]");
    ftk_model_free(m);
    rm_dir(dir);

    m = model_with((const struct ftk_kv[]){{"target_modules", "q_proj"}, {NULL, NULL}}, 1);
    d = tmpdir();
    if (!m || !d)
        return;
    snprintf(dir, sizeof dir, "%s", d);
    p = ftk_model_peft(m);
    CHECK_OK(ftk_peft_get_plugin(p)->save(p, dir, TINY));
    struct ftk_source *src = NULL;
    CHECK_OK(ftk_source_open(dir, &src));
    struct ftk_model *r = model_with((const struct ftk_kv[]){{"target_modules", "q_proj"}, {"structured", "true"}, {NULL, NULL}}, 1);
    if (r && src)
        CHECK_ERR(ftk_peft_get_plugin(ftk_model_peft(r))->load(ftk_model_peft(r), src), FTK_E_NOTFOUND, "diff_alpha_group");
    ftk_model_free(r);
    r = model_with((const struct ftk_kv[]){{"target_modules", "q_proj"}, {"projected", "true"}, {NULL, NULL}}, 1);
    if (r && src)
        CHECK_ERR(ftk_peft_get_plugin(ftk_model_peft(r))->load(ftk_model_peft(r), src), FTK_E_FORMAT, "projected=true");
    ftk_model_free(r);
    r = model_with((const struct ftk_kv[]){{"target_modules", "q_proj,k_proj"}, {NULL, NULL}}, 1);
    if (r && src)
        CHECK_ERR(ftk_peft_get_plugin(ftk_model_peft(r))->load(ftk_model_peft(r), src), FTK_E_NOTFOUND, "k_proj.diff_w");
    ftk_model_free(r);
    ftk_source_close(src);
    ftk_model_free(m);
    rm_dir(dir);
}

int main(void)
{
    if (plugin_check_begin() != 0)
        return 1;
    if (ftk_st_file_open("tests/fixtures/peft_methods/llama/expected.safetensors", &fx) != FTK_OK) {
        printf("cannot load the batch fixture: %s\n", ftk_last_error());
        return 1;
    }
    TEST("hard-concrete formulas (Louizos et al.) by hand") check_formulas();
    TEST("the gates of every site: z_hat in evaluation, the step's samples in training, their frequencies") check_gates();
    TEST("one site by hand: y, dx, dw, dalpha") check_site(0);
    TEST("one site by hand, structured: the group gate and its dalpha") check_site(1);
    TEST("finite differences of the loss: w and alpha through the sampled gates") check_fd(0);
    TEST("finite differences of the loss, structured: w, alpha, group alpha") check_fd(1);
    TEST("L0 penalty in before_update: value by hand, gradient by finite differences") {
        check_penalty(0);
        check_penalty(1);
    }
    TEST("training: the L0 penalty lowers the expected L0") check_training();
    TEST("magnitude projection: global top-k by hand, ties, the fixed mask afterwards") check_projection();
    TEST("save and load (dense, structured, projected), merged = unmerged") {
        check_files(0, 0);
        check_files(1, 0);
        check_files(0, 1);
    }
    TEST("reproducible gates: the same seed and step give the same loss") check_repro();
    TEST("bad options and bad adapter files are errors naming them") check_errors();
    ftk_st_model_close(fx);
    return plugin_check_end();
}
