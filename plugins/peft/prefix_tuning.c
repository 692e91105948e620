/* plugins/peft/prefix_tuning.c: prefix tuning (Li & Liang 2021) and P-tuning v2 (Liu et al.
 * 2022) as HuggingFace peft 0.21 implements them for causal LMs (PREFIX_TUNING:
 * peft/tuners/prefix_tuning/model.py PrefixEncoder, peft_model.py get_prompt): P learned keys and
 * values per layer, seen by every query as an already-rotated cache of P positions (the real
 * tokens' positions start at P). The core's attn_kv hook (attn_prefix) does the attention.
 *
 * The prefix of virtual token p is one vector of S*TD numbers, S = 2L, TD = Hkv*D (peft's
 * token_dim for GQA models, num_attention_heads = Hkv), laid out [layer][key, value][head][dim]:
 * layer l's keys are slice 2l, its values slice 2l+1.
 *   prefix_projection=false (P-tuning v2): the prefix is the parameter
 *       prompt_encoder.embedding.weight (P, S*TD), N(0,1) init (nn.Embedding).
 *   prefix_projection=true (prefix tuning): prefix = tanh(E W1^T + b1) W2^T + b2 with
 *       E = prompt_encoder.embedding.weight (P,TD) N(0,1), W1 = transform.0.weight (Enc,TD),
 *       W2 = transform.2.weight (S*TD,Enc), biases b1 (Enc), b2 (S*TD); nn.Linear init
 *       U(+-1/sqrt(fan_in)). Enc = encoder_hidden_size (default token_dim).
 * init_weights=zero zeroes the last layer (or the embedding), as peft.
 *
 * Files (peft's): adapter_config.json + adapter_model.safetensors with `prompt_embeddings`
 * (P, S*TD), the prefix itself (with the projection: the MLP's output; peft keeps nothing else,
 * and loads it with inference_mode, the MLP gone). So that training can go on, ftk also writes
 * prefix_encoder.safetensors (the PrefixEncoder's state dict: embedding.weight,
 * transform.{0,2}.{weight,bias}) and says inference_mode=false in the config; peft ignores both
 * (PeftModel.from_pretrained sets inference_mode itself). Loading: prefix_projection with
 * inference_mode=false reads the MLP from prefix_encoder.safetensors (checked against
 * prompt_embeddings); otherwise prompt_embeddings is the parameter (P-tuning v2 from there on).
 *
 * The prefix module (its parameters, forward, backward) is prefix_impl.h's, shared with the MAM
 * adapter and UniPELT. Shapes: P virtual tokens, L layers, S = 2L slices, TD = Hkv*D, Enc encoder
 * width. */
#include <cjson/cJSON.h>
#include "ftk/safetensors.h"
#include "prefix_impl.h"

static const char *known_keys[] = {
    "num_virtual_tokens", "prefix_projection", "encoder_hidden_size", "init_weights", "token_dim",
    "num_attention_heads", "num_layers", "num_transformer_submodules", "inference_mode", "task_type",
    "peft_type", "base_model_name_or_path", "revision", "auto_mapping", "peft_version", "modules_to_save", NULL};

/* An option that must equal what the model implies (peft derives it from the model config). */
static ftk_status check_shape_opt(const struct ftk_kv *o, const char *key, int64_t want, const char *what)
{
    int64_t v;
    FTK_TRY(ftk_kv_int(o, key, want, &v));
    FTK_FAIL_IF(v != want, FTK_E_MISMATCH, "prefix_tuning: %s = %lld, but this model has %lld (%s): adapter for another base?",
                key, (long long)v, (long long)want, what);
    return FTK_OK;
}

static ftk_status pt_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct px_prefix *S = ftk_peft_priv(p);
    const struct ftk_model_config *c = ftk_peft_config(p);
    for (const struct ftk_kv *kv = o; kv && kv->key; kv++) {
        int known = 0;
        for (int i = 0; known_keys[i]; i++)
            known |= !strcmp(kv->key, known_keys[i]);
        FTK_FAIL_IF(!known, FTK_E_INVALID,
                    "prefix_tuning: unknown option \"%s\" (it takes num_virtual_tokens, prefix_projection, "
                    "encoder_hidden_size, init_weights)", kv->key);
    }
    const char *pt = ftk_kv_get(o, "peft_type");   /* an adapter_config.json's: it must be this method's */
    FTK_FAIL_IF(pt && strcmp(pt, "PREFIX_TUNING"), FTK_E_INVALID, "peft_type %s given to the prefix_tuning plugin", pt);
    const char *tt = ftk_kv_get(o, "task_type");
    FTK_FAIL_IF(tt && strcmp(tt, "CAUSAL_LM"), FTK_E_UNSUPPORTED, "prefix_tuning: task_type %s (only CAUSAL_LM)", tt);
    const char *mts = ftk_kv_get(o, "modules_to_save");
    FTK_FAIL_IF(mts && *mts, FTK_E_UNSUPPORTED, "prefix_tuning: modules_to_save is not supported");
    FTK_TRY(px_options(o, c, "prefix_tuning", 20, 0, 0, S));
    int inference;
    FTK_TRY(ftk_kv_bool(o, "inference_mode", 0, &inference));
    const char *iw = ftk_kv_get(o, "init_weights");
    FTK_FAIL_IF(iw && strcmp(iw, "zero"), FTK_E_INVALID, "prefix_tuning: init_weights = %s (peft takes \"zero\" or null)", iw);
    S->zero_init = iw != NULL;
    /* peft _prepare_prompt_learning_config, GQA models: token_dim = Hkv * head_dim, heads = Hkv */
    FTK_TRY(check_shape_opt(o, "num_layers", c->L, "layers"));
    FTK_TRY(check_shape_opt(o, "token_dim", S->TD, "key/value heads x head_dim"));
    FTK_TRY(check_shape_opt(o, "num_attention_heads", c->Hkv, "key/value heads"));
    int64_t subs;
    FTK_TRY(ftk_kv_int(o, "num_transformer_submodules", 1, &subs));
    FTK_FAIL_IF(subs != 1, FTK_E_UNSUPPORTED, "prefix_tuning: num_transformer_submodules = %lld (decoder-only models have 1)",
                (long long)subs);
    S->mlp = S->projection && !inference;
    return px_create(p, S, "prompt_encoder.", NULL);
}

/* ---- the hooks: prefix_impl.h's ---------------------------------------------------------- */

static ftk_status pt_forward_begin(struct ftk_peft *p, int64_t B, int64_t T, int train)
{
    (void)B;
    (void)T;
    return px_forward_begin(p, ftk_peft_priv(p), train);
}

static ftk_status pt_backward_end(struct ftk_peft *p) { return px_backward_end(p, ftk_peft_priv(p)); }

static ftk_status pt_attn_prefix(struct ftk_peft *p, int layer, int64_t *P, const float **pk, const float **pv, float **dpk,
                                 float **dpv)
{
    return px_layer(ftk_peft_priv(p), "prefix_tuning", layer, P, pk, pv, dpk, dpv);
}

/* ---- files -------------------------------------------------------------------------------- */

static ftk_status add_tensor(struct ftk_peft *p, struct ftk_message *msg, const char *name, int ndim, int64_t d0, int64_t d1,
                             const float *src)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t shape[2] = {d0, d1};
    struct ftk_tensor *t;
    FTK_TRY(ftk_message_add(msg, name, FTK_DTYPE_F32, ndim, shape, NULL, &t));
    return be->to_host(ctx, t->data, src, t->nbytes);
}

static ftk_status write_st(struct ftk_message *msg, const char *dir, const char *file)
{
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/%s", dir, file);
    ftk_status st = ftk_message_set_meta(msg, "format", "pt");
    if (st == FTK_OK)
        st = ftk_st_write(path, msg);
    ftk_message_free(msg);
    return st;
}

static ftk_status pt_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct px_prefix *S = ftk_peft_priv(p);
    int64_t P = S->P, TD = S->TD, E = S->E, W = S->S * TD;
    struct ftk_message msg;
    ftk_message_init(&msg);
    int64_t shape[2] = {P, W};
    struct ftk_tensor *t;
    ftk_status st = ftk_message_add(&msg, "prompt_embeddings", FTK_DTYPE_F32, 2, shape, NULL, &t);
    if (st == FTK_OK)
        st = px_prompt_embeddings(p, S, t->data);
    if (st != FTK_OK) {
        ftk_message_free(&msg);
        return st;
    }
    FTK_TRY(write_st(&msg, dir, "adapter_model.safetensors"));
    if (S->mlp) {   /* the PrefixEncoder's own state dict, for training on */
        ftk_message_init(&msg);
        st = add_tensor(p, &msg, "embedding.weight", 2, P, TD, S->emb);
        if (st == FTK_OK)
            st = add_tensor(p, &msg, "transform.0.weight", 2, E, TD, S->w1);
        if (st == FTK_OK)
            st = add_tensor(p, &msg, "transform.0.bias", 1, E, 1, S->b1);
        if (st == FTK_OK)
            st = add_tensor(p, &msg, "transform.2.weight", 2, W, E, S->w2);
        if (st == FTK_OK)
            st = add_tensor(p, &msg, "transform.2.bias", 1, W, 1, S->b2);
        if (st != FTK_OK) {
            ftk_message_free(&msg);
            return st;
        }
        FTK_TRY(write_st(&msg, dir, "prefix_encoder.safetensors"));
    }

    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "peft_type", "PREFIX_TUNING");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    px_config_json(S, c);
    cJSON_AddNumberToObject(c, "token_dim", (double)TD);
    cJSON_AddNumberToObject(c, "num_attention_heads", (double)ftk_peft_config(p)->Hkv);
    cJSON_AddNumberToObject(c, "num_layers", (double)S->L);
    cJSON_AddNumberToObject(c, "num_transformer_submodules", 1);
    if (S->zero_init)
        cJSON_AddStringToObject(c, "init_weights", "zero");
    else
        cJSON_AddNullToObject(c, "init_weights");
    /* false: prefix_encoder.safetensors holds the MLP (ftk reads it); peft sets it on loading */
    cJSON_AddBoolToObject(c, "inference_mode", !S->mlp);
    cJSON_AddNullToObject(c, "modules_to_save");
    cJSON_AddNullToObject(c, "auto_mapping");
    cJSON_AddNullToObject(c, "revision");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

/* Loads the MLP from prefix_encoder.safetensors and checks that it gives prompt_embeddings. */
static ftk_status load_mlp(struct ftk_peft *p, struct ftk_source *src, const struct ftk_st_model *am)
{
    struct px_prefix *S = ftk_peft_priv(p);
    int64_t P = S->P, TD = S->TD, E = S->E, W = S->S * TD;
    char where[4200];
    snprintf(where, sizeof where, "%.4000s/prefix_encoder.safetensors", ftk_source_path(src));
    FTK_FAIL_IF(!ftk_source_exists(src, "prefix_encoder.safetensors"), FTK_E_NOTFOUND,
                "%s is missing: adapter_config.json says prefix_projection=true and inference_mode=false, which ftk writes "
                "with the MLP in that file (peft's own adapters say inference_mode=true and hold only the prefix)",
                where);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "prefix_encoder", &st));
    ftk_status s = ftk_peft_load_tensor(p, st, where, "embedding.weight", 2, P, TD, S->emb);
    if (s == FTK_OK)
        s = ftk_peft_load_tensor(p, st, where, "transform.0.weight", 2, E, TD, S->w1);
    if (s == FTK_OK)
        s = ftk_peft_load_tensor(p, st, where, "transform.0.bias", 1, E, 0, S->b1);
    if (s == FTK_OK)
        s = ftk_peft_load_tensor(p, st, where, "transform.2.weight", 2, W, E, S->w2);
    if (s == FTK_OK)
        s = ftk_peft_load_tensor(p, st, where, "transform.2.bias", 1, W, 0, S->b2);
    ftk_st_model_close(st);
    FTK_TRY(s);
    float *want = malloc((size_t)(2 * P * W) * sizeof *want), *got = want ? want + P * W : NULL;
    FTK_FAIL_IF(!want, FTK_E_NOMEM, "out of memory");
    s = ftk_st_model_read_f32(am, "prompt_embeddings", want, P * W);
    if (s == FTK_OK)
        s = px_prompt_embeddings(p, S, got);
    double md = 0, mw = 0;
    for (int64_t i = 0; s == FTK_OK && i < P * W; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= md))
            md = d;
        if (fabs(want[i]) > mw)
            mw = fabs(want[i]);
    }
    free(want);
    FTK_TRY(s);
    FTK_FAIL_IF(!(md <= 1e-4 * (mw > 1 ? mw : 1)), FTK_E_MISMATCH,
                "%s does not reproduce prompt_embeddings of adapter_model.safetensors (max difference %.3g): the files "
                "belong to different adapters", where, md);
    return FTK_OK;
}

static ftk_status pt_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct px_prefix *S = ftk_peft_priv(p);
    int64_t P = S->P, W = S->S * S->TD;
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = FTK_OK;
    const struct ftk_tensor *t = ftk_st_model_find(st, "prompt_embeddings");
    if (!t)
        s = ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "%s: adapter lacks prompt_embeddings", ftk_source_path(src));
    else if (t->ndim != 2 || t->shape[0] != P || t->shape[1] != W)
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__,
                          "%s: prompt_embeddings has shape [%lld,%lld], this model with num_virtual_tokens=%lld needs [%lld,%lld] "
                          "(2 x %lld layers x %lld key/value heads x %lld head dim): adapter for another base?",
                          ftk_source_path(src), (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
                          (long long)P, (long long)P, (long long)W, (long long)S->L, (long long)ftk_peft_config(p)->Hkv,
                          (long long)ftk_peft_config(p)->D);
    else if (ftk_st_model_count(st) != 1)
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: a PREFIX_TUNING adapter holds prompt_embeddings only, this "
                          "one has %zu tensors", ftk_source_path(src), ftk_st_model_count(st));
    else if (S->mlp)
        s = load_mlp(p, src, st);
    else
        s = ftk_peft_load_tensor(p, st, ftk_source_path(src), "prompt_embeddings", 2, P, W, S->emb);
    ftk_st_model_close(st);
    return s;
}

static void pt_release(struct ftk_peft *p) { px_release(p, ftk_peft_priv(p)); }

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "prefix_tuning",
    .priv_size = sizeof(struct px_prefix),
    .init = pt_init,
    .save = pt_save,
    .load = pt_load,
    .release = pt_release,
    .forward_begin = pt_forward_begin,
    .backward_end = pt_backward_end,
    .attn_prefix = pt_attn_prefix,
};
