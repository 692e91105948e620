/* tests/unit/test_plugin_pref.c: the preference loss plugins (dpo, orpo, simpo, kto) against
 * TRL / LLaMA-Factory (fixtures from tests/oracle/pref_losses.py):
 *   each loss, its gradient d loss / d logps and its metrics on fixture log-probs (<= 1e-6
 *   relative), through ftk_loss_compute;
 *   one DPO and one KTO optimizer step on the tiny Llama + its peft LoRA adapter through the
 *   trainer, reference online (adapter off) and offline (ref_logps in the batch): loss,
 *   metrics, grad norm and LoRA parameters after the step (<= 1e-4 relative);
 *   and the errors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "ftk/model.h"
#include "ftk/safetensors.h"
#include "ftk/trainer.h"

static const struct ftk_backend *be;
static void *ctx;
static double worst_loss, worst_grad, worst_metric;

/* |a - b| / |b|, with a floor for values that are (near) zero. */
static double rel(double a, double b, double floor_) { return fabs(a - b) / fmax(fabs(b), floor_); }

static const struct ftk_tensor *fx(const struct ftk_st_model *e, const char *c, const char *what)
{
    char n[128];
    snprintf(n, sizeof n, "%s.%s", c, what);
    const struct ftk_tensor *t = ftk_st_model_find(e, n);
    if (!t)
        printf("  fixture lacks %s\n", n);
    return t;
}

struct lcase {
    const char *name, *plugin;
    const char *opts[4][2];
    int64_t accum;
};

/* The cases of tests/fixtures/pref/losses.json. */
static const struct lcase cases[] = {
    {"dpo_sigmoid", "dpo", {{"beta", "0.1"}}, 1},
    {"dpo_sigmoid_b05", "dpo", {{"beta", "0.5"}, {"loss_type", "sigmoid"}}, 1},
    {"dpo_cdpo", "dpo", {{"beta", "0.1"}, {"label_smoothing", "0.2"}}, 1},
    {"dpo_hinge", "dpo", {{"beta", "0.2"}, {"loss_type", "hinge"}}, 1},
    {"dpo_ipo", "dpo", {{"beta", "0.1"}, {"loss_type", "ipo"}}, 1},
    {"dpo_kto_pair", "dpo", {{"beta", "0.1"}, {"loss_type", "kto_pair"}}, 1},
    {"dpo_ftx_accum2", "dpo", {{"beta", "0.1"}, {"pref_ftx", "0.5"}}, 2},
    {"orpo", "orpo", {{"beta", "0.1"}}, 1},
    {"orpo_ftx", "orpo", {{"beta", "0.25"}, {"pref_ftx", "0.3"}}, 1},
    {"simpo", "simpo", {{"beta", "2.0"}, {"gamma", "0.5"}}, 1},
    {"simpo_ftx", "simpo", {{"beta", "2.5"}, {"gamma", "1.4"}, {"pref_ftx", "0.1"}}, 1},
    {"kto", "kto", {{"beta", "0.1"}}, 1},
    {"kto_weights", "kto", {{"beta", "0.3"}, {"desirable_weight", "1.0"}, {"undesirable_weight", "1.33"}}, 1},
    {"kto_kl_clamped", "kto", {{"beta", "0.1"}}, 1},
    {"kto_desirable_only", "kto", {{"beta", "0.1"}}, 3},
    {"kto_ftx", "kto", {{"beta", "0.1"}, {"pref_ftx", "0.2"}}, 1},
};

static struct ftk_loss *make_loss(const char *plugin, const char *const (*opts)[2])
{
    const struct ftk_loss_plugin *pl;
    struct ftk_loss *l = NULL;
    struct ftk_kv kv[5] = {{0}};
    for (int i = 0; i < 4 && opts && opts[i][0]; i++)
        kv[i] = (struct ftk_kv){opts[i][0], opts[i][1]};
    CHECK_OK(ftk_plugin_load_loss(plugin, &pl));
    CHECK_OK(ftk_loss_create(pl, kv, &l));
    return l;
}

static const char *const metric_names[] = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                                           "logps/chosen", "logps/rejected", "sft_loss", "odds_ratio_loss", "kl", NULL};

static void check_case(const struct ftk_st_model *e, const struct lcase *c)
{
    struct ftk_loss *l = make_loss(c->plugin, c->opts);
    if (!l)
        return;
    const struct ftk_tensor *lp = fx(e, c->name, "logps"), *rf = fx(e, c->name, "ref_logps"),
                            *nt = fx(e, c->name, "n_tokens"), *wl = fx(e, c->name, "loss"), *wg = fx(e, c->name, "dlogps");
    int64_t B = lp->shape[0];
    int64_t n[64];
    for (int64_t i = 0; i < B; i++)
        n[i] = ((const int32_t *)nt->data)[i];
    struct ftk_message msg;
    ftk_message_init(&msg);
    CHECK_OK(ftk_message_set_meta(&msg, "kind", "batch"));
    struct ftk_loss_batch lb = {.B = B, .pairwise = strcmp(c->plugin, "kto") != 0, .logps = lp->data,
                                .ref_logps = rf->data, .n_tokens = n, .batch = &msg, .accum = c->accum};
    if (!strcmp(c->plugin, "kto")) {
        const struct ftk_tensor *tag = fx(e, c->name, "kto_tag"), *kl = fx(e, c->name, "kl_logps"),
                                *klr = fx(e, c->name, "kl_ref_logps");
        CHECK_OK(ftk_message_add(&msg, "kto_tag", FTK_DTYPE_I32, 1, tag->shape, tag->data, NULL));
        lb.B_kl = kl->shape[0];
        lb.kl_logps = kl->data;
        lb.kl_ref_logps = klr->data;
    }
    float dl[64];
    double L = NAN;
    struct ftk_metrics met = {0};
    CHECK_OK(ftk_loss_compute(l, &lb, &L, dl, &met));
    double want = ((const float *)wl->data)[0], gmax = 0;
    double r = rel(L, want, 1e-12);
    worst_loss = fmax(worst_loss, r);
    if (!(r <= 1e-6))
        CHECK_FAIL_("%s: loss %.9g, TRL %.9g (rel %.2g)", c->name, L, want, r);
    for (int64_t i = 0; i < B; i++)
        gmax = fmax(gmax, fabs(((const float *)wg->data)[i]));
    for (int64_t i = 0; i < B; i++) {
        double w = ((const float *)wg->data)[i], g = rel(dl[i], w, 1e-3 * gmax + 1e-30);
        worst_grad = fmax(worst_grad, g);
        if (!(g <= 1e-6))
            CHECK_FAIL_("%s: dlogps[%lld] %.9g, TRL %.9g (rel %.2g)", c->name, (long long)i, (double)dl[i], w, g);
    }
    int n_fixture = 0;
    for (const char *const *mn = metric_names; *mn; mn++) {
        char what[64];
        snprintf(what, sizeof what, "m.%s", *mn);
        char full[128];
        snprintf(full, sizeof full, "%s.%s", c->name, what);
        const struct ftk_tensor *t = ftk_st_model_find(e, full);
        int j = 0;
        while (j < met.n && strcmp(met.name[j], *mn))
            j++;
        if (!t) {
            if (j < met.n)
                CHECK_FAIL_("%s: metric %s not in TRL's", c->name, *mn);
            continue;
        }
        n_fixture++;
        if (j == met.n) {
            CHECK_FAIL_("%s: metric %s missing", c->name, *mn);
            continue;
        }
        double w = ((const float *)t->data)[0], d = rel(met.value[j], w, 1e-6);
        worst_metric = fmax(worst_metric, d);
        if (!(d <= 1e-6))
            CHECK_FAIL_("%s: %s %.9g, TRL %.9g", c->name, *mn, met.value[j], w);
    }
    CHECK(n_fixture > 0);
    ftk_message_free(&msg);
    ftk_loss_free(l);
}

/* ---- training steps ------------------------------------------------------------------------ */

/* The batch of the step fixture as a message (prefix "dpo." or "kto."); with_ref adds the
 * fixture's reference log-probs (torch's) as ref_logps / kl_ref_logps. */
static void step_batch(const struct ftk_st_model *e, const char *kind, int with_ref, struct ftk_message *msg)
{
    static const char *const names[] = {"input_ids", "labels", "position_ids", "segment_ids", "kto_tag", "kl_input_ids",
                                        "kl_labels", "kl_position_ids", "kl_segment_ids", "ref_logps", "kl_ref_logps", NULL};
    ftk_message_init(msg);
    CHECK_OK(ftk_message_set_meta(msg, "kind", "batch"));
    CHECK_OK(ftk_message_set_meta(msg, !strcmp(kind, "dpo") ? "pairwise" : "kto", "1"));
    for (const char *const *n = names; *n; n++) {
        if (!with_ref && strstr(*n, "ref_logps"))
            continue;
        char full[96];
        snprintf(full, sizeof full, "%s.%s", kind, *n);
        const struct ftk_tensor *t = ftk_st_model_find(e, full);
        if (t)
            CHECK_OK(ftk_message_add(msg, *n, t->dtype, t->ndim, t->shape, t->data, NULL));
    }
}

static void check_step(const struct ftk_st_model *e, const char *kind, int offline)
{
    struct ftk_model *m = NULL;
    CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
    CHECK_OK(ftk_model_load_adapter(m, "tests/fixtures/hf_tiny/llama/adapter", 0));
    struct ftk_loss *l = make_loss(kind, (const char *const[][2]){{"beta", "0.1"}, {NULL, NULL}});
    struct ftk_train_config tc = {.lr = 1e-2, .weight_decay = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                                  .max_grad_norm = 1.0, .grad_accum = 1, .total_steps = 1, .schedule = FTK_SCHED_CONSTANT};
    struct ftk_trainer *t = NULL;
    CHECK_OK(ftk_trainer_create(m, l, &tc, &t));
    if (!t)
        return;
    if (!offline)
        ftk_trainer_set_reference(t, m);
    struct ftk_message msg;
    step_batch(e, kind, offline, &msg);
    int stepped = 0;
    struct ftk_step_result res;
    CHECK_OK(ftk_trainer_feed(t, &msg, &stepped, &res));
    CHECK_INT(stepped, 1);
    char n[160];
    snprintf(n, sizeof n, "%s.loss", kind);
    CHECK(rel(res.loss, ((const float *)ftk_st_model_find(e, n)->data)[0], 1e-12) <= 1e-4);
    snprintf(n, sizeof n, "%s.grad_norm", kind);
    CHECK(rel(res.grad_norm, ((const float *)ftk_st_model_find(e, n)->data)[0], 1e-12) <= 1e-4);
    printf("  %s %s: loss %.8f grad_norm %.6f\n", kind, offline ? "offline" : "online", res.loss, res.grad_norm);
    int nm = 0;
    for (int j = 0; j < res.metrics.n; j++) {
        snprintf(n, sizeof n, "%s.m.%s", kind, res.metrics.name[j]);
        const struct ftk_tensor *w = ftk_st_model_find(e, n);
        if (!w) {
            CHECK_FAIL_("%s: metric %s has no TRL value", kind, res.metrics.name[j]);
            continue;
        }
        nm++;
        double want = ((const float *)w->data)[0];
        if (!(rel(res.metrics.value[j], want, 1e-3) <= 1e-4))
            CHECK_FAIL_("%s: %s %.9g, TRL %.9g", kind, res.metrics.name[j], res.metrics.value[j], want);
    }
    CHECK_INT(nm, 6);   /* dpo: rewards x4, logps x2; kto: kl, rewards x3, logps x2 */
    double worst = 0;
    size_t np = 0;
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
        struct ftk_param *p = ftk_model_trainable(m, i);
        snprintf(n, sizeof n, "%s.step1.%s", kind, p->name);
        const struct ftk_tensor *w = ftk_st_model_find(e, n);
        if (!w) {
            CHECK_FAIL_("no expected value for %s", n);
            continue;
        }
        double md = 0, mw = 0;
        for (int64_t k = 0; k < p->numel; k++) {
            md = fmax(md, fabs((double)p->w[k] - ((const float *)w->data)[k]));
            mw = fmax(mw, fabs(((const float *)w->data)[k]));
        }
        worst = fmax(worst, md / mw);
        np++;
    }
    printf("  %s %s: %zu LoRA tensors after the step, worst rel err %.2g\n", kind, offline ? "offline" : "online", np, worst);
    CHECK(np > 0);
    CHECK(worst <= 1e-4);
    ftk_message_free(&msg);
    ftk_trainer_free(t);
    ftk_loss_free(l);
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
    struct ftk_st_model *e = NULL, *s = NULL;
    TEST("fixtures open") {
        CHECK_OK(ftk_st_file_open("tests/fixtures/pref/losses.safetensors", &e));
        CHECK_OK(ftk_st_file_open("tests/fixtures/pref/steps.safetensors", &s));
    }
    if (!e || !s)
        return check_summary();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[96];
        snprintf(name, sizeof name, "%s: loss, dlogps, metrics = TRL", cases[i].name);
        TEST(name) check_case(e, &cases[i]);
    }
    printf("  worst rel err: loss %.2g, dlogps %.2g, metrics %.2g\n", worst_loss, worst_grad, worst_metric);
    TEST("kto_pair, policy = reference (a LoRA's first step): no gradient through KL means of exactly 0") {
        /* torch's clamp(min=0) passes no gradient at 0 (torch 2.15: where(self > min)), so each
         * row keeps only its own term: d/d pc_i = -beta sig(0)(1 - sig(0)) / (2P), rejected +. */
        struct ftk_loss *l = make_loss("dpo", (const char *const[][2]){{"loss_type", "kto_pair"}, {NULL, NULL}});
        float lp[4] = {-3, -5, -4, -6}, dl[4];
        int64_t n[4] = {2, 2, 2, 2};
        struct ftk_loss_batch lb = {.B = 4, .pairwise = 1, .logps = lp, .ref_logps = lp, .n_tokens = n, .accum = 1};
        double L = 0;
        struct ftk_metrics met = {0};
        CHECK_OK(ftk_loss_compute(l, &lb, &L, dl, &met));
        CHECK(fabs(L - 0.5) < 1e-12);
        for (int i = 0; i < 4; i++)
            if (!(fabs(dl[i] - (i < 2 ? -0.00625 : 0.00625)) < 1e-9))
                CHECK_FAIL_("dlogps[%d] %.9g, torch %.9g", i, (double)dl[i], i < 2 ? -0.00625 : 0.00625);
        ftk_loss_free(l);
    }
    TEST("DPO step, online reference (adapter off) = TRL + peft") check_step(s, "dpo", 0);
    TEST("DPO step, ref_logps in the batch = TRL + peft") check_step(s, "dpo", 1);
    TEST("KTO step, online reference and KL rows = TRL + peft") check_step(s, "kto", 0);
    TEST("KTO step, ref_logps and kl_ref_logps in the batch = TRL + peft") check_step(s, "kto", 1);

    TEST("errors: options, batch kinds, missing reference and KL rows") {
        const struct ftk_loss_plugin *pl;
        struct ftk_loss *l = NULL;
        CHECK_OK(ftk_plugin_load_loss("dpo", &pl));
        struct ftk_kv bad_type[] = {{"loss_type", "nope"}, {0}}, unk[] = {{"betta", "1"}, {0}},
                      badls[] = {{"loss_type", "hinge"}, {"label_smoothing", "0.1"}, {0}};
        CHECK_ERR(ftk_loss_create(pl, bad_type, &l), FTK_E_INVALID, "loss_type=nope");
        CHECK_ERR(ftk_loss_create(pl, unk, &l), FTK_E_INVALID, "unknown option betta");
        CHECK_ERR(ftk_loss_create(pl, badls, &l), FTK_E_INVALID, "label_smoothing applies to loss_type=sigmoid only");
        CHECK_OK(ftk_loss_create(pl, NULL, &l));
        CHECK(ftk_loss_needs_ref(l) && !ftk_loss_needs_kl(l));
        float lp[3] = {-1, -2, -3}, rf[3] = {-1, -2, -3}, dl[3];
        int64_t n[3] = {1, 1, 1};
        double L;
        struct ftk_metrics met = {0};
        struct ftk_loss_batch lb = {.B = 3, .pairwise = 0, .logps = lp, .ref_logps = rf, .n_tokens = n, .accum = 1};
        CHECK_ERR(ftk_loss_compute(l, &lb, &L, dl, &met), FTK_E_INVALID, "needs pairwise batches");
        lb.ref_logps = NULL;
        lb.pairwise = 1;
        lb.B = 2;
        CHECK_ERR(ftk_loss_compute(l, &lb, &L, dl, &met), FTK_E_INVALID, "needs reference log-probs");
        ftk_loss_free(l);
        struct ftk_loss *k = make_loss("kto", NULL);
        CHECK(ftk_loss_needs_ref(k) && ftk_loss_needs_kl(k));
        lb.ref_logps = rf;
        CHECK_ERR(ftk_loss_compute(k, &lb, &L, dl, &met), FTK_E_INVALID, "kto needs KTO batches");
        struct ftk_message msg;
        ftk_message_init(&msg);
        int32_t tags[2] = {1, 0};
        int64_t sh[1] = {2};
        CHECK_OK(ftk_message_add(&msg, "kto_tag", FTK_DTYPE_I32, 1, sh, tags, NULL));
        lb.batch = &msg;
        CHECK_ERR(ftk_loss_compute(k, &lb, &L, dl, &met), FTK_E_INVALID, "KL rows");
        ftk_message_free(&msg);
        ftk_loss_free(k);
        struct ftk_loss *orpo = make_loss("orpo", NULL);
        CHECK(!ftk_loss_needs_ref(orpo));
        n[0] = 0;
        CHECK_ERR(ftk_loss_compute(orpo, &lb, &L, dl, &met), FTK_E_INVALID, "row 0 has no labelled tokens");
        ftk_loss_free(orpo);

        /* the trainer without a reference and a batch without ref_logps */
        struct ftk_model *m = NULL;
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
        CHECK_OK(ftk_model_load_adapter(m, "tests/fixtures/hf_tiny/llama/adapter", 0));
        struct ftk_loss *d = make_loss("dpo", NULL);
        struct ftk_train_config tc = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .grad_accum = 1,
                                      .total_steps = 1, .schedule = FTK_SCHED_CONSTANT};
        struct ftk_trainer *t = NULL;
        CHECK_OK(ftk_trainer_create(m, d, &tc, &t));
        struct ftk_message b;
        step_batch(s, "dpo", 0, &b);
        int stepped;
        struct ftk_step_result res;
        CHECK_ERR(ftk_trainer_feed(t, &b, &stepped, &res), FTK_E_INVALID, "the batch has no ref_logps");
        ftk_message_free(&b);
        ftk_trainer_free(t);
        ftk_loss_free(d);
        ftk_model_free(m);
    }
    ftk_st_model_close(e);
    ftk_st_model_close(s);
    be->destroy(ctx);
    return check_summary();
}
