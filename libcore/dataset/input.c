/* libcore/dataset/input.c: dataset files from disk or stdin, plain, compressed or archived
 * (libarchive: every compression filter, tar/zip/7z/cpio archives, and the "raw" format for a
 * lone compressed or plain file), and the records inside one file (JSON array, JSON lines or
 * text lines, auto-detected). */
#include <archive.h>
#include <archive_entry.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dataset-impl.h"

struct ds_input {
    struct archive *a;
    char *path;          /* as given; "<stdin>" for stdin */
    int raw_done;        /* the raw format has one entry */
    int eof;
};

size_t ds_utf8_invalid_at(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned cp, min;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return i;
        if (i + len > n)
            return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += len;
    }
    return n;
}

ftk_status ds_input_open(const char *path, struct ds_input **out)
{
    *out = NULL;
    struct ds_input *in = calloc(1, sizeof *in);
    FTK_FAIL_IF(!in, FTK_E_NOMEM, "out of memory");
    int is_stdin = !path || strcmp(path, "-") == 0;
    in->path = strdup(is_stdin ? "<stdin>" : path);
    in->a = archive_read_new();
    if (!in->path || !in->a) {
        ds_input_close(in);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    archive_read_support_filter_all(in->a);
    archive_read_support_format_tar(in->a);
    archive_read_support_format_zip(in->a);
    archive_read_support_format_7zip(in->a);
    archive_read_support_format_cpio(in->a);
    archive_read_support_format_raw(in->a);   /* a lone file, plain or compressed */
    archive_read_support_format_empty(in->a); /* an empty file: no records */
    int r = is_stdin ? archive_read_open_fd(in->a, 0, 1 << 16) : archive_read_open_filename(in->a, path, 1 << 16);
    if (r != ARCHIVE_OK) {
        ftk_status st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", in->path, archive_error_string(in->a));
        ds_input_close(in);
        return st;
    }
    *out = in;
    return FTK_OK;
}

void ds_input_close(struct ds_input *in)
{
    if (!in)
        return;
    if (in->a)
        archive_read_free(in->a);
    free(in->path);
    free(in);
}

static int is_dataset_member(const char *name)
{
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    if (strcmp(base, "dataset_info.json") == 0 || base[0] == '.')
        return 0;
    size_t n = strlen(base);
    static const char *const ext[] = {".json", ".jsonl", ".txt"};
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++) {
        size_t e = strlen(ext[i]);
        if (n > e && strcmp(base + n - e, ext[i]) == 0)
            return 1;
    }
    return 0;
}

static ftk_status read_entry(struct ds_input *in, const char *name, char **data, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    FTK_FAIL_IF(!buf, FTK_E_NOMEM, "out of memory");
    for (;;) {
        if (cap - n < (1 << 15)) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                FTK_FAIL(FTK_E_NOMEM, "%s: out of memory (%zu bytes)", name, cap * 2);
            }
            buf = p;
            cap *= 2;
        }
        la_ssize_t got = archive_read_data(in->a, buf + n, cap - n - 1);
        if (got < 0) {
            ftk_status st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: %s", name,
                                          archive_error_string(in->a));
            free(buf);
            return st;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return FTK_OK;
}

ftk_status ds_input_next(struct ds_input *in, char **name, char **data, size_t *len)
{
    *name = NULL;
    *data = NULL;
    *len = 0;
    while (!in->eof) {
        struct archive_entry *e;
        int r = archive_read_next_header(in->a, &e);
        if (r == ARCHIVE_EOF) {
            in->eof = 1;
            break;
        }
        FTK_FAIL_IF(r < ARCHIVE_WARN, FTK_E_FORMAT, "%s: %s", in->path, archive_error_string(in->a));
        int fmt = archive_format(in->a);
        if (fmt == ARCHIVE_FORMAT_EMPTY) {
            in->eof = 1;
            break;
        }
        char *nm;
        if (fmt == ARCHIVE_FORMAT_RAW) {
            nm = strdup(in->path);
        } else {
            const char *member = archive_entry_pathname(e);
            if (archive_entry_filetype(e) != AE_IFREG || !member || !is_dataset_member(member))
                continue;
            size_t n = strlen(in->path) + strlen(member) + 2;
            nm = malloc(n);
            if (nm)
                snprintf(nm, n, "%s:%s", in->path, member);
        }
        FTK_FAIL_IF(!nm, FTK_E_NOMEM, "out of memory");
        ftk_status st = read_entry(in, nm, data, len);
        if (st != FTK_OK) {
            free(nm);
            return st;
        }
        *name = nm;
        return FTK_OK;
    }
    return FTK_E_EOF;
}

/* ---- records -------------------------------------------------------------------------------- */

static size_t line_of(const char *data, const char *at)
{
    size_t line = 1;
    for (const char *p = data; p < at; p++)
        line += *p == '\n';
    return line;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

ftk_status ds_records_begin(struct ds_records *r, const char *name, const char *data, size_t len, int lines_ok)
{
    memset(r, 0, sizeof *r);
    r->name = name;
    r->data = data;
    r->len = len;
    r->line = 1;
    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0)   /* UTF-8 byte order mark */
        r->pos = 3;
    size_t i = r->pos;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n'))
        i++;
    if (ends_with(name, ".txt") || (i < len && data[i] != '[' && data[i] != '{')) {
        FTK_FAIL_IF(!lines_ok, FTK_E_FORMAT, "%s: not JSON or JSON lines (plain text needs --format text)", name);
        r->layout = DS_LINES;
        return FTK_OK;
    }
    if (i < len && data[i] == '[') {
        const char *end = NULL;
        r->array = cJSON_ParseWithLengthOpts(data + r->pos, len - r->pos, &end, 0);
        if (!r->array)
            FTK_FAIL(FTK_E_FORMAT, "%s: line %zu: malformed JSON", name, line_of(data, end ? end : data + len));
        for (const char *p = end; p && p < data + len; p++)
            if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
                ds_records_end(r);
                FTK_FAIL(FTK_E_FORMAT, "%s: line %zu: text after the JSON array", name, line_of(data, p));
            }
        r->layout = DS_JSON_ARRAY;
        return FTK_OK;
    }
    r->layout = DS_JSONL;
    return FTK_OK;
}

void ds_records_end(struct ds_records *r)
{
    cJSON_Delete(r->array);
    r->array = NULL;
}

ftk_status ds_records_next(struct ds_records *r, struct ds_record *rec)
{
    memset(rec, 0, sizeof *rec);
    if (r->layout == DS_JSON_ARRAY) {
        cJSON *item = r->array ? r->array->child : NULL;
        if (!item)
            return FTK_E_EOF;
        cJSON_DetachItemViaPointer(r->array, item);
        rec->json = item;
        rec->index = r->index++;
        if (!cJSON_IsObject(item)) {
            cJSON_Delete(item);
            rec->json = NULL;
            FTK_FAIL(FTK_E_FORMAT, "%s: record %" PRId64 ": expected a JSON object", r->name, rec->index);
        }
        return FTK_OK;
    }
    /* the next non-blank line */
    for (;;) {
        if (r->pos >= r->len)
            return FTK_E_EOF;
        const char *p = r->data + r->pos, *nl = memchr(p, '\n', r->len - r->pos);
        size_t n = nl ? (size_t)(nl - p) : r->len - r->pos;
        size_t line = r->line;
        r->pos += n + (nl ? 1 : 0);
        r->line++;
        if (n && p[n - 1] == '\r')
            n--;
        size_t k = 0;
        while (k < n && (p[k] == ' ' || p[k] == '\t'))
            k++;
        if (r->layout == DS_LINES ? n == 0 : k == n)
            continue;   /* blank lines separate records, they are none */
        rec->index = r->index++;
        rec->line = line;
        if (r->layout == DS_LINES) {
            rec->text = p;
            rec->text_len = n;
            return FTK_OK;
        }
        const char *end = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts(p, n, &end, 0);
        int trailing = 0;
        for (const char *q = end; j && q && q < p + n; q++)
            trailing |= *q != ' ' && *q != '\t';
        if (!j || trailing) {
            cJSON_Delete(j);
            FTK_FAIL(FTK_E_FORMAT, "%s: line %zu: malformed JSON", r->name, line);
        }
        if (!cJSON_IsObject(j)) {
            cJSON_Delete(j);
            FTK_FAIL(FTK_E_FORMAT, "%s: line %zu: expected a JSON object", r->name, line);
        }
        rec->json = j;
        return FTK_OK;
    }
}
