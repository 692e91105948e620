/* tests/unit/plugin_check.h: what the PEFT plugin tests against torch fixtures share (the tiny
 * llama at PC_BASE): the model with a method, losses and gradients through the sft loss, parity
 * with an oracle's expected.safetensors (logits, loss, gradients, grad norm, one AdamW step, the
 * loss after it), save/load round trips, central differences, recompute, KV-cache generation
 * against the no-cache forward, packed rows against their documents. Errors are
 * max|got - want| / max|want| over each tensor (scale-free).
 *
 * The including test includes check.h first, defines PC_BASE (the base model directory) and
 * PC_KEEP_ENV (the variable naming a directory where round_trip keeps the adapters it saves), and
 * brackets main with plugin_check_begin (the CPU backend in `be`, `ctx`; the sft loss in `loss`)
 * and plugin_check_end. */
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

#define BASE PC_BASE

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

static inline const struct ftk_tensor *exp_t(const struct ftk_st_model *e, const char *tag, const char *what, const char *name)
{
    char n[512];
    snprintf(n, sizeof n, "%s.%s%s%s", tag, what, name ? "." : "", name ? name : "");
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

static inline double step_grads(struct ftk_model *m, const struct ftk_batch_view *b)
{
    float logps[16], dl[16];
    int64_t nt[16];
    double L = NAN;
    struct ftk_metrics met = {0};
    CHECK_OK(ftk_model_zero_grad(m));
    CHECK_OK(ftk_model_forward(m, b, 1, logps, nt));
    int64_t tot = 0;
    for (int64_t i = 0; i < b->B; i++)
        tot += nt[i];
    struct ftk_loss_batch lb = {.B = b->B, .logps = logps, .n_tokens = nt, .n_tokens_total = tot, .accum = 1};
    CHECK_OK(ftk_loss_compute(loss, &lb, &L, dl, &met));
    CHECK_OK(ftk_model_backward(m, dl));
    return L;
}

/* The tiny llama with a method: from an adapter directory (by its adapter_config.json) when opts
 * is NULL, else plugin `name` with opts. */
static inline struct ftk_model *model_with(const char *name, const struct ftk_kv *opts, const char *dir, uint64_t seed)
{
    struct ftk_model *m = NULL;
    CHECK_OK(ftk_model_load(BASE, be, ctx, &m));
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
    }
    CHECK_OK(s);
    if (s != FTK_OK) {
        ftk_model_free(m);
        return NULL;
    }
    return m;
}

static inline float *logits_of(struct ftk_model *m, const struct ftk_batch_view *b)
{
    int64_t V = ftk_model_get_config(m)->V;
    float *l = malloc((size_t)(b->B * b->T * V) * sizeof *l);
    CHECK_OK(ftk_model_logits(m, b, l));
    return l;
}

/* A gradient that vanishes in exact arithmetic (what torch has there is rounding noise). */
static inline int degenerate(const struct ftk_tensor *t)
{
    double mx = 0;
    for (int64_t j = 0; t && j < t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1); j++)
        mx = fmax(mx, fabs(((const float *)t->data)[j]));
    return t && mx < 1e-6;
}

/* Logits, loss, grads, grad norm, one AdamW step and the loss after it against `tag.*`; returns
 * the worst of the relative errors. */
static inline double parity(struct ftk_model *m, const struct ftk_st_model *e, const char *tag)
{
    struct ftk_batch_view b = batch_of(e);
    int64_t V = ftk_model_get_config(m)->V;
    float *lg = logits_of(m, &b);
    const struct ftk_tensor *want = exp_t(e, tag, "logits", NULL);
    double err = want ? rel_err(lg, want->data, b.B * b.T * V) : 1, all = err;
    free(lg);
    double L0 = step_grads(m, &b);
    printf("  %s: logits rel err %.2e, loss %.7f (torch %.7f)\n", tag, err, L0, scalar(e, tag, "loss"));
    CHECK(err <= 1e-4);
    CHECK_NEAR(L0, scalar(e, tag, "loss"), 1e-5);

    size_t K = ftk_model_n_trainable(m);
    double worst = 0;
    float *sq = calloc(K, sizeof *sq);
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        const struct ftk_tensor *t = exp_t(e, tag, "grad", q->name);
        if (!t || t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1) != q->numel) { CHECK(0); continue; }
        CHECK_OK(be->sumsq(ctx, &sq[i], q->g, q->numel));
        if (degenerate(t)) {   /* a gradient that is 0 in exact arithmetic (PALs' key bias) */
            double ab = 0, at = 0;
            for (int64_t j = 0; j < q->numel; j++) {
                ab = fmax(ab, fabs(q->g[j]));
                at = fmax(at, fabs(((const float *)t->data)[j]));
            }
            printf("  %s: %s: gradient 0 in exact arithmetic, |g| <= %.1e (torch %.1e)\n", tag, q->name, ab, at);
            CHECK(ab <= 1e-6);
            continue;
        }
        double r = rel_err(q->g, t->data, q->numel);
        if (!(r <= worst)) worst = r;
    }
    float total = 0, coef = 0;
    CHECK_OK(ftk_clip_grad_norm_coef(sq, (int64_t)K, 1.0f, &total, &coef));
    printf("  %s: grads (%zu tensors) worst rel err %.2e, grad norm %.6f (torch %.6f)\n", tag, K, worst, total,
           scalar(e, tag, "grad_norm"));
    CHECK(worst <= 1e-4);
    CHECK_NEAR(total, scalar(e, tag, "grad_norm"), 1e-4);
    all = fmax(all, worst);

    worst = 0;
    int64_t skipped = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        float *mom = calloc((size_t)q->numel, sizeof *mom), *var = calloc((size_t)q->numel, sizeof *var);
        struct ftk_adamw_params hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                      .weight_decay = q->decay ? 0.01f : 0.0f, .step = 1, .grad_scale = coef};
        CHECK_OK(be->adamw_step(ctx, q->w, mom, var, q->g, q->numel, &hp));
        free(mom);
        free(var);
        const struct ftk_tensor *t = exp_t(e, tag, "step1", q->name);
        if (!t) { CHECK(0); continue; }
        const struct ftk_tensor *tg = exp_t(e, tag, "grad", q->name);
        if (!tg || degenerate(tg))   /* Adam's step on rounding noise: not comparable */
            continue;
        /* Adam moves an entry by ~lr whatever its gradient's size: where the gradient is below
         * 1e-5 of the tensor's largest and not 0 (rounding-noise level), the step is not comparable */
        const float *gw = tg->data, *pw = t->data;
        double gmax = 0, md = 0, mw = 0;
        for (int64_t j = 0; j < q->numel; j++)
            gmax = fmax(gmax, fabs(gw[j]));
        for (int64_t j = 0; j < q->numel; j++) {
            mw = fmax(mw, fabs(pw[j]));
            if (fabs(gw[j]) >= 1e-5 * gmax || gw[j] == 0)
                md = fmax(md, fabs((double)q->w[j] - pw[j]));
            else
                skipped++;
        }
        double r = md / fmax(mw, 1e-30);
        if (!(r <= worst)) worst = r;
    }
    double L1 = loss_of(m, &b);
    printf("  %s: after one AdamW step params worst rel err %.2e (%lld entries of gradient < 1e-5 max left out), loss %.7f "
           "(torch %.7f)\n", tag, worst, (long long)skipped, L1, scalar(e, tag, "loss1"));
    CHECK(worst <= 1e-4);
    CHECK_NEAR(L1, scalar(e, tag, "loss1"), 1e-5);
    free(sq);
    return fmax(all, worst);
}

static inline void rm_dir(const char *dir)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

/* Saves the adapter, loads it into a fresh model by its adapter_config.json, compares logits. */
static inline void round_trip(struct ftk_model *m, const struct ftk_batch_view *b, const char *tag)
{
    char dir[512];
    const char *keep = getenv(PC_KEEP_ENV);
    if (keep && *keep) {
        mkdir(keep, 0777);
        snprintf(dir, sizeof dir, "%s/%s", keep, tag);
        mkdir(dir, 0777);
    } else {
        snprintf(dir, sizeof dir, "/tmp/ftk_plugin_XXXXXX");
        CHECK(mkdtemp(dir) != NULL);
    }
    struct ftk_peft *p = ftk_model_peft(m);
    CHECK_OK(ftk_peft_get_plugin(p)->save(p, dir, BASE));
    struct ftk_model *r = model_with(NULL, NULL, dir, 0);
    if (r) {
        float *a = logits_of(m, b), *c = logits_of(r, b);
        double err = rel_err(c, a, b->B * b->T * ftk_model_get_config(m)->V);
        printf("  %s: saved and loaded back, logits rel err %.2e\n", tag, err);
        CHECK(err == 0);
        free(a);
        free(c);
        ftk_model_free(r);
    }
    if (!(keep && *keep))
        rm_dir(dir);
}

/* Central differences of the loss against the analytic gradient at `count` entries of every
 * plugin parameter; `train` runs the forwards in train mode (dropout masks of the step). */
static inline double fd_check(struct ftk_model *m, const struct ftk_batch_view *b, int count, double eps, const char *what, int train)
{
    step_grads(m, b);
    size_t K = ftk_model_n_trainable(m), picked = 0;
    double worst = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        if (q->base)
            continue;
        for (int k = 0; k < count; k++) {
            int64_t j = (int64_t)((k * 7919 + (int)i * 131) % q->numel);
            float w0 = q->w[j];   /* host memory: the CPU backend */
            q->w[j] = w0 + (float)eps;
            double lp = loss_of_mode(m, b, train);
            q->w[j] = w0 - (float)eps;
            double lm = loss_of_mode(m, b, train);
            q->w[j] = w0;
            double fd = (lp - lm) / (2 * eps), g = q->g[j];
            double d = fabs(fd - g) / fmax(1e-2, fabs(g));
            if (!(d <= worst)) worst = d;
            if (!(fabs(fd - g) <= 2e-3 + 2e-2 * fabs(g)))
                printf("  %s %s[%lld]: fd %.6g, backward %.6g\n", what, q->name, (long long)j, fd, g);
            CHECK(fabs(fd - g) <= 2e-3 + 2e-2 * fabs(g));
            picked++;
        }
    }
    printf("  %s: %zu entries, worst |fd - g| / max(|g|, 1e-2) = %.2e\n", what, picked, worst);
    CHECK(picked > 0);
    return worst;
}

/* The same gradients with activation recomputation on as off (the plugin's forward runs again
 * for each layer before its backward). */
static inline void recompute_same(struct ftk_model *m, const struct ftk_batch_view *b, const char *what)
{
    size_t K = ftk_model_n_trainable(m);
    float **g0 = calloc(K, sizeof *g0);
    step_grads(m, b);
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        g0[i] = malloc((size_t)q->numel * sizeof(float));
        memcpy(g0[i], q->g, (size_t)q->numel * sizeof(float));
    }
    ftk_model_set_recompute(m, 1);
    step_grads(m, b);
    ftk_model_set_recompute(m, 0);
    double worst = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        worst = fmax(worst, rel_err(q->g, g0[i], q->numel));
        free(g0[i]);
    }
    free(g0);
    printf("  %s: gradients with recompute vs without, worst rel err %.2e\n", what, worst);
    CHECK(worst <= 1e-6);
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

/* Logits of the packed batch (two documents in one row) against each document alone. */
static inline void check_packed(struct ftk_model *m, const char *what)
{
    struct ftk_st_model *e = NULL;
    CHECK_OK(ftk_st_file_open(BASE "/expected.safetensors", &e));
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

/* Options a plugin must refuse: with code and a message containing msg. */
struct bad_option {
    const char *plugin;
    struct ftk_kv o[4];        /* a NULL key ends them */
    ftk_status code;
    const char *msg;
};

static inline void check_bad_options(const struct bad_option *bad, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct ftk_model *m = NULL;
        const struct ftk_peft_plugin *pl = NULL;
        CHECK_OK(ftk_model_load(PC_BASE, be, ctx, &m));
        CHECK_OK(ftk_plugin_load_peft(bad[i].plugin, &pl));
        if (m && pl)
            CHECK_ERR(ftk_model_set_peft(m, pl, bad[i].o, 0, NULL), bad[i].code, bad[i].msg);
        ftk_model_free(m);
    }
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
    struct ftk_st_model *e = NULL;
    snprintf(dir, sizeof dir, "%s/expected.safetensors", fix);
    CHECK_OK(ftk_st_file_open(dir, &e));
    snprintf(dir, sizeof dir, "%s/%s", fix, tag);
    double worst = 1;
    struct ftk_model *m = model_with(NULL, NULL, dir, 0);
    if (m && e) {
        struct ftk_batch_view b = batch_of(e);
        worst = parity(m, e, tag);
        round_trip(m, &b, tag);
    }
    ftk_model_free(m);
    m = model_with(NULL, NULL, dir, 0);   /* the fixture's weights again, for the gradient checks */
    if (m && e) {
        struct ftk_batch_view b = batch_of(e);
        fd_check(m, &b, 2, eps, tag, 0);
        ftk_model_set_recompute(m, 1);
        fd_check(m, &b, 1, eps, tag, 0);
        ftk_model_set_recompute(m, 0);
        recompute_same(m, &b, tag);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
    return worst;
}

#endif
