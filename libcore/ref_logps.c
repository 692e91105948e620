/* libcore/ref_logps.c: the body of `ftk ref-logps` (ftk/ref_logps.h): batches in, the same
 * batches with the reference model's per-row log-prob sums out. Streaming: one message held. */
#include <stdlib.h>
#include <string.h>
#include "ftk/progress.h"
#include "ftk/model.h"
#include "ftk/ref_logps.h"
#include "ftk/stream.h"
#include "ftk/train_run.h"

/* The rows named prefix+input_ids, labels, position_ids (segment_ids) of a batch; B = 0 when
 * the batch has no input_ids under that prefix. */
static ftk_status rows_of(const struct ftk_message *msg, const char *prefix, struct ftk_batch_view *v, size_t idx)
{
    char n[4][64];
    static const char *const names[4] = {"input_ids", "labels", "position_ids", "segment_ids"};
    struct ftk_tensor *t[4] = {0};
    memset(v, 0, sizeof *v);
    for (int k = 0; k < 4; k++)
        snprintf(n[k], sizeof n[k], "%s%s", prefix, names[k]);
    if (!ftk_message_find(msg, n[0]))
        return FTK_OK;
    ftk_status s = FTK_OK;
    for (int k = 0; k < 4 && s == FTK_OK; k++)
        if (k < 3 || ftk_message_find(msg, n[k]))
            s = ftk_message_get(msg, n[k], FTK_DTYPE_I32, 2, &t[k]);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "message %zu", idx);
    int64_t B = t[0]->shape[0], T = t[0]->shape[1];
    for (int k = 1; k < 4; k++)
        FTK_FAIL_IF(t[k] && (t[k]->shape[0] != B || t[k]->shape[1] != T), FTK_E_FORMAT,
                    "message %zu: %s is [%lld,%lld], %s [%lld,%lld]", idx, n[k], (long long)t[k]->shape[0],
                    (long long)t[k]->shape[1], n[0], (long long)B, (long long)T);
    *v = (struct ftk_batch_view){B, T, t[0]->data, t[1]->data, t[2]->data, t[3] ? t[3]->data : NULL};
    return FTK_OK;
}

/* Forwards the rows (train = 0) and adds their sums as tensor `name` F32[B]. */
static ftk_status add_logps(struct ftk_model *m, struct ftk_message *msg, const struct ftk_batch_view *v,
                            const char *name, size_t idx, int64_t *tokens)
{
    struct ftk_tensor *out;
    int64_t shape[1] = {v->B};
    FTK_TRY(ftk_message_add(msg, name, FTK_DTYPE_F32, 1, shape, NULL, &out));
    int64_t *nt = calloc((size_t)(v->B > 0 ? v->B : 1), sizeof *nt);
    FTK_FAIL_IF(!nt, FTK_E_NOMEM, "out of memory");
    ftk_status s = ftk_model_forward(m, v, 0, out->data, nt);
    for (int64_t i = 0; i < v->B && s == FTK_OK; i++)
        *tokens += nt[i];
    free(nt);
    return s == FTK_OK ? FTK_OK : ftk_error_wrap(s, "message %zu (%s)", idx, name);
}

/* The header without metadata `key`: a stream that went through `ftk ref-logps --adapter`
 * before must not keep naming that adapter once the reference has none. */
static ftk_status drop_meta(struct ftk_message *msg, const char *key)
{
    if (!ftk_message_get_meta(msg, key))
        return FTK_OK;
    struct ftk_message h;
    ftk_message_init(&h);
    ftk_status s = FTK_OK;
    for (size_t i = 0; i < msg->n_meta && s == FTK_OK; i++)
        if (strcmp(msg->meta[i].key, key))
            s = ftk_message_set_meta(&h, msg->meta[i].key, msg->meta[i].value);
    for (size_t i = 0; i < msg->n_tensors && s == FTK_OK; i++) {
        const struct ftk_tensor *t = &msg->tensors[i].t;
        s = ftk_message_add(&h, msg->tensors[i].name, t->dtype, t->ndim, t->shape, t->data, NULL);
    }
    if (s != FTK_OK) {
        ftk_message_free(&h);
        return s;
    }
    ftk_message_free(msg);
    *msg = h;
    return FTK_OK;
}

ftk_status ftk_ref_logps_run(const struct ftk_ref_logps_opts *o, FILE *in, const char *name, FILE *out,
                             struct ftk_ref_logps_stats *stats)
{
    FTK_FAIL_IF(!o->model, FTK_E_INVALID, "no reference model given");
    struct ftk_ref_logps_stats st = {0};
    const struct ftk_backend *be = ftk_backend_cpu();
    void *ctx = NULL;
    struct ftk_backend_opts bo = {.struct_size = sizeof bo, .threads = o->threads};
    FTK_TRY(be->create(&bo, &ctx));
    struct ftk_model *m = NULL;
    struct ftk_stream_reader *r = NULL;
    struct ftk_stream_writer *w = NULL;
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status s = ftk_model_load(o->model, be, ctx, &m);
    if (s == FTK_OK && o->adapter)
        s = ftk_model_load_adapter(m, o->adapter, 0);
    if (s == FTK_OK)
        s = ftk_stream_reader_open(in, name, &r);
    if (s == FTK_OK)
        s = ftk_stream_read(r, &msg);
    if (s == FTK_OK)
        s = ftk_stream_check_model(&msg, o->model, ftk_model_get_config(m), name);
    if (s == FTK_OK)
        s = ftk_message_set_meta(&msg, "ref_model", o->model);
    if (s == FTK_OK)
        s = o->adapter ? ftk_message_set_meta(&msg, "ref_adapter", o->adapter) : drop_meta(&msg, "ref_adapter");
    if (s == FTK_OK)
        s = ftk_stream_writer_open(out, o->zstd_level, &w);
    if (s == FTK_OK)
        s = ftk_stream_write(w, &msg);
    int ended = 0;
    struct ftk_progress prog;
    ftk_progress_start(&prog, "ref-logps", "batches", 0, o->quiet);
    while (s == FTK_OK) {
        if ((s = ftk_stream_read(r, &msg)) != FTK_OK)
            break;
        size_t idx = ftk_stream_reader_index(r);
        const char *kind = ftk_message_kind(&msg);
        if (!strcmp(kind, "end")) {
            /* the writer counts its own messages; the rest of the end metadata passes through */
            struct ftk_message end;
            ftk_message_init(&end);
            for (size_t i = 0; i < msg.n_meta && s == FTK_OK; i++)
                if (strcmp(msg.meta[i].key, "kind") && strcmp(msg.meta[i].key, "messages"))
                    s = ftk_message_set_meta(&end, msg.meta[i].key, msg.meta[i].value);
            if (s == FTK_OK)
                s = ftk_stream_writer_finish(w, &end);
            ftk_message_free(&end);
            ended = 1;
            continue;
        }
        if (!strcmp(kind, "example")) {
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__,
                              "%s: message %zu is an example: batch the stream with `ftk pack` first", name, idx);
            break;
        }
        if (!strcmp(kind, "batch")) {
            struct ftk_batch_view v, kv;
            if ((s = rows_of(&msg, "", &v, idx)) == FTK_OK && v.B == 0)
                s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message %zu: a batch without input_ids", name, idx);
            if (s == FTK_OK)
                s = add_logps(m, &msg, &v, "ref_logps", idx, &st.tokens);
            if (s == FTK_OK && (s = rows_of(&msg, "kl_", &kv, idx)) == FTK_OK && kv.B > 0) {
                s = add_logps(m, &msg, &kv, "kl_ref_logps", idx, &st.tokens);
                st.kl_rows += kv.B;
            }
            st.batches++;
            st.rows += v.B;
            char pst[48];
            snprintf(pst, sizeof pst, "%lld rows", (long long)st.rows);
            ftk_progress_update(&prog, st.batches, pst);
        }
        if (s == FTK_OK)
            s = ftk_stream_write(w, &msg);
    }
    if (s == FTK_E_EOF && ended)
        ftk_progress_done(&prog);
    if (s == FTK_E_EOF)
        s = ended ? FTK_OK : ftk_error_set(FTK_E_TRUNCATED, __FILE__, __LINE__, "%s: the stream has no end message", name);
    ftk_message_free(&msg);
    ftk_stream_writer_close(w);
    ftk_stream_reader_close(r);
    ftk_model_free(m);
    be->destroy(ctx);
    if (stats)
        *stats = st;
    return s;
}
