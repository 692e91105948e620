/* tests/unit/plugin_check.h: what the PEFT plugin tests against oracle fixtures share. A fixture
 * is an oracle's expected.safetensors: the batch (input_ids, labels, position_ids) and, per
 * method, tensors named `tag.what[.name]`. Errors are max|got - want| / max|want| over each
 * tensor (scale-free).
 *
 * On any tiny model (tests/fixtures/hf_tiny/<arch>): the model with a method, losses, gradients
 * and logits through the sft loss, parity with the oracle (logits, loss, gradients, grad norm,
 * one AdamW step, the loss after it), adapters saved and merged, central differences, recompute,
 * KV-cache generation against the no-cache forward, refused options.
 * On one base, for tests that define PC_BASE (the base model directory) and PC_KEEP_ENV (the
 * variable naming a directory where round_trip keeps the adapters it saves): model_with,
 * round_trip, packed rows against their documents, and check_fixture_dir (all of that for a
 * fixture's adapter directory).
 *
 * The including test includes check.h first and brackets main with plugin_check_begin (the CPU
 * backend in `be`, `ctx`; the sft loss in `loss`) and plugin_check_end. */
#ifndef FTK_TEST_PLUGIN_CHECK_H
#define FTK_TEST_PLUGIN_CHECK_H

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ftk/generate.h"
#include "ftk/model.h"
#include "ftk/optim.h"
#include "ftk/safetensors.h"

#define PC_TINY "tests/fixtures/hf_tiny/"   /* + arch: the tiny models */

static const struct ftk_backend *be;
static void *ctx;
static struct ftk_loss *loss;

/* The CPU backend (one thread) into be, ctx and the sft loss into loss; 0, or 1 after printing
 * why not. */
static inline int plugin_check_begin(void)
{
    be = ftk_backend_cpu();
    struct ftk_backend_opts o = {.struct_size = sizeof o, .threads = 1};
    if (be->create(&o, &ctx) != FTK_OK) {
        printf("cannot create the cpu backend: %s\n", ftk_last_error());
        return 1;
    }
    const struct ftk_loss_plugin *sft;
    if (ftk_plugin_load_loss("sft", &sft) != FTK_OK || ftk_loss_create(sft, NULL, &loss) != FTK_OK) {
        printf("cannot load the sft loss: %s\n", ftk_last_error());
        return 1;
    }
    return 0;
}

/* Frees what plugin_check_begin made; main's return value (check_summary's). */
static inline int plugin_check_end(void)
{
    ftk_loss_free(loss);
    be->destroy(ctx);
    return check_summary();
}

static inline double rel_err(const float *got, const float *want, int64_t n)
{
    double md = 0, mw = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= md)) md = d;   /* NaN propagates as a failure */
        if (fabs(want[i]) > mw) mw = fabs(want[i]);
    }
    return md / (mw > 1e-30 ? mw : 1e-30);
}

/* The fixture's tensor `tag.what.name` (tag or name NULL: left out, with its dot); NULL, said,
 * when the fixture lacks it. */
static inline const struct ftk_tensor *exp_t(const struct ftk_st_model *e, const char *tag, const char *what, const char *name)
{
    char n[512];
    snprintf(n, sizeof n, "%s%s%s%s%s", tag ? tag : "", tag ? "." : "", what, name ? "." : "", name ? name : "");
    const struct ftk_tensor *t = ftk_st_model_find(e, n);
    if (!t)
        printf("  fixture lacks %s\n", n);
    return t;
}

static inline float scalar(const struct ftk_st_model *e, const char *tag, const char *what)
{
    const struct ftk_tensor *t = exp_t(e, tag, what, NULL);
    return t ? ((const float *)t->data)[0] : NAN;
}

/* dir/arch/expected.safetensors (arch NULL: dir/expected.safetensors); NULL, failed, if it does
 * not open. */
static inline struct ftk_st_model *expected_of(const char *dir, const char *arch)
{
    char p[512];
    snprintf(p, sizeof p, "%s%s%s/expected.safetensors", dir, arch ? "/" : "", arch ? arch : "");
    struct ftk_st_model *e = NULL;
    CHECK_OK(ftk_st_file_open(p, &e));
    return e;
}

static inline struct ftk_batch_view batch_of(const struct ftk_st_model *e)
{
    struct ftk_batch_view b = {0};
    const struct ftk_tensor *ids = ftk_st_model_find(e, "input_ids");
    b.B = ids->shape[0];
    b.T = ids->shape[1];
    b.input_ids = ids->data;
    b.labels = ftk_st_model_find(e, "labels")->data;
    b.position_ids = ftk_st_model_find(e, "position_ids")->data;
    return b;
}

/* The fixture batch as the batch message ftk_trainer_feed takes (ftk_message_free frees it). */
static inline void batch_message(const struct ftk_st_model *e, struct ftk_message *msg)
{
    static const char *const names[] = {"input_ids", "labels", "position_ids", NULL};
    ftk_message_init(msg);
    CHECK_OK(ftk_message_set_meta(msg, "kind", "batch"));
    for (const char *const *n = names; *n; n++) {
        const struct ftk_tensor *t = ftk_st_model_find(e, *n);
        CHECK_OK(ftk_message_add(msg, *n, t->dtype, t->ndim, t->shape, t->data, NULL));
    }
}

/* The sft token-mean loss of a forward (no gradients), in f64; train = 1 applies dropout with
 * the masks backward uses (they depend on seed, step and site only). */
static inline double loss_of_mode(struct ftk_model *m, const struct ftk_batch_view *b, int train)
{
    float logps[16];
    int64_t nt[16], tot = 0;
    double sum = 0;
    CHECK_OK(ftk_model_forward(m, b, train, logps, nt));
    for (int64_t i = 0; i < b->B; i++) {
        sum += logps[i];
        tot += nt[i];
    }
    return -sum / (double)tot;
}
static inline double loss_of(struct ftk_model *m, const struct ftk_batch_view *b) { return loss_of_mode(m, b, 0); }

/* Forward (train), the sft loss, backward, the gradients added to what they hold; returns the
 * loss. logps (B), if not NULL, gets the rows' log-probs. */
static inline double accumulate_grads(struct ftk_model *m, const struct ftk_batch_view *b, float *logps)
{
    float lp[16], dl[16];
    int64_t nt[16];
    double L = NAN;
    struct ftk_metrics met = {0};
    if (!logps)
        logps = lp;
    CHECK_OK(ftk_model_forward(m, b, 1, logps, nt));
    int64_t tot = 0;
    for (int64_t i = 0; i < b->B; i++)
        tot += nt[i];
    struct ftk_loss_batch lb = {.B = b->B, .logps = logps, .n_tokens = nt, .n_tokens_total = tot, .accum = 1};
    CHECK_OK(ftk_loss_compute(loss, &lb, &L, dl, &met));
    CHECK_OK(ftk_model_backward(m, dl));
    return L;
}

/* accumulate_grads from zeroed gradients. */
static inline double step_grads_logps(struct ftk_model *m, const struct ftk_batch_view *b, float *logps)
{
    CHECK_OK(ftk_model_zero_grad(m));
    return accumulate_grads(m, b, logps);
}
static inline double step_grads(struct ftk_model *m, const struct ftk_batch_view *b) { return step_grads_logps(m, b, NULL); }

static inline float *logits_of(struct ftk_model *m, const struct ftk_batch_view *b)
{
    int64_t V = ftk_model_get_config(m)->V;
    float *l = malloc((size_t)(b->B * b->T * V) * sizeof *l);
    CHECK_OK(ftk_model_logits(m, b, l));
    return l;
}

/* got's logits on b against want's. */
static inline double logits_vs(struct ftk_model *got, struct ftk_model *want, const struct ftk_batch_view *b)
{
    float *a = logits_of(want, b), *c = logits_of(got, b);
    double err = rel_err(c, a, b->B * b->T * ftk_model_get_config(want)->V);
    free(a);
    free(c);
    return err;
}

/* m's logits on the fixture batch against the fixture's tag.what (1 if it lacks that). */
static inline double logits_err(struct ftk_model *m, const struct ftk_st_model *e, const char *tag, const char *what)
{
    struct ftk_batch_view b = batch_of(e);
    float *lg = logits_of(m, &b);
    const struct ftk_tensor *want = exp_t(e, tag, what, NULL);
    double err = want ? rel_err(lg, want->data, b.B * b.T * ftk_model_get_config(m)->V) : 1;
    free(lg);
    return err;
}

/* The model of directory base with a method: from an adapter directory (by its
 * adapter_config.json) when opts is NULL, else plugin `name` with opts, then (if dir) the
 * plugin's load slot on dir. */
static inline struct ftk_model *model_at(const char *base, const char *name, const struct ftk_kv *opts, const char *dir,
                                         uint64_t seed)
{
    struct ftk_model *m = NULL;
    CHECK_OK(ftk_model_load(base, be, ctx, &m));
    if (!m)
        return NULL;
    ftk_status s;
    if (!opts) {
        s = ftk_model_load_adapter(m, dir, seed);
    } else {
        const struct ftk_peft_plugin *pl;
        s = ftk_plugin_load_peft(name, &pl);
        if (s == FTK_OK)
            s = ftk_model_set_peft(m, pl, opts, seed, NULL);
        if (s == FTK_OK && dir) {
            struct ftk_source *src;
            if ((s = ftk_source_open(dir, &src)) == FTK_OK) {
                s = pl->load(ftk_model_peft(m), src);
                ftk_source_close(src);
            }
        }
    }
    CHECK_OK(s);
    if (s != FTK_OK) {
        ftk_model_free(m);
        return NULL;
    }
    return m;
}

/* model_at on the tiny model `arch`, seed 0. */
static inline struct ftk_model *tiny_with(const char *arch, const char *name, const struct ftk_kv *opts, const char *dir)
{
    char p[256];
    snprintf(p, sizeof p, PC_TINY "%s", arch);
    return model_at(p, name, opts, dir, 0);
}

/* Sets every trainable tensor to the fixture's tag.stage.<name> (the oracle's init, or its
 * weights after a step). */
static inline void set_from(struct ftk_model *m, const struct ftk_st_model *e, const char *tag, const char *stage)
{
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        const struct ftk_tensor *t = exp_t(e, tag, stage, q->name);
        if (!t || ftk_tensor_numel(t) != q->numel) { CHECK(0); continue; }
        CHECK_OK(be->to_device(ctx, q->w, t->data, (size_t)q->numel * sizeof(float)));
    }
}

/* The worst rel err of every trainable tensor (its gradient if grads, else its weights) against
 * the fixture's tag.what.<name>; one the fixture lacks, or of another size, fails. */
static inline double trainables_vs(struct ftk_model *m, const struct ftk_st_model *e, const char *tag, const char *what, int grads)
{
    double worst = 0;
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        const struct ftk_tensor *t = exp_t(e, tag, what, q->name);
        if (!t || ftk_tensor_numel(t) != q->numel) { CHECK(0); continue; }
        double r = rel_err(grads ? q->g : q->w, t->data, q->numel);
        if (!(r <= worst)) worst = r;
    }
    return worst;
}

/* A copy of every trainable tensor's gradient; grads_err: the worst rel err of the gradients now
 * against it; grads_free frees it. */
static inline float **grads_copy(struct ftk_model *m)
{
    size_t K = ftk_model_n_trainable(m);
    float **g0 = calloc(K, sizeof *g0);
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        g0[i] = malloc((size_t)q->numel * sizeof(float));
        memcpy(g0[i], q->g, (size_t)q->numel * sizeof(float));
    }
    return g0;
}
static inline double grads_err(struct ftk_model *m, float *const *g0)
{
    double worst = 0;
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        worst = fmax(worst, rel_err(q->g, g0[i], q->numel));
    }
    return worst;
}
static inline void grads_free(struct ftk_model *m, float **g0)
{
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++)
        free(g0[i]);
    free(g0);
}

/* The global norm of the trainable gradients; *coef: torch clip_grad_norm_'s factor at max
 * norm 1. */
static inline float grad_norm(struct ftk_model *m, float *coef)
{
    size_t K = ftk_model_n_trainable(m);
    float *sq = calloc(K, sizeof *sq), total = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        CHECK_OK(be->sumsq(ctx, &sq[i], q->g, q->numel));
    }
    CHECK_OK(ftk_clip_grad_norm_coef(sq, (int64_t)K, 1.0f, &total, coef));
    free(sq);
    return total;
}

/* One torch AdamW step from zero moments, the oracles' (lr 1e-2, weight decay 0.01 where q
 * decays), its gradient scaled by coef. */
static inline void adamw_once(struct ftk_param *q, float coef)
{
    float *mom = calloc((size_t)q->numel, sizeof *mom), *var = calloc((size_t)q->numel, sizeof *var);
    struct ftk_adamw_params hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                  .weight_decay = q->decay ? 0.01f : 0.0f, .step = 1, .grad_scale = coef};
    CHECK_OK(be->adamw_step(ctx, q->w, mom, var, q->g, q->numel, &hp));
    free(mom);
    free(var);
}

/* A gradient that vanishes in exact arithmetic (what torch has there is rounding noise). */
static inline int degenerate(const struct ftk_tensor *t)
{
    double mx = 0;
    for (int64_t j = 0; t && j < t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1); j++)
        mx = fmax(mx, fabs(((const float *)t->data)[j]));
    return t && mx < 1e-6;
}

/* What parity allows: the oracle (its name is printed), the gradients' worst rel err, the grad
 * norm's tolerance (CHECK_NEAR). noise = 1 for torch running formulas written by hand: there a
 * gradient 0 in exact arithmetic is rounding noise, and so are Adam's steps where the gradient
 * is; those are not compared. */
struct parity_tol {
    const char *oracle;
    double grad, grad_norm;
    int noise;
};

/* Logits, loss, grads, grad norm, one AdamW step and the loss after it against the fixture's
 * `tag.*` (printed as "arch tag"; arch may be NULL); returns the worst of the relative errors. */
static inline double parity(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag,
                            const struct parity_tol *tol)
{
    char what[128];
    snprintf(what, sizeof what, "%s%s%s", arch ? arch : "", arch ? " " : "", tag);
    struct ftk_batch_view b = batch_of(e);
    double err = logits_err(m, e, tag, "logits"), all = err;
    double L0 = step_grads(m, &b);
    printf("  %s: logits rel err %.2e, loss %.7f (%s %.7f)\n", what, err, L0, tol->oracle, scalar(e, tag, "loss"));
    CHECK(err <= 1e-4);
    CHECK_NEAR(L0, scalar(e, tag, "loss"), 1e-5);

    size_t K = ftk_model_n_trainable(m);
    double worst = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        const struct ftk_tensor *t = exp_t(e, tag, "grad", q->name);
        if (!t || ftk_tensor_numel(t) != q->numel) { CHECK(0); continue; }
        if (tol->noise && degenerate(t)) {   /* a gradient that is 0 in exact arithmetic (PALs' key bias) */
            double ab = 0, at = 0;
            for (int64_t j = 0; j < q->numel; j++) {
                ab = fmax(ab, fabs(q->g[j]));
                at = fmax(at, fabs(((const float *)t->data)[j]));
            }
            printf("  %s: %s: gradient 0 in exact arithmetic, |g| <= %.1e (torch %.1e)\n", what, q->name, ab, at);
            CHECK(ab <= 1e-6);
            continue;
        }
        double r = rel_err(q->g, t->data, q->numel);
        if (!(r <= worst)) worst = r;
    }
    float coef = 0, total = grad_norm(m, &coef);
    printf("  %s: grads (%zu tensors) worst rel err %.2e, grad norm %.6f (%s %.6f)\n", what, K, worst, total, tol->oracle,
           scalar(e, tag, "grad_norm"));
    CHECK(worst <= tol->grad);
    CHECK_NEAR(total, scalar(e, tag, "grad_norm"), tol->grad_norm);
    all = fmax(all, worst);

    worst = 0;
    int64_t skipped = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        adamw_once(q, coef);
        const struct ftk_tensor *t = exp_t(e, tag, "step1", q->name);
        if (!t) { CHECK(0); continue; }
        const struct ftk_tensor *tg = exp_t(e, tag, "grad", q->name);
        if (!tg || (tol->noise && degenerate(tg)))   /* Adam's step on rounding noise: not comparable */
            continue;
        /* Adam's first step is lr g / (|g| + eps): where |g| nears eps (1e-8) it turns on the
         * gradient's last digits, so entries below 1e3 eps are not compared (below 1e-5 of the
         * tensor's largest gradient, rounding-noise level, for torch running hand-written formulas) */
        const float *gw = tg->data, *pw = t->data;
        double gmax = 0, md = 0, mw = 0;
        for (int64_t j = 0; j < q->numel; j++)
            gmax = fmax(gmax, fabs(gw[j]));
        const double gmin = tol->noise ? 1e-5 * gmax : 1e3 * 1e-8;
        for (int64_t j = 0; j < q->numel; j++) {
            mw = fmax(mw, fabs(pw[j]));
            if (fabs(gw[j]) >= gmin || gw[j] == 0)
                md = fmax(md, fabs((double)q->w[j] - pw[j]));
            else
                skipped++;
        }
        double r = md / fmax(mw, 1e-30);
        if (!(r <= worst)) worst = r;
    }
    double L1 = loss_of(m, &b);
    printf("  %s: after one AdamW step params worst rel err %.2e (%lld entries of gradient < %s left out), loss %.7f "
           "(%s %.7f)\n", what, worst, (long long)skipped, tol->noise ? "1e-5 max" : "1e-5", L1, tol->oracle,
           scalar(e, tag, "loss1"));
    CHECK(worst <= 1e-4);
    CHECK_NEAR(L1, scalar(e, tag, "loss1"), 1e-5);
    return fmax(all, worst);
}

static inline void rm_dir(const char *dir)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

/* Saves m's adapter (base: the model directory, for adapter_config.json) into dir: where the
 * variable keep_env names a directory, as keep[/arch][/tag], made as needed (kept for the
 * oracle's check script, which loads what ftk trains), else a fresh temp dir. Returns 1 when
 * kept; else the caller rm_dirs it. */
static inline int save_adapter(struct ftk_model *m, const char *base, const char *keep_env, const char *arch, const char *tag,
                               char *dir, size_t n)
{
    const char *keep = keep_env ? getenv(keep_env) : NULL;
    if (keep && *keep) {
        const char *sub[2] = {arch, tag};
        snprintf(dir, n, "%s", keep);
        mkdir(dir, 0777);
        for (int i = 0; i < 2; i++)
            if (sub[i]) {
                size_t at = strlen(dir);
                snprintf(dir + at, n - at, "/%s", sub[i]);
                mkdir(dir, 0777);
            }
    } else {
        snprintf(dir, n, "/tmp/ftk_plugin_XXXXXX");
        CHECK(mkdtemp(dir) != NULL);
    }
    struct ftk_peft *p = ftk_model_peft(m);
    CHECK_OK(ftk_peft_get_plugin(p)->save(p, dir, base));
    return keep && *keep;
}

/* save_adapter for the tiny model `arch`: kept as keep/arch/tag. */
static inline int save_tiny(struct ftk_model *m, const char *arch, const char *keep_env, const char *tag, char *dir, size_t n)
{
    char base[256];
    snprintf(base, sizeof base, PC_TINY "%s", arch);
    return save_adapter(m, base, keep_env, arch, tag, dir, n);
}

/* The plugin's merge slot: m saved with the deltas folded into the weights (ftk_model_save
 * merge=1, base its model directory), loaded without an adapter: its logits on b against m's
 * (1 if it did not load). */
static inline double merged_err(struct ftk_model *m, const char *base, const struct ftk_batch_view *b)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/ftk_plugin_merged_XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    CHECK_OK(ftk_model_save(m, base, dir, FTK_DTYPE_F32, 1));
    struct ftk_model *r = NULL;
    CHECK_OK(ftk_model_load(dir, be, ctx, &r));
    double err = 1;
    if (r) {
        err = logits_vs(r, m, b);
        ftk_model_free(r);
    }
    rm_dir(dir);
    return err;
}

/* The loss with entry j of q moved by +eps (*lp) and by -eps (*lm), then put back (host
 * memory: the CPU backend). */
static inline void loss_pm(struct ftk_model *m, const struct ftk_batch_view *b, struct ftk_param *q, int64_t j, double eps,
                           int train, double *lp, double *lm)
{
    float w0 = q->w[j];
    q->w[j] = w0 + (float)eps;
    *lp = loss_of_mode(m, b, train);
    q->w[j] = w0 - (float)eps;
    *lm = loss_of_mode(m, b, train);
    q->w[j] = w0;
}

/* Central differences of the loss against the analytic gradient at `count` entries of every
 * plugin tensor whose name contains `which` (NULL: all), each within atol + rtol |g|; `train`
 * runs the forwards in train mode (dropout masks of the step). Returns the worst
 * |fd - g| / max(|g|, 1e-2). */
static inline double fd_check_tol(struct ftk_model *m, const struct ftk_batch_view *b, const char *which, int count, double eps,
                                  const char *what, int train, double atol, double rtol)
{
    step_grads(m, b);
    size_t K = ftk_model_n_trainable(m), picked = 0;
    double worst = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        if (q->base || (which && !strstr(q->name, which)))
            continue;
        for (int k = 0; k < count; k++) {
            int64_t j = (int64_t)((k * 7919 + (int)i * 131) % q->numel);
            double lp, lm;
            loss_pm(m, b, q, j, eps, train, &lp, &lm);
            double fd = (lp - lm) / (2 * eps), g = q->g[j];
            double d = fabs(fd - g) / fmax(1e-2, fabs(g));
            if (!(d <= worst)) worst = d;
            if (!(fabs(fd - g) <= atol + rtol * fabs(g)))
                printf("  %s %s[%lld]: fd %.6g, backward %.6g\n", what, q->name, (long long)j, fd, g);
            CHECK(fabs(fd - g) <= atol + rtol * fabs(g));
            picked++;
        }
    }
    printf("  %s: %zu entries, worst |fd - g| / max(|g|, 1e-2) = %.2e\n", what, picked, worst);
    CHECK(picked > 0);
    return worst;
}

/* fd_check_tol within 2e-3 + 2e-2 |g|. */
static inline double fd_check(struct ftk_model *m, const struct ftk_batch_view *b, const char *which, int count, double eps,
                              const char *what, int train)
{
    return fd_check_tol(m, b, which, count, eps, what, train, 2e-3, 2e-2);
}

/* The same gradients with activation recomputation on as off (the plugin's forward runs again
 * for each layer before its backward). */
static inline void recompute_same(struct ftk_model *m, const struct ftk_batch_view *b, const char *what)
{
    step_grads(m, b);
    float **g0 = grads_copy(m);
    ftk_model_set_recompute(m, 1);
    step_grads(m, b);
    ftk_model_set_recompute(m, 0);
    double worst = grads_err(m, g0);
    grads_free(m, g0);
    printf("  %s: gradients with recompute vs without, worst rel err %.2e\n", what, worst);
    CHECK(worst <= 1e-6);
}

/* The argmax of the last token's logits of an uncached forward of ids (n tokens, positions
 * 0..n-1). */
static inline int32_t argmax_uncached(struct ftk_model *m, const int32_t *ids, int64_t n)
{
    int64_t V = ftk_model_get_config(m)->V;
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    for (int64_t t = 0; t < n; t++)
        pos[t] = (int32_t)t;
    struct ftk_batch_view b = {.B = 1, .T = n, .input_ids = ids, .position_ids = pos};
    float *l = logits_of(m, &b);
    int32_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (l[(n - 1) * V + v] > l[(n - 1) * V + best])
            best = (int32_t)v;
    free(l);
    free(pos);
    return best;
}

/* Greedy generation (n_new tokens each, no eos) of the fixture batch's two rows cut to 5 and 3
 * tokens, batched in one KV cache; prompt, len get the prompts; ftk_gen_result_free each r. */
static inline void generate_rows(struct ftk_model *m, const struct ftk_st_model *e, int64_t n_new, const int32_t *prompt[2],
                                 int64_t len[2], struct ftk_gen_result r[2])
{
    const struct ftk_tensor *ids = ftk_st_model_find(e, "input_ids");
    prompt[0] = ids->data;
    prompt[1] = (const int32_t *)ids->data + ids->shape[1];
    len[0] = 5;
    len[1] = 3;
    struct ftk_gen_config gc;
    ftk_gen_config_init(&gc);
    gc.max_new_tokens = n_new;
    gc.n_eos = 0;
    memset(r, 0, 2 * sizeof *r);
    CHECK_OK(ftk_generate(m, NULL, &gc, 2, prompt, len, NULL, NULL, r));
}

/* Greedy generation with the KV cache (ftk_generate) against the no-cache forward's argmax
 * token by token, and the decode steps' logits against the full forward's. */
static inline void check_generation(struct ftk_model *m, const char *what)
{
    int32_t prompt[2][5] = {{50, 57, 34, 34, 61}, {23, 43, 49, 7, 0}};
    int64_t lens[2] = {5, 4}, n_new = 10, V = ftk_model_get_config(m)->V;
    const int32_t *pp[2] = {prompt[0], prompt[1]};
    struct ftk_gen_config gc;
    ftk_gen_config_init(&gc);
    gc.max_new_tokens = n_new;
    gc.context = 32;
    struct ftk_gen_result r[2];
    CHECK_OK(ftk_generate(m, NULL, &gc, 2, pp, lens, NULL, NULL, r));
    double worst = 0;
    for (int i = 0; i < 2; i++) {
        int32_t seq[32], pos[32];
        int64_t n = lens[i];
        memcpy(seq, prompt[i], (size_t)n * sizeof *seq);
        float *lg = malloc((size_t)(32 * V) * sizeof *lg);
        int same = 1;
        for (int64_t k = 0; k < n_new && k < r[i].n; k++) {
            for (int64_t t = 0; t < n; t++)
                pos[t] = (int32_t)t;
            struct ftk_batch_view b = {.B = 1, .T = n, .input_ids = seq, .position_ids = pos};
            CHECK_OK(ftk_model_logits(m, &b, lg));
            int32_t best = 0;
            for (int64_t v = 1; v < V; v++)
                if (lg[(n - 1) * V + v] > lg[(n - 1) * V + best])
                    best = (int32_t)v;
            same &= best == r[i].ids[k];
            seq[n++] = r[i].ids[k];
        }
        CHECK(same);
        CHECK_INT(r[i].n, n_new);
        /* the decode steps' logits along the generated sequence */
        struct ftk_kv_cache *kc;
        float step[64];
        CHECK_OK(ftk_kv_cache_create(m, 1, 32, &kc));
        CHECK_OK(ftk_model_prefill(m, kc, 0, seq, lens[i], step));
        for (int64_t t = lens[i] - 1; t < n - 1; t++) {
            if (t >= lens[i])
                CHECK_OK(ftk_model_decode(m, kc, &seq[t], step));
            for (int64_t v = 0; v < V; v++)
                worst = fmax(worst, fabs(step[v] - lg[t * V + v]));
        }
        ftk_kv_cache_free(kc);
        free(lg);
        ftk_gen_result_free(&r[i]);
    }
    printf("  %s: greedy generation = the no-cache forward's argmax; max |decode - full| logits %.2e\n", what, worst);
    CHECK(worst <= 1e-4);
}

/* The tiny llama refuses plugin's options o with code and a message containing msg. */
static inline void check_refused(const char *plugin, const struct ftk_kv *o, ftk_status code, const char *msg)
{
    struct ftk_model *m = NULL;
    const struct ftk_peft_plugin *pl = NULL;
    CHECK_OK(ftk_model_load(PC_TINY "llama", be, ctx, &m));
    CHECK_OK(ftk_plugin_load_peft(plugin, &pl));
    if (m && pl)
        CHECK_ERR(ftk_model_set_peft(m, pl, o, 0, NULL), code, msg);
    ftk_model_free(m);
}

/* The tiny model `arch` refuses the adapter in dir with code and a message containing msg. */
static inline void check_adapter_refused(const char *arch, const char *dir, ftk_status code, const char *msg)
{
    char p[256];
    snprintf(p, sizeof p, PC_TINY "%s", arch);
    struct ftk_model *m = NULL;
    CHECK_OK(ftk_model_load(p, be, ctx, &m));
    if (m)
        CHECK_ERR(ftk_model_load_adapter(m, dir, 0), code, msg);
    ftk_model_free(m);
}

/* A method whose output a KV-cache decode step cannot reproduce says so
 * (ftk_model_decode_exact 0), and greedy generation then equals greedy decoding by full forwards
 * of the growing sequence (ftk_model_logits): two prompts of different lengths batched. */
static inline void check_generation_recomputes(struct ftk_model *m)
{
    enum { NEW = 4 };
    CHECK_INT(ftk_model_decode_exact(m), 0);
    const int32_t p0[3] = {5, 6, 7}, p1[5] = {9, 3, 12, 4, 8}, *pp[2] = {p0, p1};
    int64_t len[2] = {3, 5};
    struct ftk_gen_config gc;
    ftk_gen_config_init(&gc);
    gc.max_new_tokens = NEW;
    gc.context = 16;
    struct ftk_gen_result r[2];
    CHECK_OK(ftk_generate(m, NULL, &gc, 2, pp, len, NULL, NULL, r));
    int64_t V = ftk_model_get_config(m)->V;
    for (int i = 0; i < 2 && !check_cur_failed_; i++) {
        int32_t seq[16], pos[16];
        int64_t T = len[i];
        memcpy(seq, pp[i], (size_t)T * sizeof *seq);
        float *lg = malloc((size_t)(16 * V) * sizeof *lg);
        for (int k = 0; k < NEW && lg; k++, T++) {
            for (int t = 0; t < T; t++)
                pos[t] = t;
            struct ftk_batch_view b = {.B = 1, .T = T, .input_ids = seq, .position_ids = pos};
            CHECK_OK(ftk_model_logits(m, &b, lg));
            int32_t best = 0;
            for (int64_t v = 1; v < V; v++)
                if (lg[(T - 1) * V + v] > lg[(T - 1) * V + best])
                    best = (int32_t)v;
            seq[T] = best;
        }
        CHECK_INT(r[i].n, NEW);
        for (int k = 0; k < NEW && k < r[i].n; k++)
            CHECK_INT(r[i].ids[k], seq[len[i] + k]);
        free(lg);
    }
    printf("  greedy generation = full-forward greedy, %d tokens x 2 prompts (no KV-cache decode)\n", (int)NEW);
    ftk_gen_result_free(&r[0]);
    ftk_gen_result_free(&r[1]);
}

/* Options a plugin must refuse (check_refused). */
struct bad_option {
    const char *plugin;
    struct ftk_kv o[5];        /* a NULL key ends them */
    ftk_status code;
    const char *msg;
};

static inline void check_bad_options(const struct bad_option *bad, size_t n)
{
    for (size_t i = 0; i < n; i++)
        check_refused(bad[i].plugin, bad[i].o, bad[i].code, bad[i].msg);
}

#ifdef PC_BASE
#define BASE PC_BASE

/* parity against torch running the papers' formulas */
static const struct parity_tol TORCH_TOL = {.oracle = "torch", .grad = 1e-4, .grad_norm = 1e-4, .noise = 1};

/* model_at on BASE. */
static inline struct ftk_model *model_with(const char *name, const struct ftk_kv *opts, const char *dir, uint64_t seed)
{
    return model_at(BASE, name, opts, dir, seed);
}

/* Saves the adapter, loads it into a fresh model by its adapter_config.json, compares logits. */
static inline void round_trip(struct ftk_model *m, const struct ftk_batch_view *b, const char *tag)
{
    char dir[512];
    int kept = save_adapter(m, BASE, PC_KEEP_ENV, NULL, tag, dir, sizeof dir);
    struct ftk_model *r = model_with(NULL, NULL, dir, 0);
    if (r) {
        double err = logits_vs(r, m, b);
        printf("  %s: saved and loaded back, logits rel err %.2e\n", tag, err);
        CHECK(err == 0);
        ftk_model_free(r);
    }
    if (!kept)
        rm_dir(dir);
}

/* Logits of the packed batch (two documents in one row) against each document alone. */
static inline void check_packed(struct ftk_model *m, const char *what)
{
    struct ftk_st_model *e = expected_of(BASE, NULL);
    if (!e)
        return;
    const struct ftk_tensor *ids = ftk_st_model_find(e, "packed.input_ids"), *pos = ftk_st_model_find(e, "packed.position_ids"),
                            *seg = ftk_st_model_find(e, "packed.segment_ids");
    int64_t T = ids->shape[1], V = ftk_model_get_config(m)->V;
    struct ftk_batch_view b = {.B = 1, .T = T, .input_ids = ids->data, .position_ids = pos->data, .segment_ids = seg->data};
    float *lg = logits_of(m, &b);
    const int32_t *sg = seg->data;
    double worst = 0;
    for (int64_t t0 = 0; t0 < T;) {
        int64_t t1 = t0;
        while (t1 < T && sg[t1] == sg[t0])
            t1++;
        struct ftk_batch_view d = {.B = 1, .T = t1 - t0, .input_ids = (const int32_t *)ids->data + t0,
                                   .position_ids = (const int32_t *)pos->data + t0};
        float *ld = logits_of(m, &d);
        worst = fmax(worst, rel_err(lg + t0 * V, ld, (t1 - t0) * V));
        free(ld);
        t0 = t1;
    }
    printf("  %s: packed row vs its documents alone, logits rel err %.2e\n", what, worst);
    CHECK(worst <= 1e-5);
    free(lg);
    ftk_st_model_close(e);
}

/* The adapter of directory dir: KV-cache generation (check_generation), and packed rows
 * (check_packed) when `packed`. */
static inline void check_dir_generation(const char *dir, const char *what, int packed)
{
    struct ftk_model *m = model_with(NULL, NULL, dir, 0);
    if (m) {
        check_generation(m, what);
        if (packed)
            check_packed(m, what);
    }
    ftk_model_free(m);
}

/* The method in fixture directory FIX/TAG (loaded by its adapter_config.json) against the oracle's
 * FIX/expected.safetensors (parity), saved and loaded back, then central differences with
 * activation recomputation off and on (steps of eps), and recompute = no recompute. Returns
 * parity's worst relative error. */
static inline double check_fixture_dir(const char *fix, const char *tag, double eps)
{
    char dir[512];
    struct ftk_st_model *e = expected_of(fix, NULL);
    snprintf(dir, sizeof dir, "%s/%s", fix, tag);
    double worst = 1;
    struct ftk_model *m = model_with(NULL, NULL, dir, 0);
    if (m && e) {
        struct ftk_batch_view b = batch_of(e);
        worst = parity(m, e, NULL, tag, &TORCH_TOL);
        round_trip(m, &b, tag);
    }
    ftk_model_free(m);
    m = model_with(NULL, NULL, dir, 0);   /* the fixture's weights again, for the gradient checks */
    if (m && e) {
        struct ftk_batch_view b = batch_of(e);
        fd_check(m, &b, NULL, 2, eps, tag, 0);
        ftk_model_set_recompute(m, 1);
        fd_check(m, &b, NULL, 1, eps, tag, 0);
        ftk_model_set_recompute(m, 0);
        recompute_same(m, &b, tag);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
    return worst;
}

#endif
#endif
