/* libcore/eval.c: ftk eval (ftk/eval.h): setup, mode choice, and the two stream modes.
 *
 * loss: over every batch row, the sum of label log-probs (ftk_model_forward, train = 0) and
 * their count; loss = -sum / count (the token mean, as the SFT loss), perplexity = exp(loss).
 * preference: pairwise batches (B/2 chosen rows, then the B/2 rejected rows in the same
 * order); rewards as TRL's DPOTrainer reports them: beta * (logp - ref_logp) per sequence,
 * accuracy = mean(chosen reward > rejected reward), margin = mean(chosen - rejected). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "eval-impl.h"
#include "ftk/fileio.h"
#include "ftk/stream.h"
#include "ftk/train_run.h"

static const char *const mode_names[] = {"auto", "loss", "preference", "choice", "generation"};

ftk_status ftk_eval_mode_parse(const char *name, enum ftk_eval_mode *out)
{
    for (int i = 0; i < 5; i++)
        if (name && !strcmp(name, mode_names[i])) {
            *out = (enum ftk_eval_mode)i;
            return FTK_OK;
        }
    FTK_FAIL(FTK_E_INVALID, "unknown mode \"%s\" (loss, preference, choice, generation)", name ? name : "");
}

const char *ftk_eval_mode_name(enum ftk_eval_mode m) { return (unsigned)m < 5 ? mode_names[m] : "?"; }

ftk_status eval_per_example(struct eval_run *r, cJSON *obj)
{
    ftk_status s = FTK_OK;
    if (r->per) {
        char *t = cJSON_PrintUnformatted(obj);
        if (!t)
            s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
        else if (fprintf(r->per, "%s\n", t) < 0)
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "--per-example: write failed");
        free(t);
    }
    cJSON_Delete(obj);
    return s;
}

/* The rows of a batch: input_ids, labels, position_ids (+ segment_ids). */
static ftk_status rows_of(const struct ftk_message *msg, struct ftk_batch_view *v, const char *name, size_t idx)
{
    static const char *const names[4] = {"input_ids", "labels", "position_ids", "segment_ids"};
    struct ftk_tensor *t[4] = {0};
    for (int k = 0; k < 4; k++) {
        if (k == 3 && !ftk_message_find(msg, names[k]))
            break;
        ftk_status s = ftk_message_get(msg, names[k], FTK_DTYPE_I32, 2, &t[k]);
        if (s != FTK_OK)
            return ftk_error_wrap(s, "%s: message %zu", name, idx);
    }
    int64_t B = t[0]->shape[0], T = t[0]->shape[1];
    for (int k = 1; k < 4; k++)
        FTK_FAIL_IF(t[k] && (t[k]->shape[0] != B || t[k]->shape[1] != T), FTK_E_FORMAT,
                    "%s: message %zu: %s is [%lld,%lld], input_ids [%lld,%lld]", name, idx, names[k],
                    (long long)t[k]->shape[0], (long long)t[k]->shape[1], (long long)B, (long long)T);
    FTK_FAIL_IF(B <= 0 || T <= 0, FTK_E_FORMAT, "%s: message %zu: an empty batch", name, idx);
    *v = (struct ftk_batch_view){B, T, t[0]->data, t[1]->data, t[2]->data, t[3] ? t[3]->data : NULL};
    return FTK_OK;
}

struct stream_acc {
    double nll;             /* loss: sum of -logp */
    int64_t tokens, rows, batches;
    /* preference sums */
    int64_t pairs, correct;
    double r_chosen, r_rejected, margins, lp_chosen, lp_rejected;
    struct ftk_model *ref;  /* --ref-model */
};

static ftk_status loss_batch(struct eval_run *r, struct stream_acc *a, const struct ftk_batch_view *v, size_t idx)
{
    float *lp = calloc((size_t)v->B, sizeof *lp);
    int64_t *nt = calloc((size_t)v->B, sizeof *nt);
    ftk_status s = lp && nt ? ftk_model_forward(r->m, v, 0, lp, nt) : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s != FTK_OK)
        s = ftk_error_wrap(s, "message %zu", idx);
    for (int64_t i = 0; i < v->B && s == FTK_OK; i++) {
        a->nll -= lp[i];
        a->tokens += nt[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "batch", (double)a->batches);
        cJSON_AddNumberToObject(o, "row", (double)i);
        cJSON_AddNumberToObject(o, "tokens", (double)nt[i]);
        cJSON_AddNumberToObject(o, "nll", -(double)lp[i]);
        if (nt[i] > 0) {
            cJSON_AddNumberToObject(o, "loss", -(double)lp[i] / (double)nt[i]);
            cJSON_AddNumberToObject(o, "perplexity", exp(-(double)lp[i] / (double)nt[i]));
        }
        s = eval_per_example(r, o);
    }
    a->rows += v->B;
    free(lp);
    free(nt);
    return s;
}

static ftk_status pref_batch(struct eval_run *r, struct stream_acc *a, const struct ftk_message *msg, const struct ftk_batch_view *v,
                             const char *name, size_t idx)
{
    FTK_FAIL_IF(v->B % 2, FTK_E_FORMAT, "%s: message %zu: a preference batch needs an even number of rows (chosen, then rejected), not %lld",
                name, idx, (long long)v->B);
    int64_t P = v->B / 2;
    float *lp = calloc((size_t)v->B * 2, sizeof *lp), *ref = lp ? lp + v->B : NULL;
    int64_t *nt = calloc((size_t)v->B, sizeof *nt);
    FTK_FAIL_IF(!lp || !nt, FTK_E_NOMEM, "out of memory");
    ftk_status s = ftk_model_forward(r->m, v, 0, lp, nt);
    const struct ftk_tensor *rt = ftk_message_find(msg, "ref_logps");
    const char *ref_src = "stream";
    if (s == FTK_OK && rt) {
        if (rt->dtype != FTK_DTYPE_F32 || ftk_tensor_numel(rt) != v->B)
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message %zu: ref_logps must be F32[%lld]", name, idx, (long long)v->B);
        else
            memcpy(ref, rt->data, (size_t)v->B * sizeof *ref);
    } else if (s == FTK_OK && a->ref) {
        ref_src = "ref_model";
        s = ftk_model_forward(a->ref, v, 0, ref, NULL);
    } else if (s == FTK_OK && r->o->adapter) {
        ref_src = "base";   /* LLaMA-Factory's reference for LoRA without ref_model: the adapter off */
        ftk_model_enable_adapter(r->m, 0);
        s = ftk_model_forward(r->m, v, 0, ref, NULL);
        ftk_model_enable_adapter(r->m, 1);
    } else if (s == FTK_OK) {
        s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__,
                          "%s: message %zu has no ref_logps: run `ftk ref-logps` first, or give --adapter (the base is the reference) or --ref-model",
                          name, idx);
    }
    if (s != FTK_OK && strncmp(ftk_last_error(), name, strlen(name)))
        s = ftk_error_wrap(s, "message %zu", idx);
    double beta = r->o->beta > 0 ? r->o->beta : 0.1;
    for (int64_t i = 0; i < P && s == FTK_OK; i++) {
        double rc = beta * ((double)lp[i] - ref[i]), rr = beta * ((double)lp[P + i] - ref[P + i]);
        a->pairs++;
        a->correct += rc > rr;
        a->r_chosen += rc;
        a->r_rejected += rr;
        a->margins += rc - rr;
        a->lp_chosen += lp[i];
        a->lp_rejected += lp[P + i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "batch", (double)a->batches);
        cJSON_AddNumberToObject(o, "pair", (double)i);
        cJSON_AddNumberToObject(o, "logps/chosen", lp[i]);
        cJSON_AddNumberToObject(o, "logps/rejected", lp[P + i]);
        cJSON_AddNumberToObject(o, "ref_logps/chosen", ref[i]);
        cJSON_AddNumberToObject(o, "ref_logps/rejected", ref[P + i]);
        cJSON_AddNumberToObject(o, "rewards/chosen", rc);
        cJSON_AddNumberToObject(o, "rewards/rejected", rr);
        cJSON_AddNumberToObject(o, "rewards/margin", rc - rr);
        cJSON_AddBoolToObject(o, "correct", rc > rr);
        cJSON_AddStringToObject(o, "ref", ref_src);
        s = eval_per_example(r, o);
    }
    a->rows += v->B;
    for (int64_t i = 0; i < v->B; i++)
        a->tokens += nt[i];
    free(lp);
    free(nt);
    return s;
}

static ftk_status eval_stream(struct eval_run *r, FILE *in, const char *name, enum ftk_eval_mode *mode, const struct ftk_backend *be,
                              void *ctx)
{
    struct ftk_stream_reader *rd = NULL;
    struct ftk_message msg;
    ftk_message_init(&msg);
    struct stream_acc a = {0};
    ftk_status s = ftk_stream_reader_open(in, name, &rd);
    if (s == FTK_OK)
        s = ftk_stream_read(rd, &msg);
    if (s == FTK_OK)
        s = ftk_stream_check_model(&msg, r->o->model, ftk_model_get_config(r->m), name);
    /* auto: the header's (pack writes it) or else the first batch's "pairwise" */
    const char *hpw = s == FTK_OK ? ftk_message_get_meta(&msg, "pairwise") : NULL;
    int decide = *mode == FTK_EVAL_AUTO;
    if (s == FTK_OK && decide && hpw) {
        *mode = !strcmp(hpw, "1") ? FTK_EVAL_PREFERENCE : FTK_EVAL_LOSS;
        decide = 0;
    }
    if (s == FTK_OK && (*mode == FTK_EVAL_CHOICE || *mode == FTK_EVAL_GENERATION))
        s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s is a tensor stream: --mode %s reads JSONL/CSV records", name,
                          ftk_eval_mode_name(*mode));
    if (s == FTK_OK && *mode != FTK_EVAL_LOSS && r->o->ref_model) {
        s = ftk_model_load(r->o->ref_model, be, ctx, &a.ref);
        if (s == FTK_OK && ftk_model_get_config(a.ref)->V != ftk_model_get_config(r->m)->V)
            s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "--ref-model %s has a vocabulary of %lld, the model %lld",
                              r->o->ref_model, (long long)ftk_model_get_config(a.ref)->V, (long long)ftk_model_get_config(r->m)->V);
    }
    int ended = 0;
    while (s == FTK_OK && (s = ftk_stream_read(rd, &msg)) == FTK_OK) {
        size_t idx = ftk_stream_reader_index(rd);
        const char *kind = ftk_message_kind(&msg);
        if (!strcmp(kind, "end")) {
            ended = 1;
            continue;
        }
        if (!strcmp(kind, "example")) {
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message %zu is an example: batch the stream with `ftk pack` first",
                              name, idx);
            break;
        }
        if (strcmp(kind, "batch"))
            continue;
        struct ftk_batch_view v;
        if ((s = rows_of(&msg, &v, name, idx)) != FTK_OK)
            break;
        ftk_progress_update(&r->prog, (int64_t)idx, NULL);
        if (decide) {
            const char *pw = ftk_message_get_meta(&msg, "pairwise");
            *mode = pw && !strcmp(pw, "1") ? FTK_EVAL_PREFERENCE : FTK_EVAL_LOSS;
            decide = 0;
        }
        if (*mode == FTK_EVAL_PREFERENCE) {
            const char *pw = ftk_message_get_meta(&msg, "pairwise");
            if (pw && strcmp(pw, "1"))
                s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message %zu is not a pairwise batch", name, idx);
            if (s == FTK_OK)
                s = pref_batch(r, &a, &msg, &v, name, idx);
        } else {
            s = loss_batch(r, &a, &v, idx);
        }
        a.batches++;
    }
    if (s == FTK_E_EOF)
        s = ended ? FTK_OK : ftk_error_set(FTK_E_TRUNCATED, __FILE__, __LINE__, "%s: the stream has no end message", name);
    if (s == FTK_OK && decide)
        *mode = FTK_EVAL_LOSS;
    if (s == FTK_OK && a.batches == 0)
        s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s: no batch to evaluate", name);
    if (s == FTK_OK && *mode == FTK_EVAL_LOSS) {
        if (a.tokens == 0)
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s: no labelled token (every label is -100)", name);
        double loss = a.tokens ? a.nll / (double)a.tokens : 0;
        cJSON_AddNumberToObject(r->metrics, "loss", loss);
        cJSON_AddNumberToObject(r->metrics, "perplexity", exp(loss));
        cJSON_AddNumberToObject(r->metrics, "tokens", (double)a.tokens);
        cJSON_AddNumberToObject(r->metrics, "rows", (double)a.rows);
        cJSON_AddNumberToObject(r->metrics, "batches", (double)a.batches);
    } else if (s == FTK_OK) {
        double n = a.pairs ? (double)a.pairs : 1;
        cJSON_AddNumberToObject(r->metrics, "rewards/accuracies", (double)a.correct / n);
        cJSON_AddNumberToObject(r->metrics, "rewards/margins", a.margins / n);
        cJSON_AddNumberToObject(r->metrics, "rewards/chosen", a.r_chosen / n);
        cJSON_AddNumberToObject(r->metrics, "rewards/rejected", a.r_rejected / n);
        cJSON_AddNumberToObject(r->metrics, "logps/chosen", a.lp_chosen / n);
        cJSON_AddNumberToObject(r->metrics, "logps/rejected", a.lp_rejected / n);
        cJSON_AddNumberToObject(r->metrics, "beta", r->o->beta > 0 ? r->o->beta : 0.1);
        cJSON_AddNumberToObject(r->metrics, "pairs", (double)a.pairs);
        cJSON_AddNumberToObject(r->metrics, "correct", (double)a.correct);
        cJSON_AddNumberToObject(r->metrics, "batches", (double)a.batches);
    }
    ftk_model_free(a.ref);
    ftk_message_free(&msg);
    ftk_stream_reader_close(rd);
    return s;
}

ftk_status ftk_eval_run(const struct ftk_eval_opts *o, FILE *out)
{
    FTK_FAIL_IF(!o->model, FTK_E_INVALID, "no model given");
    const struct ftk_backend *be = ftk_backend_cpu();
    void *ctx = NULL;
    struct ftk_backend_opts bo = {.struct_size = sizeof bo, .threads = o->threads};
    FTK_TRY(be->create(&bo, &ctx));
    struct eval_run r = {.o = o};
    struct ftk_atomic_file per = {0};   /* --per-example: renamed into place on success only */
    const char *name = o->input && strcmp(o->input, "-") ? o->input : "<stdin>";
    FILE *in = NULL, *src = NULL;   /* src: in, its first bytes sniffed and replayed */
    cJSON *records = NULL;
    enum ftk_eval_mode mode = o->mode;
    ftk_progress_start(&r.prog, "eval", "items", 0, o->quiet);
    ftk_status s = ftk_model_load(o->model, be, ctx, &r.m);
    if (s == FTK_OK && o->adapter)
        s = ftk_model_load_adapter(r.m, o->adapter, 0);
    if (s == FTK_OK && !(in = o->input && strcmp(o->input, "-") ? fopen(o->input, "rb") : stdin))
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", o->input, strerror(errno));
    struct stat st;
    if (s == FTK_OK && o->per_example && !stat(o->per_example, &st) && !S_ISREG(st.st_mode)) {   /* /dev/stdout, a pipe */
        if (!(r.per = fopen(o->per_example, "w")))
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", o->per_example, strerror(errno));
    } else if (s == FTK_OK && o->per_example && (s = ftk_atomic_open(&per, o->per_example)) == FTK_OK) {
        r.per = per.fp;
    }
    if (s == FTK_OK && !(r.metrics = cJSON_CreateObject()))
        s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s == FTK_OK) {
        /* A stream (ftk_input_sniff: the zstd magic or a u64 header length) or records: text, or
         * a .csv/.json/.jsonl file. */
        int sniffed = 0;
        s = ftk_input_sniff(in, &src, &sniffed);
        size_t nl = strlen(name);
        int text = (nl > 4 && !strcasecmp(name + nl - 4, ".csv")) || (nl > 5 && !strcasecmp(name + nl - 5, ".json")) ||
                   (nl > 6 && !strcasecmp(name + nl - 6, ".jsonl")) || !sniffed;
        int is_stream = mode == FTK_EVAL_LOSS || mode == FTK_EVAL_PREFERENCE || (mode == FTK_EVAL_AUTO && !text);
        if (s == FTK_OK && is_stream)
            s = eval_stream(&r, src, name, &mode, be, ctx);
        else if (s == FTK_OK) {
            s = eval_read_records(src, name, &records);
            if (s == FTK_OK && cJSON_GetArraySize(records) == 0)
                s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s: no records", name);
            if (s == FTK_OK && mode == FTK_EVAL_AUTO) {
                const cJSON *first = cJSON_GetArrayItem(records, 0);
                mode = (cJSON_GetObjectItem(first, "A") && cJSON_GetObjectItem(first, "B")) ||
                               cJSON_IsArray(cJSON_GetObjectItem(first, "choices"))   /* HF datasets' mmlu layout */
                           ? FTK_EVAL_CHOICE : FTK_EVAL_GENERATION;
            }
            if (s == FTK_OK)
                s = mode == FTK_EVAL_CHOICE ? eval_choice(&r, records, name) : eval_generation(&r, records, name);
        }
    }
    if (per.fp && s == FTK_OK)
        s = ftk_atomic_commit(&per);
    else if (per.fp)
        ftk_atomic_abort(&per);
    else if (r.per && fclose(r.per) != 0 && s == FTK_OK)
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", o->per_example, strerror(errno));
    if (s == FTK_OK) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "mode", ftk_eval_mode_name(mode));
        cJSON_AddStringToObject(m, "model", o->model);
        if (o->adapter)
            cJSON_AddStringToObject(m, "adapter", o->adapter);
        cJSON *it = r.metrics->child;
        r.metrics->child = NULL;   /* move the metrics after the identification */
        while (it) {
            cJSON *next = it->next;
            it->prev = it->next = NULL;
            cJSON_AddItemToObject(m, it->string, it);   /* keeps its key */
            it = next;
        }
        char *t = cJSON_PrintUnformatted(m);
        cJSON_Delete(m);
        if (!t || fprintf(out, "%s\n", t) < 0 || fflush(out) != 0)
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "cannot write the metrics");
        free(t);
    }
    cJSON_Delete(records);
    cJSON_Delete(r.metrics);
    if (src)
        fclose(src);
    if (in && in != stdin)
        fclose(in);
    ftk_model_free(r.m);
    be->destroy(ctx);
    return s;
}
