/* tests/unit/test_plugin_prompt_tuning.c: the `embed`-hook PEFT methods of issue 11 against
 * HuggingFace peft 0.21 (fixtures from tests/oracle/prompt_tuning.py) on the llama and qwen3
 * tiny models: prompt tuning (RANDOM, TEXT; SAMPLE_VOCAB by its definition) and P-tuning (MLP and
 * LSTM encoders). For each: logits of the real tokens, loss, every gradient, the clipped grad
 * norm, one AdamW step and the loss after it; peft's saved adapters load (by adapter_config.json)
 * with peft's logits and greedy generations; ftk's adapters load back; central differences of the
 * loss through the whole path (encoder, the core's virtual tokens, every layer); bad options and
 * bad adapters. Errors are max|got - want| / max|want| over each tensor.
 * FTK_PROMPT_TUNING_OUT=DIR keeps the adapters ftk saves after the step, for
 * tests/oracle/check_prompt_tuning.py (peft loads what ftk trains). */
#include "check.h"
#include "plugin_check.h"

#define FIX "tests/fixtures/peft_methods/prompt_tuning"
#define TOKENIZER FIX "/tokenizer"
#define KEEP_ENV "FTK_PROMPT_TUNING_OUT"

static const struct parity_tol peft_tol = {.oracle = "peft", .grad = 1e-4, .grad_norm = 1e-5};

/* parity against peft (worst error into worst_all); ftk decays every tensor but biases. */
static double worst_all;
static void check_parity(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag)
{
    for (size_t i = 0; i < ftk_model_n_trainable(m); i++)
        CHECK_INT(ftk_model_trainable(m, i)->decay, strstr(ftk_model_trainable(m, i)->name, "bias") == NULL);
    worst_all = fmax(worst_all, parity(m, e, arch, tag, &peft_tol));
}

/* ftk's save loads back by its adapter_config.json with the same logits, and training goes on
 * the same (one more train-mode loss and gradient). */
static void round_trip(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag)
{
    char dir[512];
    int kept = save_tiny(m, arch, KEEP_ENV, tag, dir, sizeof dir);
    struct ftk_model *r = tiny_with(arch, NULL, NULL, dir);
    if (r) {
        struct ftk_batch_view b = batch_of(e);
        double err = logits_vs(r, m, &b);
        CHECK_INT(ftk_model_n_trainable(r), ftk_model_n_trainable(m));
        double la = step_grads(m, &b), lc = step_grads(r, &b), gerr = 0;
        for (size_t i = 0; i < ftk_model_n_trainable(m) && i < ftk_model_n_trainable(r); i++) {
            struct ftk_param *q = ftk_model_trainable(m, i), *s = ftk_model_trainable(r, i);
            CHECK_STR(s->name, q->name);
            gerr = fmax(gerr, rel_err(s->g, q->g, q->numel));
        }
        printf("  %s %s: saved and loaded back, logits rel err %.2e, grads %.2e (%zu tensors)\n", arch, tag, err, gerr,
               ftk_model_n_trainable(r));
        CHECK(err <= 1e-6);
        CHECK(gerr <= 1e-5);
        CHECK_NEAR(lc, la, 1e-6);
        ftk_model_free(r);
    }
    if (!kept)
        rm_dir(dir);
}

/* Greedy generation of the fixture's two prompts, batched in one KV cache, against peft's. */
static void generation(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag, const char *how)
{
    const int32_t *prompt[2];
    int64_t len[2];
    struct ftk_gen_result r[2];
    generate_rows(m, e, 10, prompt, len, r);
    int same = 0;
    for (int k = 0; k < 2; k++) {
        const struct ftk_tensor *t = exp_t(e, tag, k ? "gen1" : "gen0", NULL);
        if (!t) { CHECK(0); continue; }
        const int32_t *want = t->data;
        CHECK_INT(r[k].n, t->shape[0]);
        for (int64_t i = 0; i < r[k].n && i < t->shape[0] && r[k].ids[i] == want[i]; i++)
            same++;
        ftk_gen_result_free(&r[k]);
    }
    printf("  %s %s: greedy generation (%s): %d of 20 tokens equal to peft's generate\n", arch, tag, how, same);
    CHECK_INT(same, 20);
}

/* Central differences of the loss (f64 sums of F32 forwards) against the analytic gradient at
 * `count` entries of every trainable tensor. Where a ReLU of the encoder switches inside +-eps the
 * one-sided slopes disagree: there the gradient must be one of them (counted apart). */
static void fd_check_kinks(struct ftk_model *m, const struct ftk_st_model *e, int count, double eps, const char *what, int train)
{
    struct ftk_batch_view b = batch_of(e);
    step_grads(m, &b);
    size_t K = ftk_model_n_trainable(m), picked = 0, kinks = 0;
    double worst = 0;
    for (size_t i = 0; i < K; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        for (int k = 0; k < count; k++) {
            int64_t j = (int64_t)((k * 7919 + (int)i * 131) % q->numel);
            double l0 = loss_of_mode(m, &b, train), lp, lm;
            loss_pm(m, &b, q, j, eps, train, &lp, &lm);
            double fd = (lp - lm) / (2 * eps), g = q->g[j], d1 = (lp - l0) / eps, d2 = (l0 - lm) / eps;
#define FD_OK(x) (fabs((x) - g) <= 1e-3 + 1e-2 * fabs(g))
            if (!FD_OK(fd) && fabs(d1 - d2) > 0.02 * fmax(fmax(fabs(d1), fabs(d2)), 1e-2) && (FD_OK(d1) || FD_OK(d2))) {
                kinks++;   /* a ReLU switches on one side: the gradient is the other side's slope */
                continue;
            }
            double d = fabs(fd - g) / fmax(1e-2, fabs(g));
            if (!(d <= worst)) worst = d;
            if (!FD_OK(fd))
                printf("  %s %s[%lld]: fd %.6g, backward %.6g (one-sided %.6g, %.6g)\n", what, q->name, (long long)j, fd, g, d1, d2);
            CHECK(FD_OK(fd));
#undef FD_OK
            picked++;
        }
    }
    printf("  %s: %zu entries of %zu tensors, worst |fd - g| / max(|g|, 1e-2) = %.2e (and %zu at a ReLU kink: "
           "the other side's slope)\n", what, picked, K, worst, kinks);
    CHECK(picked > 0);
    CHECK(kinks * 4 <= picked);
}

static const char *init_text(const char *arch) { return strcmp(arch, "llama") ? "classify the review as good or bad" : "the cat"; }

static const struct ftk_kv mlp_opts[] = {
    {"num_virtual_tokens", "4"}, {"encoder_reparameterization_type", "MLP"}, {"encoder_hidden_size", "8"}, {NULL, NULL}};
static const struct ftk_kv lstm_opts[] = {
    {"num_virtual_tokens", "4"}, {"encoder_reparameterization_type", "LSTM"}, {"encoder_hidden_size", "6"},
    {"encoder_num_layers", "2"}, {"encoder_dropout", "0.0"}, {NULL, NULL}};

static void check_random(const char *arch)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/pt_random", arch);
    struct ftk_model *m = tiny_with(arch, NULL, NULL, dir);   /* peft's adapter, by adapter_config.json */
    if (m && e) {
        CHECK_INT(ftk_model_n_trainable(m), 1);
        generation(m, e, arch, "pt_random", "peft's adapter");
        check_parity(m, e, arch, "pt_random");
        round_trip(m, e, arch, "pt_random");
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* TEXT: ftk's tokenizer and init give peft's ids and rows exactly; then the same training. */
static void check_text(const char *arch)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    const struct ftk_kv opts[] = {{"num_virtual_tokens", "4"}, {"prompt_tuning_init", "TEXT"},
                                  {"prompt_tuning_init_text", init_text(arch)}, {"tokenizer_name_or_path", TOKENIZER},
                                  {NULL, NULL}};
    struct ftk_model *m = tiny_with(arch, "prompt_tuning", opts, NULL);
    if (m && e) {
        struct ftk_param *q = ftk_model_trainable(m, 0);
        const struct ftk_tensor *t = exp_t(e, "pt_text", "init", "prompt_embeddings");
        const struct ftk_tensor *ti = exp_t(e, "pt_text", "text_ids", NULL);
        if (t && ti) {
            double err = rel_err(q->w, t->data, q->numel);
            printf("  %s pt_text: init from \"%s\" (%lld ids with <s>) rel err %.2e\n", arch, init_text(arch),
                   (long long)ti->shape[0], err);
            CHECK(err == 0);
            const int32_t *wid = ti->data;   /* row k is embed_tokens[ids[k % n]] */
            const float *wte = ftk_model_find_param(m, "model.embed_tokens.weight")->w;
            int64_t C = ftk_model_get_config(m)->C;
            for (int64_t k = 0; k < 4; k++)
                CHECK(!memcmp(q->w + k * C, wte + (int64_t)wid[k % ti->shape[0]] * C, (size_t)C * sizeof(float)));
        }
        generation(m, e, arch, "pt_text", "ftk's TEXT init");
        check_parity(m, e, arch, "pt_text");
        round_trip(m, e, arch, "pt_text");
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* P-tuning: the encoder with peft's init weights; peft's adapter (the encoder's output only)
 * gives the same logits and generations; training as peft; ftk's save (encoder included)
 * loads back and trains the same. */
static void check_ptuning(const char *arch, const char *tag, const struct ftk_kv *opts)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    struct ftk_model *m = tiny_with(arch, "p_tuning", opts, NULL);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/%s", arch, tag);
    struct ftk_model *d = tiny_with(arch, NULL, NULL, dir);
    if (m && d && e) {
        set_from(m, e, tag, "init");
        CHECK_INT(ftk_model_n_trainable(d), 1);
        CHECK_STR(ftk_model_trainable(d, 0)->name, "prompt_embeddings");
        double ea = logits_err(m, e, tag, "logits"), ec = logits_err(d, e, tag, "logits");
        printf("  %s %s: logits at init: encoder %.2e, peft's saved output loaded %.2e\n", arch, tag, ea, ec);
        CHECK(ea <= 1e-4);
        CHECK(ec <= 1e-4);
        generation(d, e, arch, tag, "peft's adapter");
        generation(m, e, arch, tag, "ftk's encoder");
        check_parity(m, e, arch, tag);
        const struct ftk_tensor *po = exp_t(e, tag, "step1", "prompt_embeddings_out");
        if (po) {   /* what peft would save after the step: ftk's save writes the same */
            char sd[512];
            int kept = save_tiny(m, arch, KEEP_ENV, tag, sd, sizeof sd);
            char f[600];
            snprintf(f, sizeof f, "%s/adapter_model.safetensors", sd);
            struct ftk_st_model *st = NULL;
            CHECK_OK(ftk_st_file_open(f, &st));
            const struct ftk_tensor *t = st ? ftk_st_model_find(st, "prompt_embeddings") : NULL;
            CHECK(t && t->shape[0] == 4 && t->shape[1] == po->shape[1]);
            if (t && t->shape[0] == 4 && t->shape[1] == po->shape[1]) {
                double err = rel_err(t->data, po->data, 4 * po->shape[1]);
                printf("  %s %s: saved prompt_embeddings (the encoder's output) after the step rel err %.2e\n", arch, tag, err);
                CHECK(err <= 1e-4);
            }
            ftk_st_model_close(st);
            if (!kept)
                rm_dir(sd);
        }
        round_trip(m, e, arch, tag);
    }
    ftk_model_free(m);
    ftk_model_free(d);
    ftk_st_model_close(e);
}

/* Copies adapter `src` to a fresh directory with `from` replaced by `to` in its config. */
static void bad_copy(const char *src, const char *from, const char *to, char *dir, size_t n)
{
    snprintf(dir, n, "/tmp/ftk_pt_bad_XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cp '%s'/* '%s'/ && sed -i 's/%s/%s/' '%s/adapter_config.json'", src, dir, from, to, dir);
    CHECK(system(cmd) == 0);
}

int main(void)
{
    if (plugin_check_begin() != 0)
        return 1;
    TEST("transformers gives the virtual tokens positions 0..P-1 and the real ones P.. (the core's wiring)") {
        struct ftk_st_model *e = expected_of(FIX, "llama");
        if (e) {
            float err = scalar(e, "positions", "err");
            printf("  peft's logits vs the base model on [prompt, embeds] with position_ids 0..P+T-1: max diff %g\n", err);
            CHECK(err == 0);
        }
        ftk_st_model_close(e);
    }
    static const char *archs[] = {"llama", "qwen3"};
    for (int i = 0; i < 2; i++) {
        char name[96];
        snprintf(name, sizeof name, "prompt tuning RANDOM, peft's adapter (%s)", archs[i]);
        TEST(name) check_random(archs[i]);
        snprintf(name, sizeof name, "prompt tuning TEXT init (%s)", archs[i]);
        TEST(name) check_text(archs[i]);
        snprintf(name, sizeof name, "P-tuning MLP encoder (%s)", archs[i]);
        TEST(name) check_ptuning(archs[i], "ptune_mlp", mlp_opts);
        snprintf(name, sizeof name, "P-tuning LSTM encoder (%s)", archs[i]);
        TEST(name) check_ptuning(archs[i], "ptune_lstm", lstm_opts);
    }
    printf("worst relative error against peft over all parity checks: %.2e\n", worst_all);
    TEST("RANDOM and SAMPLE_VOCAB inits: N(0,1) and embedding rows, seeded") {
        const struct ftk_kv ro[] = {{"num_virtual_tokens", "16"}, {NULL, NULL}};
        const struct ftk_kv so[] = {{"num_virtual_tokens", "8"}, {"prompt_tuning_init", "SAMPLE_VOCAB"}, {NULL, NULL}};
        struct ftk_model *a = tiny_with("llama", "prompt_tuning", ro, NULL), *b = tiny_with("llama", "prompt_tuning", ro, NULL);
        if (a && b) {
            struct ftk_param *q = ftk_model_trainable(a, 0);
            double s1 = 0, s2 = 0;
            for (int64_t i = 0; i < q->numel; i++) {
                s1 += q->w[i];
                s2 += (double)q->w[i] * q->w[i];
            }
            double mean = s1 / q->numel, sd = sqrt(s2 / q->numel - mean * mean);
            printf("  RANDOM: %lld values, mean %.3f, std %.3f\n", (long long)q->numel, mean, sd);
            CHECK(fabs(mean) < 0.15 && fabs(sd - 1) < 0.15);
            CHECK(!memcmp(q->w, ftk_model_trainable(b, 0)->w, (size_t)q->numel * sizeof(float)));
        }
        ftk_model_free(a);
        ftk_model_free(b);
        struct ftk_model *m = tiny_with("qwen3", "prompt_tuning", so, NULL);
        if (m) {
            struct ftk_param *q = ftk_model_trainable(m, 0);
            const struct ftk_model_config *c = ftk_model_get_config(m);
            const float *wte = ftk_model_find_param(m, "model.embed_tokens.weight")->w;
            int rows = 0;
            for (int64_t k = 0; k < 8; k++)
                for (int64_t v = 0; v < c->V; v++)
                    if (!memcmp(q->w + k * c->C, wte + v * c->C, (size_t)c->C * sizeof(float))) {
                        rows++;
                        break;
                    }
            printf("  SAMPLE_VOCAB: %d of 8 rows are rows of embed_tokens\n", rows);
            CHECK_INT(rows, 8);
        }
        ftk_model_free(m);
    }
    TEST("finite differences through the whole path (llama): prompt, MLP and LSTM encoders, LSTM dropout") {
        struct ftk_st_model *e = expected_of(FIX, "llama");
        char dir[256];
        snprintf(dir, sizeof dir, FIX "/llama/pt_random");
        struct ftk_model *m = tiny_with("llama", NULL, NULL, dir);
        if (m && e)
            fd_check_kinks(m, e, 12, 1e-2, "prompt tuning", 0);
        ftk_model_free(m);
        m = tiny_with("llama", "p_tuning", mlp_opts, NULL);
        if (m && e)
            fd_check_kinks(m, e, 3, 3e-3, "P-tuning MLP", 0);   /* smaller steps: fewer ReLU kinks inside */
        ftk_model_free(m);
        m = tiny_with("llama", "p_tuning", lstm_opts, NULL);
        if (m && e)
            fd_check_kinks(m, e, 3, 1e-2, "P-tuning LSTM", 0);
        ftk_model_free(m);
        const struct ftk_kv dro[] = {{"num_virtual_tokens", "3"}, {"encoder_reparameterization_type", "LSTM"},
                                     {"encoder_hidden_size", "5"}, {"encoder_num_layers", "3"}, {"encoder_dropout", "0.3"},
                                     {NULL, NULL}};
        m = tiny_with("llama", "p_tuning", dro, NULL);
        if (m && e) {   /* train-mode forwards draw the same masks (seed, step) */
            struct ftk_batch_view b = batch_of(e);
            double l1 = loss_of_mode(m, &b, 1), l0 = loss_of_mode(m, &b, 0);
            printf("  LSTM dropout 0.3: train loss %.6f, eval loss %.6f\n", l1, l0);
            CHECK(l1 != l0);
            CHECK(loss_of_mode(m, &b, 1) == l1);
            fd_check_kinks(m, e, 2, 3e-3, "P-tuning LSTM, 3 layers, dropout 0.3", 1);
        }
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("recompute and gradient accumulation: the same gradients") {
        struct ftk_st_model *e = expected_of(FIX, "qwen3");
        struct ftk_model *m = tiny_with("qwen3", "p_tuning", lstm_opts, NULL);
        if (m && e) {
            struct ftk_batch_view b = batch_of(e), h = b;
            step_grads(m, &b);
            float **g0 = grads_copy(m);
            ftk_model_set_recompute(m, 1);
            step_grads(m, &b);
            double er = grads_err(m, g0);
            grads_free(m, g0);
            ftk_model_set_recompute(m, 0);
            /* two micro-batches of one row each, gradients summed: d(sum of logps) */
            float lp[2], ones[1] = {1.0f}, full[2] = {1.0f, 1.0f};
            int64_t nt[2];
            CHECK_OK(ftk_model_zero_grad(m));
            CHECK_OK(ftk_model_forward(m, &b, 1, lp, nt));
            CHECK_OK(ftk_model_backward(m, full));
            g0 = grads_copy(m);
            CHECK_OK(ftk_model_zero_grad(m));
            h.B = 1;
            for (int r = 0; r < 2; r++) {
                h.input_ids = b.input_ids + r * b.T;
                h.labels = b.labels + r * b.T;
                h.position_ids = b.position_ids + r * b.T;
                CHECK_OK(ftk_model_forward(m, &h, 1, lp, nt));
                CHECK_OK(ftk_model_backward(m, ones));
            }
            double ea = grads_err(m, g0);
            grads_free(m, g0);
            printf("  recompute: grads rel err %.2e; two micro-batches vs one batch: %.2e\n", er, ea);
            CHECK(er <= 1e-6);
            CHECK(ea <= 1e-5);
        }
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("padded rows as ftk pack writes them (segment_ids 1, padding 0): the unpadded results") {
        struct ftk_st_model *e = expected_of(FIX, "llama");
        struct ftk_model *m = tiny_with("llama", "p_tuning", mlp_opts, NULL);
        if (m && e) {
            struct ftk_batch_view b = batch_of(e), pb = b;
            enum { TP = 11 };
            int32_t ids[2 * TP], lab[2 * TP], pos[2 * TP], seg[2 * TP];
            for (int64_t r = 0; r < 2; r++)
                for (int64_t t = 0; t < TP; t++) {
                    int real = t < b.T;
                    ids[r * TP + t] = real ? b.input_ids[r * b.T + t] : 0;
                    lab[r * TP + t] = real ? b.labels[r * b.T + t] : -100;
                    pos[r * TP + t] = real ? b.position_ids[r * b.T + t] : 0;
                    seg[r * TP + t] = real;
                }
            pb.T = TP;
            pb.input_ids = ids;
            pb.labels = lab;
            pb.position_ids = pos;
            pb.segment_ids = seg;
            int64_t V = ftk_model_get_config(m)->V;
            float *a = logits_of(m, &b), *c = logits_of(m, &pb), *cc = malloc((size_t)(2 * b.T * V) * sizeof *cc);
            for (int64_t r = 0; r < 2; r++)
                memcpy(cc + r * b.T * V, c + r * TP * V, (size_t)(b.T * V) * sizeof(float));
            double el = rel_err(cc, a, 2 * b.T * V);
            double l0 = step_grads(m, &b);
            float **g0 = grads_copy(m);
            double l1 = step_grads(m, &pb), eg = grads_err(m, g0);
            grads_free(m, g0);
            printf("  padded to %d: logits rel err %.2e, loss %.7f (unpadded %.7f), grads %.2e\n", TP, el, l1, l0, eg);
            CHECK(el <= 1e-6);
            CHECK_NEAR(l1, l0, 1e-6);
            CHECK(eg <= 1e-5);
            free(a);
            free(c);
            free(cc);
            /* a row of two documents (neat packing) would need the virtual tokens twice */
            seg[3] = seg[4] = 2;
            float lp[2];
            CHECK_ERR(ftk_model_forward(m, &pb, 0, lp, NULL), FTK_E_UNSUPPORTED, "row 0 packs several documents");
        }
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("bad options and bad adapters are errors naming them") {
        const struct bad_option bad[] = {
            {"prompt_tuning", {{NULL, NULL}}, FTK_E_INVALID, "num_virtual_tokens is required"},
            {"prompt_tuning", {{"num_virtual_tokens", "0"}, {NULL, NULL}}, FTK_E_INVALID, "num_virtual_tokens 0"},
            {"prompt_tuning", {{"num_virtual_tokens", "x"}, {NULL, NULL}}, FTK_E_INVALID, "num_virtual_tokens"},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"prompt_tuning_init", "VOCAB"}, {NULL, NULL}}, FTK_E_UNSUPPORTED, "prompt_tuning_init=VOCAB"},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"prompt_tuning_init", "TEXT"}, {NULL, NULL}}, FTK_E_INVALID, "prompt_tuning_init_text"},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"prompt_tuning_init", "TEXT"}, {"prompt_tuning_init_text", "the"}, {NULL, NULL}},
             FTK_E_INVALID, "tokenizer_name_or_path"},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"prompt_tuning_init", "TEXT"}, {"prompt_tuning_init_text", "the"},
                  {"tokenizer_name_or_path", "meta-llama/Llama-2-7b-hf"}}, FTK_E_NOTFOUND, "tokenizer_name_or_path \"meta-llama/Llama-2-7b-hf\""},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"token_dim", "32"}, {NULL, NULL}}, FTK_E_MISMATCH, "token_dim 32"},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"task_type", "SEQ_CLS"}, {NULL, NULL}}, FTK_E_UNSUPPORTED, "task_type SEQ_CLS"},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"peft_type", "LORA"}, {NULL, NULL}}, FTK_E_INVALID, "peft_type LORA"},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"num_transformer_submodules", "2"}, {NULL, NULL}}, FTK_E_UNSUPPORTED, "num_transformer_submodules"},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"num_layers", "3"}, {NULL, NULL}}, FTK_E_MISMATCH, "num_layers 3"},
            {"prompt_tuning", {{"num_virtual_tokens", "4"}, {"r", "8"}, {NULL, NULL}}, FTK_E_INVALID, "unknown option \"r\" for PROMPT_TUNING"},
            {"p_tuning", {{"num_virtual_tokens", "4"}, {"prompt_tuning_init", "TEXT"}, {NULL, NULL}}, FTK_E_INVALID, "unknown option \"prompt_tuning_init\""},
            {"p_tuning", {{"num_virtual_tokens", "4"}, {"encoder_reparameterization_type", "GRU"}, {NULL, NULL}}, FTK_E_UNSUPPORTED, "GRU"},
            {"p_tuning", {{"num_virtual_tokens", "4"}, {"encoder_dropout", "1.5"}, {NULL, NULL}}, FTK_E_INVALID, "encoder_dropout"},
            {"p_tuning", {{"num_virtual_tokens", "4"}, {"encoder_hidden_size", "0"}, {NULL, NULL}}, FTK_E_INVALID, "encoder_hidden_size"},
            {"p_tuning", {{"num_virtual_tokens", "4"}, {"encoder_reparameterization_type", "LSTM"}, {"encoder_num_layers", "0"}, {NULL, NULL}},
             FTK_E_INVALID, "encoder_num_layers"},
        };
        check_bad_options(bad, sizeof bad / sizeof *bad);
        char dir[64];
        bad_copy(FIX "/llama/pt_random", "\"token_dim\": 16", "\"token_dim\": 32", dir, sizeof dir);
        check_adapter_refused("llama", dir, FTK_E_MISMATCH, "token_dim 32, but the model's hidden size is 16");
        rm_dir(dir);
        bad_copy(FIX "/llama/ptune_mlp", "\"num_virtual_tokens\": 4", "\"num_virtual_tokens\": 5", dir, sizeof dir);
        check_adapter_refused("llama", dir, FTK_E_MISMATCH, "prompt_embeddings has shape [4,16], the model needs [5,16]");
        rm_dir(dir);
        /* the plugin attached with options, then peft's P-tuning adapter: only its output is there */
        struct ftk_model *m;
        const struct ftk_peft_plugin *pp;
        CHECK_OK(ftk_plugin_load_peft("p_tuning", &pp));
        CHECK_OK(ftk_model_load(PC_TINY "llama", be, ctx, &m));
        CHECK_OK(ftk_model_set_peft(m, pp, mlp_opts, 0, NULL));
        {
            struct ftk_source *src;
            CHECK_OK(ftk_source_open(FIX "/llama/ptune_mlp", &src));
            CHECK_ERR(pp->load(ftk_model_peft(m), src), FTK_E_UNSUPPORTED, "load it through its adapter_config.json");
            ftk_source_close(src);
        }
        /* ftk's encoder file from another save than prompt_embeddings */
        {
            struct ftk_model *a = tiny_with("llama", "p_tuning", mlp_opts, NULL);
            char d1[64], d2[64], cmd[256];
            if (a) {
                snprintf(d1, sizeof d1, "/tmp/ftk_pt_bad_XXXXXX");
                snprintf(d2, sizeof d2, "/tmp/ftk_pt_bad_XXXXXX");
                CHECK(mkdtemp(d1) && mkdtemp(d2));
                CHECK_OK(ftk_peft_get_plugin(ftk_model_peft(a))->save(ftk_model_peft(a), d1, NULL));
                ftk_model_trainable(a, 0)->w[0] += 1.0f;
                CHECK_OK(ftk_peft_get_plugin(ftk_model_peft(a))->save(ftk_model_peft(a), d2, NULL));
                snprintf(cmd, sizeof cmd, "cp '%s/ftk_prompt_encoder.safetensors' '%s/'", d2, d1);
                CHECK(system(cmd) == 0);
                check_adapter_refused("llama", d1, FTK_E_MISMATCH, "different saves");
                rm_dir(d1);
                rm_dir(d2);
            }
            ftk_model_free(a);
        }
        ftk_model_free(m);
    }
    return plugin_check_end();
}
