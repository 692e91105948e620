/* plugins/peft/freeze.c: partial-parameter fine-tuning as LLaMA-Factory's finetuning_type
 * freeze: only the last N layers train (first |N| when N < 0), optionally only some of their
 * modules, plus extra modules outside the layers.
 * Options (LLaMA-Factory names): freeze_trainable_layers (default 2), freeze_trainable_modules
 * ("all" or a comma list of module names inside a layer, e.g. "mlp,self_attn" or "up_proj"),
 * freeze_extra_modules (comma list outside the layers, e.g. "embed_tokens,norm,lm_head"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/plugin.h"

struct freeze {
    int64_t first, last;       /* trainable layer range [first, last) */
    char modules[256];
    char extra[256];
};

static int in_list(const char *list, const char *name, const char *full)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char dotted[300];
        snprintf(dotted, sizeof dotted, ".%s.", t);
        if (!strcmp(t, name) || strstr(full, dotted))
            return 1;
    }
    return 0;
}

static ftk_status freeze_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct freeze *f = ftk_peft_priv(p);
    int64_t n, L = ftk_peft_config(p)->L;
    FTK_TRY(ftk_kv_int(o, "freeze_trainable_layers", 2, &n));
    FTK_FAIL_IF(n == 0 || llabs(n) > L, FTK_E_INVALID, "freeze_trainable_layers=%lld: the model has %lld layers",
                (long long)n, (long long)L);
    f->first = n > 0 ? L - n : 0;
    f->last = n > 0 ? L : -n;
    const char *m = ftk_kv_get(o, "freeze_trainable_modules"), *e = ftk_kv_get(o, "freeze_extra_modules");
    snprintf(f->modules, sizeof f->modules, "%s", m ? m : "all");
    snprintf(f->extra, sizeof f->extra, "%s", e ? e : "");
    return FTK_OK;
}

static int freeze_trainable(struct ftk_peft *p, const char *name)
{
    struct freeze *f = ftk_peft_priv(p);
    long long layer;
    char rest[200];
    if (sscanf(name, "model.layers.%lld.%199s", &layer, rest) == 2) {
        if (layer < f->first || layer >= f->last)
            return 0;
        return !strcmp(f->modules, "all") || in_list(f->modules, "", name);
    }
    /* outside the layers: "model.embed_tokens.weight" -> embed_tokens, "lm_head.weight" -> lm_head */
    char mod[128];
    const char *s = strncmp(name, "model.", 6) ? name : name + 6;
    snprintf(mod, sizeof mod, "%s", s);
    char *dot = strchr(mod, '.');
    if (dot)
        *dot = '\0';
    return f->extra[0] && in_list(f->extra, mod, name);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "freeze",
    .priv_size = sizeof(struct freeze),
    .init = freeze_init,
    .base_trainable = freeze_trainable,
};
