/* tests/unit/test_plugin_prefix_tuning.c: the prefix_tuning plugin (prefix tuning with peft's
 * MLP reparameterisation, prefix_projection=true, and P-tuning v2, prefix_projection=false)
 * against HuggingFace peft 0.21 PREFIX_TUNING (fixtures from tests/oracle/prefix_tuning.py) on
 * the llama (GQA, Llama 3 rope), qwen2 (q/k/v biases) and qwen3 (qk-norm, head_dim 8) tiny
 * models: logits, loss, every gradient, the clipped grad norm, one AdamW step and the loss after
 * it; peft's saved adapters load (also the projected one, whose MLP peft does not keep); ftk's
 * saved adapters load back both ways; greedy generation through the KV cache equals peft's
 * generate and ftk's own uncached argmax; central differences of the loss against the whole
 * backward (plugin MLP + the core's prefix attention); recompute and gradient accumulation;
 * bad options and adapters for another model shape.
 * Errors are max|got - want| / max|want| over each tensor (scale-free).
 * FTK_PREFIX_TUNING_OUT=DIR keeps the adapters ftk saves after the step, for
 * tests/oracle/check_prefix_tuning.py (peft loads what ftk trains). */
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

static const struct ftk_backend *be;
static void *ctx;
static struct ftk_loss *loss;

#define FIX "tests/fixtures/peft_methods/prefix_tuning"

static const struct ftk_kv proj_opts[] = {
    {"num_virtual_tokens", "3"}, {"prefix_projection", "true"}, {"encoder_hidden_size", "12"}, {NULL, NULL}};
static const struct ftk_kv noproj_opts[] = {{"num_virtual_tokens", "3"}, {NULL, NULL}};

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

static const struct ftk_tensor *exp_t(const struct ftk_st_model *e, const char *fmt, const char *a, const char *b)
{
    char n[512];
    snprintf(n, sizeof n, fmt, a, b);
    const struct ftk_tensor *t = ftk_st_model_find(e, n);
    if (!t)
        printf("  fixture lacks %s\n", n);
    return t;
}

static float scalar(const struct ftk_st_model *e, const char *tag, const char *what)
{
    const struct ftk_tensor *t = exp_t(e, "%s.%s", tag, what);
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

/* The sft token-mean loss of a forward (no gradients), in f64. */
static double loss_of(struct ftk_model *m, const struct ftk_batch_view *b)
{
    float logps[16];
    int64_t nt[16], tot = 0;
    double sum = 0;
    CHECK_OK(ftk_model_forward(m, b, 0, logps, nt));
    for (int64_t i = 0; i < b->B; i++) {
        sum += logps[i];
        tot += nt[i];
    }
    return -sum / (double)tot;
}

/* Forward (train), the sft loss, backward, gradients added to what they hold; returns the loss. */
static double accumulate_grads(struct ftk_model *m, const struct ftk_batch_view *b)
{
    float logps[16], dl[16];
    int64_t nt[16];
    double L = NAN;
    struct ftk_metrics met = {0};
    CHECK_OK(ftk_model_forward(m, b, 1, logps, nt));
    int64_t tot = 0;
    for (int64_t i = 0; i < b->B; i++)
        tot += nt[i];
    struct ftk_loss_batch lb = {.B = b->B, .logps = logps, .n_tokens = nt, .n_tokens_total = tot, .accum = 1};
    CHECK_OK(ftk_loss_compute(loss, &lb, &L, dl, &met));
    CHECK_OK(ftk_model_backward(m, dl));
    return L;
}
static double step_grads(struct ftk_model *m, const struct ftk_batch_view *b)
{
    CHECK_OK(ftk_model_zero_grad(m));
    return accumulate_grads(m, b);
}

/* A tiny model with the plugin: from an adapter directory (adapter_config.json names it) when
 * opts is NULL, else prefix_tuning with opts, then (if dir) its load slot. */
static struct ftk_model *model_with(const char *arch, const struct ftk_kv *opts, const char *dir)
{
    char p[256];
    snprintf(p, sizeof p, "tests/fixtures/hf_tiny/%s", arch);
    struct ftk_model *m = NULL;
    CHECK_OK(ftk_model_load(p, be, ctx, &m));
    if (!m)
        return NULL;
    ftk_status s;
    if (!opts) {
        s = ftk_model_load_adapter(m, dir, 0);
    } else {
        const struct ftk_peft_plugin *pl;
        s = ftk_plugin_load_peft("prefix_tuning", &pl);
        if (s == FTK_OK)
            s = ftk_model_set_peft(m, pl, opts, 0, NULL);
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

static float *logits_of(struct ftk_model *m, const struct ftk_batch_view *b)
{
    int64_t V = ftk_model_get_config(m)->V;
    float *l = malloc((size_t)(b->B * b->T * V) * sizeof *l);
    CHECK_OK(ftk_model_logits(m, b, l));
    return l;
}

static double logits_err(struct ftk_model *m, const struct ftk_st_model *e, const char *tag, const char *what)
{
    struct ftk_batch_view b = batch_of(e);
    float *lg = logits_of(m, &b);
    const struct ftk_tensor *want = exp_t(e, "%s.%s", tag, what);
    double err = want ? rel_err(lg, want->data, b.B * b.T * ftk_model_get_config(m)->V) : 1;
    free(lg);
    return err;
}

/* Sets every trainable tensor to the fixture's `tag.init.<name>`. */
static void set_init(struct ftk_model *m, const struct ftk_st_model *e, const char *tag)
{
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        const struct ftk_tensor *t = exp_t(e, "%s.init.%s", tag, q->name);
        if (!t || ftk_tensor_numel(t) != q->numel) { CHECK(0); continue; }
        CHECK_OK(be->to_device(ctx, q->w, t->data, (size_t)q->numel * sizeof(float)));
    }
}

/* Logits, loss, grads, grad norm, one AdamW step (decay 0.01 but on biases) and the loss after
 * it against `tag.*`; returns the worst relative error seen. */
static double parity(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag)
{
    struct ftk_batch_view b = batch_of(e);
    double err = logits_err(m, e, tag, "logits"), worst_all = err;
    double L0 = step_grads(m, &b);
    printf("  %s %s: logits rel err %.2e, loss %.7f (peft %.7f)\n", arch, tag, err, L0, scalar(e, tag, "loss"));
    CHECK(err <= 1e-4);
    CHECK_NEAR(L0, scalar(e, tag, "loss"), 1e-5);

    size_t K = ftk_model_n_trainable(m);
    CHECK_INT(K, strcmp(tag, "proj") ? 1 : 5);
    double worst = 0;
    float *sq = calloc(K, sizeof *sq);
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        CHECK_INT(q->decay, strstr(q->name, "bias") == NULL);
        const struct ftk_tensor *t = exp_t(e, "%s.grad.%s", tag, q->name);
        if (!t || ftk_tensor_numel(t) != q->numel) { CHECK(0); continue; }
        double r = rel_err(q->g, t->data, q->numel);
        if (!(r <= worst)) worst = r;
        CHECK_OK(be->sumsq(ctx, &sq[i], q->g, q->numel));
    }
    float total = 0, coef = 0;
    CHECK_OK(ftk_clip_grad_norm_coef(sq, (int64_t)K, 1.0f, &total, &coef));
    printf("  %s %s: grads (%zu tensors) worst rel err %.2e, grad norm %.6f (peft %.6f)\n", arch, tag, K, worst, total,
           scalar(e, tag, "grad_norm"));
    CHECK(worst <= 1e-4);
    CHECK_NEAR(total, scalar(e, tag, "grad_norm"), 1e-5);
    if (worst > worst_all) worst_all = worst;

    worst = 0;
    for (size_t i = 0; i < K; i++) {   /* torch AdamW, lr 1e-2 */
        struct ftk_param *q = ftk_model_trainable(m, i);
        float *mom = calloc((size_t)q->numel, sizeof *mom), *var = calloc((size_t)q->numel, sizeof *var);
        struct ftk_adamw_params hp = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                      .weight_decay = q->decay ? 0.01f : 0.0f, .step = 1, .grad_scale = coef};
        CHECK_OK(be->adamw_step(ctx, q->w, mom, var, q->g, q->numel, &hp));
        free(mom);
        free(var);
        const struct ftk_tensor *t = exp_t(e, "%s.step1.%s", tag, q->name);
        if (!t) { CHECK(0); continue; }
        double r = rel_err(q->w, t->data, q->numel);
        if (!(r <= worst)) worst = r;
    }
    double L1 = loss_of(m, &b), e1 = logits_err(m, e, tag, "logits1");
    printf("  %s %s: after one AdamW step params worst rel err %.2e, logits %.2e, loss %.7f (peft %.7f)\n", arch, tag,
           worst, e1, L1, scalar(e, tag, "loss1"));
    CHECK(worst <= 1e-4);
    CHECK(e1 <= 1e-4);
    CHECK_NEAR(L1, scalar(e, tag, "loss1"), 1e-5);
    if (worst > worst_all) worst_all = worst;
    free(sq);
    return worst_all;
}

static void rm_adapter(const char *dir)
{
    static const char *files[] = {"adapter_model.safetensors", "adapter_config.json", "prefix_encoder.safetensors"};
    char f[700];
    for (int i = 0; i < 3; i++) {
        snprintf(f, sizeof f, "%s/%s", dir, files[i]);
        unlink(f);
    }
    rmdir(dir);
}

/* Saves the adapter into `dir` (FTK_PREFIX_TUNING_OUT/arch/tag, else a temp dir). */
static void save_to(struct ftk_model *m, const char *arch, const char *tag, char *dir, size_t n)
{
    const char *keep = getenv("FTK_PREFIX_TUNING_OUT");
    if (keep && *keep) {
        snprintf(dir, n, "%s/%s", keep, arch);
        mkdir(keep, 0777);
        mkdir(dir, 0777);
        snprintf(dir, n, "%s/%s/%s", keep, arch, tag);
        mkdir(dir, 0777);
    } else {
        snprintf(dir, n, "/tmp/ftk_prefix_tuning_XXXXXX");
        CHECK(mkdtemp(dir) != NULL);
    }
    struct ftk_peft *p = ftk_model_peft(m);
    char base[256];
    snprintf(base, sizeof base, "tests/fixtures/hf_tiny/%s", arch);
    CHECK_OK(ftk_peft_get_plugin(p)->save(p, dir, base));
}

/* The saved adapter loads into a fresh model with the same logits: by adapter_config.json (the
 * MLP too, with the projection: it trains on), and as peft loads it (inference_mode, the
 * projected prefix only). */
static void round_trip(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag)
{
    char dir[512];
    save_to(m, arch, tag, dir, sizeof dir);
    int proj = !strcmp(tag, "proj");
    struct ftk_batch_view b = batch_of(e);
    int64_t n = b.B * b.T * ftk_model_get_config(m)->V;
    float *a = logits_of(m, &b);
    struct ftk_model *r = model_with(arch, NULL, dir);
    if (r) {
        float *c = logits_of(r, &b);
        double err = rel_err(c, a, n);
        printf("  %s %s: saved and loaded back by adapter_config.json (%zu tensors), logits rel err %.2e\n", arch, tag,
               ftk_model_n_trainable(r), err);
        CHECK(err <= 1e-6);
        CHECK_INT(ftk_model_n_trainable(r), proj ? 5 : 1);
        for (size_t i = 0; i < ftk_model_n_trainable(r); i++) {   /* the same parameters */
            struct ftk_param *q = ftk_model_trainable(r, i), *w = ftk_model_find_param(m, q->name);
            CHECK(w && w->numel == q->numel && !memcmp(w->w, q->w, (size_t)q->numel * sizeof(float)));
        }
        free(c);
        ftk_model_free(r);
    }
    if (proj) {
        const struct ftk_kv inf[] = {{"num_virtual_tokens", "3"}, {"prefix_projection", "true"}, {"encoder_hidden_size", "12"},
                                     {"inference_mode", "true"}, {NULL, NULL}};
        r = model_with(arch, inf, dir);
        if (r) {
            float *c = logits_of(r, &b);
            double err = rel_err(c, a, n);
            printf("  %s %s: loaded as peft does (inference_mode, prompt_embeddings only), logits rel err %.2e\n", arch, tag, err);
            CHECK(err <= 1e-6);
            CHECK_INT(ftk_model_n_trainable(r), 1);
            free(c);
            ftk_model_free(r);
        }
    }
    free(a);
    const char *keep = getenv("FTK_PREFIX_TUNING_OUT");
    if (!(keep && *keep))
        rm_adapter(dir);
}

/* Greedy ids: ftk_generate (KV cache: the prefix prefilled at positions 0..P-1) and the argmax
 * of full uncached forwards must agree; *gen_out gets the former. */
static void greedy(struct ftk_model *m, const int32_t *prompt, int64_t n, int64_t steps, int32_t *gen_out)
{
    struct ftk_gen_config gc;
    ftk_gen_config_init(&gc);
    gc.max_new_tokens = steps;
    gc.n_eos = 0;
    struct ftk_gen_result res = {0};
    const int32_t *prompts[1] = {prompt};
    CHECK_OK(ftk_generate(m, NULL, &gc, 1, prompts, &n, NULL, NULL, &res));
    CHECK_INT(res.n, steps);
    int64_t V = ftk_model_get_config(m)->V;
    int32_t *ids = malloc((size_t)(n + steps) * sizeof *ids);
    memcpy(ids, prompt, (size_t)n * sizeof *ids);
    for (int64_t k = 0; k < steps; k++) {
        int64_t T = n + k;
        float *lg = malloc((size_t)(T * V) * sizeof *lg);
        struct ftk_batch_view b = {.B = 1, .T = T, .input_ids = ids};
        CHECK_OK(ftk_model_logits(m, &b, lg));
        int32_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (lg[(T - 1) * V + v] > lg[(T - 1) * V + best])
                best = (int32_t)v;
        ids[T] = best;
        free(lg);
        if (k < res.n)
            CHECK_INT(res.ids[k], best);
        gen_out[k] = k < res.n ? res.ids[k] : -1;
    }
    free(ids);
    ftk_gen_result_free(&res);
}

static struct ftk_st_model *fixture(const char *arch)
{
    char p[256];
    snprintf(p, sizeof p, FIX "/%s/expected.safetensors", arch);
    struct ftk_st_model *e = NULL;
    CHECK_OK(ftk_st_file_open(p, &e));
    return e;
}

/* peft's saved adapter (prompt_embeddings only) loads with peft's logits, and generates greedily
 * as peft's generate does. */
static void check_peft_adapter(const char *arch, const char *tag)
{
    struct ftk_st_model *e = fixture(arch);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/%s", arch, tag);
    struct ftk_model *m = model_with(arch, NULL, dir);
    if (m && e) {
        double err = logits_err(m, e, tag, "logits");
        const struct ftk_tensor *pr = exp_t(e, "%s.%s", tag, "prompt"), *gw = exp_t(e, "%s.%s", tag, "gen");
        int32_t gen[64] = {0};
        if (pr && gw && gw->shape[0] <= 64) {
            greedy(m, pr->data, pr->shape[0], gw->shape[0], gen);
            int same = !memcmp(gen, gw->data, (size_t)gw->shape[0] * sizeof(int32_t));
            printf("  %s %s: peft's adapter: logits rel err %.2e; greedy generation of %lld tokens %s peft's\n", arch, tag, err,
                   (long long)gw->shape[0], same ? "equals" : "DIFFERS from");
            CHECK(same);
        } else {
            CHECK(0);
        }
        CHECK(err <= 1e-4);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

static void check_training(const char *arch, const char *tag)
{
    struct ftk_st_model *e = fixture(arch);
    int proj = !strcmp(tag, "proj");
    struct ftk_model *m = model_with(arch, proj ? proj_opts : noproj_opts, NULL);
    if (m && e) {
        set_init(m, e, tag);
        parity(m, e, arch, tag);
        round_trip(m, e, arch, tag);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* Central differences of the loss (f64 sums of F32 forwards) against the analytic gradient at
 * `count` entries of every plugin parameter. */
static void fd_check(struct ftk_model *m, const struct ftk_st_model *e, int count, double eps, const char *what)
{
    struct ftk_batch_view b = batch_of(e);
    step_grads(m, &b);
    size_t K = ftk_model_n_trainable(m), picked = 0;
    double worst = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        for (int k = 0; k < count; k++) {
            int64_t j = (int64_t)((k * 7919 + (int)i * 131) % q->numel);
            float w0 = q->w[j];   /* host memory: the CPU backend */
            q->w[j] = w0 + (float)eps;
            double lp = loss_of(m, &b);
            q->w[j] = w0 - (float)eps;
            double lm = loss_of(m, &b);
            q->w[j] = w0;
            double fd = (lp - lm) / (2 * eps), g = q->g[j];
            double d = fabs(fd - g) / fmax(1e-2, fabs(g));
            if (!(d <= worst)) worst = d;
            if (!(fabs(fd - g) <= 1e-3 + 1e-2 * fabs(g)))
                printf("  %s %s[%lld]: fd %.6g, backward %.6g\n", what, q->name, (long long)j, fd, g);
            CHECK(fabs(fd - g) <= 1e-3 + 1e-2 * fabs(g));
            picked++;
        }
    }
    printf("  %s: %zu entries, worst |fd - g| / max(|g|, 1e-2) = %.2e\n", what, picked, worst);
    CHECK(picked > 0);
}

/* Gradients with activation recompute equal those without; two accumulated backwards give twice. */
static void check_recompute_accum(const char *arch)
{
    struct ftk_st_model *e = fixture(arch);
    struct ftk_model *m = model_with(arch, proj_opts, NULL);
    if (m && e) {
        struct ftk_batch_view b = batch_of(e);
        step_grads(m, &b);
        size_t K = ftk_model_n_trainable(m);
        float *g0[8] = {0};
        for (size_t i = 0; i < K && i < 8; i++) {
            struct ftk_param *q = ftk_model_trainable(m, i);
            g0[i] = malloc((size_t)q->numel * sizeof(float));
            memcpy(g0[i], q->g, (size_t)q->numel * sizeof(float));
        }
        ftk_model_set_recompute(m, 1);
        step_grads(m, &b);
        double wr = 0, wa = 0;
        for (size_t i = 0; i < K && i < 8; i++) {
            struct ftk_param *q = ftk_model_trainable(m, i);
            double r = rel_err(q->g, g0[i], q->numel);
            if (!(r <= wr)) wr = r;
        }
        accumulate_grads(m, &b);
        for (size_t i = 0; i < K && i < 8; i++) {
            struct ftk_param *q = ftk_model_trainable(m, i);
            for (int64_t j = 0; j < q->numel; j++)
                g0[i][j] *= 2;
            double r = rel_err(q->g, g0[i], q->numel);
            if (!(r <= wa)) wa = r;
            free(g0[i]);
        }
        printf("  %s: recompute vs not, grads rel err %.2e; two accumulated backwards vs 2x one %.2e\n", arch, wr, wa);
        CHECK(wr <= 1e-6);
        CHECK(wa <= 1e-6);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* An option set that must be refused by init with `code` and a message containing `sub`. */
static void bad_opts(const struct ftk_kv *opts, ftk_status code, const char *sub)
{
    struct ftk_model *m = NULL;
    const struct ftk_peft_plugin *pl;
    CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
    CHECK_OK(ftk_plugin_load_peft("prefix_tuning", &pl));
    if (m)
        CHECK_ERR(ftk_model_set_peft(m, pl, opts, 0, NULL), code, sub);
    ftk_model_free(m);
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
    static const char *archs[] = {"llama", "qwen2", "qwen3"};
    static const char *tags[] = {"proj", "noproj"};
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 2; k++) {
            char name[128];
            snprintf(name, sizeof name, "%s against peft PREFIX_TUNING prefix_projection=%s (%s): one step, save, load",
                     k ? "P-tuning v2" : "prefix tuning", k ? "false" : "true", archs[i]);
            TEST(name) check_training(archs[i], tags[k]);
            snprintf(name, sizeof name, "peft's saved %s adapter: logits and greedy generation (%s)", tags[k], archs[i]);
            TEST(name) check_peft_adapter(archs[i], tags[k]);
        }
    TEST("finite differences through the MLP and the core's prefix attention (llama, qwen3; both modes)") {
        for (int i = 0; i < 3; i += 2) {
            struct ftk_st_model *e = fixture(archs[i]);
            for (int k = 0; k < 2; k++) {
                struct ftk_model *m = model_with(archs[i], k ? noproj_opts : proj_opts, NULL);
                char what[64];
                snprintf(what, sizeof what, "%s %s", archs[i], tags[k]);
                if (m && e) {
                    set_init(m, e, tags[k]);
                    fd_check(m, e, 4, 1e-2, what);
                }
                ftk_model_free(m);
            }
            ftk_st_model_close(e);
        }
    }
    TEST("recompute and gradient accumulation (qwen3, projection)") check_recompute_accum("qwen3");
    TEST("packed rows (segment_ids): each document sees the prefix, as if it were its own row") {
        struct ftk_model *m = model_with("qwen3", proj_opts, NULL);
        if (m) {
            static const int32_t ids[8] = {5, 9, 13, 2, 40, 41, 7, 7}, pos[8] = {0, 1, 2, 3, 0, 1, 2, 3},
                                 seg[8] = {1, 1, 1, 1, 2, 2, 2, 2};
            struct ftk_batch_view packed = {.B = 1, .T = 8, .input_ids = ids, .position_ids = pos, .segment_ids = seg},
                                  rows = {.B = 2, .T = 4, .input_ids = ids, .position_ids = pos};
            float *a = logits_of(m, &packed), *c = logits_of(m, &rows);
            double err = rel_err(a, c, 8 * ftk_model_get_config(m)->V);
            printf("  qwen3 proj: two packed documents vs two rows, logits rel err %.2e\n", err);
            CHECK(err <= 1e-6);
            free(a);
            free(c);
        }
        ftk_model_free(m);
    }
    TEST("a fresh adapter: seeded init, peft's shapes, trains and saves with the MLP") {
        struct ftk_model *m = model_with("qwen3", proj_opts, NULL), *m2 = model_with("qwen3", proj_opts, NULL);
        struct ftk_st_model *e = fixture("qwen3");
        if (m && m2 && e) {
            /* N(0,1) embedding, U(+-1/sqrt(fan_in)) linears: the moments of the draw */
            struct ftk_param *emb = ftk_model_find_param(m, "prompt_encoder.embedding.weight"),
                             *w2 = ftk_model_find_param(m, "prompt_encoder.transform.2.weight");
            CHECK(emb && w2);
            if (emb && w2) {
                CHECK_INT(emb->shape[0], 3);
                CHECK_INT(emb->shape[1], 16);   /* token_dim = 2 kv heads x head_dim 8 */
                CHECK_INT(w2->shape[0], 64);    /* 2 layers x 2 x 16 */
                CHECK_INT(w2->shape[1], 12);
                double mx = 0;
                for (int64_t j = 0; j < w2->numel; j++)
                    mx = fmax(mx, fabs(w2->w[j]));
                CHECK(mx <= 1 / sqrt(12.0) && mx > 0.2);
                CHECK(!memcmp(emb->w, ftk_model_find_param(m2, emb->name)->w, (size_t)emb->numel * sizeof(float)));
            }
            struct ftk_batch_view b = batch_of(e);
            double L0 = step_grads(m, &b);
            CHECK(isfinite(L0));
        }
        ftk_model_free(m);
        ftk_model_free(m2);
        ftk_st_model_close(e);
    }
    TEST("bad options are refused, naming the option") {
        bad_opts((const struct ftk_kv[]){{"num_virtual_tokens", "0"}, {NULL, NULL}}, FTK_E_INVALID, "num_virtual_tokens = 0");
        bad_opts((const struct ftk_kv[]){{"num_virtual_tokens", "abc"}, {NULL, NULL}}, FTK_E_INVALID, "num_virtual_tokens");
        bad_opts((const struct ftk_kv[]){{"prefix_projection", "maybe"}, {NULL, NULL}}, FTK_E_INVALID, "prefix_projection");
        bad_opts((const struct ftk_kv[]){{"prefix_projection", "true"}, {"encoder_hidden_size", "-4"}, {NULL, NULL}}, FTK_E_INVALID,
                 "encoder_hidden_size = -4");
        bad_opts((const struct ftk_kv[]){{"init_weights", "gaussian"}, {NULL, NULL}}, FTK_E_INVALID, "init_weights = gaussian");
        bad_opts((const struct ftk_kv[]){{"num_virtual_token", "3"}, {NULL, NULL}}, FTK_E_INVALID,
                 "unknown option \"num_virtual_token\"");
        bad_opts((const struct ftk_kv[]){{"task_type", "SEQ_CLS"}, {NULL, NULL}}, FTK_E_UNSUPPORTED, "task_type SEQ_CLS");
        bad_opts((const struct ftk_kv[]){{"num_transformer_submodules", "2"}, {NULL, NULL}}, FTK_E_UNSUPPORTED,
                 "num_transformer_submodules = 2");
        bad_opts((const struct ftk_kv[]){{"token_dim", "16"}, {NULL, NULL}}, FTK_E_MISMATCH, "token_dim = 16, but this model has 8");
        bad_opts((const struct ftk_kv[]){{"num_attention_heads", "4"}, {NULL, NULL}}, FTK_E_MISMATCH,
                 "num_attention_heads = 4, but this model has 2 (key/value heads)");
    }
    TEST("adapters for another model shape, or incomplete, give clear errors") {
        struct ftk_model *m = NULL;
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/qwen3", be, ctx, &m));
        if (m)   /* llama's keys are 2 heads x 4, qwen3's 2 x 8 */
            CHECK_ERR(ftk_model_load_adapter(m, FIX "/llama/proj", 0), FTK_E_MISMATCH,
                      "token_dim = 8, but this model has 16 (key/value heads x head_dim): adapter for another base?");
        ftk_model_free(m);
        /* the file's prefix length disagrees with the options */
        m = NULL;
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
        const struct ftk_peft_plugin *pl;
        CHECK_OK(ftk_plugin_load_peft("prefix_tuning", &pl));
        if (m && ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"num_virtual_tokens", "4"}, {NULL, NULL}}, 0, NULL) == FTK_OK) {
            struct ftk_source *src;
            CHECK_OK(ftk_source_open(FIX "/llama/noproj", &src));
            CHECK_ERR(pl->load(ftk_model_peft(m), src), FTK_E_MISMATCH,
                      "prompt_embeddings has shape [3,32], this model with num_virtual_tokens=4 needs [4,32]");
            ftk_source_close(src);
        }
        ftk_model_free(m);
        /* merging is refused, not silently dropped (the prefix is no weight delta) */
        m = model_with("llama", noproj_opts, NULL);
        if (m) {
            char dir[64];
            snprintf(dir, sizeof dir, "/tmp/ftk_prefix_merge_XXXXXX");
            CHECK(mkdtemp(dir) != NULL);
            CHECK_ERR(ftk_model_save(m, "tests/fixtures/hf_tiny/llama", dir, FTK_DTYPE_F32, 1), FTK_E_UNSUPPORTED,
                      "peft \"prefix_tuning\" cannot be merged into the weights");
            rmdir(dir);
        }
        ftk_model_free(m);
        /* ftk's projection adapter without its prefix_encoder.safetensors */
        m = model_with("llama", proj_opts, NULL);
        if (m) {
            char dir[512], f[700];
            save_to(m, "llama", "incomplete", dir, sizeof dir);
            snprintf(f, sizeof f, "%s/prefix_encoder.safetensors", dir);
            CHECK(unlink(f) == 0);
            struct ftk_model *r = NULL;
            CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &r));
            if (r)
                CHECK_ERR(ftk_model_load_adapter(r, dir, 0), FTK_E_NOTFOUND, "prefix_encoder.safetensors is missing");
            ftk_model_free(r);
            rm_adapter(dir);
        }
        ftk_model_free(m);
    }
    ftk_loss_free(loss);
    be->destroy(ctx);
    return check_summary();
}
