/* libcore/safetensors.c: safetensors files and sharded HF checkpoints (ftk/safetensors.h). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/fileio.h"
#include "ftk/safetensors.h"

struct shard {
    char *name;
    struct ftk_message msg;   /* views into the source's mapping */
};

struct ftk_st_model {
    struct ftk_source *own_src;   /* set when opened by path */
    struct shard *shards;
    size_t n_shards;
    size_t n_total;
};

static ftk_status parse_file(const char *where, const uint8_t *p, size_t len, struct ftk_message *m)
{
    FTK_FAIL_IF(len < 8, FTK_E_FORMAT, "%s: %zu bytes, too short for a safetensors file", where, len);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)p[i] << (8 * i);
    FTK_FAIL_IF(hl > FTK_MAX_HEADER_BYTES, FTK_E_FORMAT, "%s: header length %" PRIu64 " exceeds the %" PRIu64 "-byte limit",
                where, hl, FTK_MAX_HEADER_BYTES);
    FTK_FAIL_IF(hl > len - 8, FTK_E_FORMAT, "%s: header length %" PRIu64 " exceeds the %zu bytes that follow", where, hl, len - 8);
    return ftk_message_parse_header(m, (const char *)p + 8, (size_t)hl, p + 8 + hl, len - 8 - (size_t)hl, where);
}

static ftk_status add_shard(struct ftk_st_model *m, struct ftk_source *src, const char *file)
{
    const uint8_t *p;
    size_t len;
    FTK_TRY(ftk_source_map(src, file, &p, &len));
    struct shard *s = realloc(m->shards, (m->n_shards + 1) * sizeof *s);
    FTK_FAIL_IF(!s, FTK_E_NOMEM, "out of memory");
    m->shards = s;
    s = &m->shards[m->n_shards];
    memset(s, 0, sizeof *s);
    s->name = strdup(file);
    FTK_FAIL_IF(!s->name, FTK_E_NOMEM, "out of memory");
    char where[1200];
    snprintf(where, sizeof where, "%s/%s", ftk_source_path(src), file);
    ftk_message_init(&s->msg);
    ftk_status st = parse_file(where, p, len, &s->msg);
    if (st != FTK_OK) {
        free(s->name);
        return st;
    }
    m->n_shards++;
    m->n_total += s->msg.n_tensors;
    return FTK_OK;
}

static ftk_status open_index(struct ftk_st_model *m, struct ftk_source *src, const char *index_name)
{
    char *text;
    size_t len;
    FTK_TRY(ftk_source_read(src, index_name, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    FTK_FAIL_IF(!root, FTK_E_FORMAT, "%s/%s: not valid JSON", ftk_source_path(src), index_name);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    ftk_status st = FTK_OK;
    if (!cJSON_IsObject(wm))
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s/%s: no \"weight_map\" object", ftk_source_path(src), index_name);
    const cJSON *e;
    if (st == FTK_OK)
        cJSON_ArrayForEach(e, wm) {
            if (!cJSON_IsString(e)) {
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s/%s: weight_map[\"%s\"] is not a file name",
                                   ftk_source_path(src), index_name, e->string);
                break;
            }
            int have = 0;
            for (size_t i = 0; i < m->n_shards && !have; i++)
                have = strcmp(m->shards[i].name, e->valuestring) == 0;
            if (!have && (st = add_shard(m, src, e->valuestring)) != FTK_OK)
                break;
        }
    /* A tensor in two shards is ambiguous (lookups would take the first shard's copy whatever
     * the index names), so it is refused. */
    for (size_t i = 0; i < m->n_shards && st == FTK_OK; i++)
        for (size_t k = 0; k < m->shards[i].msg.n_tensors && st == FTK_OK; k++)
            for (size_t j = 0; j < i && st == FTK_OK; j++)
                if (ftk_message_find(&m->shards[j].msg, m->shards[i].msg.tensors[k].name))
                    st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: tensor \"%s\" is in both %s and %s",
                                       ftk_source_path(src), m->shards[i].msg.tensors[k].name, m->shards[j].name,
                                       m->shards[i].name);
    /* Every tensor must be in the shard the index names. */
    if (st == FTK_OK)
        cJSON_ArrayForEach(e, wm) {
            for (size_t i = 0; i < m->n_shards; i++)
                if (strcmp(m->shards[i].name, e->valuestring) == 0 && !ftk_message_find(&m->shards[i].msg, e->string)) {
                    st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: index names tensor \"%s\" in %s, which lacks it",
                                       ftk_source_path(src), e->string, e->valuestring);
                    break;
                }
            if (st != FTK_OK)
                break;
        }
    cJSON_Delete(root);
    return st;
}

ftk_status ftk_st_model_open(struct ftk_source *src, const char *prefix, struct ftk_st_model **out)
{
    struct ftk_st_model *m = calloc(1, sizeof *m);
    FTK_FAIL_IF(!m, FTK_E_NOMEM, "out of memory");
    char single[512], index[512];
    snprintf(single, sizeof single, "%s.safetensors", prefix);
    snprintf(index, sizeof index, "%s.safetensors.index.json", prefix);
    ftk_status st;
    if (ftk_source_exists(src, single))
        st = add_shard(m, src, single);
    else if (ftk_source_exists(src, index))
        st = open_index(m, src, index);
    else
        st = ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "%s: neither %s nor %s found", ftk_source_path(src), single, index);
    if (st != FTK_OK) {
        ftk_st_model_close(m);
        return st;
    }
    *out = m;
    return FTK_OK;
}

ftk_status ftk_st_file_open(const char *path, struct ftk_st_model **out)
{
    char *dir = strdup(path);
    FTK_FAIL_IF(!dir, FTK_E_NOMEM, "out of memory");
    char *slash = strrchr(dir, '/');
    const char *file = path;
    if (slash) {
        *slash = '\0';
        file = path + (slash - dir) + 1;
    } else {
        strcpy(dir, ".");
    }
    struct ftk_source *src;
    ftk_status st = ftk_source_open(dir[0] ? dir : "/", &src);
    free(dir);
    FTK_TRY(st);
    struct ftk_st_model *m = calloc(1, sizeof *m);
    if (!m) {
        ftk_source_close(src);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    m->own_src = src;
    if ((st = add_shard(m, src, file)) != FTK_OK) {
        ftk_st_model_close(m);
        return st;
    }
    *out = m;
    return FTK_OK;
}

void ftk_st_model_close(struct ftk_st_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_shards; i++) {
        ftk_message_free(&m->shards[i].msg);
        free(m->shards[i].name);
    }
    free(m->shards);
    ftk_source_close(m->own_src);
    free(m);
}

size_t ftk_st_model_count(const struct ftk_st_model *m) { return m->n_total; }

const struct ftk_tensor *ftk_st_model_at(const struct ftk_st_model *m, size_t i, const char **name)
{
    for (size_t s = 0; s < m->n_shards; s++) {
        if (i < m->shards[s].msg.n_tensors) {
            if (name)
                *name = m->shards[s].msg.tensors[i].name;
            return &m->shards[s].msg.tensors[i].t;
        }
        i -= m->shards[s].msg.n_tensors;
    }
    return NULL;
}

const struct ftk_tensor *ftk_st_model_find(const struct ftk_st_model *m, const char *name)
{
    for (size_t s = 0; s < m->n_shards; s++) {
        const struct ftk_tensor *t = ftk_message_find(&m->shards[s].msg, name);
        if (t)
            return t;
    }
    return NULL;
}

ftk_status ftk_st_model_read_f32(const struct ftk_st_model *m, const char *name, float *dst, int64_t numel)
{
    const struct ftk_tensor *t = ftk_st_model_find(m, name);
    FTK_FAIL_IF(!t, FTK_E_NOTFOUND, "tensor \"%s\" not in the checkpoint", name);
    int64_t n = ftk_tensor_numel(t);
    FTK_FAIL_IF(numel >= 0 && n != numel, FTK_E_MISMATCH, "tensor \"%s\" has %" PRId64 " elements, expected %" PRId64,
                name, n, numel);
    ftk_status st = ftk_convert_to_f32(dst, t->data, t->dtype, (size_t)n);
    if (st != FTK_OK)
        return ftk_error_wrap(st, "tensor \"%s\"", name);
    return FTK_OK;
}

const char *ftk_st_model_meta(const struct ftk_st_model *m, const char *key)
{
    return m->n_shards ? ftk_message_get_meta(&m->shards[0].msg, key) : NULL;
}

ftk_status ftk_st_write(const char *path, const struct ftk_message *m)
{
    uint8_t *blob;
    size_t len;
    FTK_TRY(ftk_message_encode(m, &blob, &len));
    ftk_status st = ftk_file_write_atomic(path, blob, len);
    free(blob);
    return st;
}

/* Rows of an entry: its first dimension (a scalar is one row of one element). */
static int64_t entry_rows(const struct ftk_st_entry *e) { return e->ndim ? e->shape[0] : 1; }

/* How entry e is written: *nb bytes in all, *row_nb per row, returned: rows per fill() call
 * (all of them when the tensor fits chunk_bytes, else as many as fit, at least one). */
static int64_t entry_step(const struct ftk_st_entry *e, size_t chunk_bytes, size_t *nb, size_t *row_nb)
{
    int64_t rows = entry_rows(e);
    *nb = (size_t)ftk_shape_numel(e->ndim, e->shape) * ftk_dtype_size(e->dtype);
    *row_nb = rows ? *nb / (size_t)rows : 0;
    if (*row_nb == 0 || *nb <= chunk_bytes)
        return rows ? rows : 1;
    return chunk_bytes / *row_nb ? (int64_t)(chunk_bytes / *row_nb) : 1;
}

ftk_status ftk_st_write_rows(const char *path, const struct ftk_message *meta, const struct ftk_st_entry *e, size_t n,
                             ftk_st_fill_rows_fn fill, void *arg, size_t chunk_bytes)
{
    /* The header is what ftk_message_encode writes for empty tensors of these shapes, with the
     * offsets of the real sizes in the given order. */
    struct ftk_message h;
    ftk_message_init(&h);
    ftk_status s = FTK_OK;
    for (size_t i = 0; meta && i < meta->n_meta && s == FTK_OK; i++)
        s = ftk_message_set_meta(&h, meta->meta[i].key, meta->meta[i].value);
    char *json = NULL;
    size_t jl = 0, cap = 0;
    FILE *js = s == FTK_OK ? open_memstream(&json, &cap) : NULL;
    if (s == FTK_OK && !js)
        s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    size_t biggest = 0;
    if (s == FTK_OK) {
        fputc('{', js);
        int first = 1;
        if (h.n_meta) {
            fputs("\"__metadata__\":{", js);
            for (size_t i = 0; i < h.n_meta; i++)
                fprintf(js, "%s\"%s\":\"%s\"", i ? "," : "", h.meta[i].key, h.meta[i].value);
            fputc('}', js);
            first = 0;
        }
        uint64_t off = 0;
        for (size_t i = 0; i < n; i++) {
            size_t nb, row_nb;
            int64_t step = entry_step(&e[i], chunk_bytes, &nb, &row_nb);
            if ((size_t)step * row_nb > biggest)
                biggest = (size_t)step * row_nb;
            fprintf(js, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", first ? "" : ",", e[i].name, ftk_dtype_name(e[i].dtype));
            for (int d = 0; d < e[i].ndim; d++)
                fprintf(js, "%s%lld", d ? "," : "", (long long)e[i].shape[d]);
            fprintf(js, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off, (unsigned long long)(off + nb));
            off += nb;
            first = 0;
        }
        fputc('}', js);
        fclose(js);
        jl = strlen(json);
    }
    ftk_message_free(&h);
    struct ftk_atomic_file af;
    void *buf = NULL;
    if (s == FTK_OK)
        s = ftk_atomic_open(&af, path);
    if (s != FTK_OK) {
        free(json);
        return s;
    }
    size_t pad = (8 - (8 + jl) % 8) % 8;
    uint64_t hl = jl + pad;
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(hl >> (8 * i));
    int bad = fwrite(lenb, 1, 8, af.fp) != 8 || fwrite(json, 1, jl, af.fp) != jl;
    for (size_t i = 0; i < pad && !bad; i++)
        bad = fputc(' ', af.fp) == EOF;
    free(json);
    buf = malloc(biggest ? biggest : 1);
    if (!buf)
        s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    for (size_t i = 0; i < n && s == FTK_OK && !bad; i++) {
        int64_t rows = entry_rows(&e[i]);
        size_t nb, row_nb;
        int64_t step = entry_step(&e[i], chunk_bytes, &nb, &row_nb);
        for (int64_t r0 = 0; r0 < rows && s == FTK_OK && !bad; r0 += step) {
            int64_t k = rows - r0 < step ? rows - r0 : step;
            if ((s = fill(arg, i, buf, r0, k)) == FTK_OK)
                bad = fwrite(buf, 1, (size_t)k * row_nb, af.fp) != (size_t)k * row_nb;
        }
        if (rows == 0 && s == FTK_OK)   /* an empty tensor: filled once with nothing to write */
            s = fill(arg, i, buf, 0, 0);
    }
    free(buf);
    if (s == FTK_OK && bad)
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: write failed", path);
    if (s != FTK_OK) {
        ftk_atomic_abort(&af);
        return s;
    }
    return ftk_atomic_commit(&af);
}

/* The whole-tensor form: one chunk per tensor. */
struct whole_fill {
    const struct ftk_st_entry *e;
    ftk_st_fill_fn fill;
    void *arg;
};

static ftk_status whole_fill(void *arg, size_t i, void *dst, int64_t row0, int64_t nrows)
{
    const struct whole_fill *w = arg;
    (void)row0;
    (void)nrows;
    return w->fill(w->arg, i, dst, (size_t)ftk_shape_numel(w->e[i].ndim, w->e[i].shape) * ftk_dtype_size(w->e[i].dtype));
}

ftk_status ftk_st_write_streaming(const char *path, const struct ftk_message *meta, const struct ftk_st_entry *e, size_t n,
                                  ftk_st_fill_fn fill, void *arg)
{
    struct whole_fill w = {e, fill, arg};
    return ftk_st_write_rows(path, meta, e, n, whole_fill, &w, SIZE_MAX);
}
