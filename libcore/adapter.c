/* libcore/adapter.c: loading a PEFT adapter directory (ftk's or peft's) onto a model:
 * adapter_config.json names the method (peft_type) and its options; the plugin of that name
 * reads the weights. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "model-impl.h"
#include "peft-impl.h"

/* peft_type -> plugin name ("LORA" -> "lora"; ftk's own types whose plugin is named otherwise
 * from the table) */
static void plugin_name(const char *peft_type, char *out, size_t n)
{
    static const char *const renamed[][2] = {{"DIFF_PRUNING", "diffprune"}};
    for (size_t k = 0; k < sizeof renamed / sizeof *renamed; k++)
        if (!strcmp(peft_type, renamed[k][0])) {
            snprintf(out, n, "%s", renamed[k][1]);
            return;
        }
    size_t i = 0;
    for (; peft_type[i] && i + 1 < n; i++)
        out[i] = (char)tolower((unsigned char)peft_type[i]);
    out[i] = '\0';
}

/* target_modules as one regex string, or exclude_modules: resolved against the model's linear
 * layers into the explicit list of whole module names that every plugin reads as target_modules
 * (a plugin's "equal or ends with .name" test then picks exactly them). *out NULL: neither is
 * used, the config's target_modules stands. */
static ftk_status resolve_targets(const struct ftk_model *m, const cJSON *root, const char *where, char **out)
{
    *out = NULL;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, "exclude_modules");
    int regex = cJSON_IsString(t) && strcmp(t->valuestring, "all-linear");
    int excl = cJSON_IsString(x) || (cJSON_IsArray(x) && cJSON_GetArraySize(x) > 0);
    if (!regex && !excl)
        return FTK_OK;
    FTK_FAIL_IF(!cJSON_IsString(t) && !cJSON_IsArray(t), FTK_E_UNSUPPORTED,
                "%s: exclude_modules without target_modules (the method's default targets) is not supported", where);
    size_t cap = 1;
    for (size_t k = 0; k < m->n_sites; k++)
        cap += strlen(m->sites[k].module) + 1;
    char *list = calloc(cap, 1);
    FTK_FAIL_IF(!list, FTK_E_NOMEM, "out of memory");
    size_t at = 0;
    for (size_t k = 0; k < m->n_sites; k++) {
        int hit;
        ftk_status s = peft_module_targeted(root, m->sites[k].module, m->sites[k].kind == FTK_LIN_LM_HEAD, &hit);
        if (s != FTK_OK) {
            free(list);
            return ftk_error_wrap(s, "%s", where);
        }
        if (hit)
            at += (size_t)snprintf(list + at, cap - at, "%s%s", at ? "," : "", m->sites[k].module);
    }
    if (!at) {
        free(list);
        FTK_FAIL(FTK_E_MISMATCH, "%s: target_modules (less exclude_modules) matches no linear layer of this model", where);
    }
    *out = list;
    return FTK_OK;
}

/* adapter_config.json as plugin options: numbers, booleans ("true"/"false"), strings, lists of
 * strings or numbers (comma-joined); nulls are left out; objects as JSON text ("{}" when empty).
 * `targets`, when not NULL, stands for target_modules (resolve_targets); exclude_modules, then
 * applied, is left out. */
static ftk_status config_to_kv(const cJSON *root, const char *where, const char *targets, struct ftk_kv **out, char ***strs,
                               size_t *n_strs)
{
    int n = cJSON_GetArraySize(root);
    struct ftk_kv *kv = calloc((size_t)n + 1, sizeof *kv);
    char **s = calloc((size_t)n + 1, sizeof *s);
    FTK_FAIL_IF(!kv || !s, FTK_E_NOMEM, "out of memory");
    *out = kv;
    *strs = s;
    size_t k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        char *v = NULL;
        if (cJSON_IsNull(e) || (targets && !strcmp(e->string, "exclude_modules")))
            continue;
        if (targets && !strcmp(e->string, "target_modules"))
            v = strdup(targets);
        else if (cJSON_IsBool(e))
            v = strdup(cJSON_IsTrue(e) ? "true" : "false");
        else if (cJSON_IsNumber(e)) {
            char b[64];
            snprintf(b, sizeof b, "%.17g", e->valuedouble);
            v = strdup(b);
        } else if (cJSON_IsString(e)) {   /* a regex target_modules came as `targets` */
            v = strdup(e->valuestring);
        } else if (cJSON_IsArray(e)) {   /* of strings or of numbers (WARP's verbalizer_ids) */
            size_t len = 1;
            const cJSON *x;
            cJSON_ArrayForEach(x, e) {
                FTK_FAIL_IF(!cJSON_IsString(x) && !cJSON_IsNumber(x), FTK_E_UNSUPPORTED,
                            "%s: \"%s\" holds something other than strings and numbers", where, e->string);
                len += (cJSON_IsString(x) ? strlen(x->valuestring) : 32) + 1;
            }
            v = calloc(1, len);
            size_t at = 0;
            if (v)
                cJSON_ArrayForEach(x, e) {
                    if (cJSON_IsString(x))
                        at += (size_t)snprintf(v + at, len - at, "%s%s", at ? "," : "", x->valuestring);
                    else
                        at += (size_t)snprintf(v + at, len - at, "%s%.17g", at ? "," : "", x->valuedouble);
                }
        } else {
            v = cJSON_PrintUnformatted(e);
        }
        FTK_FAIL_IF(!v, FTK_E_NOMEM, "out of memory");
        s[k] = v;
        kv[k].key = e->string;
        kv[k].value = v;
        *n_strs = ++k;
    }
    return FTK_OK;
}

/* What peft can express that ftk's plugins would silently get wrong: refuse it. AdaLoRA's
 * rank_pattern (the ranks its allocator kept) is read by the adalora plugin; LoRA's per-module
 * rank_pattern and alpha_pattern by the lora plugin. */
static ftk_status check_supported(const struct ftk_kv *kv, const char *where, const char *peft_type)
{
    static const struct { const char *key, *ok; } fixed[] = {
        {"bias", "none"}, {"fan_in_fan_out", "false"}, {"rank_pattern", "{}"}, {"alpha_pattern", "{}"},
        {"layer_replication", ""}, {"layers_to_transform", ""},
        {"alora_invocation_tokens", ""}, {"arrow_config", NULL},   /* LoRA variants the lora plugin does not run */
    };
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        if ((!strcmp(fixed[i].key, "rank_pattern") && (!strcmp(peft_type, "ADALORA") || !strcmp(peft_type, "LORA"))) ||
            (!strcmp(fixed[i].key, "alpha_pattern") && !strcmp(peft_type, "LORA")))
            continue;
        const char *v = ftk_kv_get(kv, fixed[i].key);
        FTK_FAIL_IF(v && (!fixed[i].ok || strcmp(v, fixed[i].ok)), FTK_E_UNSUPPORTED,   /* ok NULL: no value is */
                    "%s: %s = %s is not supported", where, fixed[i].key, v);
    }
    return FTK_OK;
}

ftk_status ftk_model_load_adapter(struct ftk_model *m, const char *path, uint64_t seed)
{
    struct ftk_source *src;
    FTK_TRY(ftk_source_open(path, &src));
    char *text = NULL, where[1100], **strs = NULL;
    size_t len, n_strs = 0;
    struct ftk_kv *kv = NULL;
    cJSON *root = NULL;
    snprintf(where, sizeof where, "%s/adapter_config.json", path);
    ftk_status s = ftk_source_read(src, "adapter_config.json", &text, &len);
    if (s == FTK_OK && !(root = cJSON_ParseWithLength(text, len)))
        s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: not valid JSON", where);
    const cJSON *pt = root ? cJSON_GetObjectItemCaseSensitive(root, "peft_type") : NULL;
    if (s == FTK_OK && !cJSON_IsString(pt))
        s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: \"peft_type\" missing", where);
    const struct ftk_peft_plugin *pl = NULL;
    if (s == FTK_OK) {
        char name[64];
        plugin_name(pt->valuestring, name, sizeof name);
        if ((s = ftk_plugin_load_peft(name, &pl)) != FTK_OK)
            s = ftk_error_wrap(s, "%s: peft_type %s", where, pt->valuestring);
    }
    char *targets = NULL;
    if (s == FTK_OK)
        s = resolve_targets(m, root, where, &targets);
    if (s == FTK_OK)
        s = config_to_kv(root, where, targets, &kv, &strs, &n_strs);
    free(targets);
    if (s == FTK_OK)
        s = check_supported(kv, where, pt->valuestring);
    if (s == FTK_OK)
        s = ftk_model_set_peft(m, pl, kv, seed, NULL);
    if (s == FTK_OK) {
        if (!FTK_PLUGIN_SLOT(pl, load))
            s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "peft plugin \"%s\" cannot load adapters", pl->name);
        else
            s = pl->load(ftk_model_peft(m), src);
    }
    for (size_t i = 0; strs && i < n_strs; i++)
        free(strs[i]);
    free(strs);
    free(kv);
    cJSON_Delete(root);
    free(text);
    ftk_source_close(src);
    return s;
}
