/* libcore/dataset/tokenize.c: the tokenize run (ftk/dataset.h): inputs -> records ->
 * conversations -> ids and labels -> `example` messages, in input order. Records are read and
 * converted in batches on the calling thread; encoding runs on a thread pool; the batch is
 * written in order, so the output does not depend on the thread count. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/fileio.h"
#include "ftk/message.h"
#include "ftk/stream.h"
#include "ftk/progress.h"
#include "ftk/threads.h"
#include "dataset-impl.h"

#define BATCH 1024

struct run {
    const struct ftk_tokenize_config *c;
    struct ftk_tokenizer *tok;
    struct ftk_template *tpl;
    struct ftk_text_encoder enc;
    struct ftk_label_config labels;
    enum ftk_example_kind kind;
    int32_t eos_id;
    struct ftk_progress prog;
};

enum { OUT_IDS, OUT_LABELS, OUT_REJ_IDS, OUT_REJ_LABELS, N_OUT };

struct job {
    struct ds_record rec;
    struct ds_conv conv;
    char *why;                 /* a bad record: what is wrong (malloc'd) */
    struct ftk_ids out[N_OUT];
    int64_t prompt_len;
    int truncated;
};

struct batch {
    struct run *run;
    struct job *jobs;
    size_t n;
};

static ftk_status enc_encode(void *ctx, const char *text, size_t len, struct ftk_ids *out)
{
    return ftk_tokenizer_encode(ctx, text, len, 0, out);
}

static int32_t enc_token_to_id(void *ctx, const char *token) { return ftk_tokenizer_token_to_id(ctx, token); }

static ftk_status check_utf8(const char *what, const char *s, size_t n)
{
    size_t at = ds_utf8_invalid_at(s, n);
    FTK_FAIL_IF(at < n, FTK_E_FORMAT, "invalid UTF-8 in %s at byte %zu (0x%02x)", what, at, (unsigned char)s[at]);
    return FTK_OK;
}

static ftk_status encode_text(struct run *r, struct job *j)
{
    const struct ftk_tokenize_config *c = r->c;
    struct ftk_ids *ids = &j->out[OUT_IDS];
    FTK_TRY(check_utf8("the text", j->conv.text, j->conv.text_len));
    FTK_TRY(ftk_tokenizer_encode(r->tok, j->conv.text, j->conv.text_len, c->add_special_tokens, ids));
    if (c->append_eos) {
        FTK_FAIL_IF(r->eos_id < 0, FTK_E_INVALID, "--append-eos: the tokenizer has no eos token");
        FTK_TRY(ds_ids_push(ids, r->eos_id));
    }
    if (c->cutoff_len > 0 && (int64_t)ids->n > c->cutoff_len) {
        ids->n = (size_t)c->cutoff_len;   /* tokenizer(..., truncation=True, max_length=cutoff_len) */
        j->truncated = 1;
    }
    return ds_ids_append(&j->out[OUT_LABELS], ids->ids, ids->n);
}

/* Encodes messages [0, n) of the conversation into one id list per message. */
static ftk_status encode_msgs(struct run *r, const struct ds_conv *cv, const struct ftk_chat_message *msgs, size_t n,
                              struct ftk_ids *per_msg)
{
    const char *system = cv->system && *cv->system ? cv->system : r->c->default_system;
    return ftk_template_encode(r->tpl, &r->enc, msgs, n, system, per_msg);
}

static void free_ids(struct ftk_ids *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ds_ids_free(&v[i]);
}

static ftk_status concat(const struct ftk_ids *v, size_t n, struct ftk_ids *out)
{
    for (size_t i = 0; i < n; i++)
        FTK_TRY(ds_ids_append(out, v[i].ids, v[i].n));
    return FTK_OK;
}

static ftk_status encode_chat(struct run *r, struct job *j)
{
    struct ds_conv *cv = &j->conv;
    for (size_t i = 0; i < cv->n_msgs; i++) {
        char what[64];
        snprintf(what, sizeof what, "message %zu", i);
        FTK_TRY(check_utf8(what, cv->msgs[i].content, strlen(cv->msgs[i].content)));
    }
    if (cv->system)
        FTK_TRY(check_utf8("the system prompt", cv->system, strlen(cv->system)));
    size_t n = cv->n_msgs;
    struct ftk_ids *m = calloc(n + 1, sizeof *m);
    FTK_FAIL_IF(!m, FTK_E_NOMEM, "out of memory");
    struct ftk_ids prompt = {0}, rejected_prompt = {0};
    ftk_status st = FTK_OK;
    switch (cv->kind) {
    case FTK_EXAMPLE_SFT:
        st = encode_msgs(r, cv, cv->msgs, n, m);
        if (st == FTK_OK)
            st = ftk_labels_supervised(&r->labels, m, n, &j->out[OUT_IDS], &j->out[OUT_LABELS], &j->truncated);
        break;
    case FTK_EXAMPLE_PAIRWISE: {
        /* PairwiseDatasetProcessor: prompt + chosen and prompt + rejected, each encode_oneturn */
        size_t np = cv->n_prompt;
        struct ftk_chat_message *tmp = malloc((np + 1) * sizeof *tmp);
        if (!tmp) {
            st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
            break;
        }
        memcpy(tmp, cv->msgs, np * sizeof *tmp);
        tmp[np] = cv->msgs[np];
        st = encode_msgs(r, cv, tmp, np + 1, m);
        if (st == FTK_OK)
            st = concat(m, np, &prompt);
        if (st == FTK_OK) {
            struct ftk_ids *m2 = m + 0;
            /* the rejected reply, in a second pass over fresh lists */
            struct ftk_ids *rej = calloc(np + 1, sizeof *rej);
            if (!rej)
                st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
            if (st == FTK_OK) {
                tmp[np] = cv->msgs[np + 1];
                st = encode_msgs(r, cv, tmp, np + 1, rej);
            }
            if (st == FTK_OK)
                st = concat(rej, np, &rejected_prompt);
            if (st == FTK_OK && (prompt.n != rejected_prompt.n ||
                                 memcmp(prompt.ids, rejected_prompt.ids, prompt.n * sizeof(int32_t)) != 0))
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__,
                                   "the prompt encodes differently before the chosen and the rejected reply");
            if (st == FTK_OK)
                st = ftk_labels_pairwise(&r->labels, &prompt, &m2[np], &rej[np], &j->out[OUT_IDS], &j->out[OUT_LABELS],
                                         &j->out[OUT_REJ_IDS], &j->out[OUT_REJ_LABELS], &j->truncated);
            if (rej)
                free_ids(rej, np + 1);
            free(rej);
        }
        free(tmp);
        break;
    }
    case FTK_EXAMPLE_KTO:
        st = encode_msgs(r, cv, cv->msgs, n, m);
        if (st == FTK_OK)
            st = concat(m, n - 1, &prompt);
        if (st == FTK_OK)
            st = ftk_labels_feedback(&r->labels, &prompt, &m[n - 1], &j->out[OUT_IDS], &j->out[OUT_LABELS],
                                     &j->prompt_len, &j->truncated);
        break;
    case FTK_EXAMPLE_TEXT:
        break;
    }
    free_ids(m, n + 1);
    free(m);
    ds_ids_free(&prompt);
    ds_ids_free(&rejected_prompt);
    return st;
}

static void encode_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    struct batch *b = arg;
    for (int64_t i = begin; i < end; i++) {
        struct job *j = &b->jobs[i];
        if (j->why)
            continue;
        ftk_status st = j->conv.kind == FTK_EXAMPLE_TEXT ? encode_text(b->run, j) : encode_chat(b->run, j);
        if (st != FTK_OK) {
            j->why = strdup(ftk_last_error());
            if (!j->why)
                j->why = strdup("out of memory");
        }
    }
}

static ftk_status add_i32(struct ftk_message *m, const char *name, const struct ftk_ids *v)
{
    int64_t shape[1] = {(int64_t)v->n};
    return ftk_message_add(m, name, FTK_DTYPE_I32, 1, shape, v->ids, NULL);
}

static ftk_status write_example(struct run *r, struct ftk_stream_writer *w, const char *source, struct job *j)
{
    struct ftk_message m;
    ftk_message_init(&m);
    ftk_status st = ftk_message_set_meta(&m, "kind", "example");
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&m, "index", j->rec.index);
    if (st == FTK_OK)
        st = ftk_message_set_meta(&m, "source", source);
    if (st == FTK_OK) {
        if (r->kind == FTK_EXAMPLE_PAIRWISE) {
            st = add_i32(&m, "chosen_input_ids", &j->out[OUT_IDS]);
            if (st == FTK_OK)
                st = add_i32(&m, "chosen_labels", &j->out[OUT_LABELS]);
            if (st == FTK_OK)
                st = add_i32(&m, "rejected_input_ids", &j->out[OUT_REJ_IDS]);
            if (st == FTK_OK)
                st = add_i32(&m, "rejected_labels", &j->out[OUT_REJ_LABELS]);
        } else {
            st = add_i32(&m, "input_ids", &j->out[OUT_IDS]);
            if (st == FTK_OK)
                st = add_i32(&m, "labels", &j->out[OUT_LABELS]);
        }
    }
    if (st == FTK_OK && r->kind == FTK_EXAMPLE_KTO) {
        int64_t one[1] = {1};
        int32_t tag = j->conv.kto_tag, pl = (int32_t)j->prompt_len;
        st = ftk_message_add(&m, "kto_tag", FTK_DTYPE_I32, 1, one, &tag, NULL);
        if (st == FTK_OK)
            st = ftk_message_add(&m, "prompt_len", FTK_DTYPE_I32, 1, one, &pl, NULL);
    }
    if (st == FTK_OK)
        st = ftk_stream_write(w, &m);
    ftk_message_free(&m);
    return st;
}

static void job_clear(struct job *j)
{
    ds_conv_free(&j->conv);
    cJSON_Delete(j->rec.json);
    free(j->why);
    free_ids(j->out, N_OUT);
    memset(j, 0, sizeof *j);
}

/* Encodes and writes the batch, in order. */
static ftk_status flush(struct run *r, struct ftk_threads *pool, struct ftk_stream_writer *w, const char *source,
                        struct batch *b, struct ftk_tokenize_stats *stats)
{
    ftk_threads_for(pool, (int64_t)b->n, 8, encode_range, b);
    ftk_status st = FTK_OK;
    for (size_t i = 0; i < b->n && st == FTK_OK; i++) {
        struct job *j = &b->jobs[i];
        if (j->why) {
            char where[64];
            if (j->rec.line)
                snprintf(where, sizeof where, "line %zu", j->rec.line);
            else
                snprintf(where, sizeof where, "record %" PRId64, j->rec.index);
            if (!r->c->skip_bad) {
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: %s: %s (--skip-bad skips bad records)",
                                   source, where, j->why);
                break;
            }
            stats->skipped++;
            if (r->c->on_skip) {
                char why[1024];
                snprintf(why, sizeof why, "%s: %s", where, j->why);
                r->c->on_skip(r->c->on_skip_ctx, source, j->rec.index, why);
            }
            continue;
        }
        st = write_example(r, w, source, j);
        stats->examples++;
        stats->truncated += j->truncated;
        stats->tokens += (int64_t)(j->out[OUT_IDS].n + j->out[OUT_REJ_IDS].n);
    }
    for (size_t i = 0; i < b->n; i++)
        job_clear(&b->jobs[i]);
    b->n = 0;
    char pst[64];
    snprintf(pst, sizeof pst, "%lld tokens", (long long)stats->tokens);
    ftk_progress_update(&r->prog, stats->examples, pst);
    return st;
}

static ftk_status run_file(struct run *r, struct ftk_threads *pool, struct ftk_stream_writer *w, const char *name,
                           const char *data, size_t len, struct batch *b, struct ftk_tokenize_stats *stats)
{
    struct ds_records recs;
    FTK_TRY(ds_records_begin(&recs, name, data, len, r->kind == FTK_EXAMPLE_TEXT));
    ftk_status st = FTK_OK;
    for (;;) {
        struct job *j = &b->jobs[b->n];
        ftk_status rs = ds_records_next(&recs, &j->rec);
        if (rs == FTK_E_EOF)
            break;
        stats->records++;
        if (rs != FTK_OK) {
            /* a malformed line: a bad record like any other, reported in order at the flush */
            j->why = strdup(strstr(ftk_last_error(), "malformed JSON") ? "malformed JSON" : "expected a JSON object");
        } else if (ds_convert(&r->c->attr, &j->rec, &j->conv) != FTK_OK) {
            j->why = strdup(ftk_last_error());
        }
        b->n++;
        if (b->n == BATCH && (st = flush(r, pool, w, name, b, stats)) != FTK_OK)
            break;
    }
    if (st == FTK_OK)
        st = flush(r, pool, w, name, b, stats);
    else {
        for (size_t i = 0; i < b->n; i++)
            job_clear(&b->jobs[i]);
        b->n = 0;
    }
    ds_records_end(&recs);
    return st;
}

static ftk_status set_id(struct ftk_message *m, const char *key, int32_t id)
{
    return ftk_message_set_meta_int(m, key, id);
}

static ftk_status write_header(struct run *r, struct ftk_stream_writer *w)
{
    const struct ftk_tokenize_config *c = r->c;
    struct ftk_message m;
    ftk_message_init(&m);
    int32_t pad = ftk_tokenizer_special_id(r->tok, "pad_token");
    if (pad < 0)
        pad = r->eos_id;   /* LLaMA-Factory fix_special_tokens: pad_token = eos_token */
    ftk_status st = ftk_stream_header_init(&m, "ftk-tokenize");
    if (st == FTK_OK)
        st = ftk_message_set_meta(&m, "tokenizer_hash", ftk_tokenizer_hash(r->tok));
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&m, "vocab_size", (int64_t)ftk_tokenizer_vocab_size(r->tok));
    if (st == FTK_OK)
        st = ftk_message_set_meta(&m, "template", r->tpl ? ftk_template_name(r->tpl) : "none");
    if (st == FTK_OK)
        st = set_id(&m, "pad_token_id", pad);
    if (st == FTK_OK)
        st = set_id(&m, "bos_token_id", ftk_tokenizer_special_id(r->tok, "bos_token"));
    if (st == FTK_OK)
        st = set_id(&m, "eos_token_id", r->eos_id);
    if (st == FTK_OK)
        st = ftk_message_set_meta(&m, "example_kind", ftk_example_kind_name(r->kind));
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&m, "cutoff_len", c->cutoff_len > 0 ? c->cutoff_len : 0);
    if (st == FTK_OK)
        st = ftk_message_set_meta(&m, "format", ftk_data_format_name(c->attr.format));
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&m, "train_on_prompt", c->train_on_prompt);
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&m, "mask_history", c->mask_history);
    if (st == FTK_OK && r->kind == FTK_EXAMPLE_TEXT)
        st = ftk_message_set_meta_int(&m, "add_special_tokens", c->add_special_tokens);
    if (st == FTK_OK)
        st = ftk_stream_write(w, &m);
    ftk_message_free(&m);
    return st;
}

static ftk_status setup(struct run *r, const struct ftk_tokenize_config *c)
{
    memset(r, 0, sizeof *r);
    r->c = c;
    r->kind = ds_example_kind(&c->attr);
    FTK_FAIL_IF(r->kind != FTK_EXAMPLE_TEXT && !c->template_name, FTK_E_INVALID,
                "--format %s needs --template (a name or a file)", ftk_data_format_name(c->attr.format));
    FTK_FAIL_IF(r->kind == FTK_EXAMPLE_TEXT && c->template_name, FTK_E_INVALID,
                "--format text takes no --template (documents are encoded as they are)");
    FTK_FAIL_IF(c->mask_history && c->train_on_prompt, FTK_E_INVALID, "--mask-history and --train-on-prompt exclude each other");
    FTK_TRY(ftk_tokenizer_load_path(c->tokenizer, &r->tok));
    r->eos_id = ftk_tokenizer_special_id(r->tok, "eos_token");
    if (c->template_name) {
        FTK_TRY(ftk_template_load(c->template_name, &r->tpl));
        const char *eos = ftk_template_eos_token(r->tpl);
        if (eos) {   /* replace_eos: the first stop word is the eos token from now on */
            r->eos_id = ftk_tokenizer_token_to_id(r->tok, eos);
            FTK_FAIL_IF(r->eos_id < 0, FTK_E_MISMATCH, "template %s: its eos token %s is not in the tokenizer's vocabulary",
                        ftk_template_name(r->tpl), eos);
        }
        FTK_FAIL_IF(c->train_on_prompt && ftk_template_efficient_eos(r->tpl), FTK_E_INVALID,
                    "template %s (efficient_eos) does not support --train-on-prompt", ftk_template_name(r->tpl));
    }
    r->enc = (struct ftk_text_encoder){
        .ctx = r->tok, .encode = enc_encode, .token_to_id = enc_token_to_id,
        .bos_id = ftk_tokenizer_special_id(r->tok, "bos_token"), .eos_id = r->eos_id,
    };
    r->labels = (struct ftk_label_config){
        .cutoff_len = c->cutoff_len, .train_on_prompt = c->train_on_prompt, .mask_history = c->mask_history,
        .efficient_eos = r->tpl ? ftk_template_efficient_eos(r->tpl) : 0, .eos_id = r->eos_id,
    };
    FTK_FAIL_IF(r->labels.efficient_eos && r->eos_id < 0, FTK_E_INVALID, "efficient_eos needs an eos token");
    return FTK_OK;
}

ftk_status ftk_tokenize_run(const struct ftk_tokenize_config *c, FILE *out, struct ftk_tokenize_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    struct run r;
    ftk_status st = setup(&r, c);
    struct ftk_threads *pool = NULL;
    struct ftk_stream_writer *w = NULL;
    struct batch b = {.run = &r};
    if (st == FTK_OK && c->threads > 1)
        st = ftk_threads_create(c->threads, &pool);
    if (st == FTK_OK) {
        b.jobs = calloc(BATCH, sizeof *b.jobs);
        if (!b.jobs)
            st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    }
    if (st == FTK_OK)
        st = ftk_stream_writer_open(out, c->zstd_level, &w);
    if (st == FTK_OK)
        st = write_header(&r, w);
    ftk_progress_start(&r.prog, "tokenize", "examples", 0, c->quiet);
    size_t n_in = c->n_inputs ? c->n_inputs : 1;
    for (size_t i = 0; i < n_in && st == FTK_OK; i++) {
        struct ds_input *in = NULL;
        st = ds_input_open(c->n_inputs ? c->inputs[i] : NULL, &in);
        while (st == FTK_OK) {
            char *name = NULL, *data = NULL;
            size_t len = 0;
            ftk_status rs = ds_input_next(in, &name, &data, &len);
            if (rs == FTK_E_EOF)
                break;
            st = rs;
            if (st == FTK_OK)
                st = run_file(&r, pool, w, name, data, len, &b, stats);
            free(name);
            free(data);
        }
        ds_input_close(in);
    }
    if (st == FTK_OK)
        ftk_progress_done(&r.prog);
    if (st == FTK_OK) {
        struct ftk_message end;
        ftk_message_init(&end);
        st = ftk_message_set_meta_int(&end, "records", stats->records);
        if (st == FTK_OK)
            st = ftk_message_set_meta_int(&end, "examples", stats->examples);
        if (st == FTK_OK)
            st = ftk_message_set_meta_int(&end, "skipped", stats->skipped);
        if (st == FTK_OK)
            st = ftk_message_set_meta_int(&end, "truncated", stats->truncated);
        if (st == FTK_OK)
            st = ftk_message_set_meta_int(&end, "tokens", stats->tokens);
        if (st == FTK_OK)
            st = ftk_stream_writer_finish(w, &end);
        ftk_message_free(&end);
    }
    ftk_stream_writer_close(w);
    free(b.jobs);
    ftk_threads_free(pool);
    ftk_template_free(r.tpl);
    ftk_tokenizer_free(r.tok);
    return st;
}

/* ---- --decode ------------------------------------------------------------------------------- */

static ftk_status decode_to(const struct ftk_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                            cJSON *obj, const char *key)
{
    char *text = NULL;
    size_t len = 0;
    FTK_TRY(ftk_tokenizer_decode(t, ids, n, skip_special, -1, &text, &len));
    cJSON *s = cJSON_CreateString(text);
    free(text);
    FTK_FAIL_IF(!s, FTK_E_NOMEM, "out of memory");
    cJSON_AddItemToObject(obj, key, s);
    return FTK_OK;
}

static ftk_status print_obj(FILE *out, cJSON *obj)
{
    char *s = cJSON_PrintUnformatted(obj);
    FTK_FAIL_IF(!s, FTK_E_NOMEM, "out of memory");
    int ok = fputs(s, out) >= 0 && fputc('\n', out) != EOF;
    free(s);
    FTK_FAIL_IF(!ok, FTK_E_IO, "write failed");
    return FTK_OK;
}

static ftk_status decode_jsonl(const struct ftk_tokenizer *t, FILE *in, const char *name, FILE *out, int skip_special,
                               int64_t *count)
{
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    ftk_status st = FTK_OK;
    struct ftk_ids ids = {0};
    while (st == FTK_OK && (n = getline(&line, &cap, in)) >= 0) {
        lineno++;
        size_t k = 0;
        while (k < (size_t)n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r' || line[k] == '\n'))
            k++;
        if (k == (size_t)n)
            continue;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)n);
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "ids"), *e;
        if (!cJSON_IsArray(arr)) {
            cJSON_Delete(j);
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: line %zu: expected {\"ids\": [...]}", name, lineno);
            break;
        }
        ids.n = 0;
        cJSON_ArrayForEach(e, arr) {
            /* range first: casting a double outside int32 is undefined */
            if (!cJSON_IsNumber(e) || !(e->valuedouble >= 0 && e->valuedouble <= INT32_MAX) ||
                e->valuedouble != (double)(int32_t)e->valuedouble) {
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: line %zu: ids must be non-negative integers",
                                   name, lineno);
                break;
            }
            if ((st = ds_ids_push(&ids, (int32_t)e->valuedouble)) != FTK_OK)
                break;
        }
        cJSON *o = cJSON_CreateObject();
        if (st == FTK_OK && !o)
            st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
        if (st == FTK_OK) {
            st = decode_to(t, ids.ids, ids.n, skip_special, o, "text");
            if (st != FTK_OK)
                st = ftk_error_wrap(st, "%s: line %zu", name, lineno);
        }
        if (st == FTK_OK)
            st = print_obj(out, o);
        if (st == FTK_OK)
            (*count)++;
        cJSON_Delete(o);
        cJSON_Delete(j);
    }
    free(line);
    ds_ids_free(&ids);
    return st;
}

static ftk_status decode_stream(const struct ftk_tokenizer *t, FILE *in, const char *name, FILE *out, int skip_special,
                                int64_t *count)
{
    struct ftk_stream_reader *rd = NULL;
    FTK_TRY(ftk_stream_reader_open(in, name, &rd));
    struct ftk_message m;
    ftk_message_init(&m);
    ftk_status st;
    while ((st = ftk_stream_read(rd, &m)) == FTK_OK) {
        const char *kind = ftk_message_kind(&m);
        if (!kind || strcmp(kind, "example") != 0)
            continue;
        static const char *const names[][2] = {
            {"input_ids", "text"}, {"chosen_input_ids", "chosen"}, {"rejected_input_ids", "rejected"},
        };
        cJSON *o = cJSON_CreateObject();
        if (!o) {
            st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
            break;
        }
        int found = 0;
        for (size_t k = 0; k < 3 && st == FTK_OK; k++) {
            if (!ftk_message_find(&m, names[k][0]))
                continue;
            struct ftk_tensor *tt;
            st = ftk_message_get(&m, names[k][0], FTK_DTYPE_I32, 1, &tt);
            if (st == FTK_OK)
                st = decode_to(t, tt->data, (size_t)tt->shape[0], skip_special, o, names[k][1]);
            found++;
        }
        if (st == FTK_OK && !found)
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message %zu: an example without input_ids",
                               name, ftk_stream_reader_index(rd));
        if (st == FTK_OK)
            st = print_obj(out, o);
        cJSON_Delete(o);
        if (st != FTK_OK) {
            st = ftk_error_wrap(st, "%s: message %zu", name, ftk_stream_reader_index(rd));
            break;
        }
        (*count)++;
    }
    ftk_message_free(&m);
    ftk_stream_reader_close(rd);
    return st == FTK_E_EOF ? FTK_OK : st;
}

ftk_status ftk_tokenize_decode(const char *tokenizer, FILE *in, const char *in_name, FILE *out, int skip_special,
                               int64_t *count)
{
    *count = 0;
    struct ftk_tokenizer *t = NULL;
    FTK_TRY(ftk_tokenizer_load_path(tokenizer, &t));
    FILE *src = NULL;
    int is_stream = 0;
    ftk_status st = ftk_input_sniff(in, &src, &is_stream);   /* a stream, or JSON lines */
    if (st == FTK_OK)
        st = is_stream ? decode_stream(t, src, in_name, out, skip_special, count)
                       : decode_jsonl(t, src, in_name, out, skip_special, count);
    if (src)
        fclose(src);
    if (st == FTK_OK && fflush(out) != 0)
        st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "write failed");
    ftk_tokenizer_free(t);
    return st;
}
