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
#include "check.h"
#include "plugin_check.h"

#define FIX "tests/fixtures/peft_methods/prefix_tuning"
#define KEEP_ENV "FTK_PREFIX_TUNING_OUT"

static const struct ftk_kv proj_opts[] = {
    {"num_virtual_tokens", "3"}, {"prefix_projection", "true"}, {"encoder_hidden_size", "12"}, {NULL, NULL}};
static const struct ftk_kv noproj_opts[] = {{"num_virtual_tokens", "3"}, {NULL, NULL}};

static const struct parity_tol peft_tol = {.oracle = "peft", .grad = 1e-4, .grad_norm = 1e-5};

/* parity against peft (ftk decays every tensor but biases), then the logits after the step
 * against peft's. */
static void check_parity(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag)
{
    size_t K = ftk_model_n_trainable(m);
    CHECK_INT(K, strcmp(tag, "proj") ? 1 : 5);
    for (size_t i = 0; i < K; i++)
        CHECK_INT(ftk_model_trainable(m, i)->decay, strstr(ftk_model_trainable(m, i)->name, "bias") == NULL);
    parity(m, e, arch, tag, &peft_tol);
    double e1 = logits_err(m, e, tag, "logits1");
    printf("  %s %s: after the step logits rel err %.2e\n", arch, tag, e1);
    CHECK(e1 <= 1e-4);
}

/* The saved adapter loads into a fresh model with the same logits: by adapter_config.json (the
 * MLP too, with the projection: it trains on), and as peft loads it (inference_mode, the
 * projected prefix only). */
static void round_trip(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag)
{
    char dir[512];
    int kept = save_tiny(m, arch, KEEP_ENV, tag, dir, sizeof dir);
    int proj = !strcmp(tag, "proj");
    struct ftk_batch_view b = batch_of(e);
    struct ftk_model *r = tiny_with(arch, NULL, NULL, dir);
    if (r) {
        double err = logits_vs(r, m, &b);
        printf("  %s %s: saved and loaded back by adapter_config.json (%zu tensors), logits rel err %.2e\n", arch, tag,
               ftk_model_n_trainable(r), err);
        CHECK(err <= 1e-6);
        CHECK_INT(ftk_model_n_trainable(r), proj ? 5 : 1);
        for (size_t i = 0; i < ftk_model_n_trainable(r); i++) {   /* the same parameters */
            struct ftk_param *q = ftk_model_trainable(r, i), *w = ftk_model_find_param(m, q->name);
            CHECK(w && w->numel == q->numel && !memcmp(w->w, q->w, (size_t)q->numel * sizeof(float)));
        }
        ftk_model_free(r);
    }
    if (proj) {
        const struct ftk_kv inf[] = {{"num_virtual_tokens", "3"}, {"prefix_projection", "true"}, {"encoder_hidden_size", "12"},
                                     {"inference_mode", "true"}, {NULL, NULL}};
        r = tiny_with(arch, "prefix_tuning", inf, dir);
        if (r) {
            double err = logits_vs(r, m, &b);
            printf("  %s %s: loaded as peft does (inference_mode, prompt_embeddings only), logits rel err %.2e\n", arch, tag, err);
            CHECK(err <= 1e-6);
            CHECK_INT(ftk_model_n_trainable(r), 1);
            ftk_model_free(r);
        }
    }
    if (!kept)
        rm_dir(dir);
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
    int32_t *ids = malloc((size_t)(n + steps) * sizeof *ids);
    memcpy(ids, prompt, (size_t)n * sizeof *ids);
    for (int64_t k = 0; k < steps; k++) {
        int32_t best = argmax_uncached(m, ids, n + k);
        ids[n + k] = best;
        if (k < res.n)
            CHECK_INT(res.ids[k], best);
        gen_out[k] = k < res.n ? res.ids[k] : -1;
    }
    free(ids);
    ftk_gen_result_free(&res);
}

/* peft's saved adapter (prompt_embeddings only) loads with peft's logits, and generates greedily
 * as peft's generate does. */
static void check_peft_adapter(const char *arch, const char *tag)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/%s", arch, tag);
    struct ftk_model *m = tiny_with(arch, NULL, NULL, dir);
    if (m && e) {
        double err = logits_err(m, e, tag, "logits");
        const struct ftk_tensor *pr = exp_t(e, tag, "prompt", NULL), *gw = exp_t(e, tag, "gen", NULL);
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
    struct ftk_st_model *e = expected_of(FIX, arch);
    int proj = !strcmp(tag, "proj");
    struct ftk_model *m = tiny_with(arch, "prefix_tuning", proj ? proj_opts : noproj_opts, NULL);
    if (m && e) {
        set_from(m, e, tag, "init");
        check_parity(m, e, arch, tag);
        round_trip(m, e, arch, tag);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

/* Gradients with activation recompute equal those without; two accumulated backwards give twice. */
static void check_recompute_accum(const char *arch)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    struct ftk_model *m = tiny_with(arch, "prefix_tuning", proj_opts, NULL);
    if (m && e) {
        struct ftk_batch_view b = batch_of(e);
        step_grads(m, &b);
        float **g0 = grads_copy(m);
        ftk_model_set_recompute(m, 1);
        step_grads(m, &b);
        double wr = grads_err(m, g0);
        accumulate_grads(m, &b, NULL);
        for (size_t i = 0; i < ftk_model_n_trainable(m); i++)
            for (int64_t j = 0; j < ftk_model_trainable(m, i)->numel; j++)
                g0[i][j] *= 2;
        double wa = grads_err(m, g0);
        grads_free(m, g0);
        printf("  %s: recompute vs not, grads rel err %.2e; two accumulated backwards vs 2x one %.2e\n", arch, wr, wa);
        CHECK(wr <= 1e-6);
        CHECK(wa <= 1e-6);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

int main(void)
{
    if (plugin_check_begin() != 0)
        return 1;
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
            struct ftk_st_model *e = expected_of(FIX, archs[i]);
            for (int k = 0; k < 2; k++) {
                struct ftk_model *m = tiny_with(archs[i], "prefix_tuning", k ? noproj_opts : proj_opts, NULL);
                char what[64];
                snprintf(what, sizeof what, "%s %s", archs[i], tags[k]);
                if (m && e) {
                    struct ftk_batch_view b = batch_of(e);
                    set_from(m, e, tags[k], "init");
                    fd_check_tol(m, &b, NULL, 4, 1e-2, what, 0, 1e-3, 1e-2);
                }
                ftk_model_free(m);
            }
            ftk_st_model_close(e);
        }
    }
    TEST("recompute and gradient accumulation (qwen3, projection)") check_recompute_accum("qwen3");
    TEST("packed rows (segment_ids): each document sees the prefix, as if it were its own row") {
        struct ftk_model *m = tiny_with("qwen3", "prefix_tuning", proj_opts, NULL);
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
        struct ftk_model *m = tiny_with("qwen3", "prefix_tuning", proj_opts, NULL), *m2 = tiny_with("qwen3", "prefix_tuning", proj_opts, NULL);
        struct ftk_st_model *e = expected_of(FIX, "qwen3");
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
        const struct bad_option bad[] = {
            {"prefix_tuning", {{"num_virtual_tokens", "0"}}, FTK_E_INVALID, "num_virtual_tokens = 0"},
            {"prefix_tuning", {{"num_virtual_tokens", "abc"}}, FTK_E_INVALID, "num_virtual_tokens"},
            {"prefix_tuning", {{"prefix_projection", "maybe"}}, FTK_E_INVALID, "prefix_projection"},
            {"prefix_tuning", {{"prefix_projection", "true"}, {"encoder_hidden_size", "-4"}}, FTK_E_INVALID, "encoder_hidden_size = -4"},
            {"prefix_tuning", {{"init_weights", "gaussian"}}, FTK_E_INVALID, "init_weights = gaussian"},
            {"prefix_tuning", {{"num_virtual_token", "3"}}, FTK_E_INVALID, "unknown option \"num_virtual_token\""},
            {"prefix_tuning", {{"task_type", "SEQ_CLS"}}, FTK_E_UNSUPPORTED, "task_type SEQ_CLS"},
            {"prefix_tuning", {{"peft_type", "PROMPT_TUNING"}}, FTK_E_INVALID, "peft_type PROMPT_TUNING given to the prefix_tuning plugin"},
            {"prefix_tuning", {{"num_transformer_submodules", "2"}}, FTK_E_UNSUPPORTED, "num_transformer_submodules = 2"},
            {"prefix_tuning", {{"token_dim", "16"}}, FTK_E_MISMATCH, "token_dim = 16, but this model has 8"},
            {"prefix_tuning", {{"num_attention_heads", "4"}}, FTK_E_MISMATCH,
             "num_attention_heads = 4, but this model has 2 (key/value heads)"},
        };
        check_bad_options(bad, sizeof bad / sizeof *bad);
    }
    TEST("adapters for another model shape, or incomplete, give clear errors") {
        /* llama's keys are 2 heads x 4, qwen3's 2 x 8 */
        check_adapter_refused("qwen3", FIX "/llama/proj", FTK_E_MISMATCH,
                              "token_dim = 8, but this model has 16 (key/value heads x head_dim): adapter for another base?");
        /* the file's prefix length disagrees with the options */
        struct ftk_model *m = NULL;
        CHECK_OK(ftk_model_load(PC_TINY "llama", be, ctx, &m));
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
        m = tiny_with("llama", "prefix_tuning", noproj_opts, NULL);
        if (m) {
            char dir[64];
            snprintf(dir, sizeof dir, "/tmp/ftk_prefix_merge_XXXXXX");
            CHECK(mkdtemp(dir) != NULL);
            CHECK_ERR(ftk_model_save(m, PC_TINY "llama", dir, FTK_DTYPE_F32, 1), FTK_E_UNSUPPORTED,
                      "peft \"prefix_tuning\" cannot be merged into the weights");
            rmdir(dir);
        }
        ftk_model_free(m);
        /* ftk's projection adapter without its prefix_encoder.safetensors */
        m = tiny_with("llama", "prefix_tuning", proj_opts, NULL);
        if (m) {
            char dir[512], f[700];
            save_tiny(m, "llama", KEEP_ENV, "incomplete", dir, sizeof dir);
            snprintf(f, sizeof f, "%s/prefix_encoder.safetensors", dir);
            CHECK(unlink(f) == 0);
            check_adapter_refused("llama", dir, FTK_E_NOTFOUND, "prefix_encoder.safetensors is missing");
            rm_dir(dir);
        }
        ftk_model_free(m);
    }
    return plugin_check_end();
}
