/* plugins/peft/ia3.c: (IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is
 * Better and Cheaper than In-Context Learning") as HuggingFace peft implements it (IA3 in
 * peft/tuners/ia3/layer.py, Linear.forward):
 *   attention-like target:   y = (x W^T + b) * l          l (O,1), the bias scaled too
 *   feed-forward target:     y = (x * l) W^T + b          l (1,I), scales down_proj's input
 * l starts at ones (init_ia3_weights). Defaults per model_type are peft's
 * TRANSFORMERS_MODELS_TO_IA3_{TARGET,FEEDFORWARD}_MODULES_MAPPING (llama/mistral: k_proj, v_proj,
 * down_proj; qwen2/qwen3: q_proj, v_proj, down_proj; feed-forward: down_proj).
 * Saved in peft's layout: adapter_config.json (peft_type IA3) + adapter_model.safetensors with
 * base_model.model.<module>.ia3_l, shape (O,1) or (1,I).
 *
 * The hook adds delta(x) to y = x W^T + b:  delta = (l - 1) * y  or  ((l - 1) * x) W^T.
 * Elementwise parts run on the host: the CPU backend only for now.
 * Shapes: N tokens, I in, O out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/fileio.h"
#include "ftk/plugin.h"
#include "ftk/safetensors.h"

#define MAX_SITES 4096

struct ia3_site {
    const struct ftk_site *s;
    int ff;                    /* 1: feed-forward (scales the input) */
    float *l, *gl;             /* (O,1) or (1,I), backend memory */
    const float *W, *b;        /* base weight (O,I) and bias (O) or NULL */
};

struct ia3 {
    char *targets, *ff;        /* any length: a regex target_modules arrives as every module's name */
    struct ia3_site sites[MAX_SITES];
    int n;
    float *tmp, *tmp2;         /* scratch (N, max(I,O)) each */
    size_t tmp_cap, tmp2_cap;
};

/* peft 0.21 constants.py, the archs ftk models */
static const char *default_targets(const char *model_type)
{
    if (!strcmp(model_type, "qwen2") || !strcmp(model_type, "qwen3"))
        return "q_proj,v_proj,down_proj";
    return "k_proj,v_proj,down_proj";   /* llama, mistral */
}

/* peft: a module matches a target when its name equals it or ends with "." + target */
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

static ftk_status grow(float **p, size_t *cap, size_t n, const struct ftk_backend *be, void *ctx)
{
    if (n <= *cap)
        return FTK_OK;
    be->free(ctx, *p);
    *p = NULL;
    *cap = 0;
    FTK_TRY(be->alloc(ctx, n * sizeof(float), (void **)p));
    *cap = n;
    return FTK_OK;
}

static ftk_status ia3_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct ia3 *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_FAIL_IF(strcmp(be->name, "cpu"), FTK_E_UNSUPPORTED, "ia3 on the %s backend is not implemented yet", be->name);
    const struct ftk_model_config *c = ftk_peft_config(p);
    const char *t = ftk_kv_get(o, "target_modules"), *f = ftk_kv_get(o, "feedforward_modules");
    FTK_FAIL_IF(!(S->targets = strdup(t ? t : default_targets(c->model_type))), FTK_E_NOMEM, "out of memory");
    FTK_FAIL_IF(!(S->ff = strdup(f ? f : "down_proj")), FTK_E_NOMEM, "out of memory");   /* peft: the mapping, whatever the targets */
    int init_ones, fifo;
    FTK_TRY(ftk_kv_bool(o, "init_ia3_weights", 1, &init_ones));
    FTK_TRY(ftk_kv_bool(o, "fan_in_fan_out", 0, &fifo));
    FTK_FAIL_IF(!init_ones, FTK_E_UNSUPPORTED, "init_ia3_weights=false (random init) is not supported");
    FTK_FAIL_IF(fifo, FTK_E_UNSUPPORTED, "fan_in_fan_out is not supported (Conv1D models)");
    const char *mts = ftk_kv_get(o, "modules_to_save");
    FTK_FAIL_IF(mts && strcmp(mts, ""), FTK_E_UNSUPPORTED, "modules_to_save is not supported yet");

    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        int tg = in_list(S->targets, s), ff = S->ff[0] && in_list(S->ff, s);
        FTK_FAIL_IF(f && ff && !tg, FTK_E_INVALID, "feedforward_modules: %s is not in target_modules (peft requires a subset)", s->module);
        if (!tg)
            continue;
        FTK_FAIL_IF(s->kind == FTK_LIN_LM_HEAD, FTK_E_UNSUPPORTED, "(IA)3 on lm_head is not supported yet");
        FTK_FAIL_IF(S->n == MAX_SITES, FTK_E_UNSUPPORTED, "more than %d (IA)3 sites", MAX_SITES);
        struct ia3_site *is = &S->sites[S->n++];
        is->s = s;
        is->ff = ff;
        char name[300];
        snprintf(name, sizeof name, "%s.weight", s->module);
        is->W = ftk_peft_base_weight(p, name, NULL);
        FTK_FAIL_IF(!is->W, FTK_E_INVALID, "(IA)3: the model has no %s", name);
        snprintf(name, sizeof name, "%s.bias", s->module);
        is->b = ftk_peft_base_weight(p, name, NULL);
        int64_t shape[2] = {ff ? 1 : s->out, ff ? s->in : 1};
        snprintf(name, sizeof name, "base_model.model.%s.ia3_l", s->module);
        /* decay 1: HF Trainer decays every parameter but biases and norms */
        FTK_TRY(ftk_peft_add_param(p, name, 2, shape, 1, &is->l, &is->gl));
        for (int64_t j = 0; j < shape[0] * shape[1]; j++)
            is->l[j] = 1.0f;   /* host memory: the CPU backend */
        FTK_TRY(ftk_peft_attach(p, s));
    }
    FTK_FAIL_IF(S->n == 0, FTK_E_INVALID, "target_modules=%s matches no linear layer", S->targets);
    return FTK_OK;
}

static struct ia3_site *find_site(struct ia3 *S, const struct ftk_site *s)
{
    for (int i = 0; i < S->n; i++)
        if (S->sites[i].s == s)
            return &S->sites[i];
    return NULL;
}

static ftk_status ia3_forward(struct ftk_peft *p, const struct ftk_site *s, float *y, const float *x, int64_t N, int train)
{
    (void)train;
    struct ia3 *S = ftk_peft_priv(p);
    struct ia3_site *is = find_site(S, s);
    if (!is)
        return FTK_OK;
    int64_t I = s->in, O = s->out;
    if (!is->ff) {   /* y (N,O) *= l (O): y is x W^T + b here, as peft scales base_layer(x) */
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++)
                y[n * O + o] *= is->l[o];
        return FTK_OK;
    }
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_TRY(grow(&S->tmp, &S->tmp_cap, (size_t)(N * I), be, ctx));
    for (int64_t n = 0; n < N; n++)   /* tmp (N,I) = x * (l - 1) */
        for (int64_t i = 0; i < I; i++)
            S->tmp[n * I + i] = x[n * I + i] * (is->l[i] - 1.0f);
    return be->gemm(ctx, 0, 1, N, O, I, 1.0f, S->tmp, I, is->W, I, 1.0f, y, O);   /* y += tmp W^T */
}

static ftk_status ia3_backward(struct ftk_peft *p, const struct ftk_site *s, float *dx, const float *dy, const float *x,
                               int64_t N)
{
    struct ia3 *S = ftk_peft_priv(p);
    struct ia3_site *is = find_site(S, s);
    if (!is)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t I = s->in, O = s->out;
    if (!is->ff) {
        /* dl[o] += sum_n dy[n,o] (x W^T + b)[n,o];  dx += ((l - 1) * dy) W */
        FTK_TRY(grow(&S->tmp, &S->tmp_cap, (size_t)(N * O), be, ctx));
        FTK_TRY(be->linear_forward(ctx, S->tmp, x, is->W, is->b, N, I, O));
        for (int64_t o = 0; o < O; o++) {
            double acc = 0;
            for (int64_t n = 0; n < N; n++)
                acc += (double)dy[n * O + o] * S->tmp[n * O + o];
            is->gl[o] += (float)acc;
        }
        if (!dx)
            return FTK_OK;
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++)
                S->tmp[n * O + o] = dy[n * O + o] * (is->l[o] - 1.0f);
        return be->gemm(ctx, 0, 0, N, I, O, 1.0f, S->tmp, O, is->W, I, 1.0f, dx, I);
    }
    /* u (N,I) = dy W;  dl[i] += sum_n u[n,i] x[n,i];  dx += u * (l - 1) */
    FTK_TRY(grow(&S->tmp, &S->tmp_cap, (size_t)(N * I), be, ctx));
    FTK_TRY(be->gemm(ctx, 0, 0, N, I, O, 1.0f, dy, O, is->W, I, 0.0f, S->tmp, I));
    for (int64_t i = 0; i < I; i++) {
        double acc = 0;
        for (int64_t n = 0; n < N; n++)
            acc += (double)S->tmp[n * I + i] * x[n * I + i];
        is->gl[i] += (float)acc;
    }
    if (dx)
        for (int64_t n = 0; n < N; n++)
            for (int64_t i = 0; i < I; i++)
                dx[n * I + i] += S->tmp[n * I + i] * (is->l[i] - 1.0f);
    return FTK_OK;
}

/* ---- files -------------------------------------------------------------------------------- */

/* Does name select a feed-forward site of S? */
static int ff_used(const struct ia3 *S, const char *name)
{
    for (int i = 0; i < S->n; i++)
        if (S->sites[i].ff && in_list(name, S->sites[i].s))
            return 1;
    return 0;
}

/* list as a JSON array; with S, only the names that select one of its feed-forward sites (the
 * default down_proj with targets that leave it out would fail peft's subset check on load). */
static cJSON *name_list(const char *list, const struct ia3 *S)
{
    cJSON *a = cJSON_CreateArray();
    char *buf = strdup(list);
    if (!a || !buf) {
        cJSON_Delete(a);
        free(buf);
        return NULL;
    }
    static const char *linear[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    if (!strcmp(buf, "all") || !strcmp(buf, "all-linear")) {
        for (int i = 0; i < 7; i++)
            if (!S || ff_used(S, linear[i]))
                cJSON_AddItemToArray(a, cJSON_CreateString(linear[i]));
        free(buf);
        return a;
    }
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (!S || ff_used(S, t))
            cJSON_AddItemToArray(a, cJSON_CreateString(t));
    free(buf);
    return a;
}

static ftk_status ia3_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct ia3 *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    for (int i = 0; i < S->n && st == FTK_OK; i++) {
        const struct ia3_site *is = &S->sites[i];
        char name[300];
        int64_t shape[2] = {is->ff ? 1 : is->s->out, is->ff ? is->s->in : 1};
        struct ftk_tensor *t;
        snprintf(name, sizeof name, "base_model.model.%s.ia3_l", is->s->module);
        if ((st = ftk_message_add(&msg, name, FTK_DTYPE_F32, 2, shape, NULL, &t)) == FTK_OK)
            st = be->to_host(ctx, t->data, is->l, t->nbytes);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st == FTK_OK)
        st = ftk_st_write(path, &msg);
    ftk_message_free(&msg);
    FTK_TRY(st);

    cJSON *c = cJSON_CreateObject(), *tl = name_list(S->targets, NULL), *fl = name_list(S->ff, S);
    if (!c || !tl || !fl) {
        cJSON_Delete(c);
        cJSON_Delete(tl);
        cJSON_Delete(fl);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    cJSON_AddStringToObject(c, "peft_type", "IA3");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddItemToObject(c, "target_modules", tl);
    cJSON_AddItemToObject(c, "feedforward_modules", fl);
    cJSON_AddBoolToObject(c, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(c, "init_ia3_weights", 1);
    cJSON_AddBoolToObject(c, "inference_mode", 1);
    cJSON_AddNullToObject(c, "modules_to_save");
    cJSON_AddNullToObject(c, "revision");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

static ftk_status ia3_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct ia3 *S = ftk_peft_priv(p);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = FTK_OK;
    for (int i = 0; i < S->n && s == FTK_OK; i++) {
        struct ia3_site *is = &S->sites[i];
        char name[300];
        snprintf(name, sizeof name, "base_model.model.%s.ia3_l", is->s->module);
        int64_t w0 = is->ff ? 1 : is->s->out, w1 = is->ff ? is->s->in : 1;   /* feed-forward: scales the input */
        s = ftk_peft_load_tensor(p, st, ftk_source_path(src), name, 2, w0, w1, is->l);
    }
    if (s == FTK_OK && (size_t)S->n != ftk_st_model_count(st))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: adapter has %zu tensors, the model's (IA)3 sites take %d",
                          ftk_source_path(src), ftk_st_model_count(st), S->n);
    ftk_st_model_close(st);
    return s;
}

/* peft IA3 Linear.merge: W *= l (rows, or columns for feed-forward); the bias of a scaled
 * output too (ia3_merge_bias). */
static ftk_status ia3_merge(struct ftk_peft *p, const struct ftk_site *s, float *w)
{
    struct ia3 *S = ftk_peft_priv(p);
    struct ia3_site *is = find_site(S, s);
    if (!is)
        return FTK_OK;
    for (int64_t o = 0; o < s->out; o++)
        for (int64_t i = 0; i < s->in; i++)
            w[o * s->in + i] *= is->ff ? is->l[i] : is->l[o];
    return FTK_OK;
}

/* peft IA3 Linear.merge: b *= l where the output is scaled (y = l (x W^T + b)); a feed-forward
 * site scales its input, its bias stays. No bias where the base has none. */
static ftk_status ia3_merge_bias(struct ftk_peft *p, const struct ftk_site *s, float *bias, int *has)
{
    struct ia3 *S = ftk_peft_priv(p);
    struct ia3_site *is = find_site(S, s);
    *has = is && is->b;
    if (!*has)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_TRY(be->to_host(ctx, bias, is->b, (size_t)s->out * sizeof *bias));
    if (is->ff)
        return FTK_OK;
    float *l = malloc((size_t)s->out * sizeof *l);
    FTK_FAIL_IF(!l, FTK_E_NOMEM, "out of memory");
    ftk_status st = be->to_host(ctx, l, is->l, (size_t)s->out * sizeof *l);
    for (int64_t o = 0; st == FTK_OK && o < s->out; o++)
        bias[o] *= l[o];
    free(l);
    return st;
}

static void ia3_release(struct ftk_peft *p)
{
    struct ia3 *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    be->free(ctx, S->tmp);
    be->free(ctx, S->tmp2);
    free(S->targets);
    free(S->ff);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "ia3",
    .priv_size = sizeof(struct ia3),
    .init = ia3_init,
    .linear_forward = ia3_forward,
    .linear_backward = ia3_backward,
    .save = ia3_save,
    .load = ia3_load,
    .merge = ia3_merge,
    .release = ia3_release,
    .merge_bias = ia3_merge_bias,
};
