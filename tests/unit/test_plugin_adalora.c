/* tests/unit/test_plugin_adalora.c: the adalora plugin against HuggingFace peft 0.21's ADALORA
 * (fixtures from tests/oracle/adalora.py) on the tiny llama model, F32, CPU backend:
 *   - peft's initial adapter loaded through its adapter_config.json: logits, cross-entropy, the
 *     orthogonal regulariser (before_update) and every gradient of their sum;
 *   - eight steps of ftk's trainer (before_update, clipping, AdamW, after_update = the rank
 *     allocator) against peft's HF-style loop: the loss and grad norm of each step, every
 *     parameter after each step, and which E entries the allocator masked;
 *   - the same eight steps with clipping engaged at every step (max_grad_norm 0.01, lr 5e-2;
 *     clipped.safetensors): the allocator ranks the clipped gradients, as peft's
 *     update_and_allocate after clip_grad_norm_ does (fed the unclipped ones, it masks other
 *     entries from step 2 on);
 *   - the trained adapter saved (kept ranks only, rank_pattern as peft writes it) and loaded
 *     back, peft's own trained adapter loaded, the merge slot;
 *   - central differences of the loss against linear_backward (with and without dropout) and
 *     of the regulariser against before_update's gradient;
 *   - bad options.
 * Errors are max|got - want| / max|want| over each tensor. FTK_ADALORA_OUT=DIR keeps the adapter
 * ftk saves after the steps, for tests/oracle/check_adalora.py (peft loads what ftk trains). */
#include <cjson/cJSON.h>
#include "check.h"
#include "ftk/trainer.h"
#include "plugin_check.h"

#define FIX "tests/fixtures/peft_methods/adalora"
#define LLAMA PC_TINY "llama"
#define STEPS 8

/* The tiny llama with an adapter directory loaded by its adapter_config.json (opts NULL), or
 * the adalora plugin with opts (and, if dir, its load slot). */
static struct ftk_model *model_with(const struct ftk_kv *opts, const char *dir)
{
    return model_at(LLAMA, "adalora", opts, dir, 0);
}

static const struct ftk_kv ada_opts[] = {
    {"init_r", "4"}, {"target_r", "2"}, {"lora_alpha", "8"}, {"tinit", "1"}, {"tfinal", "3"}, {"deltaT", "1"},
    {"total_step", "8"}, {"target_modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"}, {NULL, NULL}};

/* E entries zero in ftk and in peft's `step.<name>` tensors: *same = 1 when they are the same set. */
static int masked_vs(struct ftk_model *m, const struct ftk_st_model *e, const char *step, int *same)
{
    int n = 0;
    *same = 1;
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        if (!strstr(q->name, ".lora_E"))
            continue;
        char nm[400];
        snprintf(nm, sizeof nm, "%s.%s", step, q->name);
        const struct ftk_tensor *t = ftk_st_model_find(e, nm);
        for (int64_t j = 0; t && j < q->numel; j++) {
            int a = q->w[j] == 0.0f, b = ((const float *)t->data)[j] == 0.0f;
            n += a;
            *same &= a == b;
        }
    }
    return n;
}

/* rank_pattern of an adapter_config.json (NULL if none): the caller cJSON_Deletes the root. */
static cJSON *pattern_of(const char *dir, cJSON **root)
{
    char path[600];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "rb");
    *root = NULL;
    if (!f)
        return NULL;
    char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    *root = cJSON_Parse(buf);
    cJSON *rp = *root ? cJSON_GetObjectItemCaseSensitive(*root, "rank_pattern") : NULL;
    return cJSON_IsObject(rp) ? rp : NULL;
}

static void check_step0(const struct ftk_st_model *e)
{
    struct ftk_model *m = model_with(NULL, FIX "/init");   /* peft's adapter, by its config */
    if (!m)
        return;
    struct ftk_batch_view b = batch_of(e);
    double el = logits_err(m, e, NULL, "logits");
    double ce = step_grads(m, &b), reg = 0;
    struct ftk_peft *p = ftk_model_peft(m);
    CHECK_OK(ftk_peft_get_plugin(p)->before_update(p, &reg));
    double eg = trainables_vs(m, e, NULL, "grad", 1);
    printf("  logits rel err %.2e; cross-entropy %.7f (peft %.7f); 0.5 R %.7f (peft %.7f); loss %.7f (peft %.7f)\n", el, ce,
           scalar(e, NULL, "ce"), reg, 0.5 * scalar(e, NULL, "reg"), ce + reg, scalar(e, NULL, "loss"));
    printf("  grads (%zu tensors, regulariser included) worst rel err %.2e\n", ftk_model_n_trainable(m), eg);
    CHECK(el <= 1e-4);
    CHECK_NEAR(ce, scalar(e, NULL, "ce"), 1e-5);
    CHECK_NEAR(reg, 0.5 * scalar(e, NULL, "reg"), 1e-5);
    CHECK_NEAR(ce + reg, scalar(e, NULL, "loss"), 1e-5);
    CHECK(eg <= 1e-4);
    ftk_model_free(m);
}

/* A run of the eight trainer steps from peft's init, against a fixture of tests/oracle/adalora.py. */
struct steps_case {
    double lr, max_grad_norm;
    int clipped;   /* 1: every step's grad norm is above max_grad_norm, 0: none is */
};

/* The eight trainer steps; the trained model is returned for the file checks. */
static struct ftk_model *check_steps(const struct ftk_st_model *e, const struct steps_case *c)
{
    struct ftk_model *m = model_with(NULL, FIX "/init");
    if (!m)
        return NULL;
    struct ftk_train_config tc = {.lr = c->lr, .weight_decay = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                                  .max_grad_norm = c->max_grad_norm, .grad_accum = 1, .total_steps = STEPS,
                                  .schedule = FTK_SCHED_CONSTANT};
    struct ftk_trainer *t = NULL;
    CHECK_OK(ftk_trainer_create(m, loss, &tc, &t));
    if (!t) {
        ftk_model_free(m);
        return NULL;
    }
    struct ftk_message msg;
    batch_message(e, &msg);
    double wp = 0, wl = 0, wg = 0;
    for (int k = 0; k < STEPS; k++) {
        int stepped = 0;
        struct ftk_step_result res;
        CHECK_OK(ftk_trainer_feed(t, &msg, &stepped, &res));
        CHECK_INT(stepped, 1);
        char n[64], step[64];
        snprintf(n, sizeof n, "loss%d", k);
        float want_l = scalar(e, NULL, n);
        snprintf(n, sizeof n, "grad_norm%d", k);
        float want_g = scalar(e, NULL, n);
        snprintf(step, sizeof step, "step%d", k + 1);
        double ep = trainables_vs(m, e, NULL, step, 0), el = fabs(res.loss - want_l) / fabs(want_l);
        double eg = fabs(res.grad_norm - want_g) / fabs(want_g);
        int same, nm = masked_vs(m, e, step, &same);
        snprintf(n, sizeof n, "budget%d", k);
        printf("  step %d: loss %.7f (peft %.7f), grad norm %.6f (peft %.6f, %s), params rel err %.2e, "
               "E masked %d (budget %g of 56), %s\n", k, res.loss, want_l, res.grad_norm, want_g,
               res.grad_norm > c->max_grad_norm ? "clipped" : "not clipped", ep, nm, scalar(e, NULL, n),
               same ? "the same entries as peft" : "NOT peft's entries");
        CHECK(el <= 1e-5);
        CHECK(eg <= 1e-4);
        CHECK_INT(res.grad_norm > c->max_grad_norm, c->clipped);
        CHECK(ep <= 1e-4);
        CHECK(same);
        CHECK_INT(nm, 56 - (int)scalar(e, NULL, n));
        wp = fmax(wp, ep);
        wl = fmax(wl, el);
        wg = fmax(wg, eg);
    }
    printf("  over %d steps: loss worst rel err %.2e, grad norm worst rel err %.2e, params worst rel err %.2e\n", STEPS,
           wl, wg, wp);
    ftk_message_free(&msg);
    ftk_trainer_free(t);
    if (!ftk_st_model_find(e, "final.logits"))
        return m;
    double el = logits_err(m, e, "final", "logits");
    printf("  after %d steps: logits rel err %.2e\n", STEPS, el);
    CHECK(el <= 1e-4);
    return m;
}

/* Saves the trained adapter, compares its rank_pattern with peft's, loads it back. */
static void check_files(struct ftk_model *m, const struct ftk_st_model *e)
{
    char dir[512];
    int keep = save_adapter(m, LLAMA, "FTK_ADALORA_OUT", NULL, NULL, dir, sizeof dir);
    cJSON *r1, *r2;
    cJSON *mine = pattern_of(dir, &r1), *theirs = pattern_of(FIX "/final", &r2);
    CHECK(mine && theirs && cJSON_Compare(mine, theirs, 1));
    int kept = 0;
    const cJSON *s, *b;
    cJSON_ArrayForEach(s, mine) cJSON_ArrayForEach(b, s) kept += cJSON_IsTrue(b);
    printf("  saved: rank_pattern %s peft's (%d of 56 ranks kept)\n", mine && theirs && cJSON_Compare(mine, theirs, 1) ?
           "equals" : "DIFFERS FROM", kept);
    cJSON_Delete(r1);
    cJSON_Delete(r2);
    char path[600];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    struct ftk_st_model *st = NULL;
    CHECK_OK(ftk_st_file_open(path, &st));
    if (st) {   /* the kept ranks only, as peft saves them */
        const struct ftk_tensor *ta = ftk_st_model_find(st, "base_model.model.model.layers.1.self_attn.q_proj.lora_A"),
                                *tb = ftk_st_model_find(st, "base_model.model.model.layers.0.self_attn.o_proj.lora_B");
        CHECK(ta && ta->shape[0] == 0 && ta->shape[1] == 16);
        CHECK(tb && tb->shape[0] == 16 && tb->shape[1] == 4);
        CHECK_INT(ftk_st_model_count(st), 3 * 14);
        ftk_st_model_close(st);
    }
    struct ftk_batch_view b2 = batch_of(e);
    struct ftk_model *r = model_with(NULL, dir);
    if (r) {
        double err = logits_vs(r, m, &b2);
        printf("  saved and loaded back (by adapter_config.json): logits rel err %.2e\n", err);
        CHECK(err <= 1e-6);
        ftk_model_free(r);
    }
    if (!keep)
        rm_dir(dir);
}

/* The merge slot: the model saved with the deltas folded in gives the adapter's logits. */
static void check_merge(struct ftk_model *m, const struct ftk_st_model *e)
{
    struct ftk_batch_view b = batch_of(e);
    double err = merged_err(m, LLAMA, &b);
    printf("  merged into the weights: logits rel err %.2e\n", err);
    CHECK(err <= 1e-5);
}

/* Central differences of the regulariser (before_update's value) against the gradient
 * before_update adds, at `count` entries of each parameter whose name contains `which`. */
static void fd_check_reg(struct ftk_model *m, const char *which, int count, double eps, const char *what)
{
    struct ftk_peft *p = ftk_model_peft(m);
    const struct ftk_peft_plugin *pl = ftk_peft_get_plugin(p);
    double unused = 0;
    CHECK_OK(ftk_model_zero_grad(m));
    CHECK_OK(pl->before_update(p, &unused));
    size_t K = ftk_model_n_trainable(m), picked = 0;
    double worst = 0;
    float **gs = grads_copy(m);   /* the gradients now: every before_update below adds to them */
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        const float *g = gs[i];
        if (!strstr(q->name, which))
            continue;
        for (int k = 0; k < count; k++) {
            int64_t j = (int64_t)((k * 7919 + (int)i * 131) % q->numel);
            float w0 = q->w[j];   /* host memory: the CPU backend */
            double lv[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                q->w[j] = w0 + (float)(sgn ? -eps : eps);
                lv[sgn] = 0;
                CHECK_OK(pl->before_update(p, &lv[sgn]));
            }
            q->w[j] = w0;
            /* f64 sums, gradients ~1e-4: |g| floor 1e-5 */
            double fd = (lv[0] - lv[1]) / (2 * eps), gj = g[j];
            double d = fabs(fd - gj) / fmax(1e-5, fabs(gj));
            if (!(d <= worst)) worst = d;
            if (!(d <= 1e-2))
                printf("  %s %s[%lld]: fd %.6g, analytic %.6g\n", what, q->name, (long long)j, fd, gj);
            CHECK(d <= 1e-2);
            picked++;
        }
    }
    grads_free(m, gs);
    printf("  %s: %zu entries, worst |fd - g| / max(|g|, 1e-5) = %.2e\n", what, picked, worst);
    CHECK(picked > 0);
}

int main(void)
{
    if (plugin_check_begin() != 0)
        return 1;
    struct ftk_st_model *e = expected_of(FIX, NULL);
    if (!e)
        return plugin_check_end();
    TEST("step 0 against peft: logits, cross-entropy, orthogonal regulariser, gradients") check_step0(e);
    struct ftk_model *trained = NULL;
    TEST("8 trainer steps against peft: losses, grad norms, parameters, the allocator's masks") {
        static const struct steps_case plain = {.lr = 1e-2, .max_grad_norm = 1.0, .clipped = 0};
        trained = check_steps(e, &plain);
    }
    TEST("the trained adapter saved as peft saves it (rank_pattern, kept ranks) and loaded back")
        if (trained) check_files(trained, e);
    TEST("merge slot: the trained model with its deltas folded into the weights")
        if (trained) check_merge(trained, e);
    ftk_model_free(trained);
    TEST("8 steps clipped at every step (max_grad_norm 0.01, lr 5e-2): the allocator ranks clipped gradients") {
        static const struct steps_case clip = {.lr = 5e-2, .max_grad_norm = 0.01, .clipped = 1};
        struct ftk_st_model *ec = NULL;
        CHECK_OK(ftk_st_file_open(FIX "/clipped.safetensors", &ec));
        if (ec) {
            ftk_model_free(check_steps(ec, &clip));
            ftk_st_model_close(ec);
        }
    }
    TEST("peft's trained adapter (rank_pattern, ranks pruned to 0) loads and gives peft's logits") {
        struct ftk_model *m = model_with(NULL, FIX "/final");
        if (m) {
            double err = logits_err(m, e, "final", "logits");
            printf("  logits rel err %.2e\n", err);
            CHECK(err <= 1e-4);
            int same, nm = masked_vs(m, e, "step8", &same);
            CHECK(same);
            CHECK_INT(nm, 28);
            /* peft's loaded modules hold only the kept ranks: so does ftk's regulariser */
            double reg = 0;
            struct ftk_peft *p = ftk_model_peft(m);
            CHECK_OK(ftk_model_zero_grad(m));
            CHECK_OK(ftk_peft_get_plugin(p)->before_update(p, &reg));
            printf("  regulariser over the kept ranks: 0.5 R %.7f (peft loading it to train: %.7f)\n", reg,
                   0.5 * scalar(e, "final", "reg"));
            CHECK_NEAR(reg, 0.5 * scalar(e, "final", "reg"), 1e-5);
            ftk_model_free(m);
        }
    }
    TEST("finite differences: linear_backward (A, B, E; with dropout) and the regulariser's gradient") {
        struct ftk_model *m = model_with(ada_opts, FIX "/init");
        struct ftk_batch_view b = batch_of(e);
        if (m) {
            fd_check(m, &b, ".lora_A", 2, 1e-2, "cross-entropy, lora_A", 0);
            fd_check(m, &b, ".lora_B", 2, 1e-2, "cross-entropy, lora_B", 0);
            fd_check(m, &b, ".lora_E", 2, 1e-2, "cross-entropy, lora_E", 0);
            fd_check_reg(m, ".lora_", 2, 1e-3, "regulariser, lora_A/B/E");
        }
        ftk_model_free(m);
        struct ftk_kv dd[16];
        int n = 0;
        for (; ada_opts[n].key; n++)
            dd[n] = ada_opts[n];
        dd[n++] = (struct ftk_kv){"lora_dropout", "0.3"};
        dd[n] = (struct ftk_kv){NULL, NULL};
        m = model_with(dd, FIX "/init");
        if (m)
            fd_check(m, &b, ".lora_", 1, 1e-2, "cross-entropy with lora_dropout 0.3", 1);
        ftk_model_free(m);
    }
    TEST("a fresh init: E = 0, A and B ~ N(0, 0.02), so the output is the base model's") {
        struct ftk_model *m = model_with(ada_opts, NULL), *base = NULL;
        CHECK_OK(ftk_model_load(LLAMA, be, ctx, &base));
        if (m && base) {
            double s2 = 0;
            int64_t cnt = 0;
            for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
                struct ftk_param *q = ftk_model_trainable(m, i);
                for (int64_t j = 0; j < q->numel; j++) {
                    if (strstr(q->name, ".lora_E"))
                        CHECK(q->w[j] == 0.0f);
                    else
                        s2 += (double)q->w[j] * q->w[j], cnt++;
                }
            }
            struct ftk_batch_view b = batch_of(e);
            printf("  A, B sd %.4f over %lld entries; loss %.7f (base %.7f)\n", sqrt(s2 / (double)cnt), (long long)cnt,
                   loss_of_mode(m, &b, 0), loss_of_mode(base, &b, 0));
            CHECK(fabs(sqrt(s2 / (double)cnt) - 0.02) < 0.002);
            CHECK_NEAR(loss_of_mode(m, &b, 0), loss_of_mode(base, &b, 0), 1e-7);
        }
        ftk_model_free(m);
        ftk_model_free(base);
    }
    TEST("bad options are errors naming them") {
        static const struct { const char *k, *v; ftk_status code; const char *msg; } bad[] = {
            {"target_r", "5", FTK_E_INVALID, "target_r=5 must be in 0..init_r"},
            {"total_step", NULL, FTK_E_INVALID, "total_step is required"},
            {"total_step", "0", FTK_E_INVALID, "total_step is required"},
            {"tinit", "5", FTK_E_INVALID, "no budgeting phase"},
            {"deltaT", "0", FTK_E_INVALID, "deltaT=0"},
            {"beta1", "1", FTK_E_INVALID, "beta1=1"},
            {"orth_reg_weight", "-1", FTK_E_INVALID, "orth_reg_weight=-1"},
            {"init_r", "0", FTK_E_INVALID, "init_r=0"},
            {"use_dora", "true", FTK_E_UNSUPPORTED, "use_dora"},
            {"target_modules", "nothing", FTK_E_INVALID, "matches no linear layer"},
            {"rank_pattern", "{\"model.layers.0.self_attn.q_proj.lora_E\": [true, false]}", FTK_E_MISMATCH, "init_r = 4"},
            {"rank_pattern", "{\"model.layers.9.self_attn.q_proj.lora_E\": [true, true, true, true]}", FTK_E_MISMATCH,
             "not an AdaLoRA site"},
            {"lora_dropout", "1", FTK_E_INVALID, "lora_dropout=1"},
        };
        const struct ftk_peft_plugin *pl;
        CHECK_OK(ftk_plugin_load_peft("adalora", &pl));
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            struct ftk_kv kv[16];
            int n = 0;
            for (int j = 0; ada_opts[j].key; j++)
                if (strcmp(ada_opts[j].key, bad[i].k))
                    kv[n++] = ada_opts[j];
            if (bad[i].v)
                kv[n++] = (struct ftk_kv){bad[i].k, bad[i].v};
            kv[n] = (struct ftk_kv){NULL, NULL};
            check_refused("adalora", kv, bad[i].code, bad[i].msg);
        }
        /* peft's trained adapter (kept ranks only) with its rank_pattern dropped: shapes differ */
        struct ftk_model *m = NULL;
        CHECK_OK(ftk_model_load(LLAMA, be, ctx, &m));
        CHECK_OK(ftk_model_set_peft(m, pl, ada_opts, 0, NULL));
        struct ftk_source *src = NULL;
        CHECK_OK(ftk_source_open(FIX "/final", &src));
        if (src)
            CHECK_ERR(pl->load(ftk_model_peft(m), src), FTK_E_MISMATCH, "has shape [2,16], the model needs [4,16]");
        ftk_source_close(src);
        ftk_model_free(m);
    }
    ftk_st_model_close(e);
    return plugin_check_end();
}
