/* libcore/model.c: loading a Llama-family model into backend memory, the parameter table, and
 * the PEFT instance that plugins see (ftk/model.h, ftk/plugin.h). Forward and backward are in
 * model_run.c. */
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/fileio.h"
#include "ftk/safetensors.h"
#include "model-impl.h"

static const char *lin_names[FTK_LIN_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                               "gate_proj", "up_proj", "down_proj", "lm_head"};

const char *ftk_linear_name(enum ftk_linear k) { return (unsigned)k < FTK_LIN_COUNT ? lin_names[k] : "?"; }

/* Appends a base parameter to the table (weights allocated later in one arena). */
static struct ftk_param *add_base(struct ftk_param *tab, size_t *n, const char *name, int ndim, int64_t d0, int64_t d1)
{
    struct ftk_param *p = &tab[(*n)++];
    memset(p, 0, sizeof *p);
    p->name = strdup(name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 1;
    p->numel = d0 * (ndim > 1 ? d1 : 1);
    p->decay = ndim > 1;   /* HF Trainer: no decay on biases and norm weights */
    p->base = 1;
    p->lr_scale = 1.0f;
    return p;
}

/* The base model's parameter table in HF names, with per-layer pointers. */
static ftk_status build_table(struct ftk_model *m)
{
    const struct ftk_model_config *c = &m->cfg;
    size_t cap = 3 + (size_t)c->L * 20;
    m->params = calloc(cap, sizeof *m->params);
    m->layers = calloc((size_t)c->L, sizeof *m->layers);
    FTK_FAIL_IF(!m->params || !m->layers, FTK_E_NOMEM, "out of memory");
    size_t n = 0;
    char nm[160];
    int64_t q = c->H * c->D, kv = c->Hkv * c->D;
    int64_t out[7] = {q, kv, kv, c->C, c->F, c->F, c->C}, in[7] = {c->C, c->C, c->C, q, c->C, c->C, c->F};
    m->wte = add_base(m->params, &n, "model.embed_tokens.weight", 2, c->V, c->C);
    for (int64_t l = 0; l < c->L; l++) {
        struct layer_w *lw = &m->layers[l];
        snprintf(nm, sizeof nm, "model.layers.%lld.input_layernorm.weight", (long long)l);
        lw->ln1 = add_base(m->params, &n, nm, 1, c->C, 0);
        for (int k = 0; k < 7; k++) {
            const char *grp = k < 4 ? "self_attn" : "mlp";
            snprintf(nm, sizeof nm, "model.layers.%lld.%s.%s.weight", (long long)l, grp, lin_names[k]);
            lw->lin[k] = add_base(m->params, &n, nm, 2, out[k], in[k]);
            int has_bias = k < 3 ? c->qkv_bias : k == 3 ? c->o_bias : c->mlp_bias;
            if (has_bias) {
                snprintf(nm, sizeof nm, "model.layers.%lld.%s.%s.bias", (long long)l, grp, lin_names[k]);
                lw->bias[k] = add_base(m->params, &n, nm, 1, out[k], 0);
            }
        }
        if (c->qk_norm) {
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.q_norm.weight", (long long)l);
            lw->qn = add_base(m->params, &n, nm, 1, c->D, 0);
            snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.k_norm.weight", (long long)l);
            lw->kn = add_base(m->params, &n, nm, 1, c->D, 0);
        }
        snprintf(nm, sizeof nm, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
        lw->ln2 = add_base(m->params, &n, nm, 1, c->C, 0);
    }
    m->norm = add_base(m->params, &n, "model.norm.weight", 1, c->C, 0);
    m->lm_head = c->tie_word_embeddings ? m->wte : add_base(m->params, &n, "lm_head.weight", 2, c->V, c->C);
    m->n_params = n;
    for (size_t i = 0; i < n; i++)
        FTK_FAIL_IF(!m->params[i].name, FTK_E_NOMEM, "out of memory");
    return FTK_OK;
}

/* Sites: every linear of every layer, then lm_head. */
static ftk_status build_sites(struct ftk_model *m)
{
    const struct ftk_model_config *c = &m->cfg;
    m->n_sites = (size_t)c->L * 7 + 1;
    m->sites = calloc(m->n_sites, sizeof *m->sites);
    m->site_names = calloc(m->n_sites, sizeof *m->site_names);
    FTK_FAIL_IF(!m->sites || !m->site_names, FTK_E_NOMEM, "out of memory");
    size_t i = 0;
    for (int64_t l = 0; l < c->L; l++)
        for (int k = 0; k < 7; k++, i++) {
            snprintf(m->site_names[i], sizeof m->site_names[i], "model.layers.%lld.%s.%s", (long long)l,
                     k < 4 ? "self_attn" : "mlp", lin_names[k]);
            const struct ftk_param *w = m->layers[l].lin[k];
            m->sites[i] = (struct ftk_site){(int)l, (enum ftk_linear)k, w->shape[1], w->shape[0], m->site_names[i]};
        }
    snprintf(m->site_names[i], sizeof m->site_names[i], "lm_head");
    m->sites[i] = (struct ftk_site){-1, FTK_LIN_LM_HEAD, c->C, c->V, m->site_names[i]};
    return FTK_OK;
}

static ftk_status load_weights(struct ftk_model *m, struct ftk_source *src)
{
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "model", &st));
    size_t total = 0;
    int64_t biggest = 0;
    for (size_t i = 0; i < m->n_params; i++) {
        total += (size_t)m->params[i].numel;
        if (m->params[i].numel > biggest)
            biggest = m->params[i].numel;
    }
    float *arena = NULL, *host = malloc((size_t)biggest * sizeof(float));
    ftk_status s = host ? m->be->alloc(m->ctx, total * sizeof(float), (void **)&arena)
                        : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    size_t off = 0;
    for (size_t i = 0; i < m->n_params && s == FTK_OK; i++) {
        struct ftk_param *p = &m->params[i];
        p->w = arena + off;
        off += (size_t)p->numel;
        const struct ftk_tensor *t = ftk_st_model_find(st, p->name);
        if (!t) {
            s = ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "%s: weight \"%s\" missing from the checkpoint",
                              ftk_source_path(src), p->name);
            break;
        }
        int shape_ok = t->ndim == p->ndim && t->shape[0] == p->shape[0] && (p->ndim == 1 || t->shape[1] == p->shape[1]);
        if (!shape_ok) {
            s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: weight \"%s\" has shape [%lld%s%lld], config.json implies [%lld,%lld]",
                              ftk_source_path(src), p->name, (long long)t->shape[0], t->ndim > 1 ? "," : "",
                              t->ndim > 1 ? (long long)t->shape[1] : 0LL, (long long)p->shape[0], (long long)p->shape[1]);
            break;
        }
        if ((s = ftk_st_model_read_f32(st, p->name, host, p->numel)) == FTK_OK)
            s = m->be->to_device(m->ctx, p->w, host, (size_t)p->numel * sizeof(float));
    }
    free(host);
    ftk_st_model_close(st);
    if (s != FTK_OK && arena) {
        m->be->free(m->ctx, arena);
        for (size_t i = 0; i < m->n_params; i++)
            m->params[i].w = NULL;
    }
    return s;
}

/* transformers 5 ties lm_head to embed_tokens (tie_word_embeddings) only when the checkpoint
 * does not hold a different lm_head.weight: a stored head that differs stays its own matrix. */
static ftk_status untie_if_stored(struct ftk_model *m, struct ftk_source *src)
{
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "model", &st));
    const struct ftk_tensor *h = ftk_st_model_find(st, "lm_head.weight"), *e = ftk_st_model_find(st, "model.embed_tokens.weight");
    if (h && e && h->dtype == e->dtype && h->nbytes == e->nbytes && memcmp(h->data, e->data, h->nbytes) != 0)
        m->cfg.tie_word_embeddings = 0;
    else if (h && e && (h->dtype != e->dtype || h->nbytes != e->nbytes))
        m->cfg.tie_word_embeddings = 0;   /* stored otherwise: not the same matrix either */
    ftk_st_model_close(st);
    return FTK_OK;
}

ftk_status ftk_model_load(const char *path, const struct ftk_backend *be, void *ctx, struct ftk_model **out)
{
    struct ftk_source *src;
    FTK_TRY(ftk_source_open(path, &src));
    struct ftk_model *m = calloc(1, sizeof *m);
    ftk_status s = m ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s == FTK_OK) {
        m->be = be;
        m->ctx = ctx;
        m->adapter_on = 1;
        s = ftk_model_config_load(src, &m->cfg);
    }
    if (s == FTK_OK && m->cfg.tie_word_embeddings)
        s = untie_if_stored(m, src);
    if (s == FTK_OK)
        s = build_table(m);
    if (s == FTK_OK)
        s = build_sites(m);
    if (s == FTK_OK)
        s = load_weights(m, src);
    ftk_source_close(src);
    if (s != FTK_OK) {
        ftk_model_free(m);
        return s;
    }
    *out = m;
    return FTK_OK;
}

void ftk_model_free(struct ftk_model *m)
{
    if (!m)
        return;
    if (m->params && m->n_params && m->params[0].w)
        m->be->free(m->ctx, m->params[0].w);   /* the weight arena starts at the first weight */
    for (size_t i = 0; i < m->n_params; i++) {
        free(m->params[i].name);
        if (m->params[i].g)
            m->be->free(m->ctx, m->params[i].g);
    }
    for (size_t i = 0; i < m->n_extra; i++) {
        free(m->extra[i].name);
        m->be->free(m->ctx, m->extra[i].w);
        m->be->free(m->ctx, m->extra[i].g);
    }
    if (m->act_arena)
        m->be->free(m->ctx, m->act_arena);
    if (m->peft && FTK_PLUGIN_SLOT(m->peft->pl, release))
        m->peft->pl->release(m->peft);
    if (m->own_head)
        m->be->free(m->ctx, m->own_head);
    if (m->peft)
        free(m->peft->priv);
    free(m->peft);
    free(m->extra);
    free(m->train);
    free(m->params);
    free(m->layers);
    free(m->act);
    free(m->sites);
    free(m->site_names);
    free(m);
}

const struct ftk_model_config *ftk_model_get_config(const struct ftk_model *m) { return &m->cfg; }
struct ftk_peft *ftk_model_peft(struct ftk_model *m) { return m->peft; }

const struct ftk_backend *ftk_model_backend(const struct ftk_model *m, void **ctx)
{
    if (ctx)
        *ctx = m->ctx;
    return m->be;
}
void ftk_model_enable_adapter(struct ftk_model *m, int on) { m->adapter_on = on; }
int ftk_model_decode_exact(struct ftk_model *m)
{
    const struct ftk_peft_plugin *pl = m->peft ? ftk_peft_get_plugin(m->peft) : NULL;
    return !(m->adapter_on && pl && FTK_PLUGIN_SLOT(pl, decode_recomputes) && pl->decode_recomputes(m->peft));
}
void ftk_model_set_step(struct ftk_model *m, int64_t step) { m->step = step; }
void ftk_model_set_micro(struct ftk_model *m, int64_t micro) { m->micro = micro; }
void ftk_model_set_recompute(struct ftk_model *m, int on) { m->recompute = on; }
size_t ftk_model_n_trainable(const struct ftk_model *m) { return m->n_train; }
struct ftk_param *ftk_model_trainable(struct ftk_model *m, size_t i) { return i < m->n_train ? m->train[i] : NULL; }

struct ftk_param *ftk_model_find_param(struct ftk_model *m, const char *name)
{
    for (size_t i = 0; i < m->n_params; i++)
        if (!strcmp(m->params[i].name, name))
            return &m->params[i];
    for (size_t i = 0; i < m->n_extra; i++)
        if (!strcmp(m->extra[i].name, name))
            return &m->extra[i];
    return NULL;
}

ftk_status ftk_model_zero_grad(struct ftk_model *m)
{
    for (size_t i = 0; i < m->n_train; i++)
        FTK_TRY(m->be->zero(m->ctx, m->train[i]->g, (size_t)m->train[i]->numel * sizeof(float)));
    return FTK_OK;
}

static ftk_status push_train(struct ftk_model *m, struct ftk_param *p)
{
    if (m->n_train == m->cap_train) {
        size_t cap = m->cap_train ? 2 * m->cap_train : 64;
        struct ftk_param **t = realloc(m->train, cap * sizeof *t);
        FTK_FAIL_IF(!t, FTK_E_NOMEM, "out of memory");
        m->train = t;
        m->cap_train = cap;
    }
    m->train[m->n_train++] = p;
    return FTK_OK;
}

/* ---- the PEFT instance -------------------------------------------------------------------- */

/* Does the comma list of modules_to_save name embed_tokens or lm_head (peft: an entry the module
 * name ends with)? */
static int saves_tied_module(const char *mts)
{
    static const char *const tied[2] = {"model.embed_tokens", "lm_head"};
    for (const char *t = mts; t && *t;) {   /* each entry of the comma list, however long */
        size_t n = strcspn(t, ",");
        for (int k = 0; k < 2; k++) {
            size_t l = strlen(tied[k]);
            if (n && n <= l && !strncmp(tied[k] + l - n, t, n) && (n == l || tied[k][l - n - 1] == '.'))
                return 1;
        }
        t += n + (t[n] == ',');
    }
    return 0;
}

/* peft's modules_to_save on a model whose lm_head is its embeddings wraps the one module named:
 * its copy trains and is saved, the other keeps the original matrix (peft 0.21,
 * ensure_weight_tying false). ftk unties the same way: lm_head becomes its own copy of the
 * embeddings, a base parameter "lm_head.weight" (the table has room for it). */
static ftk_status untie_head(struct ftk_model *m)
{
    struct ftk_param *h = &m->params[m->n_params];
    *h = *m->wte;
    h->g = NULL;
    h->name = strdup("lm_head.weight");
    FTK_FAIL_IF(!h->name, FTK_E_NOMEM, "out of memory");
    size_t bytes = (size_t)h->numel * sizeof(float);
    ftk_status s = m->be->alloc(m->ctx, bytes, (void **)&h->w);
    if (s == FTK_OK)
        s = m->be->copy(m->ctx, h->w, m->wte->w, bytes);
    if (s != FTK_OK) {
        free(h->name);
        if (h->w)
            m->be->free(m->ctx, h->w);
        memset(h, 0, sizeof *h);
        return s;
    }
    m->own_head = h->w;
    m->lm_head = h;
    m->n_params++;
    m->cfg.tie_word_embeddings = 0;
    return FTK_OK;
}

ftk_status ftk_model_set_peft(struct ftk_model *m, const struct ftk_peft_plugin *pl, const struct ftk_kv *opts,
                              uint64_t seed, struct ftk_peft **out)
{
    FTK_FAIL_IF(m->peft, FTK_E_INVALID, "a PEFT method is already attached");
    FTK_FAIL_IF(m->cfg.L > 63, FTK_E_UNSUPPORTED, "models of more than 63 layers are not supported yet");
    if (m->cfg.tie_word_embeddings && saves_tied_module(ftk_kv_get(opts, "modules_to_save")))
        FTK_TRY(untie_head(m));
    struct ftk_peft *p = calloc(1, sizeof *p);
    FTK_FAIL_IF(!p, FTK_E_NOMEM, "out of memory");
    p->pl = pl;
    p->model = m;
    p->seed = seed;
    p->priv = calloc(1, pl->priv_size ? pl->priv_size : 1);
    if (!p->priv) {
        free(p);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    m->peft = p;
    ftk_status s = pl->init(p, opts);
    /* Base weights the plugin wants trained get gradients and go first, in HF order (init has
     * set up what base_trainable consults). */
    size_t n_plugin = m->n_train;
    for (size_t i = 0; i < m->n_params && s == FTK_OK; i++) {
        struct ftk_param *bp = &m->params[i];
        if (!(FTK_PLUGIN_SLOT(pl, base_trainable) && pl->base_trainable(p, bp->name)))
            continue;
        s = m->be->alloc(m->ctx, (size_t)bp->numel * sizeof(float), (void **)&bp->g);
        if (s == FTK_OK)
            s = push_train(m, bp);
    }
    if (s == FTK_OK && m->n_train > n_plugin) {   /* rotate: base ones before the plugin's */
        size_t nb = m->n_train - n_plugin;
        struct ftk_param **tmp = malloc(m->n_train * sizeof *tmp);
        if (!tmp)
            s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
        else {
            memcpy(tmp, m->train + n_plugin, nb * sizeof *tmp);
            memcpy(tmp + nb, m->train, n_plugin * sizeof *tmp);
            memcpy(m->train, tmp, m->n_train * sizeof *tmp);
            free(tmp);
        }
    }
    if (s != FTK_OK)
        return ftk_error_wrap(s, "peft \"%s\"", pl->name);
    if (out)
        *out = p;
    return FTK_OK;
}

void *ftk_peft_priv(struct ftk_peft *p) { return p->priv; }
const struct ftk_peft_plugin *ftk_peft_get_plugin(const struct ftk_peft *p) { return p->pl; }
const struct ftk_model_config *ftk_peft_config(struct ftk_peft *p) { return &p->model->cfg; }
uint64_t ftk_peft_seed(struct ftk_peft *p) { return p->seed; }

ftk_status ftk_peft_set_lr_scale(struct ftk_peft *p, const char *name, float scale)
{
    struct ftk_model *m = p->model;
    FTK_FAIL_IF(!(scale >= 0) || !isfinite(scale), FTK_E_INVALID, "parameter \"%s\": learning-rate scale %g", name, scale);
    for (size_t i = 0; i < m->n_extra; i++)
        if (!strcmp(m->extra[i].name, name)) {
            m->extra[i].lr_scale = scale;
            return FTK_OK;
        }
    return ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "no plugin parameter \"%s\"", name);
}
int64_t ftk_peft_step(struct ftk_peft *p) { return p->model->step; }
uint64_t ftk_peft_noise_step(struct ftk_peft *p)
{
    return (uint64_t)p->model->step + (uint64_t)p->model->micro * 0x9E3779B97F4A7C15ull;   /* golden-ratio stride */
}
const int32_t *ftk_peft_segments(struct ftk_peft *p) { return p->model->has_seg ? p->model->seg : NULL; }
size_t ftk_peft_n_sites(struct ftk_peft *p) { return p->model->n_sites; }
const struct ftk_site *ftk_peft_site(struct ftk_peft *p, size_t i) { return i < p->model->n_sites ? &p->model->sites[i] : NULL; }

const struct ftk_backend *ftk_peft_backend(struct ftk_peft *p, void **ctx)
{
    if (ctx)
        *ctx = p->model->ctx;
    return p->model->be;
}

ftk_status ftk_peft_attach(struct ftk_peft *p, const struct ftk_site *s)
{
    FTK_FAIL_IF(s->layer < -1 || s->layer >= p->model->cfg.L || (unsigned)s->kind >= FTK_LIN_COUNT, FTK_E_INVALID,
                "attach: bad site");
    p->attached[s->layer < 0 ? 63 : s->layer][s->kind] = 1;
    return FTK_OK;
}

int ftk_peft_hooked(const struct ftk_peft *p, int layer, enum ftk_linear k)
{
    return p && p->attached[layer < 0 ? 63 : layer][k];
}

ftk_status ftk_peft_add_param(struct ftk_peft *p, const char *name, int ndim, const int64_t *shape, int decay,
                              float **w, float **g)
{
    struct ftk_model *m = p->model;
    FTK_FAIL_IF(ndim < 1 || ndim > 2, FTK_E_INVALID, "parameter \"%s\": rank %d (1 or 2 supported)", name, ndim);
    FTK_FAIL_IF(ftk_model_find_param(m, name), FTK_E_INVALID, "parameter \"%s\" registered twice", name);
    if (m->n_extra == m->cap_extra) {
        /* The table is reallocated: trainable pointers into it are rebuilt below. */
        size_t cap = m->cap_extra ? 2 * m->cap_extra : 64;
        struct ftk_param *e = realloc(m->extra, cap * sizeof *e);
        FTK_FAIL_IF(!e, FTK_E_NOMEM, "out of memory");
        for (size_t i = 0; i < m->n_train; i++)
            if (m->train[i] >= m->extra && m->train[i] < m->extra + m->n_extra)
                m->train[i] = e + (m->train[i] - m->extra);
        m->extra = e;
        m->cap_extra = cap;
    }
    struct ftk_param *q = &m->extra[m->n_extra];
    memset(q, 0, sizeof *q);
    q->name = strdup(name);
    q->ndim = ndim;
    q->shape[0] = shape[0];
    q->shape[1] = ndim > 1 ? shape[1] : 1;
    q->numel = q->shape[0] * q->shape[1];
    q->decay = decay;
    q->lr_scale = 1.0f;
    FTK_FAIL_IF(!q->name, FTK_E_NOMEM, "out of memory");
    ftk_status s = m->be->alloc(m->ctx, (size_t)q->numel * sizeof(float), (void **)&q->w);
    if (s == FTK_OK)
        s = m->be->alloc(m->ctx, (size_t)q->numel * sizeof(float), (void **)&q->g);
    if (s != FTK_OK) {
        free(q->name);
        m->be->free(m->ctx, q->w);
        return s;
    }
    m->n_extra++;
    FTK_TRY(push_train(m, q));
    *w = q->w;
    if (g)
        *g = q->g;
    return FTK_OK;
}

float *ftk_peft_base_weight(struct ftk_peft *p, const char *hf_name, int64_t *numel)
{
    for (size_t i = 0; i < p->model->n_params; i++)
        if (!strcmp(p->model->params[i].name, hf_name)) {
            if (numel)
                *numel = p->model->params[i].numel;
            return p->model->params[i].w;
        }
    return NULL;
}

ftk_status ftk_peft_load_tensor(struct ftk_peft *p, const struct ftk_st_model *st, const char *where, const char *name,
                                int ndim, int64_t d0, int64_t d1, float *dst)
{
    const struct ftk_tensor *t = ftk_st_model_find(st, name);
    FTK_FAIL_IF(!t, FTK_E_NOTFOUND, "%s: adapter lacks %s", where, name);
    int ok = t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1);
    FTK_FAIL_IF(!ok, FTK_E_MISMATCH, "%s: %s has shape [%lld%s%lld], the model needs [%lld%s%lld] (adapter for another base, or "
                "other options?)", where, name, (long long)(t->ndim > 0 ? t->shape[0] : 0), t->ndim > 1 ? "," : "",
                (long long)(t->ndim > 1 ? t->shape[1] : 0), (long long)d0, ndim > 1 ? "," : "", (long long)(ndim > 1 ? d1 : 0));
    size_t n = (size_t)(d0 * (ndim > 1 ? d1 : 1));
    float *host = malloc(n * sizeof *host);
    FTK_FAIL_IF(!host, FTK_E_NOMEM, "out of memory");
    ftk_status s = ftk_convert_to_f32(host, t->data, t->dtype, n);
    if (s == FTK_OK)
        s = p->model->be->to_device(p->model->ctx, dst, host, n * sizeof *host);
    free(host);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "%s: %s", where, name);
    return FTK_OK;
}

ftk_status ftk_peft_write_config(const char *dir, const char *json)
{
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/adapter_config.json", dir);
    size_t n = strlen(json);
    char *text = malloc(n + 1);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    memcpy(text, json, n);
    text[n] = '\n';
    ftk_status s = ftk_file_write_atomic(path, text, n + 1);
    free(text);
    return s;
}
