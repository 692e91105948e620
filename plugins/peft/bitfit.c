/* plugins/peft/bitfit.c: BitFit (Ben Zaken, Goldberg, Ravfogel 2022, "BitFit: Simple
 * Parameter-efficient Fine-tuning for Transformer-based Masked Language-models"): only the bias
 * terms train. Llama-family linears have no biases (Qwen2 has q/k/v ones), so, as the paper
 * does for models without them, every targeted linear gets a bias, zero where the model had
 * none and the model's own value where it had one:
 *   y = x W^T + c,   c (O) trainable, initialised to b (or 0)
 * At the hook y already holds x W^T + b, so delta = c - b. No weight decay on c (HF Trainer
 * excludes biases from decay). Backend-agnostic (gemm only): broadcast and sum are products
 * with a ones vector.
 *
 * peft has no BitFit: the saved format is ftk's own (docs/peft-methods.md), peft-shaped so
 * that adapter loading finds it: adapter_config.json {"peft_type": "BITFIT", "target_modules":
 * [...], "base_model_name_or_path": ...} and adapter_model.safetensors with the full bias
 * values c as base_model.model.<module>.bias (O), F32. Merging (merge_bias: ftk merge-lora)
 * writes c as each module's bias, with attention_bias / mlp_bias set in config.json where the
 * base had none (Llama; Qwen3's attention).
 * Shapes: N tokens, I in, O out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/fileio.h"
#include "ftk/plugin.h"
#include "ftk/safetensors.h"

#define MAX_SITES 4096

struct bitfit_site {
    const struct ftk_site *s;
    float *c, *gc;             /* (O) the bias, its gradient; backend memory */
    const float *b;            /* (O) the model's own bias, or NULL */
};

struct bitfit {
    char *targets;              /* any length: a regex target_modules arrives as every module's name */
    struct bitfit_site sites[MAX_SITES];
    int n;
    float *ones;               /* (N) */
    size_t ones_cap;
    float *diff;               /* (O) c - b */
    size_t diff_cap;
};

static int in_list(const char *list, const struct ftk_site *s)
{
    const char *name = ftk_linear_name(s->kind);
    if (!strcmp(list, "all") || !strcmp(list, "all-linear"))
        return s->kind != FTK_LIN_LM_HEAD;
    size_t m = strlen(s->module);
    for (const char *t = list; *t;) {   /* no copy: the list has any length */
        while (*t == ' ')
            t++;
        size_t n = strcspn(t, ",");
        /* peft: the module name equals the target or ends with ".target" */
        if ((n == strlen(name) && !strncmp(t, name, n)) || (n == m && !strncmp(t, s->module, n)) ||
            (n && m > n && s->module[m - n - 1] == '.' && !strncmp(s->module + m - n, t, n)))
            return 1;
        t += n + (t[n] == ',');
    }
    return 0;
}

static ftk_status bitfit_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct bitfit *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    const char *t = ftk_kv_get(o, "target_modules");
    FTK_FAIL_IF(!(S->targets = strdup(t ? t : "all")), FTK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        if (!in_list(S->targets, s))
            continue;
        FTK_FAIL_IF(s->kind == FTK_LIN_LM_HEAD, FTK_E_UNSUPPORTED, "BitFit on lm_head is not supported yet");
        FTK_FAIL_IF(S->n == MAX_SITES, FTK_E_UNSUPPORTED, "more than %d BitFit sites", MAX_SITES);
        struct bitfit_site *bs = &S->sites[S->n++];
        bs->s = s;
        char name[300];
        snprintf(name, sizeof name, "%s.bias", s->module);
        bs->b = ftk_peft_base_weight(p, name, NULL);
        snprintf(name, sizeof name, "base_model.model.%s.bias", s->module);
        int64_t shape[1] = {s->out};
        FTK_TRY(ftk_peft_add_param(p, name, 1, shape, 0, &bs->c, &bs->gc));
        if (bs->b)
            FTK_TRY(be->copy(ctx, bs->c, bs->b, (size_t)s->out * sizeof(float)));
        FTK_TRY(ftk_peft_attach(p, s));
    }
    FTK_FAIL_IF(S->n == 0, FTK_E_INVALID, "target_modules=%s matches no linear layer", S->targets);
    return FTK_OK;
}

static struct bitfit_site *find_site(struct bitfit *S, const struct ftk_site *s)
{
    for (int i = 0; i < S->n; i++)
        if (S->sites[i].s == s)
            return &S->sites[i];
    return NULL;
}

static ftk_status ones_of(struct ftk_peft *p, struct bitfit *S, int64_t N)
{
    if ((size_t)N <= S->ones_cap)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    be->free(ctx, S->ones);
    S->ones = NULL;
    S->ones_cap = 0;
    FTK_TRY(be->alloc(ctx, (size_t)N * sizeof(float), (void **)&S->ones));
    float *h = malloc((size_t)N * sizeof *h);
    FTK_FAIL_IF(!h, FTK_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < N; i++)
        h[i] = 1.0f;
    ftk_status st = be->to_device(ctx, S->ones, h, (size_t)N * sizeof *h);
    free(h);
    FTK_TRY(st);
    S->ones_cap = (size_t)N;
    return FTK_OK;
}

/* y (N,O) += ones (N,1) (c - b) (1,O) */
static ftk_status bitfit_forward(struct ftk_peft *p, const struct ftk_site *s, float *y, const float *x, int64_t N, int train)
{
    (void)x;
    (void)train;
    struct bitfit *S = ftk_peft_priv(p);
    struct bitfit_site *bs = find_site(S, s);
    if (!bs)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t O = s->out;
    FTK_TRY(ones_of(p, S, N));
    const float *d = bs->c;
    if (bs->b) {
        if ((size_t)O > S->diff_cap) {
            be->free(ctx, S->diff);
            S->diff = NULL;
            S->diff_cap = 0;
            FTK_TRY(be->alloc(ctx, (size_t)O * sizeof(float), (void **)&S->diff));
            S->diff_cap = (size_t)O;
        }
        FTK_TRY(be->copy(ctx, S->diff, bs->c, (size_t)O * sizeof(float)));
        FTK_TRY(be->axpy(ctx, S->diff, bs->b, O, -1.0f));
        d = S->diff;
    }
    return be->gemm(ctx, 0, 0, N, O, 1, 1.0f, S->ones, 1, d, O, 1.0f, y, O);
}

/* dc (1,O) += ones (1,N) dy (N,O); the input gets nothing from a bias */
static ftk_status bitfit_backward(struct ftk_peft *p, const struct ftk_site *s, float *dx, const float *dy, const float *x,
                                  int64_t N)
{
    (void)dx;
    (void)x;
    struct bitfit *S = ftk_peft_priv(p);
    struct bitfit_site *bs = find_site(S, s);
    if (!bs)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_TRY(ones_of(p, S, N));
    return be->gemm(ctx, 1, 0, 1, s->out, N, 1.0f, S->ones, 1, dy, s->out, 1.0f, bs->gc, s->out);
}

/* ---- files -------------------------------------------------------------------------------- */

static ftk_status bitfit_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct bitfit *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    for (int i = 0; i < S->n && st == FTK_OK; i++) {
        const struct bitfit_site *bs = &S->sites[i];
        char name[300];
        int64_t shape[1] = {bs->s->out};
        struct ftk_tensor *t;
        snprintf(name, sizeof name, "base_model.model.%s.bias", bs->s->module);
        if ((st = ftk_message_add(&msg, name, FTK_DTYPE_F32, 1, shape, NULL, &t)) == FTK_OK)
            st = be->to_host(ctx, t->data, bs->c, t->nbytes);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st == FTK_OK)
        st = ftk_st_write(path, &msg);
    ftk_message_free(&msg);
    FTK_TRY(st);

    cJSON *c = cJSON_CreateObject(), *tm = cJSON_CreateArray();
    for (int i = 0; i < S->n; i++) {   /* the distinct module kinds, in model order */
        const char *k = ftk_linear_name(S->sites[i].s->kind);
        int dup = 0, every = 1;
        for (int j = 0; j < i; j++)
            dup |= S->sites[j].s->kind == S->sites[i].s->kind;
        for (size_t j = 0; j < ftk_peft_n_sites(p); j++)   /* a kind some of whose modules were left out */
            every &= ftk_peft_site(p, j)->kind != S->sites[i].s->kind || in_list(S->targets, ftk_peft_site(p, j));
        if (!every)   /* names its modules, or loading would take them all */
            cJSON_AddItemToArray(tm, cJSON_CreateString(S->sites[i].s->module));
        else if (!dup)
            cJSON_AddItemToArray(tm, cJSON_CreateString(k));
    }
    cJSON_AddStringToObject(c, "peft_type", "BITFIT");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddItemToObject(c, "target_modules", tm);
    cJSON_AddStringToObject(c, "format", "ftk BitFit 1: base_model.model.<module>.bias = the whole bias (docs/peft-methods.md)");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

static ftk_status bitfit_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct bitfit *S = ftk_peft_priv(p);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = FTK_OK;
    for (int i = 0; i < S->n && s == FTK_OK; i++) {
        struct bitfit_site *bs = &S->sites[i];
        char name[300];
        snprintf(name, sizeof name, "base_model.model.%s.bias", bs->s->module);
        s = ftk_peft_load_tensor(p, st, ftk_source_path(src), name, 1, bs->s->out, 0, bs->c);
    }
    if (s == FTK_OK && (size_t)S->n != ftk_st_model_count(st))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: adapter has %zu tensors, the model's BitFit sites take %d",
                          ftk_source_path(src), ftk_st_model_count(st), S->n);
    ftk_st_model_close(st);
    return s;
}

/* The weights stay; the merged bias is c. */
static ftk_status bitfit_merge_bias(struct ftk_peft *p, const struct ftk_site *s, float *bias, int *has)
{
    struct bitfit *S = ftk_peft_priv(p);
    *has = 1;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    for (int i = 0; i < S->n; i++)
        if (S->sites[i].s == s)
            return be->to_host(ctx, bias, S->sites[i].c, (size_t)s->out * sizeof *bias);
    FTK_FAIL(FTK_E_NOTFOUND, "BitFit has no bias at %s", s->module);
}

static void bitfit_release(struct ftk_peft *p)
{
    struct bitfit *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    be->free(ctx, S->ones);
    be->free(ctx, S->diff);
    free(S->targets);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "bitfit",
    .priv_size = sizeof(struct bitfit),
    .init = bitfit_init,
    .linear_forward = bitfit_forward,
    .linear_backward = bitfit_backward,
    .save = bitfit_save,
    .load = bitfit_load,
    .release = bitfit_release,
    .merge_bias = bitfit_merge_bias,
};
