/* plugins/peft/virtual_tokens.h: what prompt_tuning.c, p_tuning.c and warp.c share (the `embed`
 * hook, ftk/plugin.h): peft's PromptLearningConfig options, writing the P virtual rows in front of
 * every row of the layer-0 input and summing their gradient back, the adapter's
 * prompt_embeddings tensor, seeded draws, and prompt tuning's inits (RANDOM, TEXT,
 * SAMPLE_VOCAB). Static functions only (each plugin is one .so).
 * Shapes: P virtual tokens, C hidden (peft's token_dim), B rows of T tokens (P of them virtual). */
#ifndef FTK_PLUGIN_VIRTUAL_TOKENS_H
#define FTK_PLUGIN_VIRTUAL_TOKENS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/plugin.h"
#include "ftk/safetensors.h"
#include "ftk/tokenizer.h"

#define VT_MAX_TOKENS 65536

struct vt_common {
    int64_t P, C;
    int from_adapter;          /* the options are an adapter_config.json's (they carry peft_type) */
};

/* peft's PromptLearningConfig as a causal LM uses it. `peft_type` is the method's
 * ("PROMPT_TUNING"): an adapter's must match. token_dim, num_layers and num_attention_heads, when
 * given, must be the model's (an adapter for another base otherwise). An option that is neither
 * PromptLearningConfig's (peft 0.21) nor in the method's NULL-ended `keys` is refused (a typo). */
static ftk_status vt_parse(struct ftk_peft *p, const struct ftk_kv *o, const char *peft_type, const char *const *keys,
                           struct vt_common *v)
{
    static const char *const common[] = {
        "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
        "inference_mode", "num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads",
        "num_layers", "modules_to_save", NULL};
    const struct ftk_model_config *cfg = ftk_peft_config(p);
    for (const struct ftk_kv *kv = o; kv && kv->key; kv++) {
        int known = 0;
        for (int i = 0; common[i]; i++)
            known |= !strcmp(kv->key, common[i]);
        for (int i = 0; keys[i]; i++)
            known |= !strcmp(kv->key, keys[i]);
        FTK_FAIL_IF(!known, FTK_E_INVALID, "unknown option \"%s\" for %s (it takes num_virtual_tokens, %s%s)", kv->key,
                    peft_type, keys[0], keys[1] ? ", ..." : "");
    }
    int64_t nl, nh;
    FTK_TRY(ftk_kv_int(o, "num_layers", cfg->L, &nl));
    FTK_TRY(ftk_kv_int(o, "num_attention_heads", cfg->H, &nh));
    FTK_FAIL_IF(nl != cfg->L || nh != cfg->H, FTK_E_MISMATCH,
                "num_layers %lld, num_attention_heads %lld, but the model has %lld and %lld (adapter for another base?)",
                (long long)nl, (long long)nh, (long long)cfg->L, (long long)cfg->H);
    const char *pt = ftk_kv_get(o, "peft_type"), *task = ftk_kv_get(o, "task_type");
    v->from_adapter = pt != NULL;
    FTK_FAIL_IF(pt && strcmp(pt, peft_type), FTK_E_INVALID, "peft_type %s given to the %s plugin", pt, peft_type);
    FTK_FAIL_IF(task && strcmp(task, "CAUSAL_LM"), FTK_E_UNSUPPORTED, "task_type %s is not supported (CAUSAL_LM only)", task);
    FTK_FAIL_IF(!ftk_kv_get(o, "num_virtual_tokens"), FTK_E_INVALID, "num_virtual_tokens is required");
    FTK_TRY(ftk_kv_int(o, "num_virtual_tokens", 0, &v->P));
    FTK_FAIL_IF(v->P < 1 || v->P > VT_MAX_TOKENS, FTK_E_INVALID, "num_virtual_tokens %lld outside [1, %d]", (long long)v->P,
                VT_MAX_TOKENS);
    int64_t td, nsub;
    FTK_TRY(ftk_kv_int(o, "token_dim", cfg->C, &td));
    FTK_FAIL_IF(td != cfg->C, FTK_E_MISMATCH, "token_dim %lld, but the model's hidden size is %lld (adapter for another base?)",
                (long long)td, (long long)cfg->C);
    FTK_TRY(ftk_kv_int(o, "num_transformer_submodules", 1, &nsub));
    FTK_FAIL_IF(nsub != 1, FTK_E_UNSUPPORTED, "num_transformer_submodules %lld (1 for a decoder-only model)", (long long)nsub);
    const char *mts = ftk_kv_get(o, "modules_to_save");
    FTK_FAIL_IF(mts && *mts, FTK_E_UNSUPPORTED, "modules_to_save (%s) with %s is not supported", mts, peft_type);
    v->C = cfg->C;
    return FTK_OK;
}

/* x (B,T,C): rows x[b, 0..P-1, :] = e (P,C), backend memory. */
static ftk_status vt_write(struct ftk_peft *p, const struct vt_common *v, float *x, const float *e, int64_t B, int64_t T)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_FAIL_IF(T <= v->P, FTK_E_INVALID, "rows of %lld positions cannot hold %lld virtual tokens and a real one",
                (long long)T, (long long)v->P);
    for (int64_t b = 0; b < B; b++)
        FTK_TRY(be->copy(ctx, x + b * T * v->C, e, (size_t)(v->P * v->C) * sizeof(float)));
    return FTK_OK;
}

/* g (P,C) += sum over b of dx[b, 0..P-1, :] (peft computes the prompt once and repeats it over
 * the batch: its gradient is the sum). */
static ftk_status vt_grad(struct ftk_peft *p, const struct vt_common *v, float *g, const float *dx, int64_t B, int64_t T)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    for (int64_t b = 0; b < B; b++)
        FTK_TRY(be->axpy(ctx, g, dx + b * T * v->C, v->P * v->C, 1.0f));
    return FTK_OK;
}

/* Appends tensor `name` (n0,n1) F32 from backend memory to msg. */
static ftk_status vt_add_tensor(struct ftk_peft *p, struct ftk_message *msg, const char *name, int ndim, int64_t n0,
                                int64_t n1, const float *src)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t shape[2] = {n0, n1};
    struct ftk_tensor *t;
    FTK_TRY(ftk_message_add(msg, name, FTK_DTYPE_F32, ndim, shape, NULL, &t));
    return be->to_host(ctx, t->data, src, t->nbytes);
}

/* dir/file.safetensors holding msg. */
static ftk_status vt_write_file(const char *dir, const char *file, struct ftk_message *msg)
{
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/%s", dir, file);
    return ftk_st_write(path, msg);
}

/* adapter_model.safetensors: {"prompt_embeddings": e (P,C)}, as peft saves every prompt
 * learning method. */
static inline ftk_status vt_save_prompt(struct ftk_peft *p, const struct vt_common *v, const char *dir, const float *e)
{
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    if (st == FTK_OK)
        st = vt_add_tensor(p, &msg, "prompt_embeddings", 2, v->P, v->C, e);
    if (st == FTK_OK)
        st = vt_write_file(dir, "adapter_model.safetensors", &msg);
    ftk_message_free(&msg);
    return st;
}

/* The config keys every prompt learning method writes (peft's PromptLearningConfig). */
static cJSON *vt_config(struct ftk_peft *p, const struct vt_common *v, const char *peft_type, const char *base_path)
{
    const struct ftk_model_config *cfg = ftk_peft_config(p);
    cJSON *c = cJSON_CreateObject();
    if (!c)
        return NULL;
    cJSON_AddNullToObject(c, "auto_mapping");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddBoolToObject(c, "inference_mode", 1);
    cJSON_AddNullToObject(c, "modules_to_save");
    cJSON_AddNumberToObject(c, "num_attention_heads", (double)cfg->H);
    cJSON_AddNumberToObject(c, "num_layers", (double)cfg->L);
    cJSON_AddNumberToObject(c, "num_transformer_submodules", 1);
    cJSON_AddNumberToObject(c, "num_virtual_tokens", (double)v->P);
    cJSON_AddStringToObject(c, "peft_type", peft_type);
    cJSON_AddNullToObject(c, "revision");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    cJSON_AddNumberToObject(c, "token_dim", (double)v->C);
    return c;
}

static ftk_status vt_write_config(const char *dir, cJSON *c)
{
    char *text = c ? cJSON_Print(c) : NULL;
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    ftk_status st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

/* splitmix64: draws that depend only on (seed, what, index), so runs are reproducible. */
static uint64_t vt_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static double vt_uniform(uint64_t seed, uint64_t what, uint64_t i)
{
    return (double)(vt_mix(vt_mix(seed ^ (what * 0x632BE59BD9B4E019ull)) + i) >> 11) * (1.0 / 9007199254740992.0);
}
/* N(0,1) by Box-Muller */
static double vt_normal(uint64_t seed, uint64_t what, uint64_t i)
{
    double u1 = vt_uniform(seed, what, 2 * i), u2 = vt_uniform(seed, what, 2 * i + 1);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

/* Host values into backend memory. */
static ftk_status vt_upload(struct ftk_peft *p, float *dst, const float *host, int64_t n)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    return be->to_device(ctx, dst, host, (size_t)n * sizeof(float));
}

/* ---- prompt tuning's inits (peft PromptEmbedding), shared with WARP's prompt ---------------- */

/* prompt_tuning_init and what it reads: peft's option names. */
struct vt_init {
    char init[16];             /* RANDOM, TEXT, SAMPLE_VOCAB */
    char text[1024];           /* prompt_tuning_init_text */
    char tokenizer[1024];      /* tokenizer_name_or_path: a local tokenizer.json or its directory */
};

static inline ftk_status vt_parse_init(const struct ftk_kv *o, struct vt_init *in)
{
    const char *init = ftk_kv_get(o, "prompt_tuning_init"), *text = ftk_kv_get(o, "prompt_tuning_init_text"),
               *tok = ftk_kv_get(o, "tokenizer_name_or_path");
    snprintf(in->init, sizeof in->init, "%s", init ? init : "RANDOM");
    FTK_FAIL_IF(strcmp(in->init, "RANDOM") && strcmp(in->init, "TEXT") && strcmp(in->init, "SAMPLE_VOCAB"), FTK_E_UNSUPPORTED,
                "prompt_tuning_init=%s (RANDOM, TEXT or SAMPLE_VOCAB)", in->init);
    int is_text = !strcmp(in->init, "TEXT");
    FTK_FAIL_IF(is_text && !text, FTK_E_INVALID, "prompt_tuning_init=TEXT needs prompt_tuning_init_text");
    FTK_FAIL_IF(is_text && (!tok || !*tok), FTK_E_INVALID,
                "prompt_tuning_init=TEXT needs tokenizer_name_or_path (a directory with tokenizer.json, e.g. the model's)");
    FTK_FAIL_IF(text && strlen(text) >= sizeof in->text, FTK_E_INVALID, "prompt_tuning_init_text longer than %zu bytes",
                sizeof in->text - 1);
    FTK_FAIL_IF(tok && strlen(tok) >= sizeof in->tokenizer, FTK_E_INVALID, "tokenizer_name_or_path too long");
    snprintf(in->text, sizeof in->text, "%s", text ? text : "");
    snprintf(in->tokenizer, sizeof in->tokenizer, "%s", tok ? tok : "");
    return FTK_OK;
}

/* The config keys of vt_parse_init. */
static inline void vt_config_init(cJSON *c, const struct vt_init *in)
{
    cJSON_AddStringToObject(c, "prompt_tuning_init", in->init);
    if (in->text[0])
        cJSON_AddStringToObject(c, "prompt_tuning_init_text", in->text);
    else
        cJSON_AddNullToObject(c, "prompt_tuning_init_text");
    if (in->tokenizer[0])
        cJSON_AddStringToObject(c, "tokenizer_name_or_path", in->tokenizer);
    else
        cJSON_AddNullToObject(c, "tokenizer_name_or_path");
}

/* ftk's tokenizer for tokenizer_name_or_path `path`; `what` is the option that needs it. */
static inline ftk_status vt_tokenizer(const char *path, const char *what, struct ftk_tokenizer **tk)
{
    ftk_status s = ftk_tokenizer_load_path(path, tk);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "%s: tokenizer_name_or_path \"%s\" (ftk reads a local directory holding tokenizer.json, "
                              "e.g. the model's, or the file itself)", what, path);
    return FTK_OK;
}

/* TEXT: the ids of the init text (special tokens included, as peft calls tokenizer(text)),
 * truncated or repeated to P. */
static inline ftk_status vt_text_ids(const struct vt_common *v, const struct vt_init *in, int64_t V, int32_t *out)
{
    struct ftk_tokenizer *tk = NULL;
    FTK_TRY(vt_tokenizer(in->tokenizer, "prompt_tuning_init=TEXT", &tk));
    struct ftk_ids ids = {0};
    ftk_status s = ftk_tokenizer_encode(tk, in->text, strlen(in->text), 1, &ids);
    ftk_tokenizer_free(tk);
    if (s == FTK_OK && ids.n == 0)
        s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "prompt_tuning_init_text \"%s\" has no tokens", in->text);
    for (int64_t k = 0; s == FTK_OK && k < v->P; k++) {
        out[k] = ids.ids[(size_t)k % ids.n];
        if (out[k] < 0 || out[k] >= V)
            s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__,
                              "prompt_tuning_init_text: token id %d outside the model's vocabulary of %lld (tokenizer of "
                              "another model?)", out[k], (long long)V);
    }
    ftk_ids_free(&ids);
    return s;
}

/* e (P,C) backend memory by in->init: RANDOM N(0,1) (nn.Embedding's init, ftk's seeded draws),
 * TEXT rows of embed_tokens for the text's ids, SAMPLE_VOCAB rows of P ids drawn uniformly from
 * [0, V) (torch.randint in peft; seeded). */
static inline ftk_status vt_init_prompt(struct ftk_peft *p, const struct vt_common *v, const struct vt_init *in, float *e)
{
    const struct ftk_model_config *cfg = ftk_peft_config(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t P = v->P, C = v->C;
    if (!strcmp(in->init, "RANDOM")) {
        float *h = malloc((size_t)(P * C) * sizeof *h);
        FTK_FAIL_IF(!h, FTK_E_NOMEM, "out of memory");
        for (int64_t i = 0; i < P * C; i++)
            h[i] = (float)vt_normal(ftk_peft_seed(p), 1, (uint64_t)i);
        ftk_status s = vt_upload(p, e, h, P * C);
        free(h);
        return s;
    }
    int64_t nv = 0;
    const float *wte = ftk_peft_base_weight(p, "model.embed_tokens.weight", &nv);
    FTK_FAIL_IF(!wte || nv != cfg->V * C, FTK_E_INVALID, "the model has no model.embed_tokens.weight of (%lld, %lld)",
                (long long)cfg->V, (long long)C);
    int32_t *ids = malloc((size_t)P * sizeof *ids);
    FTK_FAIL_IF(!ids, FTK_E_NOMEM, "out of memory");
    ftk_status s = FTK_OK;
    if (!strcmp(in->init, "TEXT"))
        s = vt_text_ids(v, in, cfg->V, ids);
    else   /* SAMPLE_VOCAB */
        for (int64_t k = 0; k < P; k++)
            ids[k] = (int32_t)(vt_mix(vt_mix(ftk_peft_seed(p) ^ 0x5A4D504C45ull) + (uint64_t)k) % (uint64_t)cfg->V);
    for (int64_t k = 0; s == FTK_OK && k < P; k++)
        s = be->copy(ctx, e + k * C, wte + (int64_t)ids[k] * C, (size_t)C * sizeof(float));
    free(ids);
    return s;
}

#endif
