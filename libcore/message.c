/* libcore/message.c: one safetensors blob in memory: build, encode, validate, decode
 * (ftk/message.h). The validation here is the one place that trusts no byte of input: the
 * stream reader and the safetensors reader both go through ftk_message_parse_header. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/message.h"

void ftk_message_init(struct ftk_message *m) { memset(m, 0, sizeof *m); }

void ftk_message_free(struct ftk_message *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_meta; i++) {
        free(m->meta[i].key);
        free(m->meta[i].value);
    }
    for (size_t i = 0; i < m->n_tensors; i++) {
        free(m->tensors[i].name);
        ftk_tensor_free(&m->tensors[i].t);
    }
    free(m->meta);
    free(m->tensors);
    free(m->blob);
    ftk_message_init(m);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

ftk_status ftk_message_set_meta(struct ftk_message *m, const char *key, const char *value)
{
    char *v = dup_str(value);
    FTK_FAIL_IF(!v, FTK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < m->n_meta; i++)
        if (strcmp(m->meta[i].key, key) == 0) {
            free(m->meta[i].value);
            m->meta[i].value = v;
            return FTK_OK;
        }
    if (m->n_meta == m->cap_meta) {
        size_t cap = m->cap_meta ? 2 * m->cap_meta : 8;
        struct ftk_meta_kv *p = realloc(m->meta, cap * sizeof *p);
        if (!p) { free(v); FTK_FAIL(FTK_E_NOMEM, "out of memory"); }
        m->meta = p;
        m->cap_meta = cap;
    }
    char *k = dup_str(key);
    if (!k) { free(v); FTK_FAIL(FTK_E_NOMEM, "out of memory"); }
    m->meta[m->n_meta++] = (struct ftk_meta_kv){k, v};
    return FTK_OK;
}

ftk_status ftk_message_set_meta_int(struct ftk_message *m, const char *key, int64_t value)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, value);
    return ftk_message_set_meta(m, key, buf);
}

const char *ftk_message_get_meta(const struct ftk_message *m, const char *key)
{
    for (size_t i = 0; i < m->n_meta; i++)
        if (strcmp(m->meta[i].key, key) == 0)
            return m->meta[i].value;
    return NULL;
}

ftk_status ftk_message_get_meta_int(const struct ftk_message *m, const char *key, int64_t *out)
{
    const char *v = ftk_message_get_meta(m, key);
    FTK_FAIL_IF(!v, FTK_E_NOTFOUND, "metadata \"%s\" missing", key);
    char *end;
    long long x = strtoll(v, &end, 10);
    FTK_FAIL_IF(end == v || *end, FTK_E_FORMAT, "metadata \"%s\" = \"%.40s\" is not an integer", key, v);
    *out = x;
    return FTK_OK;
}

struct ftk_tensor *ftk_message_find(const struct ftk_message *m, const char *name)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0)
            return &m->tensors[i].t;
    return NULL;
}

ftk_status ftk_message_get(const struct ftk_message *m, const char *name, enum ftk_dtype dt, int ndim,
                           struct ftk_tensor **out)
{
    struct ftk_tensor *t = ftk_message_find(m, name);
    FTK_FAIL_IF(!t, FTK_E_NOTFOUND, "tensor \"%s\" missing", name);
    FTK_FAIL_IF(t->dtype != dt, FTK_E_FORMAT, "tensor \"%s\" has dtype %s, expected %s", name,
                ftk_dtype_name(t->dtype), ftk_dtype_name(dt));
    FTK_FAIL_IF(ndim >= 0 && t->ndim != ndim, FTK_E_FORMAT, "tensor \"%s\" has %d dimensions, expected %d",
                name, t->ndim, ndim);
    *out = t;
    return FTK_OK;
}

int ftk_message_remove(struct ftk_message *m, const char *name)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) {
            free(m->tensors[i].name);
            ftk_tensor_free(&m->tensors[i].t);
            memmove(&m->tensors[i], &m->tensors[i + 1], (m->n_tensors - i - 1) * sizeof *m->tensors);
            m->n_tensors--;
            return 1;
        }
    return 0;
}

/* Appends a named slot; `t` is moved in. */
static ftk_status push_tensor(struct ftk_message *m, const char *name, struct ftk_tensor *t)
{
    if (m->n_tensors == m->cap_tensors) {
        size_t cap = m->cap_tensors ? 2 * m->cap_tensors : 8;
        struct ftk_named_tensor *p = realloc(m->tensors, cap * sizeof *p);
        FTK_FAIL_IF(!p, FTK_E_NOMEM, "out of memory");
        m->tensors = p;
        m->cap_tensors = cap;
    }
    char *n = dup_str(name);
    FTK_FAIL_IF(!n, FTK_E_NOMEM, "out of memory");
    m->tensors[m->n_tensors].name = n;
    m->tensors[m->n_tensors].t = *t;
    m->n_tensors++;
    return FTK_OK;
}

ftk_status ftk_message_add(struct ftk_message *m, const char *name, enum ftk_dtype dt, int ndim,
                           const int64_t *shape, const void *data, struct ftk_tensor **out)
{
    FTK_FAIL_IF(!name[0] || strcmp(name, "__metadata__") == 0, FTK_E_INVALID, "invalid tensor name \"%s\"", name);
    struct ftk_tensor t;
    FTK_TRY(ftk_tensor_alloc(&t, dt, ndim, shape));
    if (data && t.nbytes)
        memcpy(t.data, data, t.nbytes);
    struct ftk_tensor *old = ftk_message_find(m, name);
    if (old) {
        ftk_tensor_free(old);
        *old = t;
        if (out)
            *out = old;
        return FTK_OK;
    }
    ftk_status st = push_tensor(m, name, &t);
    if (st != FTK_OK) {
        ftk_tensor_free(&t);
        return st;
    }
    if (out)
        *out = &m->tensors[m->n_tensors - 1].t;
    return FTK_OK;
}

ftk_status ftk_message_copy(struct ftk_message *dst, const struct ftk_message *src)
{
    for (size_t i = 0; i < src->n_meta; i++)
        FTK_TRY(ftk_message_set_meta(dst, src->meta[i].key, src->meta[i].value));
    for (size_t i = 0; i < src->n_tensors; i++) {
        const struct ftk_tensor *t = &src->tensors[i].t;
        FTK_TRY(ftk_message_add(dst, src->tensors[i].name, t->dtype, t->ndim, t->shape, t->data, NULL));
    }
    return FTK_OK;
}

/* ---- encoding ------------------------------------------------------------------------- */

struct sbuf { char *p; size_t n, cap; int oom; };

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void sb_puts(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_str(struct sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"') sb_put(b, "\\\"", 2);
        else if (c == '\\') sb_put(b, "\\\\", 2);
        else if (c < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", c);
            sb_put(b, e, 6);
        } else sb_put(b, (const char *)s, 1);
    }
    sb_put(b, "\"", 1);
}

ftk_status ftk_message_encode(const struct ftk_message *m, uint8_t **out, size_t *out_len)
{
    /* Data goes out widest dtype first (as the safetensors library does) so every tensor of a
     * decoded blob is naturally aligned; the header lists tensors in insertion order. */
    size_t n = m->n_tensors;
    uint64_t *begin = calloc(n ? n : 1, sizeof *begin);
    FTK_FAIL_IF(!begin, FTK_E_NOMEM, "out of memory");
    uint64_t off = 0;
    for (size_t w = 8; w >= 1; w /= 2)
        for (size_t i = 0; i < n; i++)
            if (ftk_dtype_size(m->tensors[i].t.dtype) == w) {
                begin[i] = off;
                off += m->tensors[i].t.nbytes;
            }
    struct sbuf h = {0};
    sb_puts(&h, "{");
    int first = 1;
    if (m->n_meta) {
        sb_puts(&h, "\"__metadata__\":{");
        for (size_t i = 0; i < m->n_meta; i++) {
            if (i)
                sb_puts(&h, ",");
            sb_json_str(&h, m->meta[i].key);
            sb_puts(&h, ":");
            sb_json_str(&h, m->meta[i].value);
        }
        sb_puts(&h, "}");
        first = 0;
    }
    for (size_t i = 0; i < n; i++) {
        const struct ftk_tensor *t = &m->tensors[i].t;
        char num[64];
        if (!first)
            sb_puts(&h, ",");
        first = 0;
        sb_json_str(&h, m->tensors[i].name);
        sb_puts(&h, ":{\"dtype\":\"");
        sb_puts(&h, ftk_dtype_name(t->dtype));
        sb_puts(&h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t->shape[d]);
            sb_puts(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", begin[i], begin[i] + t->nbytes);
        sb_puts(&h, num);
    }
    sb_puts(&h, "}");
    while (!h.oom && (8 + h.n) % 8)
        sb_puts(&h, " ");
    if (h.oom) {
        free(h.p);
        free(begin);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    size_t total = 8 + h.n + off;
    uint8_t *buf = malloc(total);
    if (!buf) {
        free(h.p);
        free(begin);
        FTK_FAIL(FTK_E_NOMEM, "out of memory encoding a %zu-byte message", total);
    }
    uint64_t hl = h.n;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hl >> (8 * i));
    memcpy(buf + 8, h.p, h.n);
    uint8_t *data = buf + 8 + h.n;
    for (size_t i = 0; i < n; i++)
        if (m->tensors[i].t.nbytes)
            memcpy(data + begin[i], m->tensors[i].t.data, m->tensors[i].t.nbytes);
    free(h.p);
    free(begin);
    *out = buf;
    *out_len = total;
    return FTK_OK;
}

/* ---- validation and decoding ------------------------------------------------------------ */

/* A JSON number that is a non-negative integer below 2^53 (exact in a double). */
static int json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j))
        return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d)
        return 0;
    *out = (uint64_t)d;
    return 1;
}

static ftk_status parse_json(const char *json, size_t len, const char *where, cJSON **out)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = (at && at >= json && at <= json + len) ? (size_t)(at - json) : 0;
        FTK_FAIL(FTK_E_FORMAT, "%s: header is not valid JSON (near byte %zu of %zu)", where, off, len);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        FTK_FAIL(FTK_E_FORMAT, "%s: header is not a JSON object", where);
    }
    *out = root;
    return FTK_OK;
}

struct span { uint64_t b, e; const char *name; };

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->b != y->b)
        return x->b < y->b ? -1 : 1;
    return x->e < y->e ? -1 : x->e > y->e;
}

/* Checks one tensor entry; fills dtype/shape/offsets. */
static ftk_status check_entry(const cJSON *e, const char *where, enum ftk_dtype *dt, int *ndim,
                              int64_t *shape, uint64_t *b, uint64_t *end)
{
    const char *name = e->string;
    FTK_FAIL_IF(!cJSON_IsObject(e), FTK_E_FORMAT, "%s: tensor \"%s\": entry is not an object", where, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    FTK_FAIL_IF(!cJSON_IsString(jd), FTK_E_FORMAT, "%s: tensor \"%s\": \"dtype\" missing or not a string", where, name);
    if (ftk_dtype_parse(jd->valuestring, dt) != FTK_OK)
        FTK_FAIL(FTK_E_FORMAT, "%s: tensor \"%s\": unknown dtype \"%.40s\"", where, name, jd->valuestring);
    FTK_FAIL_IF(!cJSON_IsArray(js), FTK_E_FORMAT, "%s: tensor \"%s\": \"shape\" missing or not an array", where, name);
    int nd = cJSON_GetArraySize(js);
    FTK_FAIL_IF(nd > FTK_MAX_DIMS, FTK_E_FORMAT, "%s: tensor \"%s\": %d dimensions (at most %d)", where, name, nd, FTK_MAX_DIMS);
    int d = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, js) {
        uint64_t v;
        FTK_FAIL_IF(!json_uint(x, &v), FTK_E_FORMAT, "%s: tensor \"%s\": shape[%d] is not a non-negative integer", where, name, d);
        shape[d++] = (int64_t)v;
    }
    *ndim = nd;
    FTK_FAIL_IF(!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2, FTK_E_FORMAT,
                "%s: tensor \"%s\": \"data_offsets\" missing or not [begin, end]", where, name);
    FTK_FAIL_IF(!json_uint(cJSON_GetArrayItem(jo, 0), b) || !json_uint(cJSON_GetArrayItem(jo, 1), end), FTK_E_FORMAT,
                "%s: tensor \"%s\": data_offsets are not non-negative integers", where, name);
    FTK_FAIL_IF(*b > *end, FTK_E_FORMAT, "%s: tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] are reversed",
                where, name, *b, *end);
    int64_t numel = ftk_shape_numel(nd, shape);
    FTK_FAIL_IF(numel < 0 || (uint64_t)numel > UINT64_MAX / 8, FTK_E_FORMAT, "%s: tensor \"%s\": shape too large", where, name);
    uint64_t want = (uint64_t)numel * ftk_dtype_size(*dt);
    FTK_FAIL_IF(*end - *b != want, FTK_E_FORMAT,
                "%s: tensor \"%s\": shape holds %" PRIu64 " bytes of %s but data_offsets span %" PRIu64,
                where, name, want, ftk_dtype_name(*dt), *end - *b);
    return FTK_OK;
}

ftk_status ftk_message_header_data_len(const char *json, size_t json_len, uint64_t *out, const char *where)
{
    cJSON *root;
    FTK_TRY(parse_json(json, json_len, where, &root));
    uint64_t mx = 0;
    const cJSON *e;
    ftk_status st = FTK_OK;
    cJSON_ArrayForEach(e, root) {
        if (e->string && strcmp(e->string, "__metadata__") == 0)
            continue;
        enum ftk_dtype dt;
        int nd;
        int64_t shape[FTK_MAX_DIMS];
        uint64_t b, end;
        if ((st = check_entry(e, where, &dt, &nd, shape, &b, &end)) != FTK_OK)
            break;
        if (end > mx)
            mx = end;
    }
    cJSON_Delete(root);
    *out = mx;
    return st;
}

static ftk_status parse_root(struct ftk_message *m, const cJSON *root, const uint8_t *data, size_t data_len,
                             const char *where)
{
    int n = cJSON_GetArraySize(root);
    struct span *spans = calloc((size_t)n + 1, sizeof *spans);
    FTK_FAIL_IF(!spans, FTK_E_NOMEM, "out of memory");
    size_t ns = 0;
    ftk_status st = FTK_OK;
    const cJSON *e;
    int seen_meta = 0;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta++) { st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: \"__metadata__\" appears twice", where); break; }
            if (!cJSON_IsObject(e)) { st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: \"__metadata__\" is not an object", where); break; }
            const cJSON *kv;
            cJSON_ArrayForEach(kv, e) {
                if (!cJSON_IsString(kv)) {
                    st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: metadata \"%s\" is not a string", where, kv->string);
                    break;
                }
                if (ftk_message_get_meta(m, kv->string)) {
                    st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: metadata \"%s\" appears twice", where, kv->string);
                    break;
                }
                if ((st = ftk_message_set_meta(m, kv->string, kv->valuestring)) != FTK_OK)
                    break;
            }
            if (st != FTK_OK)
                break;
            continue;
        }
        struct ftk_tensor t = {0};
        uint64_t b, end;
        if ((st = check_entry(e, where, &t.dtype, &t.ndim, t.shape, &b, &end)) != FTK_OK)
            break;
        if (end > data_len) {
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__,
                               "%s: tensor \"%s\": data_offsets end %" PRIu64 " beyond the %zu-byte data buffer",
                               where, e->string, end, data_len);
            break;
        }
        if (ftk_message_find(m, e->string)) {
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: tensor \"%s\" appears twice", where, e->string);
            break;
        }
        t.nbytes = (size_t)(end - b);
        t.data = (void *)(data + b);
        size_t align = ftk_dtype_size(t.dtype);
        if (t.nbytes && ((uintptr_t)t.data % align)) {   /* a foreign writer left it unaligned: copy */
            void *p = malloc(t.nbytes);
            if (!p) { st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory"); break; }
            memcpy(p, t.data, t.nbytes);
            t.data = p;
            t.owned = 1;
        }
        if ((st = push_tensor(m, e->string, &t)) != FTK_OK) {
            ftk_tensor_free(&t);
            break;
        }
        spans[ns++] = (struct span){b, end, m->tensors[m->n_tensors - 1].name};
    }
    if (st == FTK_OK) {
        /* The tensors must tile the buffer exactly: no overlap, no hole, nothing after. */
        qsort(spans, ns, sizeof *spans, span_cmp);
        uint64_t at = 0;
        for (size_t i = 0; i < ns && st == FTK_OK; i++) {
            if (spans[i].b < at)
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: tensor \"%s\" overlaps the tensor before it (offset %" PRIu64 " < %" PRIu64 ")",
                                   where, spans[i].name, spans[i].b, at);
            else if (spans[i].b > at)
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: %" PRIu64 " unused bytes before tensor \"%s\" at offset %" PRIu64,
                                   where, spans[i].b - at, spans[i].name, at);
            at = spans[i].e;
        }
        if (st == FTK_OK && at != data_len)
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: tensors cover %" PRIu64 " of the %zu data bytes", where, at, data_len);
    }
    free(spans);
    return st;
}

ftk_status ftk_message_parse_header(struct ftk_message *m, const char *json, size_t json_len,
                                    const uint8_t *data, size_t data_len, const char *where)
{
    cJSON *root;
    FTK_TRY(parse_json(json, json_len, where, &root));
    ftk_status st = parse_root(m, root, data, data_len, where);
    cJSON_Delete(root);
    if (st != FTK_OK)
        ftk_message_free(m);
    return st;
}

ftk_status ftk_message_decode(struct ftk_message *m, void *blob, size_t len, int take_ownership, const char *where)
{
    const uint8_t *p = blob;
    ftk_message_free(m);
    FTK_FAIL_IF(len < 8, FTK_E_FORMAT, "%s: %zu bytes, too short for a header length", where, len);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)p[i] << (8 * i);
    FTK_FAIL_IF(hl > FTK_MAX_HEADER_BYTES, FTK_E_FORMAT, "%s: header length %" PRIu64 " exceeds the %" PRIu64 "-byte limit",
                where, hl, FTK_MAX_HEADER_BYTES);
    FTK_FAIL_IF(hl > len - 8, FTK_E_FORMAT, "%s: header length %" PRIu64 " exceeds the %zu bytes that follow",
                where, hl, len - 8);
    FTK_TRY(ftk_message_parse_header(m, (const char *)p + 8, (size_t)hl, p + 8 + hl, len - 8 - (size_t)hl, where));
    if (take_ownership) {
        m->blob = blob;
        m->blob_len = len;
    }
    return FTK_OK;
}
