/* plugins/peft/param_table.h: a plugin's parameters listed by their saved names as they are
 * registered, so that saving and loading an adapter in ftk's own format is one loop over the
 * list (bottleneck adapters, the MAM adapter, UniPELT). Static functions. The table owns its array (ptab_free); the
 * parameters themselves are libcore's. */
#ifndef FTK_PARAM_TABLE_H
#define FTK_PARAM_TABLE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/plugin.h"
#include "ftk/safetensors.h"

struct ptab_entry {
    char name[192];
    int ndim;
    int64_t d[2];
    float *w;                  /* backend memory */
};

struct ptab {
    struct ptab_entry *e;
    size_t n, cap;
};

/* ftk_peft_add_param, and the parameter into t (when t is not NULL). */
static inline ftk_status ptab_add(struct ftk_peft *p, struct ptab *t, const char *name, int nd, int64_t d0, int64_t d1,
                                  int decay, float **w, float **g)
{
    int64_t d[2] = {d0, d1};
    FTK_TRY(ftk_peft_add_param(p, name, nd, d, decay, w, g));
    if (!t)
        return FTK_OK;
    FTK_FAIL_IF(strlen(name) >= sizeof t->e->name, FTK_E_INVALID, "parameter name too long: %s", name);
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        struct ptab_entry *e = realloc(t->e, cap * sizeof *e);
        FTK_FAIL_IF(!e, FTK_E_NOMEM, "out of memory");
        t->e = e;
        t->cap = cap;
    }
    struct ptab_entry *x = &t->e[t->n++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = nd;
    x->d[0] = d0;
    x->d[1] = nd > 1 ? d1 : 1;
    x->w = *w;
    return FTK_OK;
}

/* dir/adapter_model.safetensors with every parameter of t, F32, under its name. */
static inline ftk_status ptab_save(struct ftk_peft *p, const struct ptab *t, const char *dir)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    for (size_t i = 0; i < t->n && st == FTK_OK; i++) {
        struct ftk_tensor *x;
        if ((st = ftk_message_add(&msg, t->e[i].name, FTK_DTYPE_F32, t->e[i].ndim, t->e[i].d, NULL, &x)) == FTK_OK)
            st = be->to_host(ctx, x->data, t->e[i].w, x->nbytes);
    }
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/adapter_model.safetensors", dir);
    if (st == FTK_OK)
        st = ftk_st_write(path, &msg);
    ftk_message_free(&msg);
    return st;
}

/* Every parameter of t from src's adapter_model.safetensors (shapes checked, naming file and
 * tensor), which must hold exactly these tensors. */
static inline ftk_status ptab_load(struct ftk_peft *p, const struct ptab *t, struct ftk_source *src)
{
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = FTK_OK;
    for (size_t i = 0; i < t->n && s == FTK_OK; i++)
        s = ftk_peft_load_tensor(p, st, ftk_source_path(src), t->e[i].name, t->e[i].ndim, t->e[i].d[0], t->e[i].d[1],
                                 t->e[i].w);
    if (s == FTK_OK && t->n != ftk_st_model_count(st))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: adapter has %zu tensors, these options make %zu",
                          ftk_source_path(src), ftk_st_model_count(st), t->n);
    ftk_st_model_close(st);
    return s;
}

/* adapter_config.json, begun: peft_type, task_type CAUSAL_LM, base_model_name_or_path (NULL:
 * null); the plugin adds its options and ptab_config_write writes it (and deletes it). */
static inline cJSON *ptab_config_begin(const char *peft_type, const char *base_path)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "peft_type", peft_type);
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    return c;
}

static inline ftk_status ptab_config_write(cJSON *c, const char *dir)
{
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    ftk_status st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

static inline void ptab_free(struct ptab *t)
{
    free(t->e);
    t->e = NULL;
    t->n = t->cap = 0;
}

#endif
