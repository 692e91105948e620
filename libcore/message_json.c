/* libcore/message_json.c: messages to and from JSON lines (ftk/message_json.h). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/message_json.h"

static void put_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { fputc('\\', f); fputc(c, f); }
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void put_float(FILE *f, double v, int digits)
{
    if (isnan(v)) fputs("\"NaN\"", f);
    else if (isinf(v)) fputs(v > 0 ? "\"Infinity\"" : "\"-Infinity\"", f);
    else fprintf(f, "%.*g", digits, v);
}

static void put_elem(FILE *f, const struct ftk_tensor *t, size_t i)
{
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case FTK_DTYPE_F32: { float v; memcpy(&v, p + 4 * i, 4); put_float(f, v, 9); break; }
    case FTK_DTYPE_F64: { double v; memcpy(&v, p + 8 * i, 8); put_float(f, v, 17); break; }
    case FTK_DTYPE_BF16: { uint16_t v; memcpy(&v, p + 2 * i, 2); put_float(f, ftk_bf16_to_f32(v), 9); break; }
    case FTK_DTYPE_F16: { uint16_t v; memcpy(&v, p + 2 * i, 2); put_float(f, ftk_f16_to_f32(v), 9); break; }
    case FTK_DTYPE_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); fprintf(f, "%" PRId32, v); break; }
    case FTK_DTYPE_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); fprintf(f, "%" PRId64, v); break; }
    case FTK_DTYPE_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); fprintf(f, "%d", v); break; }
    case FTK_DTYPE_I8: fprintf(f, "%d", (int8_t)p[i]); break;
    case FTK_DTYPE_U8: fprintf(f, "%u", p[i]); break;
    case FTK_DTYPE_U16: { uint16_t v; memcpy(&v, p + 2 * i, 2); fprintf(f, "%u", v); break; }
    case FTK_DTYPE_U32: { uint32_t v; memcpy(&v, p + 4 * i, 4); fprintf(f, "%" PRIu32, v); break; }
    case FTK_DTYPE_U64: { uint64_t v; memcpy(&v, p + 8 * i, 8); fprintf(f, "%" PRIu64, v); break; }
    case FTK_DTYPE_BOOL: fputs(p[i] ? "true" : "false", f); break;
    default: fputs("null", f);
    }
}

/* Nested list of dimension d starting at element *i. */
static void put_nested(FILE *f, const struct ftk_tensor *t, int d, size_t *i)
{
    if (d == t->ndim) {
        put_elem(f, t, (*i)++);
        return;
    }
    fputc('[', f);
    for (int64_t k = 0; k < t->shape[d]; k++) {
        if (k)
            fputc(',', f);
        put_nested(f, t, d + 1, i);
    }
    fputc(']', f);
}

ftk_status ftk_message_write_json(const struct ftk_message *m, enum ftk_json_form form, FILE *out)
{
    const char *kind = ftk_message_kind(m);
    fputs("{\"kind\":", out);
    if (kind) put_json_str(out, kind); else fputs("null", out);
    fputs(",\"meta\":{", out);
    for (size_t i = 0; i < m->n_meta; i++) {
        if (i)
            fputc(',', out);
        put_json_str(out, m->meta[i].key);
        fputc(':', out);
        put_json_str(out, m->meta[i].value);
    }
    fputs("},\"tensors\":{", out);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct ftk_tensor *t = &m->tensors[i].t;
        if (i)
            fputc(',', out);
        put_json_str(out, m->tensors[i].name);
        fputc(':', out);
        size_t at = 0;
        if (form == FTK_JSON_PLAIN) {
            put_nested(out, t, 0, &at);
            continue;
        }
        fprintf(out, "{\"dtype\":\"%s\",\"shape\":[", ftk_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            fprintf(out, "%s%" PRId64, d ? "," : "", t->shape[d]);
        fputc(']', out);
        if (form == FTK_JSON_TYPED) {
            fputs(",\"data\":", out);
            put_nested(out, t, 0, &at);
        }
        fputc('}', out);
    }
    fputs("}}\n", out);
    FTK_FAIL_IF(ferror(out), FTK_E_IO, "write error: %s", strerror(errno));
    return FTK_OK;
}

/* ---- parsing -------------------------------------------------------------------------- */

/* Shape of a nested list from its first elements (fill() then checks every sub-list), and
 * whether every leaf is an integer that fits I32. */
static ftk_status infer_shape(const cJSON *j, int *ndim, int64_t *shape, int *all_int, const char *where,
                              const char *name)
{
    int d = 0;
    for (const cJSON *x = j; cJSON_IsArray(x); x = x->child) {
        FTK_FAIL_IF(d >= FTK_MAX_DIMS, FTK_E_FORMAT, "%s: tensor \"%s\": more than %d dimensions", where, name, FTK_MAX_DIMS);
        shape[d++] = cJSON_GetArraySize(x);
        if (!x->child)
            break;
    }
    *ndim = d;
    *all_int = 1;
    const cJSON *stack[FTK_MAX_DIMS + 1];
    int sp = 0;
    stack[sp++] = j;
    while (sp) {   /* depth-first over all leaves */
        const cJSON *x = stack[--sp];
        if (cJSON_IsArray(x)) {
            for (const cJSON *c = x->child; c; c = c->next) {
                if (cJSON_IsArray(c)) {
                    FTK_FAIL_IF(sp >= FTK_MAX_DIMS, FTK_E_FORMAT, "%s: tensor \"%s\": ragged nested list", where, name);
                    stack[sp++] = c;
                } else if (!cJSON_IsNumber(c) || c->valuedouble != floor(c->valuedouble) || fabs(c->valuedouble) > 2147483647.0) {
                    *all_int = 0;
                }
            }
        } else if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || fabs(x->valuedouble) > 2147483647.0) {
            *all_int = 0;
        }
    }
    return FTK_OK;
}

static ftk_status get_value(const cJSON *x, double *v, const char *where, const char *name)
{
    if (cJSON_IsNumber(x)) { *v = x->valuedouble; return FTK_OK; }
    if (cJSON_IsBool(x)) { *v = cJSON_IsTrue(x); return FTK_OK; }
    if (cJSON_IsString(x)) {
        if (!strcmp(x->valuestring, "NaN")) { *v = NAN; return FTK_OK; }
        if (!strcmp(x->valuestring, "Infinity")) { *v = INFINITY; return FTK_OK; }
        if (!strcmp(x->valuestring, "-Infinity")) { *v = -INFINITY; return FTK_OK; }
    }
    FTK_FAIL(FTK_E_FORMAT, "%s: tensor \"%s\": value is not a number", where, name);
}

static ftk_status store(struct ftk_tensor *t, size_t i, double v, const char *where, const char *name)
{
    uint8_t *p = t->data;
    int is_int = t->dtype != FTK_DTYPE_F32 && t->dtype != FTK_DTYPE_F64 && t->dtype != FTK_DTYPE_BF16 &&
                 t->dtype != FTK_DTYPE_F16;
    if (is_int)
        FTK_FAIL_IF(v != floor(v) || fabs(v) > 9007199254740992.0, FTK_E_FORMAT,
                    "%s: tensor \"%s\": element %zu = %g is not an exact integer", where, name, i, v);
#define RANGE(lo, hi) FTK_FAIL_IF(v < (lo) || v > (hi), FTK_E_FORMAT, \
        "%s: tensor \"%s\": element %zu = %g out of range for %s", where, name, i, v, ftk_dtype_name(t->dtype))
    switch (t->dtype) {
    case FTK_DTYPE_F32: { float f = (float)v; memcpy(p + 4 * i, &f, 4); break; }
    case FTK_DTYPE_F64: memcpy(p + 8 * i, &v, 8); break;
    case FTK_DTYPE_BF16: { uint16_t h = ftk_f32_to_bf16((float)v); memcpy(p + 2 * i, &h, 2); break; }
    case FTK_DTYPE_F16: { uint16_t h = ftk_f32_to_f16((float)v); memcpy(p + 2 * i, &h, 2); break; }
    case FTK_DTYPE_I32: { RANGE(-2147483648.0, 2147483647.0); int32_t x = (int32_t)v; memcpy(p + 4 * i, &x, 4); break; }
    case FTK_DTYPE_I64: { int64_t x = (int64_t)v; memcpy(p + 8 * i, &x, 8); break; }
    case FTK_DTYPE_I16: { RANGE(-32768.0, 32767.0); int16_t x = (int16_t)v; memcpy(p + 2 * i, &x, 2); break; }
    case FTK_DTYPE_I8: { RANGE(-128.0, 127.0); p[i] = (uint8_t)(int8_t)v; break; }
    case FTK_DTYPE_U8: { RANGE(0.0, 255.0); p[i] = (uint8_t)v; break; }
    case FTK_DTYPE_BOOL: { RANGE(0.0, 1.0); p[i] = (uint8_t)v; break; }
    case FTK_DTYPE_U16: { RANGE(0.0, 65535.0); uint16_t x = (uint16_t)v; memcpy(p + 2 * i, &x, 2); break; }
    case FTK_DTYPE_U32: { RANGE(0.0, 4294967295.0); uint32_t x = (uint32_t)v; memcpy(p + 4 * i, &x, 4); break; }
    case FTK_DTYPE_U64: { RANGE(0.0, 18446744073709551615.0); uint64_t x = (uint64_t)v; memcpy(p + 8 * i, &x, 8); break; }
    default: FTK_FAIL(FTK_E_UNSUPPORTED, "%s: tensor \"%s\": dtype not supported", where, name);
    }
#undef RANGE
    return FTK_OK;
}

static ftk_status fill(struct ftk_tensor *t, const cJSON *j, size_t *i, int d, const char *where, const char *name)
{
    if (d == t->ndim) {
        double v = 0;
        FTK_TRY(get_value(j, &v, where, name));
        FTK_TRY(store(t, (*i)++, v, where, name));
        return FTK_OK;
    }
    FTK_FAIL_IF(!cJSON_IsArray(j) || cJSON_GetArraySize(j) != t->shape[d], FTK_E_FORMAT,
                "%s: tensor \"%s\": data does not match shape (dimension %d)", where, name, d);
    const cJSON *x;
    cJSON_ArrayForEach(x, j)
        FTK_TRY(fill(t, x, i, d + 1, where, name));
    return FTK_OK;
}

static ftk_status parse_tensor(struct ftk_message *m, const cJSON *e, const char *where)
{
    const char *name = e->string;
    enum ftk_dtype dt;
    int ndim = -1;
    int64_t shape[FTK_MAX_DIMS];
    const cJSON *data = e;
    if (cJSON_IsObject(e)) {
        const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
        data = cJSON_GetObjectItemCaseSensitive(e, "data");
        FTK_FAIL_IF(!cJSON_IsString(jd) || !cJSON_IsArray(js) || !data, FTK_E_FORMAT,
                    "%s: tensor \"%s\": expected {\"dtype\", \"shape\", \"data\"}", where, name);
        if (ftk_dtype_parse(jd->valuestring, &dt) != FTK_OK)
            return ftk_error_wrap(FTK_E_FORMAT, "%s: tensor \"%s\"", where, name);
        ndim = cJSON_GetArraySize(js);
        FTK_FAIL_IF(ndim > FTK_MAX_DIMS, FTK_E_FORMAT, "%s: tensor \"%s\": too many dimensions", where, name);
        int d = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, js) {
            FTK_FAIL_IF(!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble != floor(x->valuedouble), FTK_E_FORMAT,
                        "%s: tensor \"%s\": bad shape", where, name);
            shape[d++] = (int64_t)x->valuedouble;
        }
    } else {
        int all_int = 1;
        FTK_TRY(infer_shape(e, &ndim, shape, &all_int, where, name));
        dt = all_int ? FTK_DTYPE_I32 : FTK_DTYPE_F32;
    }
    FTK_FAIL_IF(ftk_shape_numel(ndim, shape) < 0, FTK_E_FORMAT, "%s: tensor \"%s\": bad shape", where, name);
    struct ftk_tensor *t;
    FTK_TRY(ftk_message_add(m, name, dt, ndim, shape, NULL, &t));
    size_t i = 0;
    return fill(t, data, &i, 0, where, name);
}

ftk_status ftk_message_from_json(struct ftk_message *m, const char *json, size_t len, const char *where)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    FTK_FAIL_IF(!root, FTK_E_FORMAT, "%s: not valid JSON", where);
    ftk_status st = FTK_OK;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "kind");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "meta");
    const cJSON *tens = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    const cJSON *e;
    if (!cJSON_IsObject(root))
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: not a JSON object", where);
    else if (meta && !cJSON_IsObject(meta))
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: \"meta\" is not an object", where);
    else if (tens && !cJSON_IsObject(tens))
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: \"tensors\" is not an object", where);
    if (st == FTK_OK && meta)
        cJSON_ArrayForEach(e, meta) {
            if (!cJSON_IsString(e)) {
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: meta \"%s\" is not a string", where, e->string);
                break;
            }
            if ((st = ftk_message_set_meta(m, e->string, e->valuestring)) != FTK_OK)
                break;
        }
    if (st == FTK_OK && cJSON_IsString(kind))
        st = ftk_message_set_meta(m, "kind", kind->valuestring);
    if (st == FTK_OK && tens)
        cJSON_ArrayForEach(e, tens)
            if ((st = parse_tensor(m, e, where)) != FTK_OK)
                break;
    cJSON_Delete(root);
    return st;
}
