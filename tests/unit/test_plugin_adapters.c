/* tests/unit/test_plugin_adapters.c: the sublayer_out-hook methods of issue 11 on the tiny llama:
 * bottleneck adapters (Houlsby, Pfeiffer, parallel; AdapterDrop), PALs and AdapterFusion, against
 * torch autograd on transformers' model with the papers' formulas attached by forward hooks
 * (fixtures from tests/oracle/adapters.py): logits, loss, gradients, the grad norm, one AdamW step;
 * then central differences of the loss through the whole model (which also checks the core's
 * sublayer wiring) with activation recomputation off and on, AdapterDrop's skipped layers,
 * save/load round trips, generation, and bad options.
 * Errors are max|got - want| / max|want| over each tensor (scale-free).
 * FTK_ADAPTERS_OUT=DIR keeps the adapters ftk saves (tests/oracle/check_adapters.py). */
#include "check.h"

#define FIX "tests/fixtures/peft_methods/adapters"
#define PC_BASE "tests/fixtures/hf_tiny/llama"
#define PC_KEEP_ENV "FTK_ADAPTERS_OUT"
#include "plugin_check.h"

static const char *const variants[] = {"houlsby", "pfeiffer", "parallel", "parallel_normed", "pfeiffer_drop", "pals",
                                       "pals_attn"};

/* A variant whose fixture directory loads by its adapter_config.json. */
static void check_dir(const char *tag)
{
    /* relu's kink is within 1e-2 of some pre-activations: smaller steps there */
    check_fixture_dir(FIX, tag, strstr(tag, "pfeiffer") == tag || !strcmp(tag, "parallel") ? 1e-3 : 1e-2);
}

/* AdapterFusion over the two stage-1 adapters TAG_a, TAG_b, with the oracle's fusion weights. */
static struct ftk_model *fusion_model(const struct ftk_st_model *e, const char *tag, const char *preset)
{
    char dirs[512];
    snprintf(dirs, sizeof dirs, FIX "/%s_a," FIX "/%s_b", tag, tag);
    const struct ftk_kv opts[] = {{"adapters", dirs}, {"fusion_config", preset}, {NULL, NULL}};
    struct ftk_model *m = model_with("adapter_fusion", opts, NULL, 0);
    if (m)
        set_from(m, e, tag, "init");
    return m;
}

static void check_fusion(const char *tag, const char *preset)
{
    struct ftk_st_model *e = expected_of(FIX, NULL);
    struct ftk_model *m = e ? fusion_model(e, tag, preset) : NULL;
    if (m) {
        struct ftk_batch_view b = batch_of(e);
        parity(m, e, NULL, tag, &TORCH_TOL);
        round_trip(m, &b, tag);
    }
    ftk_model_free(m);
    m = e ? fusion_model(e, tag, preset) : NULL;
    if (m) {
        struct ftk_batch_view b = batch_of(e);
        fd_check(m, &b, NULL, 2, 1e-2, tag, 0);
        ftk_model_set_recompute(m, 1);
        fd_check(m, &b, NULL, 1, 1e-2, tag, 0);
        ftk_model_set_recompute(m, 0);
        recompute_same(m, &b, tag);
    }
    ftk_model_free(m);
    ftk_st_model_close(e);
}

int main(void)
{
    if (plugin_check_begin() != 0)
        return 1;
    for (size_t i = 0; i < sizeof variants / sizeof *variants; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s against torch, finite differences, recompute, save/load", variants[i]);
        TEST(name) check_dir(variants[i]);
    }
    TEST("AdapterFusion (dynamic) of two Houlsby adapters against torch, finite differences, recompute, save/load")
        check_fusion("fusion", "dynamic");
    TEST("AdapterFusion (static) of two Pfeiffer adapters against torch, finite differences, recompute, save/load")
        check_fusion("fusion_static", "static");
    TEST("Houlsby adapters: KV-cache generation = the no-cache forward's greedy choice; packed rows") {
        check_dir_generation(FIX "/houlsby", "houlsby", 1);
        check_dir_generation(FIX "/parallel", "parallel", 0);
    }
    TEST("AdapterFusion: generation, packed rows, the value regulariser before the update") {
        struct ftk_st_model *e = expected_of(FIX, NULL);
        struct ftk_model *m = e ? fusion_model(e, "fusion", "dynamic") : NULL;
        if (m) {
            check_generation(m, "fusion");
            check_packed(m, "fusion");
            /* loss += 0.01 sum ||I - Wv||^2, dWv += 0.02 (Wv - I), per location */
            struct ftk_peft *p = ftk_model_peft(m);
            CHECK_OK(ftk_model_zero_grad(m));
            double reg = 1.5, want = 0, gerr = 0;
            CHECK_OK(ftk_peft_get_plugin(p)->before_update(p, &reg));
            int nv = 0;
            for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {
                struct ftk_param *q = ftk_model_trainable(m, i);
                if (!strstr(q->name, ".value.weight"))
                    continue;
                nv++;
                for (int64_t j = 0; j < q->numel; j++) {
                    double d = q->w[j] - (j / q->shape[1] == j % q->shape[1] ? 1.0 : 0.0);
                    want += 0.01 * d * d;
                    gerr = fmax(gerr, fabs(q->g[j] - 0.02 * d));
                }
            }
            printf("  regulariser over %d value matrices: %.6f (by hand %.6f), gradient err %.1e\n", nv, reg - 1.5, want, gerr);
            CHECK_INT(nv, 4);
            CHECK_NEAR(reg - 1.5, want, 1e-6);
            CHECK(gerr <= 1e-7);
        }
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("PALs: packed rows keep documents apart; generation recomputes the sequence (no KV-cache decode)") {
        struct ftk_model *m = model_with(NULL, NULL, FIX "/pals", 0);
        if (m) {
            check_packed(m, "pals");
            check_generation_recomputes(m);
        }
        ftk_model_free(m);
    }
    TEST("AdapterDrop: no adapters in the first n layers; the robust variant draws n per training step") {
        struct ftk_st_model *e = expected_of(FIX, NULL);
        struct ftk_batch_view b = batch_of(e);
        /* fixed: pfeiffer_drop (n = 1) has no layer-0 parameters and matched the torch model without them */
        struct ftk_model *m = model_with(NULL, NULL, FIX "/pfeiffer_drop", 0);
        for (size_t i = 0; m && i < ftk_model_n_trainable(m); i++)
            CHECK(!strstr(ftk_model_trainable(m, i)->name, "layers.0."));
        ftk_model_free(m);
        /* the Houlsby fixture's weights with adapter_drop_layers = 0, 1, 2 and the robust variant */
        double Ln[3];
        for (int n = 0; n <= 2; n++) {
            const struct ftk_kv o[] = {{"config", "houlsby"}, {"reduction_factor", "4"}, {"adapter_drop_robust", "true"},
                                       {"adapter_drop_layers", n == 0 ? "0" : n == 1 ? "1" : "2"}, {NULL, NULL}};
            m = model_with("bottleneck", o, NULL, 0);
            struct ftk_source *src;
            CHECK_OK(ftk_source_open(FIX "/houlsby", &src));
            if (m) {
                CHECK_OK(ftk_peft_get_plugin(ftk_model_peft(m))->load(ftk_model_peft(m), src));
                Ln[n] = loss_of(m, &b);   /* inference drops the first n */
            }
            ftk_source_close(src);
            if (m && n == 0) {   /* training: n drawn per step from {0, 1} (L = 2): both occur, each step is one of them */
                int seen[2] = {0, 0};
                for (int64_t st = 0; st < 12; st++) {
                    ftk_model_set_step(m, st);
                    double lt = loss_of_mode(m, &b, 1);
                    int k = fabs(lt - Ln[0]) < 1e-6 ? 0 : 1;
                    seen[k]++;
                    if (k == 1)
                        CHECK(fabs(lt - Ln[0]) > 1e-4);
                }
                printf("  robust AdapterDrop over 12 steps: n = 0 in %d, n = 1 in %d\n", seen[0], seen[1]);
                CHECK(seen[0] > 0 && seen[1] > 0);
                fd_check(m, &b, NULL, 1, 1e-2, "robust AdapterDrop, train-mode forwards", 1);
            }
            ftk_model_free(m);
        }
        /* n = 1 drops layer 0's adapters: the loss of the fixed-n model matches one train draw */
        const struct ftk_kv o1[] = {{"config", "houlsby"}, {"reduction_factor", "4"}, {"adapter_drop_layers", "1"}, {NULL, NULL}};
        m = model_with("bottleneck", o1, NULL, 0);
        if (m) {
            CHECK_INT(ftk_model_n_trainable(m), 8);   /* layer 1's two modules only */
            ftk_model_free(m);
        }
        printf("  losses with the first 0, 1, 2 layers dropped: %.6f %.6f %.6f\n", Ln[0], Ln[1], Ln[2]);
        CHECK(fabs(Ln[0] - scalar(e, "houlsby", "loss")) < 1e-5);
        CHECK(Ln[0] != Ln[1] && Ln[1] != Ln[2]);
        ftk_st_model_close(e);
    }
    TEST("bottleneck dropout: train-mode forwards draw the step's masks, backward uses the same") {
        struct ftk_st_model *e = expected_of(FIX, NULL);
        struct ftk_batch_view b = batch_of(e);
        const struct ftk_kv o[] = {{"config", "houlsby"}, {"reduction_factor", "4"}, {"dropout", "0.3"}, {NULL, NULL}};
        struct ftk_model *m = model_with("bottleneck", o, NULL, 0);
        struct ftk_source *src;
        CHECK_OK(ftk_source_open(FIX "/houlsby", &src));
        if (m) {
            CHECK_OK(ftk_peft_get_plugin(ftk_model_peft(m))->load(ftk_model_peft(m), src));
            double le = loss_of(m, &b), lt = loss_of_mode(m, &b, 1), lt2 = loss_of_mode(m, &b, 1);
            printf("  eval %.6f (torch, no dropout %.6f), train %.6f twice %.6f\n", le, scalar(e, "houlsby", "loss"), lt, lt2);
            CHECK(fabs(le - scalar(e, "houlsby", "loss")) < 1e-5);
            CHECK(lt != le && lt == lt2);
            fd_check(m, &b, NULL, 1, 1e-2, "houlsby, dropout 0.3", 1);
        }
        ftk_source_close(src);
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("a fresh bottleneck adapter (mam_adapter init) leaves the model as it was; bert init does not") {
        struct ftk_st_model *e = expected_of(FIX, NULL);
        struct ftk_batch_view b = batch_of(e);
        struct ftk_model *base = NULL;
        CHECK_OK(ftk_model_load(BASE, be, ctx, &base));
        float *l0 = base ? logits_of(base, &b) : NULL;
        static const char *cfgs[3] = {"houlsby", "pfeiffer", "parallel"};
        for (int i = 0; i < 3 && l0; i++) {
            const struct ftk_kv o[] = {{"config", cfgs[i]}, {NULL, NULL}};
            struct ftk_model *m = model_with("bottleneck", o, NULL, 7);
            if (m) {
                float *l1 = logits_of(m, &b);
                CHECK(rel_err(l1, l0, b.B * b.T * 64) == 0);
                free(l1);
            }
            ftk_model_free(m);
        }
        const struct ftk_kv ob[] = {{"config", "houlsby"}, {"init_weights", "bert"}, {NULL, NULL}};
        struct ftk_model *m = model_with("bottleneck", ob, NULL, 7);
        if (m && l0) {
            float *l1 = logits_of(m, &b);
            double d = rel_err(l1, l0, b.B * b.T * 64);
            printf("  bert init moves the logits by %.2e (relative)\n", d);
            CHECK(d > 0 && d < 1e-2);
            free(l1);
        }
        ftk_model_free(m);
        free(l0);
        ftk_model_free(base);
        ftk_st_model_close(e);
    }
    TEST("bad options are errors naming them") {
        const struct bad_option bad[] = {
            {"bottleneck", {{"config", "lora"}}, FTK_E_INVALID, "config=lora"},
            {"bottleneck", {{"non_linearity", "softplus"}}, FTK_E_INVALID, "non_linearity=softplus"},
            {"bottleneck", {{"reduction_factor", "0"}}, FTK_E_INVALID, "reduction_factor=0"},
            {"bottleneck", {{"reduction_factor", "{\"1\": 8}"}}, FTK_E_UNSUPPORTED, "per-layer mapping"},
            {"bottleneck", {{"scaling", "big"}}, FTK_E_INVALID, "scaling"},
            {"bottleneck", {{"ln_after", "true"}}, FTK_E_UNSUPPORTED, "ln_after=true"},
            {"bottleneck", {{"use_gating", "true"}}, FTK_E_UNSUPPORTED, "use_gating"},
            {"bottleneck", {{"residual_before_ln", "post_add"}}, FTK_E_UNSUPPORTED, "residual_before_ln=post_add"},
            {"bottleneck", {{"leave_out", "0,7"}}, FTK_E_INVALID, "leave_out: \"7\""},
            {"bottleneck", {{"leave_out", "0,1"}}, FTK_E_INVALID, "no layer keeps an adapter"},
            {"bottleneck", {{"dropout", "1"}}, FTK_E_INVALID, "dropout=1"},
            {"bottleneck", {{"reduction", "4"}}, FTK_E_INVALID, "unknown option \"reduction\""},
            {"bottleneck", {{"peft_type", "PALS"}}, FTK_E_INVALID, "peft_type PALS given to the bottleneck plugin"},
            {"pals", {{"peft_type", "BOTTLENECK"}}, FTK_E_INVALID, "peft_type BOTTLENECK given to the pals plugin"},
            {"bottleneck", {{"mh_adapter", "false"}, {"output_adapter", "false"}}, FTK_E_INVALID, "no adapter"},
            {"pals", {{"d_s", "8"}, {"num_heads", "3"}}, FTK_E_INVALID, "num_heads=3 must divide d_s=8"},
            {"pals", {{"placement", "mlp"}}, FTK_E_INVALID, "placement=mlp"},
            {"adapter_fusion", {{"fusion_config", "dynamic"}}, FTK_E_INVALID, "needs adapters=DIR1"},
            {"adapter_fusion", {{"adapters", FIX "/houlsby," FIX "/parallel"}}, FTK_E_UNSUPPORTED, "parallel adapter"},
            {"adapter_fusion", {{"adapters", FIX "/houlsby," FIX "/pfeiffer"}}, FTK_E_UNSUPPORTED, "read different inputs"},
            {"adapter_fusion", {{"adapters", FIX "/houlsby," FIX "/pals"}}, FTK_E_INVALID, "not a bottleneck adapter"},
            {"adapter_fusion", {{"adapters", FIX "/pfeiffer," FIX "/pfeiffer_drop"}}, FTK_E_UNSUPPORTED, "differ at layer 0"},
            {"adapter_fusion", {{"adapters", FIX "/houlsby," FIX "/houlsby"}}, FTK_E_INVALID, "two adapters are named"},
            {"adapter_fusion", {{"adapters", FIX "/fusion_a"}, {"temperature", "true"}}, FTK_E_UNSUPPORTED, "temperature"},
        };
        check_bad_options(bad, sizeof bad / sizeof *bad);
        /* an adapter saved with other options: a shape mismatch naming the tensor */
        struct ftk_model *m = NULL;
        const struct ftk_peft_plugin *pl;
        CHECK_OK(ftk_model_load(BASE, be, ctx, &m));
        CHECK_OK(ftk_plugin_load_peft("bottleneck", &pl));
        const struct ftk_kv o[] = {{"config", "houlsby"}, {"reduction_factor", "2"}, {NULL, NULL}};
        CHECK_OK(ftk_model_set_peft(m, pl, o, 0, NULL));
        struct ftk_source *src;
        CHECK_OK(ftk_source_open(FIX "/houlsby", &src));
        CHECK_ERR(pl->load(ftk_model_peft(m), src), FTK_E_MISMATCH, "adapter_down.0.weight has shape [4,16]");
        ftk_source_close(src);
        ftk_model_free(m);
    }
    return plugin_check_end();
}
