/* tests/unit/test_plugin_mam_unipelt.c: the MAM adapter (He et al. 2022: prefix tuning + a scaled
 * parallel adapter after the MLP) and UniPELT (Mao et al. 2022: gated LoRA on q/v, a gated prefix,
 * a gated Pfeiffer adapter) on the tiny llama, against torch autograd on transformers' model with
 * the papers' formulas attached (fixtures from tests/oracle/mam_unipelt.py; peft has neither):
 * logits, loss, gradients, grad norm, one AdamW step; central differences through the whole model
 * with recompute off and on; save/load; MAM's KV-cache generation and packed rows; UniPELT's
 * padded rows (= unpadded), its refusals (generation, rows of several documents); a fresh MAM
 * adapter = prefix tuning alone; bad options.
 * FTK_MAM_UNIPELT_OUT=DIR keeps the adapters ftk saves. */
#include "check.h"

#define FIX "tests/fixtures/peft_methods/mam_unipelt"
#define PC_BASE "tests/fixtures/hf_tiny/llama"
#define PC_KEEP_ENV "FTK_MAM_UNIPELT_OUT"
#include "plugin_check.h"

static const struct {
    const char *tag;
    double eps;                /* relu's kink is within 1e-2 of some pre-activations: smaller steps */
} variants[] = {{"mam", 1e-3}, {"mam_normed", 1e-2}, {"unipelt", 1e-3}, {"unipelt_noproj", 1e-2}};

/* The first n tokens of the fixture's row 0: alone (T = n), and padded to T with segment ids
 * (1 for the tokens, 0 for the padding, labels -100 there), as ftk pack writes padded rows. */
struct padded {
    int32_t ids[16], lab[16], pos[16], seg[16];
    struct ftk_batch_view alone, pad, pad_noseg;
};

static void padded_rows(const struct ftk_batch_view *b, int64_t n, struct padded *o)
{
    for (int64_t t = 0; t < b->T; t++) {
        o->ids[t] = t < n ? b->input_ids[t] : 0;
        o->lab[t] = t < n ? b->labels[t] : -100;
        o->pos[t] = t < n ? (int32_t)t : 0;
        o->seg[t] = t < n;
    }
    o->alone = (struct ftk_batch_view){.B = 1, .T = n, .input_ids = o->ids, .labels = o->lab, .position_ids = o->pos};
    o->pad = (struct ftk_batch_view){.B = 1, .T = b->T, .input_ids = o->ids, .labels = o->lab, .position_ids = o->pos,
                                     .segment_ids = o->seg};
    o->pad_noseg = o->pad;
    o->pad_noseg.segment_ids = NULL;
}

/* A padded row gives its unpadded self's logits, loss and gradients (the gates average over the
 * real tokens only); without segment ids the padding counts, as in Mao et al.'s code. */
static void check_padded(struct ftk_model *m, const struct ftk_batch_view *b)
{
    struct padded r;
    int64_t n = 5, V = ftk_model_get_config(m)->V;
    padded_rows(b, n, &r);
    float *la = logits_of(m, &r.alone), *lp = logits_of(m, &r.pad), *ln = logits_of(m, &r.pad_noseg);
    double el = rel_err(lp, la, n * V), en = rel_err(ln, la, n * V);
    double L0 = step_grads(m, &r.alone);
    float **g0 = grads_copy(m);
    double L1 = step_grads(m, &r.pad), gerr = grads_err(m, g0);
    grads_free(m, g0);
    printf("  padded row vs alone: logits %.2e, loss %.7f vs %.7f, grads worst %.2e; without segment ids the "
           "padding moves the logits by %.2e\n", el, L1, L0, gerr, en);
    CHECK(el <= 1e-6);
    CHECK_NEAR(L1, L0, 1e-6);
    CHECK(gerr <= 1e-4);   /* the q gates' gradients are sums of cancelling terms (F32 rounding of dq) */
    CHECK(en > 1e-4);
    free(la);
    free(lp);
    free(ln);
}

int main(void)
{
    if (plugin_check_begin() != 0)
        return 1;
    double worst = 0;
    for (size_t i = 0; i < sizeof variants / sizeof *variants; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s against torch, finite differences, recompute, save/load", variants[i].tag);
        TEST(name) worst = fmax(worst, check_fixture_dir(FIX, variants[i].tag, variants[i].eps));
    }
    printf("  worst relative error against torch over the %zu variants: %.2e\n", sizeof variants / sizeof *variants, worst);
    TEST("MAM: KV-cache generation = the no-cache forward's greedy choice; packed rows = their documents") {
        check_dir_generation(FIX "/mam", "mam", 1);
        check_dir_generation(FIX "/mam_normed", "mam_normed", 1);
    }
    TEST("a fresh MAM adapter is prefix tuning alone (the parallel adapter starts at 0, the prefix is prefix_impl.h's)") {
        struct ftk_st_model *e = expected_of(FIX, NULL);
        struct ftk_batch_view b = e ? batch_of(e) : (struct ftk_batch_view){0};
        const struct ftk_kv om[] = {{"num_virtual_tokens", "4"}, {"encoder_hidden_size", "6"}, {"bottleneck_size", "5"},
                                    {NULL, NULL}};
        const struct ftk_kv op[] = {{"num_virtual_tokens", "4"}, {"encoder_hidden_size", "6"},
                                    {"prefix_projection", "true"}, {NULL, NULL}};
        struct ftk_model *m = e ? model_with("mam", om, NULL, 9) : NULL, *p = e ? model_with("prefix_tuning", op, NULL, 9) : NULL;
        if (m && p) {
            double d = logits_vs(m, p, &b);
            printf("  fresh mam vs fresh prefix_tuning (seed 9): logits rel err %.2e\n", d);
            CHECK(d == 0);
            CHECK_INT(ftk_model_n_trainable(m), 5 + 2 * 4);   /* the prefix MLP, 4 tensors per layer */
        }
        ftk_model_free(m);
        ftk_model_free(p);
        ftk_st_model_close(e);
    }
    TEST("UniPELT: padded rows are their unpadded selves; generation recomputes the sequence; rows of several documents are refused") {
        struct ftk_st_model *e = expected_of(FIX, NULL);
        struct ftk_model *m = e ? model_with(NULL, NULL, FIX "/unipelt", 0) : NULL;
        if (m) {
            struct ftk_batch_view b = batch_of(e);
            check_padded(m, &b);
            check_generation_recomputes(m);
            struct ftk_st_model *be_e = expected_of(PC_BASE, NULL);
            if (be_e) {
                const struct ftk_tensor *ids = ftk_st_model_find(be_e, "packed.input_ids"),
                                        *pos = ftk_st_model_find(be_e, "packed.position_ids"),
                                        *seg = ftk_st_model_find(be_e, "packed.segment_ids");
                struct ftk_batch_view pk = {.B = 1, .T = ids->shape[1], .input_ids = ids->data, .position_ids = pos->data,
                                            .segment_ids = seg->data};
                float *lg = malloc((size_t)(pk.T * 64) * sizeof *lg);
                CHECK_ERR(ftk_model_logits(m, &pk, lg), FTK_E_UNSUPPORTED, "row 0 packs several documents");
                free(lg);
                ftk_st_model_close(be_e);
            }
        }
        ftk_model_free(m);
        ftk_st_model_close(e);
    }
    TEST("bad options are errors naming them") {
        const struct bad_option bad[] = {
            {"mam", {{"prefix_length", "30"}}, FTK_E_INVALID, "unknown option \"prefix_length\""},
            {"mam", {{"num_virtual_tokens", "0"}}, FTK_E_INVALID, "mam: num_virtual_tokens = 0"},
            {"mam", {{"bottleneck_size", "0"}}, FTK_E_INVALID, "bottleneck_size=0"},
            {"mam", {{"scaling", "big"}}, FTK_E_INVALID, "scaling"},
            {"mam", {{"parallel_input", "x"}}, FTK_E_INVALID, "parallel_input=x"},
            {"mam", {{"non_linearity", "softplus"}}, FTK_E_INVALID, "non_linearity=softplus"},
            {"mam", {{"encoder_hidden_size", "-1"}}, FTK_E_INVALID, "mam: encoder_hidden_size = -1"},
            {"mam", {{"peft_type", "UNIPELT"}}, FTK_E_INVALID, "peft_type UNIPELT given to the mam plugin"},
            {"unipelt", {{"peft_type", "MAM"}}, FTK_E_INVALID, "peft_type MAM given to the unipelt plugin"},
            {"unipelt", {{"r", "0"}}, FTK_E_INVALID, "unipelt: r = 0"},
            {"unipelt", {{"lora_alpha", "16"}}, FTK_E_INVALID, "unknown option \"lora_alpha\""},
            {"unipelt", {{"scaling", "2"}}, FTK_E_INVALID, "unknown option \"scaling\""},
            {"unipelt", {{"reduction_factor", "0"}}, FTK_E_INVALID, "reduction_factor=0"},
            {"unipelt", {{"prefix_projection", "maybe"}}, FTK_E_INVALID, "prefix_projection"},
        };
        check_bad_options(bad, sizeof bad / sizeof *bad);
        /* an adapter saved with other options: a shape mismatch naming the tensor */
        const struct ftk_kv om[] = {{"num_virtual_tokens", "3"}, {"encoder_hidden_size", "12"}, {"bottleneck_size", "5"},
                                    {NULL, NULL}};
        struct ftk_model *m = model_with("mam", om, NULL, 0);
        struct ftk_source *src = NULL;
        CHECK_OK(ftk_source_open(FIX "/mam", &src));
        if (m && src)
            CHECK_ERR(ftk_peft_get_plugin(ftk_model_peft(m))->load(ftk_model_peft(m), src), FTK_E_MISMATCH,
                      "adapter_down.0.weight has shape [4,16]");
        ftk_source_close(src);
        ftk_model_free(m);
        const struct ftk_kv ou[] = {{"num_virtual_tokens", "3"}, {"encoder_hidden_size", "12"}, {"r", "4"},
                                    {"bottleneck_size", "4"}, {NULL, NULL}};
        m = model_with("unipelt", ou, NULL, 0);
        CHECK_OK(ftk_source_open(FIX "/unipelt", &src));
        if (m && src)
            CHECK_ERR(ftk_peft_get_plugin(ftk_model_peft(m))->load(ftk_model_peft(m), src), FTK_E_MISMATCH, "lora_A.weight");
        ftk_source_close(src);
        ftk_model_free(m);
    }
    return plugin_check_end();
}
