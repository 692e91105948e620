/* tests/unit/test_plugin_peft_methods.c: the `linear`-hook PEFT methods of issue 11 against
 * HuggingFace peft 0.21 (fixtures from tests/oracle/peft_methods.py) on the llama and qwen2
 * tiny models: (IA)^3, DoRA (lora use_dora), PiSSA and OLoRA inits (lora init_lora_weights),
 * BitFit (torch autograd as its oracle: peft has none). For each: logits, loss, gradients, the
 * clipped grad norm, one AdamW step, adapter files saved and loaded back (peft's adapters are
 * loaded too), and central differences of the loss against the plugin's backward.
 * Errors are max|got - want| / max|want| over each tensor (scale-free).
 * FTK_PEFT_METHODS_OUT=DIR keeps the adapters ftk saves after the step, for
 * tests/oracle/check_peft_methods.py (peft loads what ftk trains). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "ftk/model.h"
#include "ftk/optim.h"
#include "ftk/safetensors.h"

static const struct ftk_backend *be;
static void *ctx;
static struct ftk_loss *loss;

#define LORA_TARGETS "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

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

/* The sft token-mean loss of a forward (no gradients), in f64; train = 1 applies dropout with
 * the masks backward uses (they depend on seed, step and site only). */
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

/* Forward (train), the sft loss, backward; returns the loss. */
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

/* A tiny model with a method attached: from an adapter directory (adapter_config.json names
 * the plugin) when opts is NULL, else plugin `name` with opts, then (if dir) its load slot. */
static struct ftk_model *model_with(const char *arch, const char *name, const struct ftk_kv *opts, const char *dir)
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
        s = ftk_plugin_load_peft(name, &pl);
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

/* Logits, loss, grads, grad norm, one AdamW step and the loss after it against `tag.*`. */
static void parity(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag)
{
    struct ftk_batch_view b = batch_of(e);
    int64_t V = ftk_model_get_config(m)->V;
    float *lg = logits_of(m, &b);
    const struct ftk_tensor *want = exp_t(e, "%s.logits%s", tag, "");
    double err = want ? rel_err(lg, want->data, b.B * b.T * V) : 1;
    free(lg);
    double L0 = step_grads(m, &b);
    printf("  %s %s: logits rel err %.2e, loss %.7f (peft %.7f)\n", arch, tag, err, L0, scalar(e, tag, "loss"));
    CHECK(err <= 1e-4);
    CHECK_NEAR(L0, scalar(e, tag, "loss"), 1e-5);

    size_t K = ftk_model_n_trainable(m);
    double worst = 0;
    float *sq = calloc(K, sizeof *sq);
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        const struct ftk_tensor *t = exp_t(e, "%s.grad.%s", tag, q->name);
        if (!t || t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1) != q->numel) { CHECK(0); continue; }
        double r = rel_err(q->g, t->data, q->numel);
        if (!(r <= worst)) worst = r;
        CHECK_OK(be->sumsq(ctx, &sq[i], q->g, q->numel));
    }
    float total = 0, coef = 0;
    CHECK_OK(ftk_clip_grad_norm_coef(sq, (int64_t)K, 1.0f, &total, &coef));
    printf("  %s %s: grads (%zu tensors) worst rel err %.2e, grad norm %.6f (peft %.6f)\n", arch, tag, K, worst, total,
           scalar(e, tag, "grad_norm"));
    CHECK(worst <= 1e-3);
    CHECK_NEAR(total, scalar(e, tag, "grad_norm"), 1e-4);

    worst = 0;
    for (size_t i = 0; i < K; i++) {   /* torch AdamW, lr 1e-2, decay 0.01 where the param decays */
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
    double L1 = loss_of(m, &b);
    printf("  %s %s: after one AdamW step params worst rel err %.2e, loss %.7f (peft %.7f)\n", arch, tag, worst, L1,
           scalar(e, tag, "loss1"));
    CHECK(worst <= 1e-4);
    CHECK_NEAR(L1, scalar(e, tag, "loss1"), 1e-5);
    free(sq);
}

/* Saves the method's adapter, loads it into a fresh model (by its adapter_config.json, or
 * plugin + opts), and checks the logits are the same. */
static void round_trip(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag, const char *plugin,
                       const struct ftk_kv *opts)
{
    char dir[512];
    const char *keep = getenv("FTK_PEFT_METHODS_OUT");
    if (keep && *keep) {
        snprintf(dir, sizeof dir, "%s/%s", keep, arch);
        mkdir(keep, 0777);
        mkdir(dir, 0777);
        snprintf(dir, sizeof dir, "%s/%s/%s", keep, arch, tag);
        mkdir(dir, 0777);
    } else {
        snprintf(dir, sizeof dir, "/tmp/ftk_peft_methods_XXXXXX");
        CHECK(mkdtemp(dir) != NULL);
    }
    struct ftk_peft *p = ftk_model_peft(m);
    char base[256];
    snprintf(base, sizeof base, "tests/fixtures/hf_tiny/%s", arch);
    CHECK_OK(ftk_peft_get_plugin(p)->save(p, dir, base));
    struct ftk_model *r = model_with(arch, plugin, opts, dir);
    if (r) {
        struct ftk_batch_view b = batch_of(e);
        float *a = logits_of(m, &b), *c = logits_of(r, &b);
        double err = rel_err(c, a, b.B * b.T * ftk_model_get_config(m)->V);
        printf("  %s %s: saved and loaded back, logits rel err %.2e\n", arch, tag, err);
        CHECK(err <= 1e-6);
        free(a);
        free(c);
        ftk_model_free(r);
    }
    if (!(keep && *keep)) {
        char f[600];
        snprintf(f, sizeof f, "%s/adapter_model.safetensors", dir);
        unlink(f);
        snprintf(f, sizeof f, "%s/adapter_config.json", dir);
        unlink(f);
        rmdir(dir);
    }
}

/* The plugin's merge slot: the model saved with the deltas folded in (ftk_model_save merge=1)
 * and loaded without an adapter gives the adapter's logits. */
static void merged(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag)
{
    char dir[64], src[256];
    snprintf(dir, sizeof dir, "/tmp/ftk_peft_merged_XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(src, sizeof src, "tests/fixtures/hf_tiny/%s", arch);
    CHECK_OK(ftk_model_save(m, src, dir, FTK_DTYPE_F32, 1));
    struct ftk_model *r = NULL;
    CHECK_OK(ftk_model_load(dir, be, ctx, &r));
    if (r) {
        struct ftk_batch_view b = batch_of(e);
        float *a = logits_of(m, &b), *c = logits_of(r, &b);
        double err = rel_err(c, a, b.B * b.T * ftk_model_get_config(m)->V);
        printf("  %s %s: merged into the weights, logits rel err %.2e\n", arch, tag, err);
        CHECK(err <= 1e-5);
        free(a);
        free(c);
        ftk_model_free(r);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

/* Central differences of the loss (f64 sums of F32 forwards) against the analytic gradient at
 * `count` entries spread over the plugin parameters whose name contains `which`. */
static void fd_check(struct ftk_model *m, const struct ftk_st_model *e, const char *which, int count, double eps, const char *what,
                     int train)
{
    struct ftk_batch_view b = batch_of(e);
    step_grads(m, &b);
    size_t K = ftk_model_n_trainable(m), picked = 0;
    double worst = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        if (!strstr(q->name, which) || q->base)
            continue;
        for (int k = 0; k < count; k++) {
            int64_t j = (int64_t)((k * 7919 + (int)i * 131) % q->numel);
            float w0 = q->w[j];   /* host memory: the CPU backend */
            q->w[j] = w0 + (float)eps;
            double lp = loss_of_mode(m, &b, train);
            q->w[j] = w0 - (float)eps;
            double lm = loss_of_mode(m, &b, train);
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
}

static struct ftk_st_model *fixture(const char *arch)
{
    char p[256];
    snprintf(p, sizeof p, "tests/fixtures/peft_methods/%s/expected.safetensors", arch);
    struct ftk_st_model *e = NULL;
    CHECK_OK(ftk_st_file_open(p, &e));
    return e;
}

static const struct ftk_kv dora_opts[] = {
    {"r", "4"}, {"lora_alpha", "8"}, {"target_modules", LORA_TARGETS}, {"use_dora", "true"}, {NULL, NULL}};

static void check_ia3(const char *arch)
{
    struct ftk_st_model *e = fixture(arch);
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fixtures/peft_methods/%s/ia3", arch);
    struct ftk_model *m = model_with(arch, NULL, NULL, dir);   /* peft's adapter, by adapter_config.json */
    if (m && e) {
        parity(m, e, arch, "ia3");
        round_trip(m, e, arch, "ia3", NULL, NULL);
        if (!strcmp(arch, "llama"))   /* qwen2's q/v have biases: that merge is refused (below) */
            merged(m, e, arch, "ia3");
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

static void check_dora(const char *arch)
{
    struct ftk_st_model *e = fixture(arch);
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fixtures/peft_methods/%s/dora", arch);
    /* adapter.c refuses use_dora (docs/plugins.md): the lora plugin is attached directly */
    struct ftk_model *m = model_with(arch, "lora", dora_opts, dir);
    if (m && e) {
        parity(m, e, arch, "dora");
        round_trip(m, e, arch, "dora", "lora", dora_opts);
        merged(m, e, arch, "dora");
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

static void check_bitfit(const char *arch)
{
    struct ftk_st_model *e = fixture(arch);
    struct ftk_model *m = model_with(arch, "bitfit", (const struct ftk_kv[]){{NULL, NULL}}, NULL);
    if (m && e) {
        size_t K = ftk_model_n_trainable(m);
        CHECK_INT(K, 7 * ftk_model_get_config(m)->L);
        for (size_t i = 0; i < K; i++) {   /* the oracle's random biases */
            struct ftk_param *q = ftk_model_trainable(m, i);
            const struct ftk_tensor *t = exp_t(e, "bitfit.init.%s%s", q->name, "");
            if (t)
                CHECK_OK(be->to_device(ctx, q->w, t->data, (size_t)q->numel * sizeof(float)));
        }
        parity(m, e, arch, "bitfit");
        round_trip(m, e, arch, "bitfit", NULL, NULL);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* PiSSA/OLoRA: a fresh init equals peft's (A, B up to the sign of each rank component, which
 * leaves B A unchanged; the residual base weights exactly), then peft's saved adapter loads
 * (ftk runs the init again on the original base, as peft does) and trains like peft. */
static void check_init(const char *arch, const char *init)
{
    struct ftk_st_model *e = fixture(arch);
    const struct ftk_kv opts[] = {{"r", "4"}, {"lora_alpha", "8"}, {"target_modules", LORA_TARGETS},
                                  {"init_lora_weights", init}, {NULL, NULL}};
    struct ftk_model *m = model_with(arch, "lora", opts, NULL);
    if (m && e) {
        double wa = 0, wr = 0;
        for (size_t i = 0; i < ftk_model_n_trainable(m); i += 2) {
            struct ftk_param *A = ftk_model_trainable(m, i), *B = ftk_model_trainable(m, i + 1);
            const struct ftk_tensor *ta = exp_t(e, "%s.init.%s", init, A->name), *tb = exp_t(e, "%s.init.%s", init, B->name);
            if (!ta || !tb) { CHECK(0); continue; }
            const float *wa_ = ta->data, *wb_ = tb->data;
            int64_t r = A->shape[0], I = A->shape[1], O = B->shape[0];
            float *a = malloc((size_t)(r * I) * sizeof *a), *bb = malloc((size_t)(O * r) * sizeof *bb);
            for (int64_t k = 0; k < r; k++) {   /* align the sign of component k with peft's */
                double dot = 0;
                for (int64_t j = 0; j < I; j++)
                    dot += (double)A->w[k * I + j] * wa_[k * I + j];
                float sg = dot < 0 ? -1.0f : 1.0f;
                for (int64_t j = 0; j < I; j++)
                    a[k * I + j] = sg * A->w[k * I + j];
                for (int64_t o = 0; o < O; o++)
                    bb[o * r + k] = sg * B->w[o * r + k];
            }
            double ea = rel_err(a, wa_, r * I), eb = rel_err(bb, wb_, O * r);
            if (!(ea <= wa)) wa = ea;
            if (!(eb <= wa)) wa = eb;
            free(a);
            free(bb);
            char hf[300];
            snprintf(hf, sizeof hf, "%s", A->name + strlen("base_model.model."));
            *strstr(hf, ".lora_A.weight") = '\0';
            strcat(hf, ".weight");
            struct ftk_param *W = ftk_model_find_param(m, hf);
            const struct ftk_tensor *tw = exp_t(e, "%s.residual.%s", init, hf);
            if (!W || !tw) { CHECK(0); continue; }
            double er = rel_err(W->w, tw->data, W->numel);
            if (!(er <= wr)) wr = er;
        }
        struct ftk_batch_view b = batch_of(e);
        printf("  %s %s init: A, B worst rel err %.2e (signs aligned), residual W %.2e; loss %.7f (base %.7f)\n", arch, init, wa, wr,
               loss_of(m, &b), scalar(e, init, "loss"));
        CHECK(wa <= 1e-4);
        CHECK(wr <= 1e-5);
        if (!strcmp(arch, "llama"))
            fd_check(m, e, "lora_", 2, 1e-2, init, 0);
    }
    ftk_model_free(m);
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fixtures/peft_methods/%s/%s", arch, init);
    m = model_with(arch, NULL, NULL, dir);
    if (m && e) {
        parity(m, e, arch, init);
        round_trip(m, e, arch, init, NULL, NULL);
        merged(m, e, arch, init);   /* the residual in memory + s B A */
    }
    ftk_model_free(m);
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
    static const char *archs[] = {"llama", "qwen2"};
    for (int i = 0; i < 2; i++) {
        char name[96];
        snprintf(name, sizeof name, "(IA)3 against peft IA3 (%s)", archs[i]);
        TEST(name) check_ia3(archs[i]);
        snprintf(name, sizeof name, "DoRA against peft use_dora (%s)", archs[i]);
        TEST(name) check_dora(archs[i]);
        snprintf(name, sizeof name, "BitFit against torch autograd (%s)", archs[i]);
        TEST(name) check_bitfit(archs[i]);
        snprintf(name, sizeof name, "PiSSA init against peft (%s)", archs[i]);
        TEST(name) check_init(archs[i], "pissa");
        snprintf(name, sizeof name, "OLoRA init against peft (%s)", archs[i]);
        TEST(name) check_init(archs[i], "olora");
    }
    TEST("finite differences: (IA)3, DoRA magnitude (with and without dropout), BitFit (llama)") {
        struct ftk_st_model *e = fixture("llama");
        struct ftk_model *m = model_with("llama", NULL, NULL, "tests/fixtures/peft_methods/llama/ia3");
        if (m && e)
            fd_check(m, e, "ia3_l", 3, 1e-2, "ia3", 0);
        ftk_model_free(m);
        /* DoRA's A and B get peft's gradient with the norm detached (not the loss's derivative);
         * the magnitude's is exact, and layer 0's goes through layer 1's dx */
        m = model_with("llama", "lora", dora_opts, "tests/fixtures/peft_methods/llama/dora");
        if (m && e)
            fd_check(m, e, "magnitude", 3, 1e-2, "dora", 0);
        ftk_model_free(m);
        m = model_with("llama", "bitfit", (const struct ftk_kv[]){{NULL, NULL}}, NULL);
        if (m && e)
            fd_check(m, e, ".bias", 3, 1e-2, "bitfit", 0);
        ftk_model_free(m);
        /* DoRA with lora_dropout: the base path uses dropout(x) W^T too (peft), backward goes
         * through the same mask; train-mode forwards draw the masks again */
        const struct ftk_kv dd[] = {{"r", "4"}, {"lora_alpha", "8"}, {"target_modules", LORA_TARGETS}, {"use_dora", "true"},
                                    {"lora_dropout", "0.3"}, {NULL, NULL}};
        m = model_with("llama", "lora", dd, "tests/fixtures/peft_methods/llama/dora");
        if (m && e)
            fd_check(m, e, "magnitude", 3, 1e-2, "dora, dropout 0.3", 1);
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("BitFit and (IA)3 at one site: the paper formulas by hand (qwen2: q_proj has a bias, o_proj none)") {
        /* x (2,16) and dy (2,O) of small integers; y0 = x W^T + b as the model hands it over.
         * BitFit: y = x W^T + c, dc = sum_n dy, dx += 0.  (IA)3 (peft placement): k/v/q-like
         * y = (x W^T + b) * l, dl = sum_n dy * (x W^T + b), dx += dy diag(l - 1) W;
         * feed-forward y = (x * l) W^T + b, dl = sum_n (dy W) * x, dx += (dy W) * (l - 1). */
        static const char *plug[2] = {"bitfit", "ia3"};
        for (int pi = 0; pi < 2; pi++) {
            struct ftk_model *m;
            const struct ftk_peft_plugin *pl;
            struct ftk_peft *p = NULL;
            CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/qwen2", be, ctx, &m));
            CHECK_OK(ftk_plugin_load_peft(plug[pi], &pl));
            const struct ftk_kv bo[] = {{"target_modules", "q_proj,o_proj"}, {NULL, NULL}};
            const struct ftk_kv io[] = {{"target_modules", "q_proj,down_proj"}, {"feedforward_modules", "down_proj"}, {NULL, NULL}};
            CHECK_OK(ftk_model_set_peft(m, pl, pi ? io : bo, 0, &p));
            double worst = 0;
            for (size_t si = 0; p && si < ftk_peft_n_sites(p); si++) {
                const struct ftk_site *st = ftk_peft_site(p, si);
                if (st->layer != 0 || (st->kind != FTK_LIN_Q && st->kind != FTK_LIN_O && st->kind != FTK_LIN_DOWN))
                    continue;
                if ((pi == 0 && st->kind == FTK_LIN_DOWN) || (pi == 1 && st->kind == FTK_LIN_O))
                    continue;
                int64_t I = st->in, O = st->out, N = 2;
                char nm[300];
                snprintf(nm, sizeof nm, "%s.weight", st->module);
                const float *W = ftk_model_find_param(m, nm)->w;
                snprintf(nm, sizeof nm, "%s.bias", st->module);
                struct ftk_param *bp = ftk_model_find_param(m, nm);
                const float *bias = bp ? bp->w : NULL;
                snprintf(nm, sizeof nm, "base_model.model.%s.%s", st->module, pi ? "ia3_l" : "bias");
                struct ftk_param *q = ftk_model_find_param(m, nm);
                if (!q) { CHECK(0); continue; }
                int ff = pi && q->shape[0] == 1;
                CHECK_INT(ff, st->kind == FTK_LIN_DOWN);
                CHECK_INT(bias != NULL, st->kind == FTK_LIN_Q);   /* (IA)3 then scales the bias too */
                for (int64_t j = 0; j < q->numel; j++)   /* c = b + (j%5 - 2)/4, l = 1 + (j%3 - 1)/2 */
                    q->w[j] = pi ? 1.0f + (float)(j % 3 - 1) / 2 : (bias ? bias[j] : 0.0f) + (float)(j % 5 - 2) / 4;
                float *x = malloc((size_t)(N * I) * sizeof *x), *y = malloc((size_t)(N * O) * sizeof *y),
                      *want = malloc((size_t)(N * O) * sizeof *want), *dy = malloc((size_t)(N * O) * sizeof *dy),
                      *dx = calloc((size_t)(N * I), sizeof *dx), *dxw = calloc((size_t)(N * I), sizeof *dxw),
                      *gw = calloc((size_t)q->numel, sizeof *gw);
                for (int64_t j = 0; j < N * I; j++)
                    x[j] = (float)((j * 7) % 5 - 2);
                for (int64_t j = 0; j < N * O; j++)
                    dy[j] = (float)((j * 3) % 4 - 1);
                for (int64_t n = 0; n < N; n++)
                    for (int64_t o = 0; o < O; o++) {
                        double base = bias ? bias[o] : 0, sc = 0;
                        for (int64_t i = 0; i < I; i++) {
                            base += (double)x[n * I + i] * W[o * I + i];
                            sc += (double)x[n * I + i] * (ff ? q->w[i] : 1.0) * W[o * I + i];
                        }
                        y[n * O + o] = (float)base;
                        if (pi == 0)
                            want[n * O + o] = (float)(base - (bias ? bias[o] : 0) + q->w[o]);
                        else
                            want[n * O + o] = (float)(ff ? sc + (bias ? bias[o] : 0) : base * q->w[o]);
                        if (pi == 0)
                            gw[o] += dy[n * O + o];
                        else if (!ff)
                            gw[o] += (float)(dy[n * O + o] * base);
                    }
                for (int64_t n = 0; n < N && pi; n++)
                    for (int64_t i = 0; i < I; i++) {
                        double u = 0;
                        for (int64_t o = 0; o < O; o++)
                            u += (double)dy[n * O + o] * (ff ? 1.0 : q->w[o] - 1.0) * W[o * I + i];
                        dxw[n * I + i] = (float)(ff ? u * (q->w[i] - 1.0) : u);
                        if (ff)
                            gw[i] += (float)(u * x[n * I + i]);
                    }
                CHECK_OK(ftk_model_zero_grad(m));
                CHECK_OK(pl->linear_forward(p, st, y, x, N, 1));
                CHECK_OK(pl->linear_backward(p, st, dx, dy, x, N));
                double e1 = rel_err(y, want, N * O), e2 = rel_err(q->g, gw, q->numel), e3 = pi ? rel_err(dx, dxw, N * I) : 0;
                for (int64_t j = 0; j < N * I && pi == 0; j++)
                    CHECK(dx[j] == 0.0f);
                worst = fmax(worst, fmax(e1, fmax(e2, e3)));
                printf("  %s %s: y %.1e, grad %.1e, dx %.1e\n", plug[pi], st->module, e1, e2, e3);
                free(x), free(y), free(want), free(dy), free(dx), free(dxw), free(gw);
            }
            CHECK(worst <= 1e-6);
            ftk_model_free(m);
        }
    }
    TEST("bad options are errors naming them") {
        struct ftk_model *m;
        const struct ftk_peft_plugin *pl;
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
        CHECK_OK(ftk_plugin_load_peft("ia3", &pl));
        CHECK_ERR(ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"target_modules", "k_proj"}, {"feedforward_modules", "down_proj"}, {NULL, NULL}}, 0, NULL),
                  FTK_E_INVALID, "feedforward_modules");
        ftk_model_free(m);
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
        CHECK_OK(ftk_plugin_load_peft("lora", &pl));
        CHECK_ERR(ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"init_lora_weights", "loftq"}, {NULL, NULL}}, 0, NULL),
                  FTK_E_UNSUPPORTED, "init_lora_weights=loftq");
        ftk_model_free(m);
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
        CHECK_ERR(ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"init_lora_weights", "pissa_niter_x"}, {NULL, NULL}}, 0, NULL),
                  FTK_E_INVALID, "pissa_niter_x: N of pissa_niter_N must be a whole number");
        ftk_model_free(m);
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
        CHECK_ERR(ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"loraplus_lr_ratio", "-1"}, {NULL, NULL}}, 0, NULL),
                  FTK_E_INVALID, "loraplus_lr_ratio");
        ftk_model_free(m);
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/qwen2", be, ctx, &m));   /* (IA)3 on q_proj with a bias */
        CHECK_OK(ftk_model_load_adapter(m, "tests/fixtures/peft_methods/qwen2/ia3", 0));
        {
            struct ftk_peft *p = ftk_model_peft(m);
            float w[8 * 16];
            const struct ftk_site *q = NULL;
            for (size_t i = 0; i < ftk_peft_n_sites(p); i++)
                if (ftk_peft_site(p, i)->layer == 0 && ftk_peft_site(p, i)->kind == FTK_LIN_V)
                    q = ftk_peft_site(p, i);
            CHECK(q && q->out * q->in <= 8 * 16);
            if (q && q->out * q->in <= 8 * 16)
                CHECK_ERR(ftk_peft_get_plugin(p)->merge(p, q, w), FTK_E_UNSUPPORTED, "scale its bias");
        }
        ftk_model_free(m);
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/qwen3", be, ctx, &m));
        CHECK_ERR(ftk_model_load_adapter(m, "tests/fixtures/peft_methods/llama/ia3", 0), FTK_E_MISMATCH, "adapter for another base");
        ftk_model_free(m);
    }
    ftk_loss_free(loss);
    be->destroy(ctx);
    return check_summary();
}
