/* libcore/dataset/dataset-impl.h: helpers shared by the files of libcore/dataset/ (template.c,
 * labels.c, input.c, convert.c, tokenize.c). Not installed. */
#ifndef FTK_DATASET_IMPL_H
#define FTK_DATASET_IMPL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/error.h"
#include "ftk/tokenizer.h"

/* ftk_ids helpers of our own, so the dataset code (and its unit tests) link without the
 * tokenizer's objects. */
static inline ftk_status ds_ids_reserve(struct ftk_ids *v, size_t n)
{
    if (n <= v->cap)
        return FTK_OK;
    size_t cap = v->cap ? v->cap : 16;
    while (cap < n)
        cap *= 2;
    int32_t *p = realloc(v->ids, cap * sizeof *p);
    if (!p)
        return ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory (%zu ids)", n);
    v->ids = p;
    v->cap = cap;
    return FTK_OK;
}
static inline ftk_status ds_ids_append(struct ftk_ids *v, const int32_t *ids, size_t n)
{
    FTK_TRY(ds_ids_reserve(v, v->n + n));
    if (n)
        memcpy(v->ids + v->n, ids, n * sizeof *ids);
    v->n += n;
    return FTK_OK;
}
static inline ftk_status ds_ids_push(struct ftk_ids *v, int32_t id) { return ds_ids_append(v, &id, 1); }
static inline ftk_status ds_ids_fill(struct ftk_ids *v, int32_t value, size_t n)
{
    FTK_TRY(ds_ids_reserve(v, v->n + n));
    for (size_t i = 0; i < n; i++)
        v->ids[v->n + i] = value;
    v->n += n;
    return FTK_OK;
}
static inline void ds_ids_free(struct ftk_ids *v)
{
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

/* A growable NUL-terminated string. */
struct ds_buf {
    char *p;
    size_t n, cap;
};
static inline ftk_status ds_buf_add(struct ds_buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory (%zu bytes)", cap);
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return FTK_OK;
}
static inline ftk_status ds_buf_str(struct ds_buf *b, const char *s) { return ds_buf_add(b, s, strlen(s)); }

/* Byte offset of the first invalid UTF-8 sequence in s[0..n), or n when all of it is valid
 * (overlongs, surrogates and code points past U+10FFFF are invalid, as in Python's decoder). */
size_t ds_utf8_invalid_at(const char *s, size_t n);

/* ---- input.c: dataset files ------------------------------------------------------------------ */

#include <cjson/cJSON.h>

/* A dataset input: a file or stdin, plain or compressed (.gz, .zst, .xz, .bz2: detected by
 * magic), or an archive (.tar[.*], .zip, .7z, .cpio) whose .json/.jsonl/.txt members are the
 * dataset files, in archive order. */
struct ds_input;
/* path NULL or "-": stdin. */
ftk_status ds_input_open(const char *path, struct ds_input **out);
/* The next dataset file, whole and decompressed: *name ("file", "archive.tar:member") and
 * *data (NUL-terminated) are malloc'd for the caller. FTK_E_EOF after the last. */
ftk_status ds_input_next(struct ds_input *in, char **name, char **data, size_t *len);
void ds_input_close(struct ds_input *in);

enum ds_layout { DS_LINES = 0, DS_JSONL = 1, DS_JSON_ARRAY = 2 };

/* Records of one dataset file. */
struct ds_records {
    const char *name;
    const char *data;
    size_t len, pos, line;   /* line: 1-based number of the line at pos */
    enum ds_layout layout;
    cJSON *array;
    int64_t index;           /* records handed out so far */
};
struct ds_record {
    cJSON *json;             /* a JSON object, the caller's (cJSON_Delete); NULL for a text line */
    const char *text;        /* DS_LINES: the line, not NUL-terminated, without its newline */
    size_t text_len;
    int64_t index;           /* 0-based record number in the file */
    size_t line;             /* 1-based line where the record starts; 0 inside a JSON array */
};
/* Detects the layout: a JSON array ('[' first), JSON lines ('{' first), or, when lines_ok,
 * plain text lines (also forced by a .txt name). A malformed JSON array fails here, naming
 * the file and line. */
ftk_status ds_records_begin(struct ds_records *r, const char *name, const char *data, size_t len, int lines_ok);
/* FTK_E_EOF at the end. A malformed JSON line is FTK_E_FORMAT naming file and line, with the
 * record's index and line filled in and the reader past it, so the caller may skip it. Blank
 * lines are not records. */
ftk_status ds_records_next(struct ds_records *r, struct ds_record *rec);
void ds_records_end(struct ds_records *r);

/* ---- convert.c: one record to a conversation (LLaMA-Factory's converter.py) ------------------ */

#include "ftk/dataset.h"
#include "ftk/template.h"

struct ds_conv {
    enum ftk_example_kind kind;
    /* Prompt messages, then the reply: sft and kto one, pairwise two (chosen, rejected). */
    struct ftk_chat_message *msgs;
    size_t n_prompt, n_msgs;
    const char *system;      /* NULL: none */
    int kto_tag;             /* kto: 1 desirable, 0 undesirable */
    const char *text;        /* text: the document */
    size_t text_len;
    char **owned;            /* strings made here (joined prompts) */
    size_t n_owned;
};
/* The example kind a dataset description produces. */
enum ftk_example_kind ds_example_kind(const struct ftk_dataset_attr *a);
/* Fills `out` from a record; contents point into the record (and out->owned), so the record
 * must outlive the conversation. Errors say which field is missing or wrong. */
ftk_status ds_convert(const struct ftk_dataset_attr *a, const struct ds_record *rec, struct ds_conv *out);
void ds_conv_free(struct ds_conv *c);

#endif
