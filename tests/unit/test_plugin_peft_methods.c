/* tests/unit/test_plugin_peft_methods.c: the `linear`-hook PEFT methods of issue 11 against
 * HuggingFace peft 0.21 (fixtures from tests/oracle/peft_methods.py) on the llama and qwen2
 * tiny models: (IA)^3, DoRA (lora use_dora), PiSSA and OLoRA inits (lora init_lora_weights),
 * BitFit (torch autograd as its oracle: peft has none). For each: logits, loss, gradients, the
 * clipped grad norm, one AdamW step, adapter files saved and loaded back (peft's adapters are
 * loaded too), and central differences of the loss against the plugin's backward.
 * Errors are max|got - want| / max|want| over each tensor (scale-free).
 * FTK_PEFT_METHODS_OUT=DIR keeps the adapters ftk saves after the step, for
 * tests/oracle/check_peft_methods.py (peft loads what ftk trains). */
#include "check.h"
#include "plugin_check.h"

#define FIX "tests/fixtures/peft_methods"
#define LORA_TARGETS "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

static const struct parity_tol peft_tol = {.oracle = "peft", .grad = 1e-3, .grad_norm = 1e-4};

/* Saves the method's adapter, loads it into a fresh model (by its adapter_config.json, or
 * plugin + opts), and checks the logits are the same. */
static void round_trip(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag, const char *plugin,
                       const struct ftk_kv *opts)
{
    char dir[512];
    int kept = save_tiny(m, arch, "FTK_PEFT_METHODS_OUT", tag, dir, sizeof dir);
    struct ftk_model *r = tiny_with(arch, plugin, opts, dir);
    if (r) {
        struct ftk_batch_view b = batch_of(e);
        double err = logits_vs(r, m, &b);
        printf("  %s %s: saved and loaded back, logits rel err %.2e\n", arch, tag, err);
        CHECK(err <= 1e-6);
        ftk_model_free(r);
    }
    if (!kept)
        rm_dir(dir);
}

/* The plugin's merge slot: the model saved with the deltas folded in (ftk_model_save merge=1)
 * and loaded without an adapter gives the adapter's logits. */
static void merged(struct ftk_model *m, const struct ftk_st_model *e, const char *arch, const char *tag)
{
    char base[256];
    snprintf(base, sizeof base, PC_TINY "%s", arch);
    struct ftk_batch_view b = batch_of(e);
    double err = merged_err(m, base, &b);
    printf("  %s %s: merged into the weights, logits rel err %.2e\n", arch, tag, err);
    CHECK(err <= 1e-5);
}

static const struct ftk_kv dora_opts[] = {
    {"r", "4"}, {"lora_alpha", "8"}, {"target_modules", LORA_TARGETS}, {"use_dora", "true"}, {NULL, NULL}};

static void check_ia3(const char *arch)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/ia3", arch);
    struct ftk_model *m = tiny_with(arch, NULL, NULL, dir);   /* peft's adapter, by adapter_config.json */
    if (m && e) {
        parity(m, e, arch, "ia3", &peft_tol);
        round_trip(m, e, arch, "ia3", NULL, NULL);
        if (!strcmp(arch, "llama"))   /* qwen2's q/v have biases: that merge is refused (below) */
            merged(m, e, arch, "ia3");
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

static void check_dora(const char *arch)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/dora", arch);
    /* adapter.c refuses use_dora (docs/plugins.md): the lora plugin is attached directly */
    struct ftk_model *m = tiny_with(arch, "lora", dora_opts, dir);
    if (m && e) {
        parity(m, e, arch, "dora", &peft_tol);
        round_trip(m, e, arch, "dora", "lora", dora_opts);
        merged(m, e, arch, "dora");
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

static void check_bitfit(const char *arch)
{
    struct ftk_st_model *e = expected_of(FIX, arch);
    struct ftk_model *m = tiny_with(arch, "bitfit", (const struct ftk_kv[]){{NULL, NULL}}, NULL);
    if (m && e) {
        size_t K = ftk_model_n_trainable(m);
        CHECK_INT(K, 7 * ftk_model_get_config(m)->L);
        set_from(m, e, "bitfit", "init");   /* the oracle's random biases */
        parity(m, e, arch, "bitfit", &peft_tol);
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
    struct ftk_st_model *e = expected_of(FIX, arch);
    const struct ftk_kv opts[] = {{"r", "4"}, {"lora_alpha", "8"}, {"target_modules", LORA_TARGETS},
                                  {"init_lora_weights", init}, {NULL, NULL}};
    struct ftk_model *m = tiny_with(arch, "lora", opts, NULL);
    if (m && e) {
        double wa = 0, wr = 0;
        for (size_t i = 0; i < ftk_model_n_trainable(m); i += 2) {
            struct ftk_param *A = ftk_model_trainable(m, i), *B = ftk_model_trainable(m, i + 1);
            const struct ftk_tensor *ta = exp_t(e, init, "init", A->name), *tb = exp_t(e, init, "init", B->name);
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
            const struct ftk_tensor *tw = exp_t(e, init, "residual", hf);
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
            fd_check(m, &b, "lora_", 2, 1e-2, init, 0);
    }
    ftk_model_free(m);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/%s", arch, init);
    m = tiny_with(arch, NULL, NULL, dir);
    if (m && e) {
        parity(m, e, arch, init, &peft_tol);
        round_trip(m, e, arch, init, NULL, NULL);
        merged(m, e, arch, init);   /* the residual in memory + s B A */
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

int main(void)
{
    if (plugin_check_begin() != 0)
        return 1;
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
        struct ftk_st_model *e = expected_of(FIX, "llama");
        struct ftk_batch_view b = e ? batch_of(e) : (struct ftk_batch_view){0};
        struct ftk_model *m = tiny_with("llama", NULL, NULL, FIX "/llama/ia3");
        if (m && e)
            fd_check(m, &b, "ia3_l", 3, 1e-2, "ia3", 0);
        ftk_model_free(m);
        /* DoRA's A and B get peft's gradient with the norm detached (not the loss's derivative);
         * the magnitude's is exact, and layer 0's goes through layer 1's dx */
        m = tiny_with("llama", "lora", dora_opts, FIX "/llama/dora");
        if (m && e)
            fd_check(m, &b, "magnitude", 3, 1e-2, "dora", 0);
        ftk_model_free(m);
        m = tiny_with("llama", "bitfit", (const struct ftk_kv[]){{NULL, NULL}}, NULL);
        if (m && e)
            fd_check(m, &b, ".bias", 3, 1e-2, "bitfit", 0);
        ftk_model_free(m);
        /* DoRA with lora_dropout: the base path uses dropout(x) W^T too (peft), backward goes
         * through the same mask; train-mode forwards draw the masks again */
        const struct ftk_kv dd[] = {{"r", "4"}, {"lora_alpha", "8"}, {"target_modules", LORA_TARGETS}, {"use_dora", "true"},
                                    {"lora_dropout", "0.3"}, {NULL, NULL}};
        m = tiny_with("llama", "lora", dd, FIX "/llama/dora");
        if (m && e)
            fd_check(m, &b, "magnitude", 3, 1e-2, "dora, dropout 0.3", 1);
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
            CHECK_OK(ftk_model_load(PC_TINY "qwen2", be, ctx, &m));
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
    TEST("adapters of some modules only load back as they were saved (IA3 without down_proj, BitFit on one module)") {
        /* IA3's feedforward_modules defaults to down_proj whatever the targets; BitFit's targets
         * may name single modules (a regex target_modules arrives so) */
        struct ftk_st_model *e = expected_of(FIX, "llama");
        static const char *plug[2] = {"ia3", "bitfit"};
        const struct ftk_kv opts[2][2] = {{{"target_modules", "q_proj,v_proj"}, {NULL, NULL}},
                                          {{"target_modules", "model.layers.0.self_attn.q_proj"}, {NULL, NULL}}};
        for (int pi = 0; pi < 2 && e; pi++) {
            struct ftk_model *m = tiny_with("llama", plug[pi], opts[pi], NULL);
            for (size_t j = 0; m && j < ftk_model_n_trainable(m); j++) {   /* away from the init */
                struct ftk_param *q = ftk_model_trainable(m, j);
                for (int64_t k = 0; k < q->numel; k++)
                    q->w[k] += 0.01f * (float)(k % 7 - 3);
            }
            if (m)
                round_trip(m, e, "llama", plug[pi], NULL, NULL);
            ftk_model_free(m);
        }
        ftk_st_model_close(e);
    }
    TEST("a target_modules list of any length is read whole (a regex arrives as every module's name)") {
        char list[1200] = "";
        for (int k = 0; k < 30; k++)   /* 30 names of modules the tiny model lacks, then down_proj */
            strcat(list, "model.layers.7.self_attn.q_proj,");
        strcat(list, "down_proj");
        static const char *plug[5] = {"lora", "adalora", "bitfit", "diffprune", "ia3"};
        static const char *suffix[5] = {"lora_A.weight", "lora_A", "bias", "diff_w", "ia3_l"};
        for (int pi = 0; pi < 5; pi++) {
            const struct ftk_kv o[] = {{"target_modules", list}, {pi == 1 ? "total_step" : NULL, "10"}, {NULL, NULL}};
            struct ftk_model *m = tiny_with("llama", plug[pi], o, NULL);
            char nm[200];
            snprintf(nm, sizeof nm, "base_model.model.model.layers.1.mlp.down_proj.%s", suffix[pi]);
            if (m && !ftk_model_find_param(m, nm))
                CHECK_FAIL_("no down_proj parameter");
            printf("  %s: %s %s\n", plug[pi], nm, m && ftk_model_find_param(m, nm) ? "found" : "missing");
            ftk_model_free(m);
        }
    }
    TEST("bad options are errors naming them") {
        struct ftk_model *m;
        const struct ftk_peft_plugin *pl;
        CHECK_OK(ftk_model_load(PC_TINY "llama", be, ctx, &m));
        CHECK_OK(ftk_plugin_load_peft("ia3", &pl));
        CHECK_ERR(ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"target_modules", "k_proj"}, {"feedforward_modules", "down_proj"}, {NULL, NULL}}, 0, NULL),
                  FTK_E_INVALID, "feedforward_modules");
        ftk_model_free(m);
        CHECK_OK(ftk_model_load(PC_TINY "llama", be, ctx, &m));
        CHECK_OK(ftk_plugin_load_peft("lora", &pl));
        CHECK_ERR(ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"init_lora_weights", "loftq"}, {NULL, NULL}}, 0, NULL),
                  FTK_E_UNSUPPORTED, "init_lora_weights=loftq");
        ftk_model_free(m);
        CHECK_OK(ftk_model_load(PC_TINY "llama", be, ctx, &m));
        CHECK_ERR(ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"init_lora_weights", "pissa_niter_x"}, {NULL, NULL}}, 0, NULL),
                  FTK_E_INVALID, "pissa_niter_x: N of pissa_niter_N must be a whole number");
        ftk_model_free(m);
        CHECK_OK(ftk_model_load(PC_TINY "llama", be, ctx, &m));
        CHECK_ERR(ftk_model_set_peft(m, pl, (const struct ftk_kv[]){{"loraplus_lr_ratio", "-1"}, {NULL, NULL}}, 0, NULL),
                  FTK_E_INVALID, "loraplus_lr_ratio");
        ftk_model_free(m);
        CHECK_OK(ftk_model_load(PC_TINY "qwen2", be, ctx, &m));   /* (IA)3 on q_proj with a bias */
        CHECK_OK(ftk_model_load_adapter(m, FIX "/qwen2/ia3", 0));
        {
            struct ftk_peft *p = ftk_model_peft(m);
            float w[8 * 16];
            const struct ftk_site *q = NULL;
            for (size_t i = 0; i < ftk_peft_n_sites(p); i++)
                if (ftk_peft_site(p, i)->layer == 0 && ftk_peft_site(p, i)->kind == FTK_LIN_V)
                    q = ftk_peft_site(p, i);
            CHECK(q && q->out * q->in <= 8 * 16);
            /* peft IA3 Linear.merge scales a scaled output's bias too: b * l */
            int has = 0;
            int64_t nb = 0;
            const float *bias = ftk_peft_base_weight(p, "model.layers.0.self_attn.v_proj.bias", &nb);
            struct ftk_st_model *ad = NULL;
            CHECK_OK(ftk_st_file_open(FIX "/qwen2/ia3/adapter_model.safetensors", &ad));
            const struct ftk_tensor *l =
                ad ? ftk_st_model_find(ad, "base_model.model.model.layers.0.self_attn.v_proj.ia3_l") : NULL;
            if (q && q->out <= 8 && bias && l && nb == q->out && ftk_tensor_numel(l) == q->out) {
                CHECK_OK(ftk_peft_get_plugin(p)->merge_bias(p, q, w, &has));
                CHECK_INT(has, 1);
                for (int64_t o = 0; o < q->out; o++)
                    CHECK(w[o] == bias[o] * ((const float *)l->data)[o]);
            } else {
                CHECK_FAIL_("no v_proj bias or ia3_l to check against");
            }
            ftk_st_model_close(ad);
        }
        ftk_model_free(m);
        check_adapter_refused("qwen3", FIX "/llama/ia3", FTK_E_MISMATCH, "adapter for another base");
    }
    return plugin_check_end();
}
