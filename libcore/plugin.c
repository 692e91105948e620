/* libcore/plugin.c: finding, opening and checking plugins; option lists; loss instances
 * (ftk/plugin.h). */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ftk/paths.h"
#include "ftk/plugin.h"

const char *ftk_kv_get(const struct ftk_kv *kv, const char *key)
{
    const char *v = NULL;
    for (; kv && kv->key; kv++)   /* the last occurrence wins, as repeated flags do */
        if (!strcmp(kv->key, key))
            v = kv->value;
    return v;
}

ftk_status ftk_kv_double(const struct ftk_kv *kv, const char *key, double def, double *out)
{
    const char *v = ftk_kv_get(kv, key);
    if (!v) {
        *out = def;
        return FTK_OK;
    }
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    FTK_FAIL_IF(end == v || *end || errno || !isfinite(d), FTK_E_INVALID, "option %s=%s: not a number", key, v);
    *out = d;
    return FTK_OK;
}

ftk_status ftk_kv_int(const struct ftk_kv *kv, const char *key, int64_t def, int64_t *out)
{
    const char *v = ftk_kv_get(kv, key);
    if (!v) {
        *out = def;
        return FTK_OK;
    }
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    FTK_FAIL_IF(end == v || *end || errno, FTK_E_INVALID, "option %s=%s: not an integer", key, v);
    *out = x;
    return FTK_OK;
}

ftk_status ftk_kv_bool(const struct ftk_kv *kv, const char *key, int def, int *out)
{
    const char *v = ftk_kv_get(kv, key);
    if (!v) {
        *out = def;
        return FTK_OK;
    }
    if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes"))
        *out = 1;
    else if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no"))
        *out = 0;
    else
        FTK_FAIL(FTK_E_INVALID, "option %s=%s: not a boolean (true/false)", key, v);
    return FTK_OK;
}

void ftk_metrics_add(struct ftk_metrics *m, const char *name, double value)
{
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->name[i], name)) {
            m->value[i] = value;
            return;
        }
    if (m->n == FTK_MAX_METRICS)
        return;
    snprintf(m->name[m->n], sizeof m->name[m->n], "%s", name);
    m->value[m->n++] = value;
}

/* Opens `kind`/NAME.so from the plugin dir, or a path, and returns the exported symbol. */
static ftk_status open_plugin(const char *kind, const char *name, const char *sym, const void **out)
{
    char path[4096];
    if (strchr(name, '/'))
        snprintf(path, sizeof path, "%s", name);
    else {
        for (const char *c = name; *c; c++)
            FTK_FAIL_IF(!(*c == '_' || *c == '-' || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9')),
                        FTK_E_INVALID, "%s plugin name \"%s\": use letters, digits, '_' and '-', or a path", kind, name);
        snprintf(path, sizeof path, "%s/%s/%s.so", ftk_plugin_dir(), kind, name);
    }
    FTK_FAIL_IF(access(path, R_OK) != 0, FTK_E_NOTFOUND, "%s plugin \"%s\" not found (%s)", kind, name, path);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);   /* never dlclose'd: its tables stay in use */
    FTK_FAIL_IF(!h, FTK_E_FORMAT, "%s plugin %s: %s", kind, path, dlerror());
    const void *s = dlsym(h, sym);
    FTK_FAIL_IF(!s, FTK_E_FORMAT, "%s plugin %s exports no %s", kind, path, sym);
    *out = s;
    return FTK_OK;
}

ftk_status ftk_plugin_load_peft(const char *name, const struct ftk_peft_plugin **out)
{
    const struct ftk_peft_plugin *p;
    FTK_TRY(open_plugin("peft", name, "ftk_peft_plugin", (const void **)&p));
    FTK_FAIL_IF(p->abi_version != FTK_PEFT_ABI, FTK_E_ABI, "peft plugin \"%s\" has ABI version %u, this libftk has %u: rebuild it",
                name, p->abi_version, FTK_PEFT_ABI);
    FTK_FAIL_IF(p->struct_size < offsetof(struct ftk_peft_plugin, init) + sizeof p->init || !p->name || !p->init,
                FTK_E_ABI, "peft plugin \"%s\": table too short or without a name and init", name);
    *out = p;
    return FTK_OK;
}

ftk_status ftk_plugin_load_loss(const char *name, const struct ftk_loss_plugin **out)
{
    const struct ftk_loss_plugin *p;
    FTK_TRY(open_plugin("loss", name, "ftk_loss_plugin", (const void **)&p));
    FTK_FAIL_IF(p->abi_version != FTK_LOSS_ABI, FTK_E_ABI, "loss plugin \"%s\" has ABI version %u, this libftk has %u: rebuild it",
                name, p->abi_version, FTK_LOSS_ABI);
    FTK_FAIL_IF(p->struct_size < offsetof(struct ftk_loss_plugin, compute) + sizeof p->compute || !p->name || !p->compute,
                FTK_E_ABI, "loss plugin \"%s\": table too short or without name and compute", name);
    *out = p;
    return FTK_OK;
}

struct ftk_loss {
    const struct ftk_loss_plugin *pl;
    void *priv;
};

void *ftk_loss_priv(struct ftk_loss *l) { return l->priv; }

ftk_status ftk_loss_create(const struct ftk_loss_plugin *pl, const struct ftk_kv *opts, struct ftk_loss **out)
{
    struct ftk_loss *l = calloc(1, sizeof *l);
    FTK_FAIL_IF(!l, FTK_E_NOMEM, "out of memory");
    l->pl = pl;
    l->priv = calloc(1, pl->priv_size ? pl->priv_size : 1);
    ftk_status s = l->priv ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s == FTK_OK && FTK_PLUGIN_SLOT(pl, init))
        s = pl->init(l, opts);
    if (s != FTK_OK) {
        ftk_loss_free(l);
        return ftk_error_wrap(s, "loss \"%s\"", pl->name);
    }
    *out = l;
    return FTK_OK;
}

void ftk_loss_free(struct ftk_loss *l)
{
    if (!l)
        return;
    free(l->priv);
    free(l);
}

int ftk_loss_is_linear(struct ftk_loss *l) { return FTK_PLUGIN_SLOT(l->pl, linear) && l->pl->linear(l); }

int ftk_loss_needs_ref(struct ftk_loss *l) { return FTK_PLUGIN_SLOT(l->pl, needs_ref) && l->pl->needs_ref(l); }
int ftk_loss_needs_kl(struct ftk_loss *l) { return FTK_PLUGIN_SLOT(l->pl, needs_kl) && l->pl->needs_kl(l); }

ftk_status ftk_loss_compute(struct ftk_loss *l, const struct ftk_loss_batch *b, double *loss, float *dlogps,
                            struct ftk_metrics *metrics)
{
    FTK_FAIL_IF(ftk_loss_needs_ref(l) && !b->ref_logps, FTK_E_INVALID,
                "loss \"%s\" needs reference log-probs: run the batches through `ftk ref-logps`, or give --ref-model",
                l->pl->name);
    ftk_status s = l->pl->compute(l, b, loss, dlogps, metrics);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "loss \"%s\"", l->pl->name);
    return FTK_OK;
}
