/* libcore/model_save.c: writing a model in HuggingFace layout (full fine-tuning checkpoints,
 * and merged adapters): model.safetensors one tensor at a time in the requested dtype, plus the
 * source directory's config, generation config and tokenizer files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/fileio.h"
#include "ftk/safetensors.h"
#include "model-impl.h"

struct save_ctx {
    struct ftk_model *m;
    struct ftk_param **p;     /* the tensors written, in order */
    enum ftk_dtype dtype;
    int merge;
    float *host;
};

static ftk_status fill(void *arg, size_t i, void *dst, size_t nbytes)
{
    struct save_ctx *c = arg;
    struct ftk_param *p = c->p[i];
    FTK_TRY(c->m->be->to_host(c->m->ctx, c->host, p->w, (size_t)p->numel * sizeof(float)));
    if (c->merge && c->m->peft && FTK_PLUGIN_SLOT(c->m->peft->pl, merge))
        for (size_t s = 0; s < c->m->n_sites; s++) {
            const struct ftk_site *site = &c->m->sites[s];
            const struct ftk_param *w = site->layer < 0 ? c->m->lm_head : c->m->layers[site->layer].lin[site->kind];
            if (w == p && ftk_peft_hooked(c->m->peft, site->layer, site->kind))
                FTK_TRY(c->m->peft->pl->merge(c->m->peft, site, c->host));
        }
    (void)nbytes;
    return ftk_convert_from_f32(dst, c->dtype, c->host, (size_t)p->numel);
}

ftk_status ftk_model_save(struct ftk_model *m, const char *src_path, const char *dir, enum ftk_dtype dtype, int merge)
{
    /* a plugin with its own parameters and no merge slot (prefix tuning, ...) would be dropped */
    FTK_FAIL_IF(merge && m->peft && m->n_extra && !FTK_PLUGIN_SLOT(m->peft->pl, merge), FTK_E_UNSUPPORTED,
                "peft \"%s\" cannot be merged into the weights: save its adapter instead", m->peft->pl->name);
    FTK_TRY(ftk_mkdirs(dir));
    struct ftk_st_entry *e = calloc(m->n_params, sizeof *e);
    struct ftk_param **order = calloc(m->n_params, sizeof *order);
    int64_t biggest = 0;
    size_t n = 0;
    for (size_t i = 0; i < m->n_params; i++) {
        struct ftk_param *p = &m->params[i];
        if (!e || !order)
            break;
        e[n] = (struct ftk_st_entry){.name = p->name, .dtype = dtype, .ndim = p->ndim, .shape = {p->shape[0], p->shape[1]}};
        order[n++] = p;
        if (p->numel > biggest)
            biggest = p->numel;
    }
    struct save_ctx c = {m, order, dtype, merge, malloc((size_t)(biggest ? biggest : 1) * sizeof(float))};
    ftk_status s = e && order && c.host ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    struct ftk_message meta;
    ftk_message_init(&meta);
    if (s == FTK_OK)
        s = ftk_message_set_meta(&meta, "format", "pt");
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (s == FTK_OK)
        s = ftk_st_write_streaming(path, &meta, e, n, fill, &c);
    ftk_message_free(&meta);
    free(c.host);
    free(e);
    free(order);
    FTK_TRY(s);
    /* config and tokenizer files travel with the weights */
    struct ftk_source *src;
    FTK_TRY(ftk_source_open(src_path, &src));
    static const char *files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                  "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", NULL};
    for (int i = 0; files[i] && s == FTK_OK; i++) {
        char *data;
        size_t len;
        if (!ftk_source_exists(src, files[i]))
            continue;
        if ((s = ftk_source_read(src, files[i], &data, &len)) != FTK_OK)
            break;
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        s = ftk_file_write_atomic(path, data, len);
        free(data);
    }
    ftk_source_close(src);
    return s;
}
