/* libcore/merge_adapter.c: the adapter that ftk merge-lora folds in (merge-impl.h): its
 * adapter_config.json checked against what W + scale B A can express, and its weights paired
 * by module. peft's options handled here: r and lora_alpha with their per-module rank_pattern
 * and alpha_pattern, use_rslora, and modules_to_save (whole tensors that replace the base's). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/plugin.h"
#include "merge-impl.h"
#include "peft-impl.h"

int merge_is_float(enum ftk_dtype dt)
{
    return dt == FTK_DTYPE_F32 || dt == FTK_DTYPE_BF16 || dt == FTK_DTYPE_F16 || dt == FTK_DTYPE_F64;
}

void merge_adapter_free(struct merge_adapter *a)
{
    for (size_t i = 0; i < a->n_pairs; i++)
        free(a->pairs[i].module);
    for (size_t i = 0; i < a->n_saved; i++)
        free(a->saved[i].name);
    free(a->pairs);
    free(a->saved);
    ftk_st_model_close(a->st);
    ftk_source_close(a->src);
    cJSON_Delete(a->cfg);
}

/* peft _set_trainable: a module is saved whole when its name ends with an entry of
 * modules_to_save (plain endswith, as peft). `name` is a tensor's: its module is all but the
 * last component. */
static int saved_module(const cJSON *mts, const char *name)
{
    const char *dot = strrchr(name, '.');
    size_t m = dot ? (size_t)(dot - name) : strlen(name);
    const cJSON *t;
    cJSON_ArrayForEach(t, mts) {
        size_t n = cJSON_IsString(t) ? strlen(t->valuestring) : 0;
        if (n && m >= n && !strncmp(name + m - n, t->valuestring, n))
            return 1;
    }
    return 0;
}

/* Adapters merged by their plugin rather than as W + s B A: other methods, DoRA, and PiSSA/OLoRA
 * (they belong to a residual base, W - s B0 A0, which the plugin recomputes on loading). */
static int needs_plugin(const cJSON *c)
{
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(c, "peft_type");
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(c, "init_lora_weights");
    return strcmp(pt->valuestring, "LORA") || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "use_dora")) ||
           (cJSON_IsString(init) && (!strncmp(init->valuestring, "pissa", 5) || !strcmp(init->valuestring, "olora")));
}

static int is_empty(const cJSON *v)
{
    return !v || cJSON_IsNull(v) || ((cJSON_IsObject(v) || cJSON_IsArray(v)) && cJSON_GetArraySize(v) == 0);
}

/* What peft can express that W + scale B A does not capture: refused, never merged wrongly. */
static ftk_status check_config(const cJSON *c, const char *where)
{
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(c, "peft_type");
    FTK_FAIL_IF(!cJSON_IsString(pt), FTK_E_FORMAT, "%s: \"peft_type\" missing", where);
    static const char *const must_be_false[] = {"fan_in_fan_out", "lora_bias", "use_qalora", NULL};
    for (int i = 0; must_be_false[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, must_be_false[i]);
        FTK_FAIL_IF(cJSON_IsTrue(v), FTK_E_UNSUPPORTED, "%s: %s = true cannot be merged by ftk", where, must_be_false[i]);
    }
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(c, "bias");
    FTK_FAIL_IF(bias && !cJSON_IsNull(bias) && !(cJSON_IsString(bias) && !strcmp(bias->valuestring, "none")),
                FTK_E_UNSUPPORTED, "%s: bias = %s cannot be merged by ftk (only \"none\")", where,
                cJSON_IsString(bias) ? bias->valuestring : "(not a string)");
    /* LoRA variants whose delta is not in the weights (aLoRA: only after its invocation tokens;
     * Arrow: routed per token): peft refuses to merge them too */
    static const char *const variants[] = {"alora_invocation_tokens", "arrow_config", NULL};
    for (int i = 0; variants[i]; i++)
        FTK_FAIL_IF(!is_empty(cJSON_GetObjectItemCaseSensitive(c, variants[i])), FTK_E_UNSUPPORTED,
                    "%s: %s is set: that LoRA variant cannot be folded into the weights", where, variants[i]);
    /* the plugin path reads the rest of the options itself (AdaLoRA's rank_pattern) */
    if (needs_plugin(c))
        return FTK_OK;
    static const char *const must_be_empty[] = {"layer_replication", "trainable_token_indices", "layers_to_transform", NULL};
    for (int i = 0; must_be_empty[i]; i++)
        FTK_FAIL_IF(!is_empty(cJSON_GetObjectItemCaseSensitive(c, must_be_empty[i])), FTK_E_UNSUPPORTED,
                    "%s: a non-empty %s cannot be merged by ftk", where, must_be_empty[i]);
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(c, "modules_to_save");
    FTK_FAIL_IF(!is_empty(mts) && !cJSON_IsArray(mts), FTK_E_FORMAT, "%s: modules_to_save must be a list", where);
    static const char *const patterns[] = {"rank_pattern", "alpha_pattern", NULL};
    for (int i = 0; patterns[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, patterns[i]);
        FTK_FAIL_IF(!is_empty(v) && !cJSON_IsObject(v), FTK_E_FORMAT, "%s: %s must be an object", where, patterns[i]);
    }
    return FTK_OK;
}

/* "base_model.model.<module>.lora_A.weight" -> module, ab = 0 (A) or 1 (B); 0 if not that shape. */
static int split_name(const char *name, char *module, size_t cap, int *ab)
{
    static const char *const suffix[2] = {".lora_A.weight", ".lora_B.weight"};
    size_t n = strlen(name), p = strlen(PEFT_PREFIX);
    if (n <= p || strncmp(name, PEFT_PREFIX, p))
        return 0;
    for (int k = 0; k < 2; k++) {
        size_t s = strlen(suffix[k]);
        if (n > p + s && !strcmp(name + n - s, suffix[k]) && n - s - p < cap) {
            memcpy(module, name + p, n - s - p);
            module[n - s - p] = '\0';
            *ab = k;
            return 1;
        }
    }
    return 0;
}

static ftk_status add_saved(struct merge_adapter *a, const char *path, const char *name, const struct ftk_tensor *t)
{
    FTK_FAIL_IF(!merge_is_float(t->dtype), FTK_E_FORMAT, "%s: %s (modules_to_save) must be a float tensor", path, name);
    struct merge_saved *s = &a->saved[a->n_saved++];
    s->t = t;
    FTK_FAIL_IF(!(s->name = strdup(name + strlen(PEFT_PREFIX))), FTK_E_NOMEM, "out of memory");
    return FTK_OK;
}

static ftk_status add_half(struct merge_adapter *a, const char *path, const char *name, const char *module, int ab,
                           const struct ftk_tensor *t)
{
    FTK_FAIL_IF(t->ndim != 2 || !merge_is_float(t->dtype), FTK_E_FORMAT, "%s: %s must be a 2-D float tensor", path, name);
    struct merge_pair *p = NULL;
    for (size_t k = 0; k < a->n_pairs && !p; k++)
        if (!strcmp(a->pairs[k].module, module))
            p = &a->pairs[k];
    if (!p) {
        p = &a->pairs[a->n_pairs++];
        FTK_FAIL_IF(!(p->module = strdup(module)), FTK_E_NOMEM, "out of memory");
    }
    if (ab)
        p->B = t;
    else
        p->A = t;
    return FTK_OK;
}

/* Each pair's rank (from its tensors) against r or rank_pattern, and its scale with lora_alpha
 * or alpha_pattern (peft LoraModel._create_and_replace, LoraLayer.update_layer). */
static ftk_status pair_scales(struct merge_adapter *a, const char *path, const char *where)
{
    const cJSON *c = a->cfg;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(c, "r");
    const cJSON *al = cJSON_GetObjectItemCaseSensitive(c, "lora_alpha");
    double r0 = cJSON_IsNumber(r) ? r->valuedouble : 8, alpha0 = cJSON_IsNumber(al) ? al->valuedouble : 8;   /* LoraConfig defaults */
    FTK_FAIL_IF(r0 < 1 || r0 != floor(r0), FTK_E_FORMAT, "%s: r must be a positive integer", where);
    int rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "use_rslora"));
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(c, "rank_pattern"), *ap = cJSON_GetObjectItemCaseSensitive(c, "alpha_pattern");
    char *rps = is_empty(rp) ? NULL : cJSON_PrintUnformatted(rp), *aps = is_empty(ap) ? NULL : cJSON_PrintUnformatted(ap);
    ftk_status s = FTK_OK;
    for (size_t k = 0; k < a->n_pairs && s == FTK_OK; k++) {
        struct merge_pair *q = &a->pairs[k];
        if (!q->A || !q->B) {
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: %s has lora_%c but not lora_%c", path, q->module, q->A ? 'A' : 'B',
                              q->A ? 'B' : 'A');
            break;
        }
        double want, alpha;
        if ((s = ftk_peft_pattern(rps, "rank_pattern", q->module, r0, &want)) != FTK_OK ||
            (s = ftk_peft_pattern(aps, "alpha_pattern", q->module, alpha0, &alpha)) != FTK_OK)
            break;
        int64_t ra = q->A->shape[0], rb = q->B->shape[1];
        if (ra != rb || (double)ra != want)
            s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__,
                              "%s: %s: lora_A has rank %" PRId64 ", lora_B %" PRId64 ", adapter_config.json says r = %g%s", path, q->module,
                              ra, rb, want, want != r0 ? " (rank_pattern)" : "");
        q->scale = rslora ? alpha / sqrt(want) : alpha / want;
    }
    free(rps);
    free(aps);
    return s;
}

ftk_status merge_adapter_open(struct merge_adapter *a, const char *path)
{
    FTK_TRY(ftk_source_open(path, &a->src));
    char where[1200], *text;
    size_t len;
    snprintf(where, sizeof where, "%s/adapter_config.json", path);
    FTK_TRY(ftk_source_read(a->src, "adapter_config.json", &text, &len));
    a->cfg = cJSON_ParseWithLength(text, len);
    free(text);
    FTK_FAIL_IF(!cJSON_IsObject(a->cfg), FTK_E_FORMAT, "%s: not a JSON object", where);
    FTK_TRY(check_config(a->cfg, where));
    a->plugin = needs_plugin(a->cfg);
    if (a->plugin)
        return FTK_OK;
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(a->cfg, "modules_to_save");

    FTK_TRY(ftk_st_model_open(a->src, "adapter_model", &a->st));
    size_t n = ftk_st_model_count(a->st);
    a->pairs = calloc(n ? n : 1, sizeof *a->pairs);
    a->saved = calloc(n ? n : 1, sizeof *a->saved);
    FTK_FAIL_IF(!a->pairs || !a->saved, FTK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const struct ftk_tensor *t = ftk_st_model_at(a->st, i, &name);
        char module[512];
        int ab;
        if (!split_name(name, module, sizeof module, &ab)) {
            FTK_FAIL_IF(strncmp(name, PEFT_PREFIX, strlen(PEFT_PREFIX)) || !cJSON_IsArray(mts) || !saved_module(mts, name),
                        FTK_E_UNSUPPORTED,
                        "%s: tensor \"%s\" is neither a LoRA A/B weight (base_model.model.<module>.lora_A.weight) nor in "
                        "modules_to_save: cannot merge it",
                        path, name);
            FTK_TRY(add_saved(a, path, name, t));
            continue;
        }
        int hit;
        FTK_TRY(peft_module_targeted(a->cfg, module, !strcmp(module, "lm_head"), &hit));
        FTK_FAIL_IF(!hit, FTK_E_MISMATCH, "%s: %s is not among adapter_config.json's target_modules (less exclude_modules)", path,
                    name);
        FTK_TRY(add_half(a, path, name, module, ab, t));
    }
    FTK_FAIL_IF(a->n_pairs == 0 && a->n_saved == 0, FTK_E_FORMAT, "%s: adapter_model has no LoRA weights", path);
    return pair_scales(a, path, where);
}
