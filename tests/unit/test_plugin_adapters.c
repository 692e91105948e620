/* tests/unit/test_plugin_adapters.c: the sublayer_out-hook methods of issue 11 on the tiny llama:
 * bottleneck adapters (Houlsby, Pfeiffer, parallel; AdapterDrop), PALs and AdapterFusion, against
 * torch autograd on transformers' model with the papers' formulas attached by forward hooks
 * (fixtures from tests/oracle/adapters.py): logits, loss, gradients, the grad norm, one AdamW step;
 * then central differences of the loss through the whole model (which also checks the core's
 * sublayer wiring) with activation recomputation off and on, AdapterDrop's skipped layers,
 * save/load round trips, generation, and bad options.
 * Errors are max|got - want| / max|want| over each tensor (scale-free).
 * FTK_ADAPTERS_OUT=DIR keeps the adapters ftk saves (tests/oracle/check_adapters.py). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "ftk/generate.h"
#include "ftk/model.h"
#include "ftk/optim.h"
#include "ftk/safetensors.h"

#define FIX "tests/fixtures/peft_methods/adapters"
#define BASE "tests/fixtures/hf_tiny/llama"

static const struct ftk_backend *be;
static void *ctx;
static struct ftk_loss *loss;

static double rel_err(const float *got, const float *want, int64_t n)
{
    double md = 0, mw = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= md)) md = d;   /* NaN propagates as a failure */
        if (fabs(want[i]) > mw) mw = fabs(want[i]);
    }
    return md / (mw > 1e-30 ? mw : 1e-30);
}

static const struct ftk_tensor *exp_t(const struct ftk_st_model *e, const char *tag, const char *what, const char *name)
{
    char n[512];
    snprintf(n, sizeof n, "%s.%s%s%s", tag, what, name ? "." : "", name ? name : "");
    const struct ftk_tensor *t = ftk_st_model_find(e, n);
    if (!t)
        printf("  fixture lacks %s\n", n);
    return t;
}

static float scalar(const struct ftk_st_model *e, const char *tag, const char *what)
{
    const struct ftk_tensor *t = exp_t(e, tag, what, NULL);
    return t ? ((const float *)t->data)[0] : NAN;
}

static struct ftk_batch_view batch_of(const struct ftk_st_model *e)
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

static double loss_of_mode(struct ftk_model *m, const struct ftk_batch_view *b, int train)
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
static double loss_of(struct ftk_model *m, const struct ftk_batch_view *b) { return loss_of_mode(m, b, 0); }

static double step_grads(struct ftk_model *m, const struct ftk_batch_view *b)
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
static struct ftk_model *model_with(const char *name, const struct ftk_kv *opts, const char *dir, uint64_t seed)
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

static float *logits_of(struct ftk_model *m, const struct ftk_batch_view *b)
{
    int64_t V = ftk_model_get_config(m)->V;
    float *l = malloc((size_t)(b->B * b->T * V) * sizeof *l);
    CHECK_OK(ftk_model_logits(m, b, l));
    return l;
}

/* A gradient that vanishes in exact arithmetic (what torch has there is rounding noise). */
static int degenerate(const struct ftk_tensor *t)
{
    double mx = 0;
    for (int64_t j = 0; t && j < t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1); j++)
        mx = fmax(mx, fabs(((const float *)t->data)[j]));
    return t && mx < 1e-6;
}

/* Logits, loss, grads, grad norm, one AdamW step and the loss after it against `tag.*`; returns
 * the worst of the relative errors. */
static double parity(struct ftk_model *m, const struct ftk_st_model *e, const char *tag)
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

static void rm_dir(const char *dir)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

/* Saves the adapter, loads it into a fresh model by its adapter_config.json, compares logits. */
static void round_trip(struct ftk_model *m, const struct ftk_batch_view *b, const char *tag)
{
    char dir[512];
    const char *keep = getenv("FTK_ADAPTERS_OUT");
    if (keep && *keep) {
        mkdir(keep, 0777);
        snprintf(dir, sizeof dir, "%s/%s", keep, tag);
        mkdir(dir, 0777);
    } else {
        snprintf(dir, sizeof dir, "/tmp/ftk_adapters_XXXXXX");
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
static double fd_check(struct ftk_model *m, const struct ftk_batch_view *b, int count, double eps, const char *what, int train)
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
static void recompute_same(struct ftk_model *m, const struct ftk_batch_view *b, const char *what)
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

static struct ftk_st_model *fixture(void)
{
    struct ftk_st_model *e = NULL;
    CHECK_OK(ftk_st_file_open(FIX "/expected.safetensors", &e));
    return e;
}

static const char *const variants[] = {"houlsby", "pfeiffer", "parallel", "parallel_normed", "pfeiffer_drop", "pals",
                                       "pals_attn"};

/* A variant whose fixture directory loads by its adapter_config.json. */
static void check_dir(const char *tag)
{
    struct ftk_st_model *e = fixture();
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s", tag);
    struct ftk_model *m = model_with(NULL, NULL, dir, 0);
    if (m && e) {
        struct ftk_batch_view b = batch_of(e);
        parity(m, e, tag);
        round_trip(m, &b, tag);
    }
    ftk_model_free(m);
    m = model_with(NULL, NULL, dir, 0);   /* the fixture's weights again, for the gradient checks */
    if (m && e) {
        struct ftk_batch_view b = batch_of(e);
        /* relu's kink is within 1e-2 of some pre-activations: smaller steps there */
        double eps = strstr(tag, "pfeiffer") == tag || !strcmp(tag, "parallel") ? 1e-3 : 1e-2;
        fd_check(m, &b, 2, eps, tag, 0);
        ftk_model_set_recompute(m, 1);
        fd_check(m, &b, 1, eps, tag, 0);
        ftk_model_set_recompute(m, 0);
        recompute_same(m, &b, tag);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* AdapterFusion over the two stage-1 adapters TAG_a, TAG_b, with the oracle's fusion weights. */
static struct ftk_model *fusion_model(const struct ftk_st_model *e, const char *tag, const char *preset)
{
    char dirs[512];
    snprintf(dirs, sizeof dirs, FIX "/%s_a," FIX "/%s_b", tag, tag);
    const struct ftk_kv opts[] = {{"adapters", dirs}, {"fusion_config", preset}, {NULL, NULL}};
    struct ftk_model *m = model_with("adapter_fusion", opts, NULL, 0);
    for (size_t i = 0; m && i < ftk_model_n_trainable(m); i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        const struct ftk_tensor *t = exp_t(e, tag, "init", q->name);
        if (!t || t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1) != q->numel) { CHECK(0); continue; }
        CHECK_OK(be->to_device(ctx, q->w, t->data, (size_t)q->numel * sizeof(float)));
    }
    return m;
}

static void check_fusion(const char *tag, const char *preset)
{
    struct ftk_st_model *e = fixture();
    struct ftk_model *m = e ? fusion_model(e, tag, preset) : NULL;
    if (m) {
        struct ftk_batch_view b = batch_of(e);
        parity(m, e, tag);
        round_trip(m, &b, tag);
    }
    ftk_model_free(m);
    m = e ? fusion_model(e, tag, preset) : NULL;
    if (m) {
        struct ftk_batch_view b = batch_of(e);
        fd_check(m, &b, 2, 1e-2, tag, 0);
        ftk_model_set_recompute(m, 1);
        fd_check(m, &b, 1, 1e-2, tag, 0);
        ftk_model_set_recompute(m, 0);
        recompute_same(m, &b, tag);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* Greedy generation with the KV cache (ftk_generate) against the no-cache forward's argmax
 * token by token, and the decode steps' logits against the full forward's. */
static void check_generation(struct ftk_model *m, const char *what)
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
static void check_packed(struct ftk_model *m, const char *what)
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

int main(void)
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
    for (size_t i = 0; i < sizeof variants / sizeof *variants; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s against torch, finite differences, recompute, save/load", variants[i]);
        TEST(name) check_dir(variants[i]);
    }
    TEST("AdapterFusion (dynamic) of two Houlsby adapters against torch, finite differences, recompute, save/load")
        check_fusion("fusion", "dynamic");
    TEST("AdapterFusion (static) of two Pfeiffer adapters against torch, finite differences, recompute, save/load")
        check_fusion("fusion_static", "static");
    TEST("Houlsby adapters: KV-cache generation = the no-cache forward's greedy choice; packed rows") {
        struct ftk_model *m = model_with(NULL, NULL, FIX "/houlsby", 0);
        if (m) {
            check_generation(m, "houlsby");
            check_packed(m, "houlsby");
        }
        ftk_model_free(m);
        m = model_with(NULL, NULL, FIX "/parallel", 0);
        if (m)
            check_generation(m, "parallel");
        ftk_model_free(m);
    }
    TEST("AdapterFusion: generation, packed rows, the value regulariser before the update") {
        struct ftk_st_model *e = fixture();
        struct ftk_model *m = e ? fusion_model(e, "fusion", "dynamic") : NULL;
        if (m) {
            check_generation(m, "fusion");
            check_packed(m, "fusion");
            /* loss += 0.01 sum ||I - Wv||^2, dWv += 0.02 (Wv - I), per location */
            struct ftk_peft *p = ftk_model_peft(m);
            CHECK_OK(ftk_model_zero_grad(m));
            double reg = 1.5, want = 0, gerr = 0;
            CHECK_OK(ftk_peft_get_plugin(p)->before_update(p, &reg));
            int nv = 0;
            for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
                struct ftk_param *q = ftk_model_trainable(m, i);
                if (!strstr(q->name, ".value.weight"))
                    continue;
                nv++;
                for (int64_t j = 0; j < q->numel; j++) {
                    double d = q->w[j] - (j / q->shape[1] == j % q->shape[1] ? 1.0 : 0.0);
                    want += 0.01 * d * d;
                    gerr = fmax(gerr, fabs(q->g[j] - 0.02 * d));
                }
            }
            printf("  regulariser over %d value matrices: %.6f (by hand %.6f), gradient err %.1e\n", nv, reg - 1.5, want, gerr);
            CHECK_INT(nv, 4);
            CHECK_NEAR(reg - 1.5, want, 1e-6);
            CHECK(gerr <= 1e-7);
        }
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("PALs: packed rows keep documents apart; KV-cache generation is refused") {
        struct ftk_model *m = model_with(NULL, NULL, FIX "/pals", 0);
        if (m) {
            check_packed(m, "pals");
            const int32_t pr[3] = {5, 6, 7}, *pp[1] = {pr};
            int64_t len[1] = {3};
            struct ftk_gen_config gc;
            ftk_gen_config_init(&gc);
            gc.max_new_tokens = 2;
            gc.context = 16;
            struct ftk_gen_result r[1];
            CHECK_ERR(ftk_generate(m, NULL, &gc, 1, pp, len, NULL, NULL, r), FTK_E_UNSUPPORTED, "PALs cannot generate");
        }
        ftk_model_free(m);
    }
    TEST("AdapterDrop: no adapters in the first n layers; the robust variant draws n per training step") {
        struct ftk_st_model *e = fixture();
        struct ftk_batch_view b = batch_of(e);
        /* fixed: pfeiffer_drop (n = 1) has no layer-0 parameters and matched the torch model without them */
        struct ftk_model *m = model_with(NULL, NULL, FIX "/pfeiffer_drop", 0);
        for (size_t i = 0; m && i < ftk_model_n_trainable(m); i++)
            CHECK(!strstr(ftk_model_trainable(m, i)->name, "layers.0."));
        ftk_model_free(m);
        /* the Houlsby fixture's weights with adapter_drop_layers = 0, 1, 2 and the robust variant */
        double Ln[3];
        for (int n = 0; n <= 2; n++) {
            const struct ftk_kv o[] = {{"config", "houlsby"}, {"reduction_factor", "4"}, {"adapter_drop_robust", "true"},
                                       {"adapter_drop_layers", n == 0 ? "0" : n == 1 ? "1" : "2"}, {NULL, NULL}};
            m = model_with("bottleneck", o, NULL, 0);
            struct ftk_source *src;
            CHECK_OK(ftk_source_open(FIX "/houlsby", &src));
            if (m) {
                CHECK_OK(ftk_peft_get_plugin(ftk_model_peft(m))->load(ftk_model_peft(m), src));
                Ln[n] = loss_of(m, &b);   /* inference drops the first n */
            }
            ftk_source_close(src);
            if (m && n == 0) {   /* training: n drawn per step from {0, 1} (L = 2): both occur, each step is one of them */
                int seen[2] = {0, 0};
                for (int64_t st = 0; st < 12; st++) {
                    ftk_model_set_step(m, st);
                    double lt = loss_of_mode(m, &b, 1);
                    int k = fabs(lt - Ln[0]) < 1e-6 ? 0 : 1;
                    seen[k]++;
                    if (k == 1)
                        CHECK(fabs(lt - Ln[0]) > 1e-4);
                }
                printf("  robust AdapterDrop over 12 steps: n = 0 in %d, n = 1 in %d\n", seen[0], seen[1]);
                CHECK(seen[0] > 0 && seen[1] > 0);
                fd_check(m, &b, 1, 1e-2, "robust AdapterDrop, train-mode forwards", 1);
            }
            ftk_model_free(m);
        }
        /* n = 1 drops layer 0's adapters: the loss of the fixed-n model matches one train draw */
        const struct ftk_kv o1[] = {{"config", "houlsby"}, {"reduction_factor", "4"}, {"adapter_drop_layers", "1"}, {NULL, NULL}};
        m = model_with("bottleneck", o1, NULL, 0);
        if (m) {
            CHECK_INT(ftk_model_n_trainable(m), 8);   /* layer 1's two modules only */
            ftk_model_free(m);
        }
        printf("  losses with the first 0, 1, 2 layers dropped: %.6f %.6f %.6f\n", Ln[0], Ln[1], Ln[2]);
        CHECK(fabs(Ln[0] - scalar(e, "houlsby", "loss")) < 1e-5);
        CHECK(Ln[0] != Ln[1] && Ln[1] != Ln[2]);
        ftk_st_model_close(e);
    }
    TEST("bottleneck dropout: train-mode forwards draw the step's masks, backward uses the same") {
        struct ftk_st_model *e = fixture();
        struct ftk_batch_view b = batch_of(e);
        const struct ftk_kv o[] = {{"config", "houlsby"}, {"reduction_factor", "4"}, {"dropout", "0.3"}, {NULL, NULL}};
        struct ftk_model *m = model_with("bottleneck", o, NULL, 0);
        struct ftk_source *src;
        CHECK_OK(ftk_source_open(FIX "/houlsby", &src));
        if (m) {
            CHECK_OK(ftk_peft_get_plugin(ftk_model_peft(m))->load(ftk_model_peft(m), src));
            double le = loss_of(m, &b), lt = loss_of_mode(m, &b, 1), lt2 = loss_of_mode(m, &b, 1);
            printf("  eval %.6f (torch, no dropout %.6f), train %.6f twice %.6f\n", le, scalar(e, "houlsby", "loss"), lt, lt2);
            CHECK(fabs(le - scalar(e, "houlsby", "loss")) < 1e-5);
            CHECK(lt != le && lt == lt2);
            fd_check(m, &b, 1, 1e-2, "houlsby, dropout 0.3", 1);
        }
        ftk_source_close(src);
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("a fresh bottleneck adapter (mam_adapter init) leaves the model as it was; bert init does not") {
        struct ftk_st_model *e = fixture();
        struct ftk_batch_view b = batch_of(e);
        struct ftk_model *base = NULL;
        CHECK_OK(ftk_model_load(BASE, be, ctx, &base));
        float *l0 = base ? logits_of(base, &b) : NULL;
        static const char *cfgs[3] = {"houlsby", "pfeiffer", "parallel"};
        for (int i = 0; i < 3 && l0; i++) {
            const struct ftk_kv o[] = {{"config", cfgs[i]}, {NULL, NULL}};
            struct ftk_model *m = model_with("bottleneck", o, NULL, 7);
            if (m) {
                float *l1 = logits_of(m, &b);
                CHECK(rel_err(l1, l0, b.B * b.T * 64) == 0);
                free(l1);
            }
            ftk_model_free(m);
        }
        const struct ftk_kv ob[] = {{"config", "houlsby"}, {"init_weights", "bert"}, {NULL, NULL}};
        struct ftk_model *m = model_with("bottleneck", ob, NULL, 7);
        if (m && l0) {
            float *l1 = logits_of(m, &b);
            double d = rel_err(l1, l0, b.B * b.T * 64);
            printf("  bert init moves the logits by %.2e (relative)\n", d);
            CHECK(d > 0 && d < 1e-2);
            free(l1);
        }
        ftk_model_free(m);
        free(l0);
        ftk_model_free(base);
        ftk_st_model_close(e);
    }
    TEST("bad options are errors naming them") {
        struct {
            const char *plugin;
            struct ftk_kv o[4];
            ftk_status code;
            const char *msg;
        } bad[] = {
            {"bottleneck", {{"config", "lora"}}, FTK_E_INVALID, "config=lora"},
            {"bottleneck", {{"non_linearity", "softplus"}}, FTK_E_INVALID, "non_linearity=softplus"},
            {"bottleneck", {{"reduction_factor", "0"}}, FTK_E_INVALID, "reduction_factor=0"},
            {"bottleneck", {{"reduction_factor", "{\"1\": 8}"}}, FTK_E_UNSUPPORTED, "per-layer mapping"},
            {"bottleneck", {{"scaling", "big"}}, FTK_E_INVALID, "scaling"},
            {"bottleneck", {{"ln_after", "true"}}, FTK_E_UNSUPPORTED, "ln_after=true"},
            {"bottleneck", {{"use_gating", "true"}}, FTK_E_UNSUPPORTED, "use_gating"},
            {"bottleneck", {{"residual_before_ln", "post_add"}}, FTK_E_UNSUPPORTED, "residual_before_ln=post_add"},
            {"bottleneck", {{"leave_out", "0,7"}}, FTK_E_INVALID, "leave_out: \"7\""},
            {"bottleneck", {{"leave_out", "0,1"}}, FTK_E_INVALID, "no layer keeps an adapter"},
            {"bottleneck", {{"dropout", "1"}}, FTK_E_INVALID, "dropout=1"},
            {"bottleneck", {{"reduction", "4"}}, FTK_E_INVALID, "unknown option \"reduction\""},
            {"bottleneck", {{"mh_adapter", "false"}, {"output_adapter", "false"}}, FTK_E_INVALID, "no adapter"},
            {"pals", {{"d_s", "8"}, {"num_heads", "3"}}, FTK_E_INVALID, "num_heads=3 must divide d_s=8"},
            {"pals", {{"placement", "mlp"}}, FTK_E_INVALID, "placement=mlp"},
            {"adapter_fusion", {{"fusion_config", "dynamic"}}, FTK_E_INVALID, "needs adapters=DIR1"},
            {"adapter_fusion", {{"adapters", FIX "/houlsby," FIX "/parallel"}}, FTK_E_UNSUPPORTED, "parallel adapter"},
            {"adapter_fusion", {{"adapters", FIX "/houlsby," FIX "/pfeiffer"}}, FTK_E_UNSUPPORTED, "read different inputs"},
            {"adapter_fusion", {{"adapters", FIX "/houlsby," FIX "/pals"}}, FTK_E_INVALID, "not a bottleneck adapter"},
            {"adapter_fusion", {{"adapters", FIX "/pfeiffer," FIX "/pfeiffer_drop"}}, FTK_E_UNSUPPORTED, "differ at layer 0"},
            {"adapter_fusion", {{"adapters", FIX "/houlsby," FIX "/houlsby"}}, FTK_E_INVALID, "two adapters are named"},
            {"adapter_fusion", {{"adapters", FIX "/fusion_a"}, {"temperature", "true"}}, FTK_E_UNSUPPORTED, "temperature"},
        };
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            struct ftk_model *m = NULL;
            const struct ftk_peft_plugin *pl;
            CHECK_OK(ftk_model_load(BASE, be, ctx, &m));
            CHECK_OK(ftk_plugin_load_peft(bad[i].plugin, &pl));
            if (m && pl)
                CHECK_ERR(ftk_model_set_peft(m, pl, bad[i].o, 0, NULL), bad[i].code, bad[i].msg);
            ftk_model_free(m);
        }
        /* an adapter saved with other options: a shape mismatch naming the tensor */
        struct ftk_model *m = NULL;
        const struct ftk_peft_plugin *pl;
        CHECK_OK(ftk_model_load(BASE, be, ctx, &m));
        CHECK_OK(ftk_plugin_load_peft("bottleneck", &pl));
        const struct ftk_kv o[] = {{"config", "houlsby"}, {"reduction_factor", "2"}, {NULL, NULL}};
        CHECK_OK(ftk_model_set_peft(m, pl, o, 0, NULL));
        struct ftk_source *src;
        CHECK_OK(ftk_source_open(FIX "/houlsby", &src));
        CHECK_ERR(pl->load(ftk_model_peft(m), src), FTK_E_MISMATCH, "adapter_down.0.weight has shape [4,16]");
        ftk_source_close(src);
        ftk_model_free(m);
    }
    ftk_loss_free(loss);
    be->destroy(ctx);
    return check_summary();
}
