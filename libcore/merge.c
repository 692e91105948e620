/* libcore/merge.c: a LoRA adapter folded into its base checkpoint, one tensor at a time
 * (ftk/merge.h, docs/tools/merge-lora.md). Other mergeable methods (DoRA, (IA)^3, AdaLoRA, diff
 * pruning) go through their plugin's merge slot on the model loaded with the adapter.
 *
 * The output is what transformers' save_pretrained writes after peft's merge_and_unload:
 * model.safetensors, or shards model-0000N-of-0000M.safetensors split as huggingface_hub's
 * split_torch_state_dict_into_shards does, with model.safetensors.index.json; config.json with
 * its dtype set to the output's; generation and tokenizer files copied. Everything is written
 * into a temporary sibling of the output and moved into place (or packed into the archive) only
 * when complete. Shapes: O out features, I in features, r rank. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "model-impl.h"   /* before cblas.h, whose complex.h defines I */
#include <archive.h>
#include <archive_entry.h>
#include <cblas.h>
#include <cjson/cJSON.h>
#include "ftk/fileio.h"
#include "ftk/merge.h"
#include "ftk/safetensors.h"
#include "ftk/source.h"
#include "merge-impl.h"

/* Files that travel with the weights (transformers' save_pretrained + tokenizer.save_pretrained). */
static const char *const extra_files[] = {
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    NULL,
};

ftk_status ftk_parse_size(const char *s, uint64_t *out)
{
    FTK_FAIL_IF(!s || !*s, FTK_E_INVALID, "empty size");
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    FTK_FAIL_IF(errno || end == s || !(v >= 0) || !isfinite(v), FTK_E_INVALID, "size \"%s\" is not a number with a unit (5GB, 500MB)", s);
    static const struct { const char *unit; double mult; } units[] = {
        {"", 1}, {"b", 1}, {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
        {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0},
    };
    char u[8] = {0};
    size_t n = strlen(end);
    FTK_FAIL_IF(n >= sizeof u, FTK_E_INVALID, "size \"%s\": unknown unit \"%s\" (use KB, MB, GB, KiB, MiB, GiB)", s, end);
    for (size_t i = 0; i < n; i++)
        u[i] = (char)tolower((unsigned char)end[i]);
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (!strcmp(u, units[i].unit)) {
            double b = v * units[i].mult;
            FTK_FAIL_IF(b < 1 || b > 1.8e19, FTK_E_INVALID, "size \"%s\" out of range", s);
            *out = (uint64_t)b;
            return FTK_OK;
        }
    FTK_FAIL(FTK_E_INVALID, "size \"%s\": unknown unit \"%s\" (use KB, MB, GB, KiB, MiB, GiB)", s, end);
}

ftk_status ftk_parse_float_dtype(const char *s, enum ftk_dtype *out)
{
    static const struct { const char *name; enum ftk_dtype dt; } names[] = {
        {"float32", FTK_DTYPE_F32}, {"f32", FTK_DTYPE_F32}, {"fp32", FTK_DTYPE_F32}, {"float", FTK_DTYPE_F32},
        {"bfloat16", FTK_DTYPE_BF16}, {"bf16", FTK_DTYPE_BF16},
        {"float16", FTK_DTYPE_F16}, {"f16", FTK_DTYPE_F16}, {"fp16", FTK_DTYPE_F16}, {"half", FTK_DTYPE_F16},
    };
    for (size_t i = 0; s && i < sizeof names / sizeof *names; i++)
        if (!strcasecmp(s, names[i].name)) {
            *out = names[i].dt;
            return FTK_OK;
        }
    FTK_FAIL(FTK_E_INVALID, "unknown dtype \"%s\" (use float32, bfloat16 or float16)", s ? s : "");
}

static const char *torch_name(enum ftk_dtype dt)
{
    return dt == FTK_DTYPE_BF16 ? "bfloat16" : dt == FTK_DTYPE_F16 ? "float16" : "float32";
}

/* ---- the plan: which tensor goes where ------------------------------------------------------ */

struct item {
    const char *name;               /* the base's (lives with the base checkpoint) */
    const struct ftk_tensor *src;
    enum ftk_dtype dtype;           /* output */
    const struct merge_pair *lora;  /* W + s B A; NULL: copied */
    const struct ftk_tensor *saved; /* modules_to_save: this tensor replaces the base's */
    const float *trained;           /* the plugin path: a base weight the adapter trained (its
                                       modules_to_save), F32 in the loaded model */
    const struct ftk_site *site;    /* the plugin path: a site its plugin merges into */
    const struct ftk_site *bias_of; /* the plugin path: this bias is the plugin's merge_bias there */
    int zero;                       /* a bias the base lacks, zero: its config switch gives the
                                       other linears of the group one too */
    int head_copy;                  /* the untied head's original values, not the adapter's */
    int shard;
};

struct plan {
    struct item *items;
    size_t n;
    int n_shards;
    uint64_t total;
    float *w, *a, *b;               /* F32 scratch: a chunk of rows (or a whole tensor), A (r,I), B (O,r) */
    size_t w_cap;
    size_t chunk_bytes;             /* output bytes per fill() call */
    const struct item **cur;        /* fill(): the items of the shard being written */
    struct ftk_model *m;            /* the plugin path: the base with the adapter loaded */
    struct ftk_tensor *added;       /* biases the base lacks (merge_bias), after its tensors */
    char (*added_names)[160];
    size_t n_added;
    int attention_bias, mlp_bias;   /* config switches to set for them */
};

static size_t out_bytes(const struct item *it)
{
    return (size_t)ftk_tensor_numel(it->src) * ftk_dtype_size(it->dtype);
}

/* huggingface_hub split_torch_state_dict_into_shards, over the base checkpoint's order: a
 * tensor larger than the limit gets a shard of its own at once; one that would tip the running
 * shard over closes it. Shards are numbered in the order they are closed, as its list is. */
static ftk_status split_shards(struct plan *p, uint64_t limit)
{
    size_t *cur = malloc((p->n ? p->n : 1) * sizeof *cur), nc = 0;
    FTK_FAIL_IF(!cur, FTK_E_NOMEM, "out of memory");
    uint64_t size = 0;
    int k = 0;
    for (size_t i = 0; i < p->n; i++) {
        uint64_t sz = out_bytes(&p->items[i]);
        if (sz > limit) {
            p->items[i].shard = k++;
            continue;
        }
        if (nc && size + sz > limit) {
            for (size_t j = 0; j < nc; j++)
                p->items[cur[j]].shard = k;
            k++;
            nc = 0;
            size = 0;
        }
        cur[nc++] = i;
        size += sz;
    }
    for (size_t j = 0; j < nc; j++)
        p->items[cur[j]].shard = k;
    if (nc)
        k++;
    free(cur);
    p->n_shards = k;
    return FTK_OK;
}

/* ---- writing ---------------------------------------------------------------------------------- */

static ftk_status site_weight(struct ftk_model *m, const struct ftk_site *site, float *w, size_t n)
{
    const struct ftk_param *q = site->layer < 0 ? m->lm_head : m->layers[site->layer].lin[site->kind];
    FTK_FAIL_IF((size_t)q->numel != n, FTK_E_MISMATCH, "%s: %lld elements in the model, %zu in the checkpoint", q->name,
                (long long)q->numel, n);
    return m->be->to_host(m->ctx, w, q->w, n * sizeof(float));
}

/* The F32 scratch grown to n elements. */
static ftk_status scratch(struct plan *p, size_t n)
{
    if (n <= p->w_cap)
        return FTK_OK;
    float *w = realloc(p->w, n * sizeof *w);
    FTK_FAIL_IF(!w, FTK_E_NOMEM, "out of memory (a %zu-element F32 buffer)", n);
    p->w = w;
    p->w_cap = n;
    return FTK_OK;
}

/* A tensor computed whole before its rows are written (plugin merges, modules the plugin path
 * trained, biases): built in the scratch when its first rows are asked for. */
static ftk_status whole_f32(struct plan *p, const struct item *it, size_t n)
{
    const struct ftk_tensor *t = it->src;
    FTK_TRY(scratch(p, n));
    if (it->bias_of || it->zero) {    /* a bias the plugin merged, or a zero one */
        memset(p->w, 0, n * sizeof *p->w);
        int has = 1;
        if (it->bias_of)
            FTK_TRY(p->m->peft->pl->merge_bias(p->m->peft, it->bias_of, p->w, &has));
        FTK_FAIL_IF(!has, FTK_E_INVALID, "the plugin no longer has a bias there");
        return FTK_OK;
    }
    if (it->trained)
        return p->m->be->to_host(p->m->ctx, p->w, it->trained, n * sizeof *p->w);
    /* the plugin path starts from the loaded model's weight: the checkpoint's in F32, or the
     * residual a PiSSA/OLoRA init left there */
    FTK_TRY(it->site ? site_weight(p->m, it->site, p->w, n) : ftk_convert_to_f32(p->w, t->data, t->dtype, n));
    if (it->site)                     /* the method's own merge: W (O,I) += its delta, F32 */
        FTK_TRY(p->m->peft->pl->merge(p->m->peft, it->site, p->w));
    return FTK_OK;
}

/* Rows [row0, row0 + nrows) of tensor i of the shard being written: copied, converted, or
 * merged. A LoRA-merged or converted tensor is done a chunk of rows at a time, so memory stays
 * at one chunk whatever the model's largest tensor. */
static ftk_status fill_rows(struct plan *p, const struct item *it, void *dst, int64_t row0, int64_t nrows)
{
    const struct ftk_tensor *t = it->src;
    size_t n = (size_t)ftk_tensor_numel(t);
    int64_t rows = t->ndim ? t->shape[0] : 1;
    size_t row_el = rows ? n / (size_t)rows : 0, k = (size_t)nrows * row_el, off = (size_t)row0 * row_el;
    if (it->bias_of || it->zero || it->trained || it->site) {
        if (row0 == 0)
            FTK_TRY(whole_f32(p, it, n));
        return ftk_convert_from_f32(dst, it->dtype, p->w + off, k);
    }
    /* modules_to_save: the adapter's rows in place of the base's (often the largest tensors,
     * embeddings and head), by rows like the rest */
    const struct ftk_tensor *src = it->saved ? it->saved : t;
    const struct merge_pair *lora = it->saved ? NULL : it->lora;
    size_t esz = ftk_dtype_size(src->dtype);
    const char *rows_at = (const char *)src->data + off * esz;
    if ((!lora && src->dtype == it->dtype) || !merge_is_float(src->dtype)) {   /* unchanged: bit for bit */
        memcpy(dst, rows_at, k * esz);
        return FTK_OK;
    }
    FTK_TRY(scratch(p, k));
    FTK_TRY(ftk_convert_to_f32(p->w, rows_at, src->dtype, k));
    if (lora) {
        const struct merge_pair *q = lora;
        int64_t O = t->shape[0], In = t->shape[1], r = q->A->shape[0];
        if (row0 == 0) {
            FTK_TRY(ftk_convert_to_f32(p->a, q->A->data, q->A->dtype, (size_t)(r * In)));
            FTK_TRY(ftk_convert_to_f32(p->b, q->B->data, q->B->dtype, (size_t)(O * r)));
        }
        /* W (rows,I) += scale * B (rows,r) A (r,I): peft's get_delta_weight added to the weight, F32 */
        if (nrows > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nrows, (int)In, (int)r, (float)q->scale,
                        p->b + row0 * r, (int)r, p->a, (int)In, 1.0f, p->w, (int)In);
    }
    return ftk_convert_from_f32(dst, it->dtype, p->w, k);
}

static ftk_status fill(void *arg, size_t i, void *dst, int64_t row0, int64_t nrows)
{
    struct plan *p = arg;
    ftk_status s = fill_rows(p, p->cur[i], dst, row0, nrows);
    return s == FTK_OK ? FTK_OK : ftk_error_wrap(s, "tensor \"%s\"", p->cur[i]->name);
}

static ftk_status write_shards(struct plan *p, const char *dir)
{
    struct ftk_st_entry *e = calloc(p->n ? p->n : 1, sizeof *e);
    p->cur = calloc(p->n ? p->n : 1, sizeof *p->cur);
    struct ftk_message meta;
    ftk_message_init(&meta);
    ftk_status s = e && p->cur ? ftk_message_set_meta(&meta, "format", "pt") : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    for (int sh = 0; sh < p->n_shards && s == FTK_OK; sh++) {
        size_t n = 0;
        for (size_t i = 0; i < p->n; i++) {
            const struct item *it = &p->items[i];
            if (it->shard != sh)
                continue;
            e[n] = (struct ftk_st_entry){.name = it->name, .dtype = it->dtype, .ndim = it->src->ndim};
            memcpy(e[n].shape, it->src->shape, sizeof e[n].shape);
            p->cur[n++] = it;
        }
        char path[4400];
        if (p->n_shards == 1)
            snprintf(path, sizeof path, "%s/model.safetensors", dir);
        else
            snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dir, sh + 1, p->n_shards);
        s = ftk_st_write_rows(path, &meta, e, n, fill, p, p->chunk_bytes);
    }
    ftk_message_free(&meta);
    free(e);
    free(p->cur);
    p->cur = NULL;
    return s;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(const struct item *const *)a)->name, (*(const struct item *const *)b)->name);
}

/* model.safetensors.index.json as transformers writes it: metadata.total_size and the
 * weight_map with sorted keys. */
static ftk_status write_index(const struct plan *p, const char *dir)
{
    const struct item **sorted = malloc((p->n ? p->n : 1) * sizeof *sorted);
    FTK_FAIL_IF(!sorted, FTK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < p->n; i++)
        sorted[i] = &p->items[i];
    qsort(sorted, p->n, sizeof *sorted, by_name);
    char *json = NULL;
    size_t cap = 0;
    FILE *f = open_memstream(&json, &cap);
    if (!f) {
        free(sorted);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    fprintf(f, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {\n", p->total);
    for (size_t i = 0; i < p->n; i++)
        fprintf(f, "    \"%s\": \"model-%05d-of-%05d.safetensors\"%s\n", sorted[i]->name, sorted[i]->shard + 1, p->n_shards,
                i + 1 < p->n ? "," : "");
    fputs("  }\n}\n", f);
    fclose(f);
    free(sorted);
    char path[4400];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    ftk_status s = ftk_file_write_atomic(path, json, strlen(json));
    free(json);
    return s;
}

/* config.json with its dtype ("torch_dtype" in transformers 4, "dtype" in 5) set to the
 * output's. The text is edited in place so everything else stays byte for byte. */
/* config.json with the switches that give new biases their place (plan_biases), set in the
 * JSON object (re-printed: a rare case, so the byte-for-byte edit below is not attempted). */
static ftk_status set_bias_switches(const struct plan *p, char **out, size_t *o, const char *where)
{
    if (!p->attention_bias && !p->mlp_bias)
        return FTK_OK;
    cJSON *c = cJSON_ParseWithLength(*out, *o);
    if (!cJSON_IsObject(c)) {
        cJSON_Delete(c);
        FTK_FAIL(FTK_E_FORMAT, "%s/config.json: not a JSON object", where);
    }
    static const char *const key[2] = {"attention_bias", "mlp_bias"};
    int on[2] = {p->attention_bias, p->mlp_bias};
    for (int k = 0; k < 2; k++)
        if (on[k]) {
            cJSON_DeleteItemFromObjectCaseSensitive(c, key[k]);
            cJSON_AddBoolToObject(c, key[k], 1);
        }
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    free(*out);
    *out = text;
    *o = strlen(text);
    return FTK_OK;
}

static ftk_status write_config(struct ftk_source *base, const char *dir, enum ftk_dtype dt, const struct plan *p)
{
    char *text;
    size_t len;
    FTK_TRY(ftk_source_read(base, "config.json", &text, &len));
    const char *want = torch_name(dt);
    size_t cap = len + 64;
    char *out = malloc(cap);
    if (!out) {
        free(text);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    size_t o = 0;
    int found = 0;
    for (size_t i = 0; i < len;) {
        const char *keys[2] = {"\"torch_dtype\"", "\"dtype\""};
        size_t kl = 0;
        for (int k = 0; k < 2 && !kl; k++)
            if (!strncmp(text + i, keys[k], strlen(keys[k])))
                kl = strlen(keys[k]);
        size_t j = i + kl, q0 = 0, q1 = 0;
        if (kl) {   /* "key" ws : ws "value" */
            while (j < len && isspace((unsigned char)text[j]))
                j++;
            if (j < len && text[j] == ':') {
                j++;
                while (j < len && isspace((unsigned char)text[j]))
                    j++;
                if (j < len && text[j] == '"') {
                    q0 = j + 1;
                    for (q1 = q0; q1 < len && text[q1] != '"' && text[q1] != '\\'; q1++)
                        ;
                }
            }
        }
        if (q0 && q1 < len && text[q1] == '"' && q1 - q0 < 16 && o + (q0 - i) + strlen(want) + (len - q1) < cap) {
            memcpy(out + o, text + i, q0 - i);
            o += q0 - i;
            memcpy(out + o, want, strlen(want));
            o += strlen(want);
            i = q1;
            found = 1;
            continue;
        }
        if (o + 1 >= cap) {
            char *g = realloc(out, cap *= 2);
            if (!g) {
                free(out);
                free(text);
                FTK_FAIL(FTK_E_NOMEM, "out of memory");
            }
            out = g;
        }
        out[o++] = text[i++];
    }
    free(text);
    ftk_status s = FTK_OK;
    if (!found) {   /* none, or not a string ("torch_dtype": null): set torch_dtype, once */
        cJSON *c = cJSON_ParseWithLength(out, o);
        free(out);
        out = NULL;
        if (!cJSON_IsObject(c)) {
            cJSON_Delete(c);
            FTK_FAIL(FTK_E_FORMAT, "%s/config.json: not a JSON object", ftk_source_path(base));
        }
        const char *key = cJSON_GetObjectItemCaseSensitive(c, "dtype") ? "dtype" : "torch_dtype";
        cJSON_DeleteItemFromObjectCaseSensitive(c, key);
        cJSON_AddStringToObject(c, key, want);
        out = cJSON_Print(c);
        cJSON_Delete(c);
        FTK_FAIL_IF(!out, FTK_E_NOMEM, "out of memory");
        o = strlen(out);
    }
    if ((s = set_bias_switches(p, &out, &o, ftk_source_path(base))) != FTK_OK) {
        free(out);
        return s;
    }
    char path[4400];
    snprintf(path, sizeof path, "%s/config.json", dir);
    s = ftk_file_write_atomic(path, out, o);
    free(out);
    return s;
}

static ftk_status copy_extras(struct ftk_source *base, const char *dir)
{
    for (int i = 0; extra_files[i]; i++) {
        if (!ftk_source_exists(base, extra_files[i]))
            continue;
        char *data, path[4400];
        size_t len;
        FTK_TRY(ftk_source_read(base, extra_files[i], &data, &len));
        snprintf(path, sizeof path, "%s/%s", dir, extra_files[i]);
        ftk_status s = ftk_file_write_atomic(path, data, len);
        free(data);
        FTK_TRY(s);
    }
    return FTK_OK;
}

/* ---- output: a directory or an archive ------------------------------------------------------ */

static void rm_flat(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char p[4400];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

enum out_kind { OUT_DIR, OUT_TAR, OUT_TAR_ZST, OUT_TAR_GZ, OUT_ZIP };

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n > m && !strcasecmp(s + n - m, suf);
}

static enum out_kind out_kind_of(const char *path, size_t *ext_len)
{
    static const struct { const char *ext; enum out_kind k; } ex[] = {
        {".tar.zst", OUT_TAR_ZST}, {".tzst", OUT_TAR_ZST}, {".tar.gz", OUT_TAR_GZ}, {".tgz", OUT_TAR_GZ},
        {".tar", OUT_TAR}, {".zip", OUT_ZIP},
    };
    for (size_t i = 0; i < sizeof ex / sizeof *ex; i++)
        if (ends_with(path, ex[i].ext)) {
            *ext_len = strlen(ex[i].ext);
            return ex[i].k;
        }
    *ext_len = 0;
    return OUT_DIR;
}

static int by_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Packs the files of `dir` into archive `path` (written to a temporary name, then renamed),
 * under one top-level folder `top` so that extracting it makes one directory. */
static ftk_status pack_archive(const char *dir, const char *path, enum out_kind kind, const char *top)
{
    char **names = NULL;
    size_t n = 0, cap = 0;
    DIR *d = opendir(dir);
    FTK_FAIL_IF(!d, FTK_E_IO, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    int oom = 0;
    while ((e = readdir(d)) && !oom)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            if (n == cap) {
                char **g = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *g);
                if (!g) {
                    oom = 1;
                    break;
                }
                names = g;
            }
            if (!(names[n] = strdup(e->d_name)))
                oom = 1;
            else
                n++;
        }
    closedir(d);
    if (oom) {
        for (size_t i = 0; i < n; i++)
            free(names[i]);
        free(names);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    if (n)
        qsort(names, n, sizeof *names, by_str);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    struct archive *a = archive_write_new();
    ftk_status s = a ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    int r = ARCHIVE_OK;
    if (s == FTK_OK) {
        r = kind == OUT_ZIP ? archive_write_set_format_zip(a) : archive_write_set_format_pax_restricted(a);
        if (r == ARCHIVE_OK && kind == OUT_TAR_ZST)
            r = archive_write_add_filter_zstd(a);
        if (r == ARCHIVE_OK && kind == OUT_TAR_GZ)
            r = archive_write_add_filter_gzip(a);
        if (r == ARCHIVE_OK)
            r = archive_write_open_filename(a, tmp);
        if (r != ARCHIVE_OK)
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", path, archive_error_string(a));
    }
    size_t bufsz = (size_t)1 << 20;
    char *buf = malloc(bufsz);
    if (s == FTK_OK && !buf)
        s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    for (size_t i = 0; i < n && s == FTK_OK; i++) {
        char src[4400], name[4400];
        snprintf(src, sizeof src, "%s/%s", dir, names[i]);
        snprintf(name, sizeof name, "%s/%s", top, names[i]);
        struct stat sb;
        FILE *f = fopen(src, "rb");
        if (!f || fstat(fileno(f), &sb) != 0) {
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", src, strerror(errno));
            if (f)
                fclose(f);
            break;
        }
        struct archive_entry *ae = archive_entry_new();
        archive_entry_set_pathname(ae, name);
        archive_entry_set_size(ae, sb.st_size);
        archive_entry_set_filetype(ae, AE_IFREG);
        archive_entry_set_perm(ae, 0644);
        archive_entry_set_mtime(ae, sb.st_mtime, 0);
        if (archive_write_header(a, ae) != ARCHIVE_OK)
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", path, archive_error_string(a));
        size_t got;
        while (s == FTK_OK && (got = fread(buf, 1, bufsz, f)) > 0)
            if (archive_write_data(a, buf, got) != (la_ssize_t)got)
                s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", path, archive_error_string(a));
        if (s == FTK_OK && ferror(f))
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: read failed", src);
        fclose(f);
        archive_entry_free(ae);
    }
    free(buf);
    if (a) {
        if (archive_write_close(a) != ARCHIVE_OK && s == FTK_OK)
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", path, archive_error_string(a));
        archive_write_free(a);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    int fd = s == FTK_OK ? open(tmp, O_RDONLY) : -1;   /* the archive on disk before it gets its name */
    if (s == FTK_OK && (fd < 0 || fsync(fd) != 0))
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: cannot sync: %s", tmp, strerror(errno));
    if (fd >= 0)
        close(fd);
    if (s == FTK_OK && rename(tmp, path) != 0)
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: cannot rename into place: %s", path, strerror(errno));
    if (s == FTK_OK)
        ftk_fsync_parent(path);
    if (s != FTK_OK)
        unlink(tmp);
    return s;
}

/* An output directory may be new or empty: stale shards of an earlier merge beside a new
 * index would be read in its place. */
static ftk_status check_output_dir(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return FTK_OK;
    FTK_FAIL_IF(!S_ISDIR(sb.st_mode), FTK_E_INVALID, "%s exists and is not a directory", path);
    DIR *d = opendir(path);
    FTK_FAIL_IF(!d, FTK_E_IO, "%s: %s", path, strerror(errno));
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)) && empty)
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    FTK_FAIL_IF(!empty, FTK_E_INVALID, "output directory %s exists and is not empty (remove it or choose another)", path);
    return FTK_OK;
}

/* ---- the merge ---------------------------------------------------------------------------- */

static ftk_status base_dtype(struct ftk_source *base, enum ftk_dtype *out)
{
    char *text;
    size_t len;
    FTK_TRY(ftk_source_read(base, "config.json", &text, &len));
    cJSON *c = cJSON_ParseWithLength(text, len);
    free(text);
    FTK_FAIL_IF(!cJSON_IsObject(c), FTK_E_FORMAT, "%s/config.json: not a JSON object", ftk_source_path(base));
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(c, "torch_dtype");
    if (!cJSON_IsString(d))
        d = cJSON_GetObjectItemCaseSensitive(c, "dtype");
    ftk_status s = FTK_OK;
    *out = FTK_DTYPE_F32;   /* transformers' default when config.json names none */
    if (cJSON_IsString(d) && ftk_parse_float_dtype(d->valuestring, out) != FTK_OK)
        s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "%s/config.json: dtype \"%s\" (give --dtype)",
                          ftk_source_path(base), d->valuestring);
    cJSON_Delete(c);
    return s;
}

static struct item *find_item(struct plan *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (!strcmp(p->items[i].name, name))
            return &p->items[i];
    return NULL;
}

/* modules_to_save: the adapter's copy of a whole module replaces the base tensor. A copy of
 * lm_head on a model that ties it to embed_tokens would untie them: refused. */
/* A tied base (no lm_head.weight) whose head the adapter untied: an "lm_head.weight" item shaped
 * as the embeddings `emb`, appended; the caller says where its values come from. transformers 5
 * (and ftk) load a stored head that differs from the embeddings as its own matrix. */
/* A tensor the base checkpoint lacks, appended to the plan after the base's (NULL: out of
 * memory). `src` gives its shape (its data only when the caller sets nothing else). */
static struct item *append_item(struct plan *p, const char *name, const struct ftk_tensor *src, enum ftk_dtype dt)
{
    struct item *items = realloc(p->items, (p->n + 1) * sizeof *items);
    if (!items)
        return NULL;
    p->items = items;
    struct item *it = &p->items[p->n++];
    memset(it, 0, sizeof *it);
    it->name = name;
    it->src = src;
    it->dtype = dt;
    p->total += out_bytes(it);
    return it;
}

static struct item *add_head(struct plan *p, const struct ftk_tensor *emb, enum ftk_dtype dt)
{
    return append_item(p, "lm_head.weight", emb, dt);   /* dt: the embeddings' output dtype */
}

/* modules_to_save: the adapter's copy of a whole module replaces the base tensor. On a tied base
 * (peft wraps only the module it names; the other keeps the shared matrix) a saved embed_tokens
 * gets lm_head.weight = the original embeddings beside it, and a saved lm_head becomes
 * lm_head.weight, the embeddings staying. */
static ftk_status plan_saved(struct plan *p, const struct merge_adapter *ad, const char *model, const char *adapter)
{
    (void)model;
    const struct item *emb = find_item(p, "model.embed_tokens.weight");
    const struct ftk_tensor *emb_src = emb ? emb->src : NULL;
    enum ftk_dtype out_dt = emb ? emb->dtype : FTK_DTYPE_F32;
    int tied = emb && !find_item(p, "lm_head.weight");
    for (size_t k = 0; k < ad->n_saved; k++) {
        const struct merge_saved *sv = &ad->saved[k];
        struct item *it = find_item(p, sv->name);
        if (!it && tied && !strcmp(sv->name, "lm_head.weight")) {
            FTK_FAIL_IF(!(it = add_head(p, emb_src, out_dt)), FTK_E_NOMEM, "out of memory");
        }
        FTK_FAIL_IF(!it, FTK_E_MISMATCH, "%s: modules_to_save tensor %s has no tensor %s in %s (adapter for another base?)", adapter,
                    sv->name, sv->name, model);
        const struct ftk_tensor *w = it->src;
        int same = w->ndim == sv->t->ndim && merge_is_float(w->dtype);
        for (int d = 0; same && d < w->ndim; d++)
            same = w->shape[d] == sv->t->shape[d];
        FTK_FAIL_IF(!same, FTK_E_MISMATCH, "%s: modules_to_save tensor %s does not have the shape of %s in %s (adapter for another base?)",
                    adapter, sv->name, sv->name, model);
        FTK_FAIL_IF(it->lora || it->saved, FTK_E_FORMAT, "%s: %s is both saved whole and adapted", adapter, sv->name);
        it->saved = sv->t;
    }
    struct item *e = find_item(p, "model.embed_tokens.weight");
    if (tied && e && e->saved && !find_item(p, "lm_head.weight")) {   /* the head keeps the original embeddings */
        FTK_FAIL_IF(!add_head(p, emb_src, out_dt), FTK_E_NOMEM, "out of memory");
    }
    return FTK_OK;
}

/* The plugin path: base weights the adapter trained whole (LoRA's modules_to_save) come from
 * the loaded model, where the plugin put them. */
static ftk_status plan_trained(struct plan *p)
{
    struct ftk_peft *peft = p->m->peft;
    if (!FTK_PLUGIN_SLOT(peft->pl, base_trainable))
        return FTK_OK;
    for (size_t i = 0; i < p->n; i++) {
        struct item *it = &p->items[i];
        if (!merge_is_float(it->src->dtype) || !peft->pl->base_trainable(peft, it->name))
            continue;
        int64_t numel = 0;
        it->trained = ftk_peft_base_weight(peft, it->name, &numel);
        FTK_FAIL_IF(!it->trained || numel != ftk_tensor_numel(it->src), FTK_E_MISMATCH,
                    "%s: the loaded model's copy has %lld elements, the checkpoint's %lld", it->name, (long long)numel,
                    (long long)ftk_tensor_numel(it->src));
        FTK_FAIL_IF(it->site, FTK_E_FORMAT, "%s is both trained whole and adapted", it->name);
    }
    struct item *e = find_item(p, "model.embed_tokens.weight");
    if (p->m->own_head && e && !find_item(p, "lm_head.weight")) {   /* untied for modules_to_save: its own head */
        struct item *h = add_head(p, e->src, e->dtype);
        FTK_FAIL_IF(!h, FTK_E_NOMEM, "out of memory");
        h->trained = p->m->lm_head->w;
        h->head_copy = 1;
    }
    return FTK_OK;
}

/* The site of linear `kind` in layer `layer` (hooked or not). */
static const struct ftk_site *site_at(const struct ftk_model *m, int layer, enum ftk_linear kind)
{
    for (size_t k = 0; k < m->n_sites; k++)
        if (m->sites[k].layer == layer && m->sites[k].kind == kind)
            return &m->sites[k];
    return NULL;
}

/* The plugin path, a method that merges biases (BitFit, (IA)^3): each hooked site where the
 * merged model has a bias (merge_bias) writes it to <module>.bias, the base's tensor when it has
 * one (Qwen2's q/k/v), else a new one. A new bias
 * needs the architecture's config switch, which gives every linear of its group a bias: Llama's
 * attention_bias (q, k, v, o) and mlp_bias (gate, up, down), Qwen3's attention_bias; the group's
 * other linears get zero biases. Where transformers has no switch (Mistral; Qwen2's o_proj and
 * MLP; Qwen3's MLP) the bias cannot be stored: refused. */
static ftk_status plan_biases(struct plan *p, enum ftk_dtype dt, const char *model, const char *adapter)
{
    const struct ftk_model *m = p->m;
    static const char *const arch_name[] = {"llama", "mistral", "qwen2", "qwen3"};
    int switchable[2] = {m->cfg.arch == FTK_ARCH_LLAMA || m->cfg.arch == FTK_ARCH_QWEN3, m->cfg.arch == FTK_ARCH_LLAMA};
    int need[2] = {0, 0};
    int *has = calloc(m->n_sites, sizeof *has);   /* per site: the merged model has a bias there */
    int64_t widest = 1;
    for (size_t k = 0; k < m->n_sites; k++)
        if (m->sites[k].out > widest)
            widest = m->sites[k].out;
    float *scratch = malloc((size_t)widest * sizeof *scratch);
    ftk_status s = has && scratch ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    for (size_t k = 0; k < m->n_sites && s == FTK_OK; k++) {
        const struct ftk_site *site = &m->sites[k];
        if (site->layer >= 0 && ftk_peft_hooked(m->peft, site->layer, site->kind))
            s = m->peft->pl->merge_bias(m->peft, site, scratch, &has[k]);
    }
    free(scratch);
    for (size_t k = 0; k < m->n_sites && s == FTK_OK; k++) {
        const struct ftk_site *site = &m->sites[k];
        if (!has[k])
            continue;
        char bname[200];
        snprintf(bname, sizeof bname, "%s.bias", site->module);
        struct item *it = find_item(p, bname);
        int g = site->kind >= FTK_LIN_GATE;
        if (it) {
            it->bias_of = site;
            continue;
        }
        if (!switchable[g])
            s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__,
                              "%s: the merged bias of %s cannot be stored in %s: transformers' %s has no bias there and no "
                              "config switch for one (train without that module in target_modules)",
                              adapter, site->module, model, arch_name[m->cfg.arch]);
        need[g] = 1;
    }
    if (s != FTK_OK) {
        free(has);
        return s;
    }
    p->attention_bias = need[0];
    p->mlp_bias = need[1];
    size_t extra = (size_t)m->cfg.L * 7;
    p->added = calloc(extra, sizeof *p->added);   /* items point into these: sized once */
    p->added_names = calloc(extra, sizeof *p->added_names);
    if (!p->added || !p->added_names) {
        free(has);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    for (int64_t l = 0; l < m->cfg.L && s == FTK_OK; l++)
        for (int kind = 0; kind < 7; kind++) {
            const struct ftk_site *site = site_at(m, (int)l, (enum ftk_linear)kind);
            if (!site || !need[kind >= FTK_LIN_GATE])
                continue;
            char *name = p->added_names[p->n_added];
            snprintf(name, sizeof *p->added_names, "%s.bias", site->module);
            if (find_item(p, name))
                continue;
            struct ftk_tensor *t = &p->added[p->n_added++];
            t->dtype = dt;
            t->ndim = 1;
            t->shape[0] = site->out;
            t->nbytes = (size_t)site->out * ftk_dtype_size(dt);
            struct item *it = append_item(p, name, t, dt);
            if (!it) {
                s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
                break;
            }
            it->bias_of = has[site - m->sites] ? site : NULL;
            it->zero = !it->bias_of;
        }
    free(has);
    return s;
}

static ftk_status plan_merge(struct plan *p, struct merge_adapter *ad, struct ftk_st_model *st, enum ftk_dtype dt, const char *model,
                             const char *adapter)
{
    p->n = ftk_st_model_count(st);
    p->items = calloc(p->n ? p->n : 1, sizeof *p->items);
    FTK_FAIL_IF(!p->items, FTK_E_NOMEM, "out of memory");
    size_t big_a = 1, big_b = 1;
    for (size_t i = 0; i < p->n; i++) {
        struct item *it = &p->items[i];
        it->src = ftk_st_model_at(st, i, &it->name);
        it->dtype = merge_is_float(it->src->dtype) ? dt : it->src->dtype;
        p->total += out_bytes(it);
    }
    int merges_w = p->m && FTK_PLUGIN_SLOT(p->m->peft->pl, merge);
    for (size_t k = 0; merges_w && k < p->m->n_sites; k++) {   /* the plugin path: its hooked sites */
        const struct ftk_site *site = &p->m->sites[k];
        if (!ftk_peft_hooked(p->m->peft, site->layer, site->kind))
            continue;
        char wname[600];
        snprintf(wname, sizeof wname, "%s.weight", site->module);
        struct item *it = find_item(p, wname);
        FTK_FAIL_IF(!it, FTK_E_UNSUPPORTED, "%s: %s has no weight %s of its own in %s (tied embeddings?): cannot merge", adapter,
                    site->module, wname, model);
        it->site = site;
    }
    for (size_t k = 0; k < ad->n_pairs; k++) {
        struct merge_pair *q = &ad->pairs[k];
        char wname[600];
        snprintf(wname, sizeof wname, "%s.weight", q->module);
        struct item *it = find_item(p, wname);
        if (!it && !strcmp(q->module, "lm_head") && ftk_st_model_find(st, "model.embed_tokens.weight"))
            FTK_FAIL(FTK_E_UNSUPPORTED, "%s: LoRA on lm_head of a model with tied embeddings (%s has no lm_head.weight) cannot be merged",
                     adapter, model);
        FTK_FAIL_IF(!it, FTK_E_MISMATCH, "%s: LoRA module %s has no weight %s in %s (adapter for another base?)", adapter, q->module,
                    wname, model);
        const struct ftk_tensor *w = it->src;
        int64_t r = q->A->shape[0];
        FTK_FAIL_IF(w->ndim != 2 || !merge_is_float(w->dtype), FTK_E_MISMATCH, "%s: %s is not a 2-D float weight in %s", adapter, wname, model);
        FTK_FAIL_IF(q->A->shape[1] != w->shape[1] || q->B->shape[0] != w->shape[0], FTK_E_MISMATCH,
                    "%s: %s: lora_A [%" PRId64 ",%" PRId64 "] and lora_B [%" PRId64 ",%" PRId64 "] do not fit the base weight [%" PRId64
                    ",%" PRId64 "] (adapter for another base?)",
                    adapter, q->module, q->A->shape[0], q->A->shape[1], q->B->shape[0], q->B->shape[1], w->shape[0], w->shape[1]);
        FTK_FAIL_IF(it->lora, FTK_E_FORMAT, "%s: two LoRA pairs for %s", adapter, wname);
        FTK_FAIL_IF(w->shape[0] > INT32_MAX || w->shape[1] > INT32_MAX || r > INT32_MAX, FTK_E_UNSUPPORTED, "%s: too large for BLAS", wname);
        it->lora = q;
        if ((size_t)(r * w->shape[1]) > big_a)
            big_a = (size_t)(r * w->shape[1]);
        if ((size_t)(r * w->shape[0]) > big_b)
            big_b = (size_t)(r * w->shape[0]);
    }
    FTK_TRY(plan_saved(p, ad, model, adapter));
    if (p->m)
        FTK_TRY(plan_trained(p));
    if (p->m && FTK_PLUGIN_SLOT(p->m->peft->pl, merge_bias))
        FTK_TRY(plan_biases(p, dt, model, adapter));
    p->a = malloc(big_a * sizeof *p->a);
    p->b = malloc(big_b * sizeof *p->b);
    FTK_FAIL_IF(!p->a || !p->b, FTK_E_NOMEM, "out of memory (LoRA factors of %zu and %zu elements)", big_a, big_b);
    return FTK_OK;
}

/* The plugin path: the base model (F32, CPU) with the adapter loaded through its plugin, which
 * must be able to merge. */
static ftk_status load_for_plugin(const struct ftk_merge_opts *o, struct ftk_model **m, void **cpu)
{
    const struct ftk_backend *be = ftk_backend_cpu();
    struct ftk_backend_opts bo = {.struct_size = sizeof bo};
    FTK_TRY(be->create(&bo, cpu));
    FTK_TRY(ftk_model_load(o->model, be, *cpu, m));
    FTK_TRY(ftk_model_load_adapter(*m, o->adapter, 0));
    const struct ftk_peft_plugin *pl = (*m)->peft->pl;
    FTK_FAIL_IF(!FTK_PLUGIN_SLOT(pl, merge) && !FTK_PLUGIN_SLOT(pl, merge_bias), FTK_E_UNSUPPORTED,
                "%s: the %s method cannot be folded into the weights (it is not a linear delta); use the adapter with --adapter",
                o->adapter, pl->name);
    return FTK_OK;
}

static ftk_status write_all(const struct ftk_merge_opts *o, struct plan *p, struct ftk_source *base, const char *dir, enum ftk_dtype dt)
{
    FTK_TRY(split_shards(p, o->shard_size ? o->shard_size : FTK_MERGE_DEFAULT_SHARD_SIZE));
    FTK_TRY(ftk_mkdirs(dir));
    FTK_TRY(write_shards(p, dir));
    if (p->n_shards > 1)
        FTK_TRY(write_index(p, dir));
    FTK_TRY(write_config(base, dir, dt, p));
    return copy_extras(base, dir);
}

ftk_status ftk_merge_lora(const struct ftk_merge_opts *opts, struct ftk_merge_stats *stats)
{
    FTK_FAIL_IF(!opts->model || !opts->adapter || !opts->output, FTK_E_INVALID, "merge needs a model, an adapter and an output");
    /* "merged/" names the directory "merged": the temporary sibling must not land inside it */
    char output[4096];
    size_t ol = strlen(opts->output);
    FTK_FAIL_IF(ol >= sizeof output - 64, FTK_E_INVALID, "output path too long");
    memcpy(output, opts->output, ol + 1);
    while (ol > 1 && output[ol - 1] == '/')
        output[--ol] = '\0';
    struct ftk_merge_opts oo = *opts;
    oo.output = output;
    const struct ftk_merge_opts *o = &oo;
    enum ftk_dtype dt = FTK_DTYPE_F32;
    if (o->dtype)
        FTK_TRY(ftk_parse_float_dtype(o->dtype, &dt));
    size_t ext_len;
    enum out_kind kind = out_kind_of(o->output, &ext_len);
    if (kind == OUT_DIR)
        FTK_TRY(check_output_dir(o->output));

    struct merge_adapter ad = {0};
    struct plan p = {0};
    struct ftk_source *base = NULL;
    struct ftk_st_model *st = NULL;
    char tmp[4200] = "";
    ftk_status s = merge_adapter_open(&ad, o->adapter);
    if (s == FTK_OK)
        s = ftk_source_open(o->model, &base);
    if (s == FTK_OK && !o->dtype)
        s = base_dtype(base, &dt);
    if (s == FTK_OK)
        s = ftk_st_model_open(base, "model", &st);
    void *cpu = NULL;
    if (s == FTK_OK && ad.plugin)
        s = load_for_plugin(o, &p.m, &cpu);
    if (s == FTK_OK)
        s = plan_merge(&p, &ad, st, dt, o->model, o->adapter);
    if (s == FTK_OK) {
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld.d", o->output, (long)getpid());
        rm_flat(tmp);
        p.chunk_bytes = o->chunk_bytes ? o->chunk_bytes : FTK_MERGE_DEFAULT_CHUNK;
        s = write_all(o, &p, base, tmp, dt);
    }
    if (s == FTK_OK) {
        if (kind == OUT_DIR) {
            rmdir(o->output);   /* empty (checked above) or absent */
            if (rename(tmp, o->output) != 0)
                s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: cannot rename into place: %s", o->output, strerror(errno));
            else
                ftk_fsync_parent(o->output);
        } else {
            const char *slash = strrchr(o->output, '/');
            const char *b = slash ? slash + 1 : o->output;
            char top[1024];
            snprintf(top, sizeof top, "%.*s", (int)(strlen(b) - ext_len), b);
            s = pack_archive(tmp, o->output, kind, top[0] ? top : "model");
        }
    }
    if (tmp[0])
        rm_flat(tmp);
    if (s == FTK_OK && stats) {
        memset(stats, 0, sizeof *stats);
        stats->tensors = (int64_t)p.n;
        stats->merged = (int64_t)ad.n_pairs;
        for (size_t i = 0; i < p.n; i++) {
            stats->merged += p.items[i].site != NULL || p.items[i].bias_of != NULL;
            stats->replaced += p.items[i].saved != NULL || (p.items[i].trained != NULL && !p.items[i].head_copy);
        }
        stats->shards = p.n_shards;
        stats->total_size = p.total;
        snprintf(stats->dtype, sizeof stats->dtype, "%s", torch_name(dt));
    }
    free(p.items);
    free(p.added);
    free(p.added_names);
    free(p.w);
    free(p.a);
    free(p.b);
    ftk_st_model_close(st);
    ftk_source_close(base);
    merge_adapter_free(&ad);
    ftk_model_free(p.m);
    if (cpu)
        ftk_backend_cpu()->destroy(cpu);
    return s;
}
