/* plugins/peft/bottleneck.c: bottleneck adapters at the sublayer_out hook, as adapter-transformers
 * defines and places them in Llama models (bottleneck_impl.h has the module and its options):
 *   config=houlsby   (Houlsby et al. 2019, adapters' DoubleSeqBnConfig): a serial adapter after
 *                    the attention and after the MLP, each reading the sublayer output h
 *                    (swish, reduction_factor 16)
 *   config=pfeiffer  (Pfeiffer et al. 2021, SeqBnConfig): one after the MLP, reading h + resid
 *                    (original_ln_before on a model without a post-norm; relu, 16)
 *   config=parallel  (He et al. 2022, ParBnConfig): one parallel to the MLP, reading the stream
 *                    resid that the MLP's norm read (or its normed x), scaled by s = 4 (relu, 2)
 * with every BnConfig option ftk supports overridable, plus AdapterDrop (Rücklé et al. 2021):
 * adapter_drop_layers=n (no adapters in the first n layers, in training and inference) and
 * adapter_drop_robust=true (in training, n drawn per step from {0..L-1}).
 *
 * The hook replaces h by h + dropout(y(u)). Training keeps, per module, the input u (when it is
 * h or h + resid: the core does not keep those) and z, a = act(z); backward reads resid and x from
 * the core. Saved in ftk's format: adapter_config.json (peft_type BOTTLENECK, adapters' keys) and
 * adapter_model.safetensors with adapters' Llama tensor names. Not mergeable (non-linear). */
#include "bottleneck_impl.h"
#include "ftk/safetensors.h"

struct bn_state {
    struct bn_config c;
    int64_t C, L;
    struct bn_module mod[BN_MAX_LAYERS][2];
    int has[BN_MAX_LAYERS][2];
    int ran[BN_MAX_LAYERS][2];   /* the module ran in the last train forward (AdapterDrop) */
    /* activations: training keeps one set per module (u, z, a); inference shares set 0 */
    float *keep;
    size_t keep_cap;
    int64_t keep_N;
    float *infer;                /* inference's u, z, a */
    size_t infer_cap;
    float *scratch;              /* gy, gup, du (N,C) each, ga (N,m), y (N,C) */
    size_t scratch_cap;
};

static ftk_status bn_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct bn_state *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_FAIL_IF(strcmp(be->name, "cpu"), FTK_E_UNSUPPORTED, "bottleneck adapters on the %s backend are not implemented yet",
                be->name);
    const struct ftk_model_config *mc = ftk_peft_config(p);
    S->C = mc->C;
    S->L = mc->L;
    FTK_FAIL_IF(S->L > BN_MAX_LAYERS, FTK_E_UNSUPPORTED, "more than %d layers", BN_MAX_LAYERS);
    FTK_TRY(bn_check_keys(o, "bottleneck", bn_keys, bn_file_keys, NULL));
    FTK_TRY(bn_config_parse(o, S->C, S->L, &S->c));
    uint64_t seed = ftk_peft_seed(p);
    int any = 0;
    for (int l = 0; l < S->L; l++)
        for (int loc = 0; loc < 2; loc++) {
            if (!S->c.loc[loc] || !bn_layer_has(&S->c, l))
                continue;
            S->has[l][loc] = 1;
            any = 1;
            for (int k = 0; k < 5; k++) {
                int64_t d[2];
                int nd = bn_shape(&S->c, S->C, k, &d[0], &d[1]);
                if (!nd)
                    continue;
                char name[256];
                bn_param_name(name, sizeof name, l, loc, S->c.name, bn_what[k]);
                /* HF Trainer's weight decay: every parameter but biases */
                FTK_TRY(ftk_peft_add_param(p, name, nd, d, k != 1 && k != 3, bn_slot(&S->mod[l][loc], k, 0),
                                           bn_slot(&S->mod[l][loc], k, 1)));
                float *host = malloc((size_t)(d[0] * d[1]) * sizeof *host);
                FTK_FAIL_IF(!host, FTK_E_NOMEM, "out of memory");
                bn_init_values(&S->c, S->C, seed, l, loc, k, host, d[0] * d[1]);
                ftk_status st = be->to_device(ctx, *bn_slot(&S->mod[l][loc], k, 0), host, (size_t)(d[0] * d[1]) * sizeof *host);
                free(host);
                FTK_TRY(st);
            }
        }
    FTK_FAIL_IF(!any, FTK_E_INVALID, "no layer keeps an adapter (leave_out, adapter_drop_layers=%lld)", (long long)S->c.drop_layers);
    return FTK_OK;
}

/* The module's activations: u (N,C) when the input is h-based, z, a (N,m); training keeps one
 * set per module for backward, inference uses a set of its own. */
static ftk_status acts(struct bn_state *S, const struct ftk_backend *be, void *ctx, int l, int loc, int train, int64_t N,
                       float **u, float **z, float **a)
{
    int64_t C = S->C, m = S->c.m, per = N * (C + 2 * m);
    float *base;
    if (train) {
        if (N != S->keep_N) {   /* a new train shape: every module's slot moves */
            FTK_TRY(bn_grow(be, ctx, &S->keep, &S->keep_cap, (size_t)(per * 2 * S->L)));
            S->keep_N = N;
        }
        base = S->keep + (size_t)(l * 2 + loc) * (size_t)per;
    } else {
        FTK_TRY(bn_grow(be, ctx, &S->infer, &S->infer_cap, (size_t)per));
        base = S->infer;
    }
    *u = base;
    *z = base + N * C;
    *a = base + N * C + N * m;
    return FTK_OK;
}

static ftk_status scratch(struct bn_state *S, const struct ftk_backend *be, void *ctx, int64_t N, float **gy, float **gup,
                          float **du, float **ga, float **y)
{
    int64_t C = S->C, m = S->c.m;
    FTK_TRY(bn_grow(be, ctx, &S->scratch, &S->scratch_cap, (size_t)(N * (4 * C + m))));
    *gy = S->scratch;
    *gup = *gy + N * C;
    *du = *gup + N * C;
    *y = *du + N * C;
    *ga = *y + N * C;
    return FTK_OK;
}

static ftk_status bn_fwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *h, const float *x, int train)
{
    struct bn_state *S = ftk_peft_priv(p);
    int l = s->layer, loc = s->kind == FTK_SUB_ATTN ? BN_ATTN : BN_MLP;
    if (l < 0 || l >= S->L || !S->has[l][loc])
        return FTK_OK;
    int runs = bn_layer_runs(&S->c, l, S->L, train, ftk_peft_seed(p), ftk_peft_step(p));
    if (train)
        S->ran[l][loc] = runs;
    if (!runs)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = s->B * s->T, C = S->C;
    float *u, *z, *a, *gy, *gup, *du, *ga, *y;
    FTK_TRY(acts(S, be, ctx, l, loc, train, N, &u, &z, &a));
    FTK_TRY(scratch(S, be, ctx, N, &gy, &gup, &du, &ga, &y));
    const float *in = u;
    switch (S->c.input) {
    case BN_IN_H: FTK_TRY(be->copy(ctx, u, h, (size_t)(N * C) * sizeof(float))); break;
    case BN_IN_H_RESID:
        FTK_FAIL_IF(!s->resid, FTK_E_INVALID, "bottleneck: the core gave no residual stream (libftk too old?)");
        FTK_TRY(be->add(ctx, u, h, s->resid, N * C));
        break;
    case BN_IN_RESID:
        FTK_FAIL_IF(!s->resid, FTK_E_INVALID, "bottleneck: the core gave no residual stream (libftk too old?)");
        in = s->resid;
        break;
    case BN_IN_X: in = x; break;
    }
    FTK_TRY(bn_module_forward(be, ctx, &S->c, &S->mod[l][loc], N, C, in, z, a, y));
    if (train && S->c.dropout > 0)
        bn_dropout(y, N * C, S->c.dropout, bn_key(ftk_peft_seed(p), (uint64_t)ftk_peft_step(p), (uint64_t)l, (uint64_t)loc + 5));
    return be->axpy(ctx, h, y, N * C, 1.0f);
}

static ftk_status bn_bwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *dh, float *dx, const float *dy,
                         const float *x)
{
    struct bn_state *S = ftk_peft_priv(p);
    int l = s->layer, loc = s->kind == FTK_SUB_ATTN ? BN_ATTN : BN_MLP;
    if (l < 0 || l >= S->L || !S->has[l][loc] || !S->ran[l][loc])
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = s->B * s->T, C = S->C;
    FTK_FAIL_IF(N != S->keep_N, FTK_E_INVALID, "bottleneck: backward of %lld rows after a train forward of %lld", (long long)N,
                (long long)S->keep_N);
    float *u, *z, *a, *gy, *gup, *du, *ga, *y;
    FTK_TRY(acts(S, be, ctx, l, loc, 1, N, &u, &z, &a));
    FTK_TRY(scratch(S, be, ctx, N, &gy, &gup, &du, &ga, &y));
    /* dy is read once, here: dresid may be the same memory */
    FTK_TRY(be->copy(ctx, gy, dy, (size_t)(N * C) * sizeof(float)));
    if (S->c.dropout > 0)
        bn_dropout(gy, N * C, S->c.dropout, bn_key(ftk_peft_seed(p), (uint64_t)ftk_peft_step(p), (uint64_t)l, (uint64_t)loc + 5));
    const float *in = u;
    float *dst = du;
    switch (S->c.input) {
    case BN_IN_H: dst = dh; break;
    case BN_IN_H_RESID: FTK_TRY(be->zero(ctx, du, (size_t)(N * C) * sizeof(float))); break;
    case BN_IN_RESID:
        FTK_FAIL_IF(!s->resid || !s->dresid, FTK_E_INVALID, "bottleneck: the core gave no residual stream (libftk too old?)");
        in = s->resid;
        dst = s->dresid;
        break;
    case BN_IN_X: in = x; dst = dx; break;
    }
    FTK_TRY(bn_module_backward(be, ctx, &S->c, &S->mod[l][loc], N, C, in, z, a, gy, dst, gup, ga));
    if (S->c.input == BN_IN_H_RESID) {   /* u = h + resid: both get du */
        FTK_FAIL_IF(!s->dresid, FTK_E_INVALID, "bottleneck: the core gave no residual gradient (libftk too old?)");
        FTK_TRY(be->axpy(ctx, dh, du, N * C, 1.0f));
        FTK_TRY(be->axpy(ctx, s->dresid, du, N * C, 1.0f));
    }
    return FTK_OK;
}

/* ---- files -------------------------------------------------------------------------------- */

static ftk_status bn_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct bn_state *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    for (int l = 0; l < S->L && st == FTK_OK; l++)
        for (int loc = 0; loc < 2 && st == FTK_OK; loc++)
            for (int k = 0; k < 5 && S->has[l][loc] && st == FTK_OK; k++) {
                int64_t d[2];
                int nd = bn_shape(&S->c, S->C, k, &d[0], &d[1]);
                if (!nd)
                    continue;
                char name[256];
                struct ftk_tensor *t;
                bn_param_name(name, sizeof name, l, loc, S->c.name, bn_what[k]);
                if ((st = ftk_message_add(&msg, name, FTK_DTYPE_F32, nd, d, NULL, &t)) == FTK_OK)
                    st = be->to_host(ctx, t->data, *bn_slot(&S->mod[l][loc], k, 0), t->nbytes);
            }
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/adapter_model.safetensors", dir);
    if (st == FTK_OK)
        st = ftk_st_write(path, &msg);
    ftk_message_free(&msg);
    FTK_TRY(st);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "peft_type", "BOTTLENECK");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    bn_config_json(&S->c, c);
    cJSON_AddStringToObject(c, "format", "ftk bottleneck adapter 1: adapter-transformers' BnConfig keys; tensors named as "
                                         "its Llama state dict (model.layers.L.{attention,output}_adapters.adapters.NAME...)");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

static ftk_status bn_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct bn_state *S = ftk_peft_priv(p);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = FTK_OK;
    size_t n = 0;
    for (int l = 0; l < S->L && s == FTK_OK; l++)
        for (int loc = 0; loc < 2 && s == FTK_OK; loc++)
            for (int k = 0; k < 5 && S->has[l][loc] && s == FTK_OK; k++) {
                int64_t d[2];
                int nd = bn_shape(&S->c, S->C, k, &d[0], &d[1]);
                if (!nd)
                    continue;
                char name[256];
                bn_param_name(name, sizeof name, l, loc, S->c.name, bn_what[k]);
                s = ftk_peft_load_tensor(p, st, ftk_source_path(src), name, nd, d[0], d[1], *bn_slot(&S->mod[l][loc], k, 0));
                n++;
            }
    if (s == FTK_OK && n != ftk_st_model_count(st))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: adapter has %zu tensors, these options make %zu",
                          ftk_source_path(src), ftk_st_model_count(st), n);
    ftk_st_model_close(st);
    return s;
}

static void bn_release(struct ftk_peft *p)
{
    struct bn_state *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    be->free(ctx, S->keep);
    be->free(ctx, S->infer);
    be->free(ctx, S->scratch);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "bottleneck",
    .priv_size = sizeof(struct bn_state),
    .init = bn_init,
    .save = bn_save,
    .load = bn_load,
    .release = bn_release,
    .sublayer_forward = bn_fwd,
    .sublayer_backward = bn_bwd,
};
