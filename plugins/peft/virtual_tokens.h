/* plugins/peft/virtual_tokens.h: what prompt_tuning.c and p_tuning.c share (the `embed` hook,
 * ftk/plugin.h): peft's PromptLearningConfig options, writing the P virtual rows in front of
 * every row of the layer-0 input and summing their gradient back, the adapter's
 * prompt_embeddings tensor, and seeded draws. Static functions only (each plugin is one .so).
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
static ftk_status vt_save_prompt(struct ftk_peft *p, const struct vt_common *v, const char *dir, const float *e)
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

#endif
