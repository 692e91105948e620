/* tests/unit/test_plugin_loraplus.c: LoRA+ (the lora plugin's loraplus_lr_ratio) against torch
 * AdamW with the parameter groups of peft 0.21's create_loraplus_optimizer (fixtures from
 * tests/oracle/loraplus.py) on the tiny llama model, F32, CPU backend: each parameter's learning
 * rate, then two steps of ftk's trainer (clipping 1.0, AdamW lr 1e-2, weight decay 0.01, ratio
 * 16): loss, grad norm and every parameter after each step; plain LoRA (lora_B at 16 lr) and DoRA
 * (its 1-D magnitude too). A run without the ratio must miss peft's step (the test can fail).
 * Errors are max|got - want| / max|want| over each tensor. */
#include "check.h"
#include "ftk/trainer.h"
#include "plugin_check.h"

#define FIX "tests/fixtures/peft_methods/loraplus"
#define TARGETS "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

/* The tiny llama with the lora plugin (opts) and peft's saved adapter of `tag`. */
static struct ftk_model *model_with(const struct ftk_kv *opts, const char *tag)
{
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s", tag);
    return model_at(PC_TINY "llama", "lora", opts, dir, 0);
}

/* Two trainer steps; returns the worst parameter error over them. */
static double train2(struct ftk_model *m, const struct ftk_st_model *e, const char *tag, int report)
{
    struct ftk_train_config tc = {.lr = 1e-2, .weight_decay = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                                  .max_grad_norm = 1.0, .grad_accum = 1, .total_steps = 2, .schedule = FTK_SCHED_CONSTANT};
    struct ftk_trainer *t = NULL;
    CHECK_OK(ftk_trainer_create(m, loss, &tc, &t));
    if (!t)
        return INFINITY;
    struct ftk_message msg;
    batch_message(e, &msg);
    double worst_all = 0;
    for (int k = 0; k < 2; k++) {
        int stepped = 0;
        struct ftk_step_result res;
        CHECK_OK(ftk_trainer_feed(t, &msg, &stepped, &res));
        char what[32];
        snprintf(what, sizeof what, "step%d", k + 1);
        double worst = trainables_vs(m, e, tag, what, 0);
        snprintf(what, sizeof what, "loss%d", k);
        float wl = scalar(e, tag, what);
        snprintf(what, sizeof what, "grad_norm%d", k);
        float wg = scalar(e, tag, what);
        if (report) {
            printf("  %s step %d: loss %.7f (peft %.7f), grad norm %.6f (peft %.6f), params worst rel err %.2e\n", tag, k,
                   res.loss, wl, res.grad_norm, wg, worst);
            CHECK(fabs(res.loss - wl) <= 1e-5 * fabs(wl));
            CHECK(fabs(res.grad_norm - wg) <= 1e-4 * fabs(wg));
        }
        worst_all = fmax(worst_all, worst);
    }
    ftk_message_free(&msg);
    ftk_trainer_free(t);
    return worst_all;
}

static void check(const struct ftk_st_model *e, const char *tag, int dora)
{
    const struct ftk_kv opts[] = {{"r", "4"}, {"lora_alpha", "8"}, {"target_modules", TARGETS}, {"loraplus_lr_ratio", "16"},
                                  {"use_dora", dora ? "true" : "false"}, {NULL, NULL}};
    struct ftk_model *m = model_with(opts, tag);
    if (!m)
        return;
    int scaled = 0, bad = 0;
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {   /* lr of each parameter = peft's group lr */
        struct ftk_param *q = ftk_model_trainable(m, i);
        const struct ftk_tensor *t = exp_t(e, tag, "lr", q->name);
        const float *lr = t ? t->data : NULL;
        scaled += q->lr_scale != 1.0f;
        if (!lr || fabsf(1e-2f * q->lr_scale - *lr) > 1e-9f) {
            printf("  %s: lr %g x %g, peft %g\n", q->name, 1e-2, q->lr_scale, lr ? *lr : NAN);
            bad++;
        }
    }
    int sites = 7 * ftk_model_get_config(m)->L;
    printf("  %s: %d of %zu tensors at lr x 16 (peft's B groups), the rest at lr, as peft\n", tag, scaled,
           ftk_model_n_trainable(m));
    CHECK_INT(bad, 0);
    CHECK_INT(scaled, dora ? 2 * sites : sites);
    double worst = train2(m, e, tag, 1);
    CHECK(worst <= 1e-4);
    ftk_model_free(m);
    /* the same without loraplus_lr_ratio: far from peft's LoRA+ step */
    const struct ftk_kv plain[] = {{"r", "4"}, {"lora_alpha", "8"}, {"target_modules", TARGETS},
                                   {"use_dora", dora ? "true" : "false"}, {NULL, NULL}};
    m = model_with(plain, tag);
    if (m) {
        double w0 = train2(m, e, tag, 0);
        printf("  %s without the ratio: params worst rel err %.2e (must be large)\n", tag, w0);
        CHECK(w0 > 1e-2);
        ftk_model_free(m);
    }
}

int main(void)
{
    if (plugin_check_begin() != 0)
        return 1;
    struct ftk_st_model *e = expected_of(FIX, NULL);
    if (!e)
        return plugin_check_end();
    TEST("LoRA+ ratio 16 against peft create_loraplus_optimizer + torch AdamW (LoRA)") check(e, "lora", 0);
    TEST("LoRA+ ratio 16 against peft create_loraplus_optimizer + torch AdamW (DoRA: the magnitude goes with B)")
        check(e, "dora", 1);
    TEST("bad LoRA+ options are errors naming them") {
        static const struct { const char *k, *v, *k2, *v2; ftk_status code; const char *msg; } bad[] = {
            {"loraplus_lr_ratio", "-1", NULL, NULL, FTK_E_INVALID, "loraplus_lr_ratio=-1"},
            {"loraplus_lr_ratio", "0", NULL, NULL, FTK_E_INVALID, "loraplus_lr_ratio=0"},
            {"loraplus_lr_ratio", "x", NULL, NULL, FTK_E_INVALID, "loraplus_lr_ratio"},
            {"loraplus_lr_ratio", "16", "loraplus_lr_embedding", "-1", FTK_E_INVALID, "loraplus_lr_embedding"},
            {"loraplus_lr_ratio", "16", "modules_to_save", "norm", FTK_E_UNSUPPORTED, "modules_to_save=norm"},
        };
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            const struct ftk_kv kv[] = {{bad[i].k, bad[i].v}, {bad[i].k2, bad[i].v2}, {NULL, NULL}};
            check_refused("lora", kv, bad[i].code, bad[i].msg);
        }
        const struct ftk_peft_plugin *pl;
        CHECK_OK(ftk_plugin_load_peft("lora", &pl));
        /* loraplus_lr_embedding alone (LLaMA-Factory passes it): accepted, nothing to apply it to */
        struct ftk_model *m = NULL;
        CHECK_OK(ftk_model_load(PC_TINY "llama", be, ctx, &m));
        CHECK_OK(ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"loraplus_lr_ratio", "16"}, {"loraplus_lr_embedding", "1e-6"},
                                                                   {"modules_to_save", "lm_head"}, {NULL, NULL}}, 0, NULL));
        struct ftk_param *lm = ftk_model_find_param(m, "lm_head.weight");   /* 2-D: peft's group A, lr x 1 */
        CHECK(lm && lm->lr_scale == 1.0f);
        ftk_model_free(m);
    }
    ftk_st_model_close(e);
    return plugin_check_end();
}
