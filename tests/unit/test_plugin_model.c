/* tests/unit/test_plugin_model.c: the training core against HuggingFace transformers + peft
 * (fixtures from tests/oracle/hf_tiny_models.py) for llama, mistral, qwen2 and qwen3:
 * logits, loss, neat-packed rows, full-model gradients, a peft LoRA adapter's logits and
 * gradients, and the LoRA parameters after 3 AdamW steps with clipping and a linear schedule.
 * Errors are max|got - want| / max|want| over each tensor (scale-free). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "ftk/model.h"
#include "ftk/optim.h"
#include "ftk/safetensors.h"
#include "ftk/schedule.h"

static const struct ftk_backend *be;
static void *ctx;

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

static const struct ftk_tensor *exp_t(const struct ftk_st_model *e, const char *name)
{
    const struct ftk_tensor *t = ftk_st_model_find(e, name);
    if (!t)
        printf("  fixture lacks %s\n", name);
    return t;
}

static struct ftk_batch_view batch_of(const struct ftk_st_model *e, const char *prefix, int with_labels)
{
    char n[64];
    struct ftk_batch_view b = {0};
    snprintf(n, sizeof n, "%sinput_ids", prefix);
    const struct ftk_tensor *ids = exp_t(e, n);
    b.B = ids->shape[0];
    b.T = ids->shape[1];
    b.input_ids = ids->data;
    snprintf(n, sizeof n, "%sposition_ids", prefix);
    b.position_ids = exp_t(e, n)->data;
    if (with_labels)
        b.labels = exp_t(e, "labels")->data;
    snprintf(n, sizeof n, "%ssegment_ids", prefix);
    const struct ftk_tensor *seg = ftk_st_model_find(e, n);
    b.segment_ids = seg ? seg->data : NULL;
    return b;
}

/* Forward (train), the sft loss over the batch, backward; returns the loss. */
static double step_grads(struct ftk_model *m, struct ftk_loss *loss, const struct ftk_batch_view *b)
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
    struct ftk_loss_batch lb = {.B = b->B, .logps = logps, .n_tokens = nt, .n_tokens_total = tot};
    CHECK_OK(ftk_loss_compute(loss, &lb, &L, dl, &met));
    CHECK_OK(ftk_model_backward(m, dl));
    return L;
}

static void check_arch(const char *arch, struct ftk_loss *loss)
{
    char dir[256], p[300];
    snprintf(dir, sizeof dir, "tests/fixtures/hf_tiny/%s", arch);
    snprintf(p, sizeof p, "%s/expected.safetensors", dir);
    struct ftk_st_model *e;
    CHECK_OK(ftk_st_file_open(p, &e));
    struct ftk_model *m;
    CHECK_OK(ftk_model_load(dir, be, ctx, &m));
    const struct ftk_model_config *c = ftk_model_get_config(m);
    struct ftk_batch_view b = batch_of(e, "", 1);
    int64_t N = b.B * b.T, V = c->V;
    float *logits = malloc((size_t)(N * V) * sizeof *logits);

    CHECK_OK(ftk_model_logits(m, &b, logits));
    double err = rel_err(logits, exp_t(e, "logits")->data, N * V);
    printf("  %s logits rel err %.2e\n", arch, err);
    CHECK(err <= 1e-4);

    float logps[16];
    int64_t nt[16], tot = 0;
    double sum = 0;
    CHECK_OK(ftk_model_forward(m, &b, 0, logps, nt));
    for (int64_t i = 0; i < b.B; i++) {
        sum += logps[i];
        tot += nt[i];
    }
    double want = ((const float *)exp_t(e, "loss")->data)[0];
    printf("  %s loss %.7f (hf %.7f)\n", arch, -sum / (double)tot, want);
    CHECK_NEAR(-sum / (double)tot, want, 1e-5);

    struct ftk_batch_view pb = batch_of(e, "packed.", 0);
    float *pl = malloc((size_t)(pb.B * pb.T * V) * sizeof *pl);
    CHECK_OK(ftk_model_logits(m, &pb, pl));
    err = rel_err(pl, exp_t(e, "packed.logits")->data, pb.B * pb.T * V);
    printf("  %s neat-packed logits rel err %.2e\n", arch, err);
    CHECK(err <= 1e-4);
    free(pl);
    ftk_model_free(m);

    /* full fine-tuning: the gradient of every weight */
    const struct ftk_peft_plugin *full;
    CHECK_OK(ftk_plugin_load_peft("full", &full));
    CHECK_OK(ftk_model_load(dir, be, ctx, &m));
    CHECK_OK(ftk_model_set_peft(m, full, NULL, 0, NULL));
    step_grads(m, loss, &b);
    double worst = 0;
    const char *worst_name = "";
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        char n[256];
        snprintf(n, sizeof n, "grad.%s", q->name);
        const struct ftk_tensor *t = exp_t(e, n);
        if (!t) { CHECK(0); continue; }
        double r = rel_err(q->g, t->data, q->numel);
        if (!(r <= worst)) { worst = r; worst_name = q->name; }
    }
    printf("  %s full grads (%zu tensors) worst rel err %.2e (%s)\n", arch, ftk_model_n_trainable(m), worst, worst_name);
    CHECK(worst <= 1e-3);
    ftk_model_free(m);

    /* a LoRA adapter written by peft: logits, gradients, 3 AdamW steps */
    CHECK_OK(ftk_model_load(dir, be, ctx, &m));
    snprintf(p, sizeof p, "%s/adapter", dir);
    CHECK_OK(ftk_model_load_adapter(m, p, 0));
    CHECK_OK(ftk_model_logits(m, &b, logits));
    err = rel_err(logits, exp_t(e, "lora.logits")->data, N * V);
    printf("  %s lora logits rel err %.2e\n", arch, err);
    CHECK(err <= 1e-4);
    double L0 = step_grads(m, loss, &b);
    CHECK_NEAR(L0, ((const float *)exp_t(e, "lora.loss")->data)[0], 1e-5);
    worst = 0;
    size_t K = ftk_model_n_trainable(m);
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        char n[256];
        snprintf(n, sizeof n, "lora.grad.%s", q->name);
        const struct ftk_tensor *t = exp_t(e, n);
        if (!t) { CHECK(0); continue; }
        double r = rel_err(q->g, t->data, q->numel);
        if (!(r <= worst)) worst = r;
    }
    printf("  %s lora grads (%zu tensors) worst rel err %.2e\n", arch, K, worst);
    CHECK(worst <= 1e-3);

    float *mom = calloc(4096 * 64, sizeof(float)), *var = calloc(4096 * 64, sizeof(float)), *sq = calloc(K, sizeof(float));
    int64_t off[512];
    int64_t o = 0;
    for (size_t i = 0; i < K; i++) {
        off[i] = o;
        o += ftk_model_trainable(m, i)->numel;
    }
    CHECK(o <= 4096 * 64);
    for (int step = 1; step <= 3; step++) {
        double Ls = step_grads(m, loss, &b);
        char n[64];
        snprintf(n, sizeof n, "lora.loss%d", step);
        CHECK_NEAR(Ls, ((const float *)exp_t(e, n)->data)[0], 1e-5);
        for (size_t i = 0; i < K; i++)
            CHECK_OK(be->sumsq(ctx, &sq[i], ftk_model_trainable(m, i)->g, ftk_model_trainable(m, i)->numel));
        float total, coef;
        CHECK_OK(ftk_clip_grad_norm_coef(sq, (int64_t)K, 1.0f, &total, &coef));
        snprintf(n, sizeof n, "lora.grad_norm%d", step);
        CHECK_NEAR(total, ((const float *)exp_t(e, n)->data)[0], 1e-4);
        struct ftk_adamw_params hp = {.lr = (float)(1e-2 * ftk_schedule_factor(FTK_SCHED_LINEAR, step - 1, 1, 3)),
                                      .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f,
                                      .step = step, .grad_scale = coef};
        for (size_t i = 0; i < K; i++) {
            struct ftk_param *q = ftk_model_trainable(m, i);
            CHECK_OK(be->adamw_step(ctx, q->w, mom + off[i], var + off[i], q->g, q->numel, &hp));
        }
        worst = 0;
        for (size_t i = 0; i < K; i++) {
            struct ftk_param *q = ftk_model_trainable(m, i);
            char nn[300];
            snprintf(nn, sizeof nn, "lora.step%d.%s", step, q->name);
            const struct ftk_tensor *t = exp_t(e, nn);
            if (!t) { CHECK(0); continue; }
            double r = rel_err(q->w, t->data, q->numel);
            if (!(r <= worst)) worst = r;
        }
        printf("  %s after AdamW step %d: loss %.6f, params worst rel err %.2e\n", arch, step, Ls, worst);
        CHECK(worst <= 1e-4);
    }
    free(mom);
    free(var);
    free(sq);
    free(logits);
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
    struct ftk_loss *loss = NULL;
    TEST("plugins load by name; ABI checked") {
        CHECK_OK(ftk_plugin_load_loss("sft", &sft));
        CHECK_OK(ftk_loss_create(sft, NULL, &loss));
        const struct ftk_peft_plugin *pp;
        CHECK_ERR(ftk_plugin_load_peft("nosuch", &pp), FTK_E_NOTFOUND, "peft plugin \"nosuch\" not found");
        CHECK_ERR(ftk_plugin_load_peft("../x", &pp), FTK_E_NOTFOUND, "../x");
    }
    if (!loss)
        return check_summary();
    static const char *archs[] = {"llama", "mistral", "qwen2", "qwen3"};
    for (int i = 0; i < 4; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s: parity with transformers + peft", archs[i]);
        TEST(name) check_arch(archs[i], loss);
    }
    TEST("--recompute: the same gradients, bit for bit (qwen3, full)") {
        const struct ftk_peft_plugin *full;
        struct ftk_model *a, *r;
        struct ftk_st_model *e;
        CHECK_OK(ftk_plugin_load_peft("full", &full));
        CHECK_OK(ftk_st_file_open("tests/fixtures/hf_tiny/qwen3/expected.safetensors", &e));
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/qwen3", be, ctx, &a));
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/qwen3", be, ctx, &r));
        ftk_model_set_recompute(r, 1);
        CHECK_OK(ftk_model_set_peft(a, full, NULL, 0, NULL));
        CHECK_OK(ftk_model_set_peft(r, full, NULL, 0, NULL));
        struct ftk_batch_view b = batch_of(e, "", 1);
        double la = step_grads(a, loss, &b), lr = step_grads(r, loss, &b);
        CHECK(la == lr);
        size_t differ = 0;
        for (size_t i = 0; i < ftk_model_n_trainable(a); i++) {
            struct ftk_param *p = ftk_model_trainable(a, i), *q = ftk_model_trainable(r, i);
            differ += memcmp(p->g, q->g, (size_t)p->numel * sizeof(float)) != 0;
        }
        CHECK_INT(differ, 0);
        ftk_model_free(a);
        ftk_model_free(r);
        ftk_st_model_close(e);
    }
    TEST("forward_backward (fused head) equals forward + backward (llama, full)") {
        const struct ftk_peft_plugin *full;
        struct ftk_model *a, *f;
        struct ftk_st_model *e;
        CHECK_OK(ftk_plugin_load_peft("full", &full));
        CHECK_OK(ftk_st_file_open("tests/fixtures/hf_tiny/llama/expected.safetensors", &e));
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &a));
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &f));
        CHECK_OK(ftk_model_set_peft(a, full, NULL, 0, NULL));
        CHECK_OK(ftk_model_set_peft(f, full, NULL, 0, NULL));
        struct ftk_batch_view b = batch_of(e, "", 1);
        double la = step_grads(a, loss, &b);
        float lp[16], dl[16];
        int64_t nt[16], tot = 0;
        CHECK_OK(ftk_model_forward(f, &b, 0, lp, nt));   /* only to count the labelled tokens */
        for (int64_t i = 0; i < b.B; i++)
            tot += nt[i];
        for (int64_t i = 0; i < b.B; i++)
            dl[i] = (float)(-1.0 / (double)tot);
        CHECK_OK(ftk_model_zero_grad(f));
        CHECK_OK(ftk_model_forward_backward(f, &b, dl, lp, nt));
        double sum = 0;
        for (int64_t i = 0; i < b.B; i++)
            sum += lp[i];
        CHECK_NEAR(-sum / (double)tot, la, 1e-7);
        double worst = 0;
        for (size_t i = 0; i < ftk_model_n_trainable(a); i++) {
            struct ftk_param *p = ftk_model_trainable(a, i), *q = ftk_model_trainable(f, i);
            double r = rel_err(q->g, p->g, p->numel);
            if (!(r <= worst)) worst = r;
        }
        printf("  fused vs separate head: grads worst rel err %.2e\n", worst);
        CHECK(worst <= 1e-6);
        ftk_model_free(a);
        ftk_model_free(f);
        ftk_st_model_close(e);
    }
    TEST("LoRA with modules_to_save (peft adapter with a trained lm_head): logits, grads, save and load") {
        struct ftk_st_model *e, *x;
        struct ftk_model *m, *m2;
        CHECK_OK(ftk_st_file_open("tests/fixtures/hf_tiny/llama/expected.safetensors", &e));
        CHECK_OK(ftk_st_file_open("tests/fixtures/hf_tiny/llama/mts/expected.safetensors", &x));
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
        CHECK_OK(ftk_model_load_adapter(m, "tests/fixtures/hf_tiny/llama/mts", 0));
        struct ftk_batch_view b = batch_of(e, "", 1);
        int64_t n = b.B * b.T * ftk_model_get_config(m)->V;
        float *lg = malloc((size_t)n * sizeof *lg), *lg2 = malloc((size_t)n * sizeof *lg2);
        CHECK_OK(ftk_model_logits(m, &b, lg));
        double err = rel_err(lg, exp_t(x, "logits")->data, n);
        printf("  modules_to_save logits rel err %.2e\n", err);
        CHECK(err <= 1e-4);
        double L = step_grads(m, loss, &b);
        CHECK_NEAR(L, ((const float *)exp_t(x, "loss")->data)[0], 1e-5);
        double worst = 0;
        size_t K = ftk_model_n_trainable(m);
        for (size_t i = 0; i < K; i++) {
            struct ftk_param *q = ftk_model_trainable(m, i);
            char nm[300];
            snprintf(nm, sizeof nm, "grad.%s%s", q->base ? "base_model.model." : "", q->name);
            const struct ftk_tensor *t = exp_t(x, nm);
            if (!t) { CHECK(0); continue; }
            double r = rel_err(q->g, t->data, q->numel);
            if (!(r <= worst)) worst = r;
        }
        printf("  modules_to_save grads (%zu tensors, lm_head included) worst rel err %.2e\n", K, worst);
        CHECK_INT(K, 9);
        CHECK(worst <= 1e-3);
        const struct ftk_peft_plugin *pl = ftk_peft_get_plugin(ftk_model_peft(m));
        char dir[] = "/tmp/ftk-mts-XXXXXX";
        CHECK(mkdtemp(dir) != NULL);
        CHECK_OK(pl->save(ftk_model_peft(m), dir, "tests/fixtures/hf_tiny/llama"));
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m2));
        CHECK_OK(ftk_model_load_adapter(m2, dir, 0));
        CHECK_OK(ftk_model_logits(m, &b, lg));
        CHECK_OK(ftk_model_logits(m2, &b, lg2));
        CHECK(memcmp(lg, lg2, (size_t)n * sizeof *lg) == 0);
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        CHECK_INT(system(cmd), 0);
        free(lg);
        free(lg2);
        ftk_model_free(m);
        ftk_model_free(m2);
        ftk_st_model_close(e);
        ftk_st_model_close(x);
    }
    TEST("bad input to the model is an error naming it") {
        struct ftk_model *m;
        CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
        int32_t ids[4] = {1, 2, 999, 3}, pos[4] = {0, 1, 2, 3};
        struct ftk_batch_view b = {.B = 1, .T = 4, .input_ids = ids, .position_ids = pos};
        float lp[1];
        CHECK_ERR(ftk_model_forward(m, &b, 0, lp, NULL), FTK_E_INVALID, "position 2: token id 999");
        CHECK_ERR(ftk_model_backward(m, lp), FTK_E_INVALID, "backward needs");
        CHECK_ERR(ftk_model_load_adapter(m, "tests/fixtures/hf_tiny/qwen3/adapter", 0), FTK_E_MISMATCH, "adapter for another base");
        ftk_model_free(m);
        CHECK_ERR(ftk_model_load("tests/fixtures/hf_tiny/nosuch", be, ctx, &m), FTK_E_NOTFOUND, "nosuch");
    }
    ftk_loss_free(loss);
    be->destroy(ctx);
    return check_summary();
}
