/* tests/unit/test_plugin_warp.c: WARP (plugins/peft/warp.c) and the core's head hook
 * (libcore/model_head.c) against tests/oracle/warp.py, a torch reference of the paper's formula on
 * transformers' tiny llama (lm_head of its own) and qwen3 (lm_head tied to embed_tokens), F32, CPU
 * backend, in both modes (class: softmax over the K classes, the paper's; full: lm_head with the K
 * rows replaced): logits, per-row log-probs, loss, gradients of the prompt and the verbalizer,
 * the grad norm, one AdamW step and the loss after it, through forward+backward and through the
 * fused forward_backward; central differences through the whole model; save and load back; the
 * tied embedding bit-identical after all of it; KV-cache generation equal to the argmax of
 * uncached forwards; the core's checks of a head plugin; bad options and labels.
 * Errors are max|got - want| / max|want| over each tensor. */
#include "check.h"
#include "plugin_check.h"

#define FIX "tests/fixtures/peft_methods/warp"
#define TOKENIZER "tests/fixtures/peft_methods/prompt_tuning/tokenizer"   /* "good" 34, "bad" 38 */
enum { P = 3, K = 3 };
static const int32_t IDS[K] = {34, 38, 7};

static double worst_all;

/* The mode's batch: "full" the models' batch, "class" only answers labelled. */
static struct ftk_batch_view mode_batch(const struct ftk_st_model *e, const char *mode)
{
    struct ftk_batch_view b = batch_of(e);
    if (!strcmp(mode, "class")) {
        const struct ftk_tensor *ids = ftk_st_model_find(e, "class.input_ids");
        b.B = ids->shape[0];
        b.T = ids->shape[1];
        b.input_ids = ids->data;
        b.labels = ftk_st_model_find(e, "class.labels")->data;
    }
    return b;
}

/* The same through ftk_model_forward_backward (SFT's dlogps known before: -1/n per row). */
static void fused_grads(struct ftk_model *m, const struct ftk_batch_view *b, float *logps)
{
    int64_t nt[16], tot = 0;
    CHECK_OK(ftk_model_forward(m, b, 0, logps, nt));
    for (int64_t i = 0; i < b->B; i++)
        tot += nt[i];
    float dl[16];
    for (int64_t i = 0; i < b->B; i++)
        dl[i] = -1.0f / (float)tot;
    CHECK_OK(ftk_model_zero_grad(m));
    CHECK_OK(ftk_model_forward_backward(m, b, dl, logps, nt));
}

static struct ftk_model *base_model(const char *arch)
{
    char p[256];
    snprintf(p, sizeof p, PC_TINY "%s", arch);
    struct ftk_model *m = NULL;
    CHECK_OK(ftk_model_load(p, be, ctx, &m));
    return m;
}

/* A tiny model with WARP: from an adapter directory when opts is NULL, else with opts. */
static struct ftk_model *model_with(const char *arch, const struct ftk_kv *opts, const char *dir)
{
    return tiny_with(arch, "warp", opts, dir);
}

static struct ftk_param *param(struct ftk_model *m, const char *name)
{
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++)
        if (!strcmp(ftk_model_trainable(m, i)->name, name))
            return ftk_model_trainable(m, i);
    CHECK(0);
    return NULL;
}

static const struct ftk_kv class_opts[] = {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34,38,7"}, {NULL, NULL}};
static const struct ftk_kv full_opts[] = {
    {"num_virtual_tokens", "3"}, {"verbalizer_ids", "34,38,7"}, {"mode", "full"}, {NULL, NULL}};
static const struct ftk_kv *opts_of(const char *mode) { return strcmp(mode, "class") ? full_opts : class_opts; }

/* Logits of the real tokens: full mode (B,T,V) against the reference's; class mode the K columns
 * against its (B,T,K) scores, -inf in every other column. */
static double mode_logits_err(struct ftk_model *m, const struct ftk_st_model *e, const char *mode, const struct ftk_batch_view *b)
{
    int64_t V = ftk_model_get_config(m)->V, n = b->B * b->T;
    float *lg = logits_of(m, b);
    const struct ftk_tensor *want = exp_t(e, mode, "logits", NULL);
    double err = 1;
    if (want && !strcmp(mode, "full")) {
        err = rel_err(lg, want->data, n * V);
    } else if (want) {
        float *cols = malloc((size_t)(n * K) * sizeof *cols);
        int others = 0;
        for (int64_t i = 0; i < n; i++) {
            for (int k = 0; k < K; k++)
                cols[i * K + k] = lg[i * V + IDS[k]];
            for (int64_t v = 0; v < V; v++)
                others += lg[i * V + v] == -INFINITY;
        }
        CHECK_INT(others, n * (V - K));
        err = rel_err(cols, want->data, n * K);
        free(cols);
    }
    free(lg);
    return err;
}

/* Everything against the reference, from its init. */
static void check_mode(const char *arch, const char *mode)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    struct ftk_model *m = model_with(arch, opts_of(mode), NULL);
    if (!m || !e)
        goto out;
    CHECK_INT(ftk_model_n_trainable(m), 2);
    /* the plugin's verbalizer init: embed_tokens rows of the class tokens, exactly */
    {
        const struct ftk_param *wte = ftk_model_find_param(m, "model.embed_tokens.weight");
        struct ftk_param *v = param(m, "verbalizer");
        int64_t C = ftk_model_get_config(m)->C;
        for (int k = 0; v && k < K; k++)
            CHECK(!memcmp(v->w + k * C, wte->w + (int64_t)IDS[k] * C, (size_t)C * sizeof(float)));
    }
    set_from(m, e, mode, "init");
    struct ftk_batch_view b = mode_batch(e, mode);
    double el = mode_logits_err(m, e, mode, &b);
    float lp[16], lpf[16];
    double L0 = step_grads_logps(m, &b, lp);
    double elp = rel_err(lp, exp_t(e, mode, "logps", NULL)->data, b.B);
    printf("  %s %s: logits rel err %.2e, row log-probs %.2e, loss %.7f (torch %.7f)\n", arch, mode, el, elp, L0,
           scalar(e, mode, "loss"));
    CHECK(el <= 1e-4);
    CHECK(elp <= 1e-4);
    CHECK_NEAR(L0, scalar(e, mode, "loss"), 1e-5);
    worst_all = fmax(worst_all, fmax(el, elp));

    static const char *names[] = {"prompt_embeddings", "verbalizer"};
    float *g0[2] = {NULL, NULL};
    double eg = 0;
    for (int i = 0; i < 2; i++) {
        struct ftk_param *q = param(m, names[i]);
        const struct ftk_tensor *t = exp_t(e, mode, "grad", names[i]);
        if (!q || !t) { CHECK(0); continue; }
        double r = rel_err(q->g, t->data, q->numel);
        printf("  %s %s: grad %s rel err %.2e\n", arch, mode, names[i], r);
        CHECK(r <= 1e-4);
        eg = fmax(eg, r);
        g0[i] = malloc((size_t)q->numel * sizeof(float));
        memcpy(g0[i], q->g, (size_t)q->numel * sizeof(float));
    }
    worst_all = fmax(worst_all, eg);
    float coef = 0, total = grad_norm(m, &coef);
    CHECK_NEAR(total, scalar(e, mode, "grad_norm"), 1e-5);

    /* the fused path: the same log-probs and gradients */
    fused_grads(m, &b, lpf);
    double ef = rel_err(lpf, lp, b.B);
    for (int i = 0; i < 2; i++)
        if (g0[i])
            ef = fmax(ef, rel_err(param(m, names[i])->g, g0[i], param(m, names[i])->numel));
    printf("  %s %s: forward_backward (fused path) vs forward + backward: %.2e\n", arch, mode, ef);
    CHECK(ef <= 1e-6);

    double es = 0;
    for (int i = 0; i < 2; i++) {   /* torch AdamW, lr 1e-2, weight decay 0.01 on both */
        struct ftk_param *q = param(m, names[i]);
        if (!q || !g0[i]) continue;
        memcpy(q->g, g0[i], (size_t)q->numel * sizeof(float));
        CHECK_INT(q->decay, 1);
        adamw_once(q, coef);
        const struct ftk_tensor *t = exp_t(e, mode, "step1", names[i]);
        if (t)
            es = fmax(es, rel_err(q->w, t->data, q->numel));
    }
    double L1 = loss_of_mode(m, &b, 0);
    printf("  %s %s: one AdamW step: params rel err %.2e, loss %.7f (torch %.7f)\n", arch, mode, es, L1,
           scalar(e, mode, "loss1"));
    CHECK(es <= 1e-4);
    CHECK_NEAR(L1, scalar(e, mode, "loss1"), 1e-5);
    worst_all = fmax(worst_all, es);
    free(g0[0]);
    free(g0[1]);
out:
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* Saved, loaded back by adapter_config.json: the same logits, log-probs and gradients. */
static void round_trip(const char *arch, const char *mode)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    struct ftk_model *m = model_with(arch, opts_of(mode), NULL), *r = NULL;
    char dir[64];
    if (!m || !e)
        goto out;
    set_from(m, e, mode, "step1");
    save_adapter(m, NULL, NULL, NULL, NULL, dir, sizeof dir);
    r = model_with(arch, NULL, dir);
    if (r) {
        struct ftk_batch_view b = mode_batch(e, mode);
        int64_t V = ftk_model_get_config(m)->V;
        float *a = logits_of(m, &b), *c = logits_of(r, &b), la[16], lc[16];
        int same = 0;
        for (int64_t i = 0; i < b.B * b.T * V; i++)
            same += a[i] == c[i] || (isinf(a[i]) && isinf(c[i]));
        step_grads_logps(m, &b, la);
        step_grads_logps(r, &b, lc);
        double gerr = 0;
        for (size_t i = 0; i < 2; i++) {
            struct ftk_param *q = ftk_model_trainable(m, i), *s = ftk_model_trainable(r, i);
            CHECK_STR(s->name, q->name);
            gerr = fmax(gerr, rel_err(s->g, q->g, q->numel));
        }
        printf("  %s %s: saved and loaded back: logits equal %d of %lld, log-probs rel err %.2e, grads %.2e\n", arch, mode,
               same, (long long)(b.B * b.T * V), rel_err(lc, la, b.B), gerr);
        CHECK_INT(same, b.B * b.T * V);
        CHECK(rel_err(lc, la, b.B) == 0);
        CHECK(gerr == 0);
        free(a);
        free(c);
        char f[128], *text = NULL;
        snprintf(f, sizeof f, "%s/adapter_config.json", dir);
        FILE *fp = fopen(f, "r");
        if (fp) {
            text = calloc(1, 8192);
            size_t got = fread(text, 1, 8191, fp);
            (void)got;
            fclose(fp);
        }
        CHECK(text && strstr(text, "\"peft_type\":\t\"WARP\""));
        CHECK(text && strstr(text, "\"verbalizer_ids\":\t[34, 38, 7]"));
        CHECK(text && strstr(text, !strcmp(mode, "class") ? "\"mode\":\t\"class\"" : "\"mode\":\t\"full\""));
        free(text);
    }
    rm_dir(dir);
out:
    ftk_model_free(m);
    ftk_model_free(r);
    ftk_st_model_close(e);
}

/* Central differences of the loss (f64 sums of F32 forwards, train mode) against the analytic
 * gradient at `count` entries of both tensors. */
static void fd_both(const char *arch, const char *mode, int count, double eps)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    struct ftk_model *m = model_with(arch, opts_of(mode), NULL);
    if (m && e) {
        set_from(m, e, mode, "init");
        struct ftk_batch_view b = mode_batch(e, mode);
        char what[64];
        snprintf(what, sizeof what, "%s %s", arch, mode);
        fd_check_tol(m, &b, NULL, count, eps, what, 1, 1e-3, 1e-2);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* Greedy generation through the KV cache (2 prompts batched) = uncached forwards' argmax;
 * `hits` counts generated class tokens. */
static void generation(struct ftk_model *m, const struct ftk_st_model *e, int n_new, int32_t *out0, int *hits)
{
    const int32_t *prompts[2];
    int64_t lens[2];
    struct ftk_gen_result r[2];
    generate_rows(m, e, n_new, prompts, lens, r);
    int same = 0;
    *hits = 0;
    for (int k = 0; k < 2; k++) {
        int32_t seq[64];
        memcpy(seq, prompts[k], (size_t)lens[k] * sizeof *seq);
        CHECK_INT(r[k].n, n_new);
        for (int64_t i = 0; i < r[k].n; i++) {
            int32_t want = argmax_uncached(m, seq, lens[k] + i);
            same += r[k].ids[i] == want;
            for (int c = 0; c < K; c++)
                *hits += r[k].ids[i] == IDS[c];
            seq[lens[k] + i] = r[k].ids[i];
            if (k == 0 && out0)
                out0[i] = r[k].ids[i];
        }
        ftk_gen_result_free(&r[k]);
    }
    CHECK_INT(same, 2 * n_new);
}

/* A head plugin of the test's own, to check what the core checks: K rows for ids `hp_ids`, lm_head
 * trainable (base_trainable) in full mode. */
static int32_t hp_ids[64];
static int64_t hp_k = K;
static int hp_cls;
struct hp_state { float *w, *g; };
static ftk_status hp_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    (void)o;
    struct hp_state *S = ftk_peft_priv(p);
    int64_t shape[2] = {64, ftk_peft_config(p)->C};
    FTK_TRY(ftk_peft_add_param(p, "rows", 2, shape, 1, &S->w, &S->g));
    for (int64_t i = 0; i < shape[0] * shape[1]; i++)
        S->w[i] = (float)sin(0.37 * (double)i);
    return FTK_OK;
}
static int hp_base(struct ftk_peft *p, const char *name) { (void)p; return !strcmp(name, "lm_head.weight"); }
static int64_t hp_rows(struct ftk_peft *p, const int32_t **ids, const float **rows, float **grads, int *cls)
{
    struct hp_state *S = ftk_peft_priv(p);
    *ids = hp_ids;
    *rows = S->w;
    *grads = S->g;
    *cls = hp_cls;
    return hp_k;
}
static const struct ftk_peft_plugin head_plugin = {
    .abi_version = FTK_PEFT_ABI, .struct_size = sizeof(struct ftk_peft_plugin), .name = "head_test",
    .priv_size = sizeof(struct hp_state), .init = hp_init, .base_trainable = hp_base, .head_rows = hp_rows,
};

int main(void)
{
    if (plugin_check_begin() != 0)
        return 1;
    static const char *archs[] = {"llama", "qwen3"}, *modes[] = {"class", "full"};
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 2; k++) {
            char name[128];
            snprintf(name, sizeof name, "WARP %s mode against the torch reference (%s%s)", modes[k], archs[a],
                     a ? ", tied lm_head" : "");
            TEST(name) check_mode(archs[a], modes[k]);
        }
    printf("worst relative error against the torch reference: %.2e\n", worst_all);
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 2; k++) {
            char name[128];
            snprintf(name, sizeof name, "central differences through the whole model, %s mode (%s)", modes[k], archs[a]);
            TEST(name) fd_both(archs[a], modes[k], 16, 1e-2);
        }
    for (int k = 0; k < 2; k++) {
        char name[128];
        snprintf(name, sizeof name, "save and load back, %s mode (llama, qwen3)", modes[k]);
        TEST(name) {
            round_trip("llama", modes[k]);
            round_trip("qwen3", modes[k]);
        }
    }
    TEST("the tied embedding (qwen3) and llama's lm_head are bit-identical after training, logits and generation") {
        for (int a = 0; a < 2; a++) {
            struct ftk_st_model *e = expected_of(FIX, archs[a]);
            struct ftk_model *m = model_with(archs[a], full_opts, NULL);
            if (m && e) {
                const struct ftk_param *w = ftk_model_find_param(m, a ? "model.embed_tokens.weight" : "lm_head.weight");
                size_t bytes = (size_t)w->numel * sizeof(float);
                float *before = malloc(bytes);
                memcpy(before, w->w, bytes);
                set_from(m, e, "full", "step1");
                struct ftk_batch_view b = mode_batch(e, "full");
                float lp[16];
                step_grads(m, &b);
                fused_grads(m, &b, lp);
                free(logits_of(m, &b));
                int hits;
                generation(m, e, 4, NULL, &hits);
                int same = !memcmp(before, w->w, bytes);
                printf("  %s: %s unchanged: %s\n", archs[a], w->name, same ? "yes" : "NO");
                CHECK(same);
                free(before);
            }
            ftk_model_free(m);
            ftk_st_model_close(e);
        }
    }
    TEST("generation through the KV cache = uncached forwards' argmax (full: the reference's tokens; class)") {
        for (int a = 0; a < 2; a++) {
            struct ftk_st_model *e = expected_of(FIX, archs[a]);
            struct ftk_model *m = model_with(archs[a], full_opts, NULL);
            if (m && e) {
                set_from(m, e, "full", "init");
                int32_t got[8];
                int hits;
                generation(m, e, 6, got, &hits);
                const struct ftk_tensor *t = exp_t(e, "full", "gen0", NULL);
                CHECK(t && !memcmp(got, t->data, 6 * sizeof(int32_t)));
                /* verbalizer rows scaled up: the replaced columns win, and generation follows them */
                struct ftk_param *v = param(m, "verbalizer");
                CHECK_OK(be->scale(ctx, v->w, v->numel, 6.0f));
                generation(m, e, 6, NULL, &hits);
                printf("  %s full: 6 tokens = the reference's; verbalizer x6: %d of 12 generated tokens are classes\n",
                       archs[a], hits);
                CHECK(hits > 0);
            }
            ftk_model_free(m);
            m = model_with(archs[a], class_opts, NULL);
            if (m && e) {
                set_from(m, e, "class", "init");
                int hits;
                generation(m, e, 5, NULL, &hits);
                printf("  %s class: %d of 10 generated tokens are classes\n", archs[a], hits);
                CHECK_INT(hits, 10);
            }
            ftk_model_free(m);
            ftk_st_model_close(e);
        }
    }
    TEST("class mode: a label outside the classes is an error naming row and position; eval log-probs") {
        struct ftk_st_model *e = expected_of(FIX, "llama");
        struct ftk_model *m = model_with("llama", class_opts, NULL);
        if (m && e) {
            set_from(m, e, "class", "init");
            struct ftk_batch_view b = mode_batch(e, "full");   /* row 0 labels 34 61 26 42 10 at 3..7 */
            float lp[16], dl[16] = {-1.0f, -1.0f};
            CHECK_ERR(ftk_model_forward(m, &b, 0, lp, NULL), FTK_E_INVALID,
                      "row 0, position 4: label 61 is not one of the 3 classes of peft \"warp\" (tokens 34, 38, 7)");
            CHECK_ERR(ftk_model_forward_backward(m, &b, dl, lp, NULL), FTK_E_INVALID, "row 0, position 4: label 61");
            struct ftk_batch_view c = mode_batch(e, "class");
            CHECK_OK(ftk_model_forward(m, &c, 0, lp, NULL));   /* eval mode: the reference's log-probs */
            CHECK(rel_err(lp, exp_t(e, "class", "logps", NULL)->data, 2) <= 1e-5);
            ftk_model_enable_adapter(m, 0);   /* adapter off: the base model's head, any label */
            CHECK_OK(ftk_model_forward(m, &b, 0, lp, NULL));
        }
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("verbalizer_words through the tokenizer; verbalizer_init=lm_head starts the full mode at the base head") {
        const struct ftk_kv wo[] = {{"num_virtual_tokens", "2"}, {"verbalizer_words", "good,bad"},
                                    {"tokenizer_name_or_path", TOKENIZER}, {NULL, NULL}};
        struct ftk_model *m = model_with("llama", wo, NULL);
        if (m) {
            CHECK_INT(param(m, "verbalizer")->numel, 2 * 16);
            char dir[64];
            save_adapter(m, NULL, NULL, NULL, NULL, dir, sizeof dir);
            struct ftk_model *r = model_with("llama", NULL, dir);   /* the saved ids, no tokenizer needed */
            if (r)
                CHECK(!memcmp(param(r, "verbalizer")->w, param(m, "verbalizer")->w, 32 * sizeof(float)));
            const float *wte = ftk_model_find_param(m, "model.embed_tokens.weight")->w;
            CHECK(!memcmp(param(m, "verbalizer")->w, wte + 34 * 16, 16 * sizeof(float)));
            CHECK(!memcmp(param(m, "verbalizer")->w + 16, wte + 38 * 16, 16 * sizeof(float)));
            ftk_model_free(r);
            rm_dir(dir);
        }
        ftk_model_free(m);
        /* lm_head rows in full mode: the logits are those of prompt tuning with the same prompt */
        const struct ftk_kv lo[] = {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34,38,7"}, {"mode", "full"},
                                    {"verbalizer_init", "lm_head"}, {NULL, NULL}};
        const struct ftk_kv po[] = {{"num_virtual_tokens", "3"}, {NULL, NULL}};
        struct ftk_st_model *e = expected_of(FIX, "llama");
        m = model_with("llama", lo, NULL);
        struct ftk_model *pt = base_model("llama");
        const struct ftk_peft_plugin *ptp;
        CHECK_OK(ftk_plugin_load_peft("prompt_tuning", &ptp));
        if (pt)
            CHECK_OK(ftk_model_set_peft(pt, ptp, po, 0, NULL));
        if (m && pt && e) {
            CHECK(!memcmp(param(m, "prompt_embeddings")->w, ftk_model_trainable(pt, 0)->w, 48 * sizeof(float)));
            struct ftk_batch_view b = mode_batch(e, "full");
            float *a = logits_of(m, &b), *c = logits_of(pt, &b);
            double err = rel_err(a, c, 2 * 8 * 64);
            float la[16], lc[16];
            CHECK_OK(ftk_model_forward(m, &b, 0, la, NULL));
            CHECK_OK(ftk_model_forward(pt, &b, 0, lc, NULL));
            printf("  verbalizer_init=lm_head, full mode vs prompt tuning with the same prompt: logits rel err %.2e "
                   "(the K columns by their own gemm), row log-probs %.2e\n", err, rel_err(la, lc, 2));
            CHECK(err <= 1e-6);
            CHECK(rel_err(la, lc, 2) == 0);   /* the same lm_head in the same op */
            free(a);
            free(c);
        }
        ftk_model_free(m);
        ftk_model_free(pt);
        ftk_st_model_close(e);
    }
    TEST("the core's head hook: checked ids; lm_head's gradient gets nothing at the replaced rows") {
        struct ftk_st_model *e = expected_of(FIX, "llama");
        struct ftk_model *m = base_model("llama");
        if (m && e) {
            memcpy(hp_ids, IDS, sizeof IDS);
            hp_cls = 0;
            CHECK_OK(ftk_model_set_peft(m, &head_plugin, NULL, 0, NULL));
            struct ftk_batch_view b = mode_batch(e, "full");
            float lp[16];
            step_grads(m, &b);
            const struct ftk_param *lm = ftk_model_find_param(m, "lm_head.weight");
            int zero_rows = 0, nonzero_other = 0;
            for (int64_t v = 0; v < 64; v++) {
                int is_id = v == 34 || v == 38 || v == 7, zero = 1;
                for (int64_t c = 0; c < 16; c++)
                    zero &= lm->g[v * 16 + c] == 0.0f;
                zero_rows += is_id && zero;
                nonzero_other += !is_id && !zero;
            }
            printf("  lm_head trains: gradient rows of the 3 replaced ids zero: %d, other rows non-zero: %d of 61\n",
                   zero_rows, nonzero_other);
            CHECK_INT(zero_rows, 3);
            CHECK_INT(nonzero_other, 61);
            hp_ids[2] = 34;
            CHECK_ERR(ftk_model_forward(m, &b, 0, lp, NULL), FTK_E_INVALID, "head rows 0 and 2 both replace token 34");
            hp_ids[2] = 64;
            CHECK_ERR(ftk_model_forward(m, &b, 0, lp, NULL), FTK_E_INVALID,
                      "head row 2 has token id 64 outside the vocabulary [0, 64)");
            float *l = malloc(2 * 8 * 64 * sizeof *l);
            CHECK_ERR(ftk_model_logits(m, &b, l), FTK_E_INVALID, "head row 2");
            free(l);
            for (int i = 0; i < 40; i++)   /* past 32 rows the core checks by a map of the vocabulary */
                hp_ids[i] = 63 - i;
            hp_k = 40;
            CHECK_OK(ftk_model_forward(m, &b, 0, lp, NULL));
            hp_ids[39] = 50;
            CHECK_ERR(ftk_model_forward(m, &b, 0, lp, NULL), FTK_E_INVALID, "head rows 13 and 39 both replace token 50");
            hp_k = K;
        }
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("bad options and adapters are errors naming them") {
        const struct bad_option bad[] = {
            {"warp", {{"verbalizer_ids", "34"}, {NULL, NULL}}, FTK_E_INVALID, "num_virtual_tokens is required"},
            {"warp", {{"num_virtual_tokens", "3"}, {NULL, NULL}}, FTK_E_INVALID, "WARP needs its classes: verbalizer_ids"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34,x"}, {NULL, NULL}}, FTK_E_INVALID,
             "verbalizer_ids: \"34,x\" is not a list of token ids"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34,,7"}, {NULL, NULL}}, FTK_E_INVALID, "is not a list of token ids"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34,38,34"}, {NULL, NULL}}, FTK_E_INVALID,
             "verbalizer_ids: token 34 given twice (classes 0 and 2)"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34,64"}, {NULL, NULL}}, FTK_E_INVALID,
             "verbalizer_ids: token id 64 outside the model's vocabulary [0, 64)"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "-1"}, {NULL, NULL}}, FTK_E_INVALID, "token id -1 outside"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34"}, {"mode", "softmax"}, {NULL, NULL}}, FTK_E_INVALID,
             "mode=softmax (class"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34"}, {"verbalizer_init", "random"}, {NULL, NULL}}, FTK_E_INVALID,
             "verbalizer_init=random (embed_tokens or lm_head)"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34"}, {"verbalizer_words", "good"}, {NULL, NULL}}, FTK_E_INVALID,
             "give verbalizer_ids or verbalizer_words, not both"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_words", "good"}, {NULL, NULL}}, FTK_E_INVALID,
             "verbalizer_words needs tokenizer_name_or_path"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_words", "good,dog"}, {"tokenizer_name_or_path", TOKENIZER}, {NULL, NULL}},
             FTK_E_INVALID, "verbalizer_words: \"dog\" is 2 tokens for this tokenizer, a class needs exactly one"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_words", "good,,bad"}, {"tokenizer_name_or_path", TOKENIZER}, {NULL, NULL}},
             FTK_E_INVALID, "word 1 of \"good,,bad\" is empty"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_words", "good,good"}, {"tokenizer_name_or_path", TOKENIZER}, {NULL, NULL}},
             FTK_E_INVALID, "token 34 given twice"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_words", "good"}, {"tokenizer_name_or_path", "no/such/dir"}, {NULL, NULL}},
             FTK_E_NOTFOUND, "verbalizer_words: tokenizer_name_or_path \"no/such/dir\""},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34"}, {"r", "8"}, {NULL, NULL}}, FTK_E_INVALID,
             "unknown option \"r\" for WARP"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34"}, {"prompt_tuning_init", "TEXT"}, {NULL, NULL}}, FTK_E_INVALID,
             "prompt_tuning_init=TEXT needs prompt_tuning_init_text"},
            {"warp", {{"num_virtual_tokens", "3"}, {"verbalizer_ids", "34"}, {"peft_type", "PROMPT_TUNING"}, {NULL, NULL}}, FTK_E_INVALID,
             "peft_type PROMPT_TUNING given to the WARP plugin"},
        };
        check_bad_options(bad, sizeof bad / sizeof *bad);
        /* an adapter whose verbalizer has other classes than its config says */
        struct ftk_model *m = model_with("llama", class_opts, NULL);
        if (m) {
            char dir[64], cmd[256];
            save_adapter(m, NULL, NULL, NULL, NULL, dir, sizeof dir);
            snprintf(cmd, sizeof cmd, "sed -i 's/\\[34, 38, 7\\]/[34, 38]/' '%s/adapter_config.json'", dir);
            CHECK(system(cmd) == 0);
            check_adapter_refused("llama", dir, FTK_E_MISMATCH, "verbalizer has shape [3,16], the model needs [2,16]");
            rm_dir(dir);
        }
        ftk_model_free(m);
    }
    return plugin_check_end();
}
