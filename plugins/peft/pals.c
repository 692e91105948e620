/* plugins/peft/pals.c: Projected Attention Layers (Stickland & Murray 2019, "BERT and PALs"),
 * at the sublayer_out hook, as the authors' code (BERTPals, mult=True) builds them:
 *   layer output += act(V^D(SelfAttn_l(V^E a)))
 * in parallel to each layer, a = the layer's normed input (what its attention reads: the analogue
 * of BERT's layer input, which is normalised there), V^E (d_s,C) and V^D (C,d_s) with biases
 * shared by every layer, SelfAttn_l a per-layer multi-head attention in d_s dimensions (Q, K, V
 * with biases and no output matrix, heads of d_s/num_heads). placement=attention adds it to the
 * attention's output instead (so the MLP sees it). act is linear (the paper's TS = V^D g(V^E h))
 * or, as the authors' code does, gelu (non_linearity=gelu).
 *
 * For a causal LM the inner attention is causal and keeps packed documents apart (the segment
 * ids of the batch), through the backend's attention_forward/backward; it has NO rotary position
 * embedding (BERT's PALs had none: positions reach it only through the hidden states). A KV-cache
 * decode step cannot see the earlier tokens (no cache of its own): the plugin says so
 * (decode_recomputes) and generation runs the whole sequence for each new token instead.
 * AdapterDrop (leave_out, adapter_drop_layers, adapter_drop_robust) drops whole layers' PALs.
 *
 * Init: init_weights=zero_decoder (default: V^E, Q, K, V ~ N(0, 0.02), V^D = 0, so training
 * starts at the base model) or bert (every weight N(0, 0.02), the authors'); biases 0.
 * Saved in ftk's format: adapter_config.json (peft_type PALS) and adapter_model.safetensors with
 * model.pals.aug_dense{,2}.{weight,bias} (the authors' names for V^E, V^D) and
 * model.layers.L.pals.attn.{query,key,value}.{weight,bias}. Not mergeable. CPU backend only (the
 * activation runs on the host). Shapes: N = B*T rows, C channels, d_s, H heads, D = d_s/H. */
#include "bottleneck_impl.h"
#include "ftk/safetensors.h"

struct pal_layer {
    float *W[3], *b[3], *gW[3], *gb[3];   /* query, key, value: (d_s,d_s), (d_s) */
};

struct pals {
    int64_t C, L, ds, H, D;
    int on_attention;          /* placement=attention */
    enum bn_act act;
    char act_name[16];
    int init_bert;
    struct bn_config drop;     /* leave_out, adapter_drop_layers, adapter_drop_robust */
    float *We, *bE, *Wd, *bD, *gWe, *gbE, *gWd, *gbD;
    struct pal_layer lay[BN_MAX_LAYERS];
    int has[BN_MAX_LAYERS], ran[BN_MAX_LAYERS];
    float *keep, *infer;       /* z q k v o (N,d_s), lse (N,H), y (N,C): per layer in training */
    size_t keep_cap, infer_cap;
    int64_t keep_N;
    float *stash, *gstash;     /* (N,C): placement=layer's output / its gradient, within a layer */
    size_t stash_cap, gstash_cap;
    int stash_layer, gstash_layer;
    float *scr;                /* gy (N,C), dz dq dk dv do (N,d_s) */
    size_t scr_cap;
};

static const char *const pal_keys[] = {"d_s", "num_heads", "placement", "non_linearity", "init_weights", "leave_out",
                                       "adapter_drop_layers", "adapter_drop_robust", NULL};

static ftk_status add(struct ftk_peft *p, const char *name, int nd, int64_t d0, int64_t d1, int decay, double sd,
                      uint64_t key, float **w, float **g)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t d[2] = {d0, d1};
    FTK_TRY(ftk_peft_add_param(p, name, nd, d, decay, w, g));
    if (sd == 0)
        return FTK_OK;
    int64_t n = d0 * (nd > 1 ? d1 : 1);
    float *host = malloc((size_t)n * sizeof *host);
    FTK_FAIL_IF(!host, FTK_E_NOMEM, "out of memory");
    for (int64_t j = 0; j < n; j++)
        host[j] = (float)(sd * bn_normal(bn_mix(key ^ bn_mix((uint64_t)j))));
    ftk_status s = be->to_device(ctx, *w, host, (size_t)n * sizeof *host);
    free(host);
    return s;
}

static ftk_status pals_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct pals *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_FAIL_IF(strcmp(be->name, "cpu"), FTK_E_UNSUPPORTED, "PALs on the %s backend are not implemented yet", be->name);
    const struct ftk_model_config *mc = ftk_peft_config(p);
    S->C = mc->C;
    S->L = mc->L;
    FTK_FAIL_IF(S->L > BN_MAX_LAYERS, FTK_E_UNSUPPORTED, "more than %d layers", BN_MAX_LAYERS);
    FTK_TRY(bn_check_keys(o, "pals", pal_keys, bn_file_keys, NULL));
    const char *pt = ftk_kv_get(o, "peft_type");   /* an adapter_config.json's: it must be this method's */
    FTK_FAIL_IF(pt && strcmp(pt, "PALS"), FTK_E_INVALID, "peft_type %s given to the pals plugin", pt);
    FTK_TRY(ftk_kv_int(o, "d_s", 204, &S->ds));
    FTK_TRY(ftk_kv_int(o, "num_heads", 6, &S->H));
    FTK_FAIL_IF(S->ds < 1 || S->ds > 1 << 16, FTK_E_INVALID, "d_s=%lld must be in [1, 65536]", (long long)S->ds);
    FTK_FAIL_IF(S->H < 1 || S->ds % S->H, FTK_E_INVALID, "num_heads=%lld must divide d_s=%lld", (long long)S->H,
                (long long)S->ds);
    S->D = S->ds / S->H;
    const char *pl = ftk_kv_get(o, "placement");
    pl = pl ? pl : "layer";
    FTK_FAIL_IF(strcmp(pl, "layer") && strcmp(pl, "attention"), FTK_E_INVALID,
                "placement=%s: expected layer (parallel to the whole layer, the authors') or attention", pl);
    S->on_attention = !strcmp(pl, "attention");
    const char *act = ftk_kv_get(o, "non_linearity");
    act = act ? act : "linear";
    FTK_FAIL_IF(!bn_act_parse(act, &S->act), FTK_E_INVALID, "non_linearity=%s: expected linear (the paper), gelu (the "
                "authors' code), gelu_new, relu, swish, tanh or sigmoid", act);
    snprintf(S->act_name, sizeof S->act_name, "%s", act);
    const char *in = ftk_kv_get(o, "init_weights");
    FTK_FAIL_IF(in && strcmp(in, "zero_decoder") && strcmp(in, "bert"), FTK_E_INVALID,
                "init_weights=%s: expected zero_decoder or bert", in);
    S->init_bert = in && !strcmp(in, "bert");
    FTK_TRY(bn_layer_bits("leave_out", ftk_kv_get(o, "leave_out"), S->L, &S->drop.leave_out));
    FTK_TRY(ftk_kv_int(o, "adapter_drop_layers", 0, &S->drop.drop_layers));
    FTK_FAIL_IF(S->drop.drop_layers < 0 || S->drop.drop_layers > S->L, FTK_E_INVALID,
                "adapter_drop_layers=%lld must be in [0, %lld]", (long long)S->drop.drop_layers, (long long)S->L);
    FTK_TRY(ftk_kv_bool(o, "adapter_drop_robust", 0, &S->drop.drop_robust));

    uint64_t seed = ftk_peft_seed(p);
    int64_t C = S->C, ds = S->ds;
    FTK_TRY(add(p, "model.pals.aug_dense.weight", 2, ds, C, 1, 0.02, bn_key(seed, 0xE, 0, 0), &S->We, &S->gWe));
    FTK_TRY(add(p, "model.pals.aug_dense.bias", 1, ds, 1, 0, 0, 0, &S->bE, &S->gbE));
    FTK_TRY(add(p, "model.pals.aug_dense2.weight", 2, C, ds, 1, S->init_bert ? 0.02 : 0, bn_key(seed, 0xD, 0, 0), &S->Wd,
                &S->gWd));
    FTK_TRY(add(p, "model.pals.aug_dense2.bias", 1, C, 1, 0, 0, 0, &S->bD, &S->gbD));
    static const char *qkv[3] = {"query", "key", "value"};
    int any = 0;
    for (int l = 0; l < S->L; l++) {
        if (!bn_layer_has(&S->drop, l))
            continue;
        S->has[l] = any = 1;
        for (int j = 0; j < 3; j++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.pals.attn.%s.weight", l, qkv[j]);
            FTK_TRY(add(p, name, 2, ds, ds, 1, 0.02, bn_key(seed, (uint64_t)l, (uint64_t)j + 1, 7), &S->lay[l].W[j],
                        &S->lay[l].gW[j]));
            snprintf(name, sizeof name, "model.layers.%d.pals.attn.%s.bias", l, qkv[j]);
            FTK_TRY(add(p, name, 1, ds, 1, 0, 0, 0, &S->lay[l].b[j], &S->lay[l].gb[j]));
        }
    }
    FTK_FAIL_IF(!any, FTK_E_INVALID, "no layer keeps a PAL (leave_out, adapter_drop_layers=%lld)", (long long)S->drop.drop_layers);
    S->stash_layer = S->gstash_layer = -1;
    return FTK_OK;
}

/* Layer l's activations: z q k v o (N,d_s), lse (N,H), y (N,C). */
static ftk_status acts(struct pals *S, const struct ftk_backend *be, void *ctx, int l, int train, int64_t N, float **a)
{
    int64_t per = N * (5 * S->ds + S->H + S->C);
    float *base;
    if (train) {
        if (N != S->keep_N) {
            FTK_TRY(bn_grow(be, ctx, &S->keep, &S->keep_cap, (size_t)(per * S->L)));
            S->keep_N = N;
        }
        base = S->keep + (size_t)l * (size_t)per;
    } else {
        FTK_TRY(bn_grow(be, ctx, &S->infer, &S->infer_cap, (size_t)per));
        base = S->infer;
    }
    for (int i = 0; i < 5; i++)
        a[i] = base + i * N * S->ds;
    a[5] = base + 5 * N * S->ds;             /* lse */
    a[6] = a[5] + N * S->H;                   /* y */
    return FTK_OK;
}

static ftk_status pals_fwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *h, const float *x, int train)
{
    struct pals *S = ftk_peft_priv(p);
    int l = s->layer;
    FTK_FAIL_IF(s->decoding, FTK_E_UNSUPPORTED,
                "PALs cannot decode with a KV cache: their attention needs the earlier tokens, which only the base "
                "model's keys and values are cached for (ftk_model_decode_exact says so; generation recomputes)");
    if (l < 0 || l >= S->L)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = s->B * s->T, C = S->C, ds = S->ds;
    if (s->kind == FTK_SUB_MLP) {   /* placement=layer: the PAL computed at this layer's attention */
        if (!S->on_attention && S->stash_layer == l)
            FTK_TRY(be->axpy(ctx, h, S->stash, N * C, 1.0f));
        S->stash_layer = -1;
        return FTK_OK;
    }
    int runs = bn_layer_runs(&S->drop, l, S->L, train, ftk_peft_seed(p), ftk_peft_step(p));
    if (train)
        S->ran[l] = runs;
    if (!runs)
        return FTK_OK;
    float *a[7];
    FTK_TRY(acts(S, be, ctx, l, train, N, a));
    float *z = a[0], *q = a[1], *k = a[2], *v = a[3], *o = a[4], *lse = a[5], *y = a[6];
    const struct pal_layer *w = &S->lay[l];
    FTK_TRY(be->linear_forward(ctx, z, x, S->We, S->bE, N, C, ds));
    FTK_TRY(be->linear_forward(ctx, q, z, w->W[0], w->b[0], N, ds, ds));
    FTK_TRY(be->linear_forward(ctx, k, z, w->W[1], w->b[1], N, ds, ds));
    FTK_TRY(be->linear_forward(ctx, v, z, w->W[2], w->b[2], N, ds, ds));
    FTK_TRY(be->attention_forward(ctx, o, lse, q, k, v, s->seg, s->B, s->T, S->H, S->H, S->D, 1.0f / sqrtf((float)S->D)));
    FTK_TRY(be->linear_forward(ctx, y, o, S->Wd, S->bD, N, ds, C));
    float *out = h;
    if (!S->on_attention) {
        FTK_TRY(bn_grow(be, ctx, &S->stash, &S->stash_cap, (size_t)(N * C)));
        FTK_TRY(be->zero(ctx, S->stash, (size_t)(N * C) * sizeof(float)));
        out = S->stash;
        S->stash_layer = l;
    }
    for (int64_t j = 0; j < N * C; j++)   /* host: the CPU backend */
        out[j] += S->act == BN_LINEAR ? y[j] : (float)bn_act_f(S->act, y[j]);
    return FTK_OK;
}

static ftk_status pals_bwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *dh, float *dx, const float *dy,
                           const float *x)
{
    (void)dh;
    struct pals *S = ftk_peft_priv(p);
    int l = s->layer;
    if (l < 0 || l >= S->L || !S->has[l] || !S->ran[l])
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = s->B * s->T, C = S->C, ds = S->ds;
    if (s->kind == FTK_SUB_MLP) {   /* placement=layer: the output's gradient, for this layer's attention call */
        if (!S->on_attention) {
            FTK_TRY(bn_grow(be, ctx, &S->gstash, &S->gstash_cap, (size_t)(N * C)));
            FTK_TRY(be->copy(ctx, S->gstash, dy, (size_t)(N * C) * sizeof(float)));
            S->gstash_layer = l;
        }
        return FTK_OK;
    }
    FTK_FAIL_IF(N != S->keep_N, FTK_E_INVALID, "pals: backward of %lld rows after a train forward of %lld", (long long)N,
                (long long)S->keep_N);
    FTK_FAIL_IF(!S->on_attention && S->gstash_layer != l, FTK_E_INVALID, "pals: layer %d's MLP backward did not come first", l);
    float *a[7];
    FTK_TRY(acts(S, be, ctx, l, 1, N, a));
    float *z = a[0], *q = a[1], *k = a[2], *v = a[3], *o = a[4], *lse = a[5], *y = a[6];
    FTK_TRY(bn_grow(be, ctx, &S->scr, &S->scr_cap, (size_t)(N * (C + 5 * ds))));
    float *gy = S->scr, *dz = gy + N * C, *dq = dz + N * ds, *dk = dq + N * ds, *dv = dk + N * ds, *dout = dv + N * ds;
    const float *g = S->on_attention ? dy : S->gstash;
    for (int64_t j = 0; j < N * C; j++)
        gy[j] = S->act == BN_LINEAR ? g[j] : g[j] * (float)bn_act_df(S->act, y[j]);
    S->gstash_layer = -1;
    const struct pal_layer *w = &S->lay[l];
    FTK_TRY(be->zero(ctx, dz, (size_t)(N * 5 * ds) * sizeof(float)));
    FTK_TRY(be->linear_backward(ctx, dout, S->gWd, S->gbD, gy, o, S->Wd, N, ds, C));
    FTK_TRY(be->attention_backward(ctx, dq, dk, dv, dout, q, k, v, o, lse, s->seg, s->B, s->T, S->H, S->H, S->D,
                                   1.0f / sqrtf((float)S->D)));
    FTK_TRY(be->linear_backward(ctx, dz, w->gW[0], w->gb[0], dq, z, w->W[0], N, ds, ds));
    FTK_TRY(be->linear_backward(ctx, dz, w->gW[1], w->gb[1], dk, z, w->W[1], N, ds, ds));
    FTK_TRY(be->linear_backward(ctx, dz, w->gW[2], w->gb[2], dv, z, w->W[2], N, ds, ds));
    return be->linear_backward(ctx, dx, S->gWe, S->gbE, dz, x, S->We, N, C, ds);
}

/* ---- files -------------------------------------------------------------------------------- */

/* Every parameter in registration order: name, pointer, shape. */
static int pals_tensor(struct pals *S, int i, char *name, size_t n, float **w, int64_t *d0, int64_t *d1)
{
    static const char *qkv[3] = {"query", "key", "value"};
    int64_t C = S->C, ds = S->ds;
    if (i < 4) {
        static const char *nm[4] = {"aug_dense.weight", "aug_dense.bias", "aug_dense2.weight", "aug_dense2.bias"};
        float *p4[4] = {S->We, S->bE, S->Wd, S->bD};
        int64_t a[4] = {ds, ds, C, C}, b[4] = {C, 1, ds, 1};
        snprintf(name, n, "model.pals.%s", nm[i]);
        *w = p4[i];
        *d0 = a[i];
        *d1 = b[i];
        return i % 2 ? 1 : 2;
    }
    i -= 4;
    for (int l = 0; l < S->L; l++) {
        if (!S->has[l])
            continue;
        if (i < 6) {
            snprintf(name, n, "model.layers.%d.pals.attn.%s.%s", l, qkv[i / 2], i % 2 ? "bias" : "weight");
            *w = i % 2 ? S->lay[l].b[i / 2] : S->lay[l].W[i / 2];
            *d0 = ds;
            *d1 = i % 2 ? 1 : ds;
            return i % 2 ? 1 : 2;
        }
        i -= 6;
    }
    return 0;
}

static ftk_status pals_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct pals *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    char name[128];
    float *w;
    int64_t d[2];
    int nd;
    for (int i = 0; st == FTK_OK && (nd = pals_tensor(S, i, name, sizeof name, &w, &d[0], &d[1])) > 0; i++) {
        struct ftk_tensor *t;
        if ((st = ftk_message_add(&msg, name, FTK_DTYPE_F32, nd, d, NULL, &t)) == FTK_OK)
            st = be->to_host(ctx, t->data, w, t->nbytes);
    }
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/adapter_model.safetensors", dir);
    if (st == FTK_OK)
        st = ftk_st_write(path, &msg);
    ftk_message_free(&msg);
    FTK_TRY(st);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "peft_type", "PALS");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddNumberToObject(c, "d_s", (double)S->ds);
    cJSON_AddNumberToObject(c, "num_heads", (double)S->H);
    cJSON_AddStringToObject(c, "placement", S->on_attention ? "attention" : "layer");
    cJSON_AddStringToObject(c, "non_linearity", S->act_name);
    cJSON_AddStringToObject(c, "init_weights", S->init_bert ? "bert" : "zero_decoder");
    char lo[512] = "";
    for (int l = 0; l < S->L; l++)
        if (S->drop.leave_out >> l & 1)
            snprintf(lo + strlen(lo), sizeof lo - strlen(lo), "%s%d", lo[0] ? "," : "", l);
    cJSON_AddStringToObject(c, "leave_out", lo);
    cJSON_AddNumberToObject(c, "adapter_drop_layers", (double)S->drop.drop_layers);
    cJSON_AddBoolToObject(c, "adapter_drop_robust", S->drop.drop_robust);
    cJSON_AddStringToObject(c, "format", "ftk PALs 1: Stickland & Murray 2019 (BERTPals), causal, no RoPE");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

static ftk_status pals_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct pals *S = ftk_peft_priv(p);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = FTK_OK;
    char name[128];
    float *w;
    int64_t d0, d1;
    int nd, i = 0;
    for (; s == FTK_OK && (nd = pals_tensor(S, i, name, sizeof name, &w, &d0, &d1)) > 0; i++)
        s = ftk_peft_load_tensor(p, st, ftk_source_path(src), name, nd, d0, d1, w);
    if (s == FTK_OK && (size_t)i != ftk_st_model_count(st))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: adapter has %zu tensors, these options make %d",
                          ftk_source_path(src), ftk_st_model_count(st), i);
    ftk_st_model_close(st);
    return s;
}

static void pals_release(struct ftk_peft *p)
{
    struct pals *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    be->free(ctx, S->keep);
    be->free(ctx, S->infer);
    be->free(ctx, S->stash);
    be->free(ctx, S->gstash);
    be->free(ctx, S->scr);
}

static int pals_decode_recomputes(struct ftk_peft *p)
{
    (void)p;
    return 1;
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "pals",
    .priv_size = sizeof(struct pals),
    .init = pals_init,
    .save = pals_save,
    .load = pals_load,
    .release = pals_release,
    .sublayer_forward = pals_fwd,
    .sublayer_backward = pals_bwd,
    .decode_recomputes = pals_decode_recomputes,
};
