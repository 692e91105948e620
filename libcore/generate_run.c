/* libcore/generate_run.c: the body of `ftk generate` (ftk/generate_run.h): prompts from JSONL
 * (`prompt` text or `messages` with a chat template) or from an example stream, batched
 * generation, JSONL out; token streaming for one prompt; an interactive chat on a terminal. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "ftk/fileio.h"
#include "ftk/generate_run.h"
#include "ftk/progress.h"
#include "ftk/stream.h"
#include "ftk/template.h"

struct prompt {
    int32_t *ids;
    int64_t n;
    char *text;        /* the prompt as given (for the output), or NULL */
    int64_t index;
};

struct gen_run {
    const struct ftk_generate_opts *o;
    struct ftk_model *m;
    struct ftk_tokenizer *tok;
    struct ftk_template *tpl;
    struct ftk_text_encoder enc;
    struct ftk_gen_config gc;
    FILE *out;
    struct prompt *batch;
    int64_t n_batch;
    struct ftk_ids streamed;   /* --stream and chat: the ids printed so far */
    size_t printed;
    struct ftk_progress prog;
    int64_t n_done, tokens_out;
};

static ftk_status enc_encode(void *ctx, const char *text, size_t len, struct ftk_ids *out)
{
    return ftk_tokenizer_encode(ctx, text, len, 0, out);
}
static int32_t enc_token_to_id(void *ctx, const char *t) { return ftk_tokenizer_token_to_id(ctx, t); }

/* A JSON string literal, escaped as cJSON escapes. */
static void put_json_string(FILE *f, const char *s)
{
    cJSON *tmp = cJSON_CreateString(s);
    char *p = tmp ? cJSON_PrintUnformatted(tmp) : NULL;
    fputs(p ? p : "\"\"", f);
    free(p);
    cJSON_Delete(tmp);
}

static ftk_status flush_batch(struct gen_run *r)
{
    if (r->n_batch == 0)
        return FTK_OK;
    const int32_t **ids = calloc((size_t)r->n_batch, sizeof *ids);
    int64_t *lens = calloc((size_t)r->n_batch, sizeof *lens);
    struct ftk_gen_result *res = calloc((size_t)r->n_batch, sizeof *res);
    ftk_status s = ids && lens && res ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    for (int64_t i = 0; s == FTK_OK && i < r->n_batch; i++) {
        ids[i] = r->batch[i].ids;
        lens[i] = r->batch[i].n;
    }
    r->gc.seed = r->o->seed + (uint64_t)r->batch[0].index;   /* prompt k draws with seed + k, whatever the batch size */
    if (s == FTK_OK && (s = ftk_generate(r->m, r->tok, &r->gc, r->n_batch, ids, lens, NULL, NULL, res)) != FTK_OK)
        s = ftk_error_wrap(s, "prompts %lld..%lld", (long long)r->batch[0].index, (long long)r->batch[r->n_batch - 1].index);
    for (int64_t i = 0; s == FTK_OK && i < r->n_batch; i++) {
        fprintf(r->out, "{\"index\": %lld, ", (long long)r->batch[i].index);
        if (r->batch[i].text) {
            fputs("\"prompt\": ", r->out);
            put_json_string(r->out, r->batch[i].text);
            fputs(", ", r->out);
        }
        fputs("\"text\": ", r->out);
        put_json_string(r->out, res[i].text ? res[i].text : "");
        fputs(", \"ids\": [", r->out);
        for (int64_t k = 0; k < res[i].n; k++)
            fprintf(r->out, "%s%d", k ? ", " : "", res[i].ids[k]);
        fprintf(r->out, "], \"finish_reason\": \"%s\", \"prompt_tokens\": %lld, \"completion_tokens\": %lld, "
                        "\"prefill_s\": %.6f, \"decode_s\": %.6f}\n",
                res[i].finish_reason, (long long)res[i].prompt_tokens, (long long)res[i].n, res[i].prefill_s,
                res[i].decode_s);
        r->n_done++;
        r->tokens_out += res[i].n;
        ftk_gen_result_free(&res[i]);
    }
    if (s == FTK_OK && fflush(r->out) != 0)
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "writing output: %s", strerror(errno));
    char st[64];
    snprintf(st, sizeof st, "%lld tokens generated", (long long)r->tokens_out);
    ftk_progress_update(&r->prog, r->n_done, st);
    for (int64_t i = 0; i < r->n_batch; i++) {
        free(r->batch[i].ids);
        free(r->batch[i].text);
    }
    r->n_batch = 0;
    free(ids);
    free(lens);
    free(res);
    return s;
}

static ftk_status add_prompt(struct gen_run *r, struct ftk_ids *ids, const char *text, int64_t index, const char *where)
{
    /* checked here, where the file and line are known (ftk_generate knows the row in its batch) */
    int64_t ctx = ftk_gen_context(r->m, &r->gc);
    FTK_FAIL_IF(ctx > 0 && (int64_t)ids->n >= ctx, FTK_E_INVALID, "%s: prompt %lld has %zu tokens, the context is %lld", where,
                (long long)index, ids->n, (long long)ctx);
    /* --stream: a full batch waits for the next prompt, so a single prompt is kept to be streamed */
    if (r->o->stream && r->n_batch == r->o->batch_size)
        FTK_TRY(flush_batch(r));
    struct prompt *p = &r->batch[r->n_batch++];
    p->ids = ids->ids;
    p->n = (int64_t)ids->n;
    p->text = text ? strdup(text) : NULL;
    p->index = index;
    ids->ids = NULL;
    ids->n = ids->cap = 0;
    if (!r->o->stream && r->n_batch == r->o->batch_size)
        return flush_batch(r);
    return FTK_OK;
}

static ftk_status parse_role(const char *s, enum ftk_role *out, const char *where)
{
    if (!strcmp(s, "user") || !strcmp(s, "human")) *out = FTK_ROLE_USER;
    else if (!strcmp(s, "assistant") || !strcmp(s, "gpt")) *out = FTK_ROLE_ASSISTANT;
    else if (!strcmp(s, "system")) *out = FTK_ROLE_SYSTEM;
    else if (!strcmp(s, "observation") || !strcmp(s, "tool")) *out = FTK_ROLE_OBSERVATION;
    else if (!strcmp(s, "function")) *out = FTK_ROLE_FUNCTION;
    else FTK_FAIL(FTK_E_FORMAT, "%s: unknown role \"%s\"", where, s);
    return FTK_OK;
}

/* The prompt ids of a conversation: every message rendered, then the assistant's empty turn
 * (what LLaMA-Factory and add_generation_prompt do). */
static ftk_status encode_messages(struct gen_run *r, const cJSON *msgs, const char *system, struct ftk_ids *out,
                                  const char *where)
{
    FTK_FAIL_IF(!r->tpl, FTK_E_INVALID, "%s: \"messages\" need a chat template: give --template", where);
    int n = cJSON_GetArraySize(msgs);
    struct ftk_chat_message *cm = calloc((size_t)n + 1, sizeof *cm);
    FTK_FAIL_IF(!cm, FTK_E_NOMEM, "out of memory");
    size_t k = 0;
    ftk_status s = FTK_OK;
    const cJSON *x;
    cJSON_ArrayForEach(x, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(x, "role"), *content = cJSON_GetObjectItemCaseSensitive(x, "content");
        if (!cJSON_IsString(role) || !cJSON_IsString(content)) {
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: each message needs string \"role\" and \"content\"", where);
            break;
        }
        enum ftk_role rl;
        if ((s = parse_role(role->valuestring, &rl, where)) != FTK_OK)
            break;
        if (rl == FTK_ROLE_SYSTEM) {   /* a system message sets the system prompt */
            system = content->valuestring;
            continue;
        }
        cm[k++] = (struct ftk_chat_message){rl, content->valuestring};
    }
    if (s == FTK_OK)
        cm[k++] = (struct ftk_chat_message){FTK_ROLE_ASSISTANT, ""};
    struct ftk_ids *per = s == FTK_OK ? calloc(k, sizeof *per) : NULL;
    if (s == FTK_OK && !per)
        s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s == FTK_OK && (s = ftk_template_encode(r->tpl, &r->enc, cm, k, system, per)) != FTK_OK)
        s = ftk_error_wrap(s, "%s", where);
    for (size_t i = 0; s == FTK_OK && i + 1 < k; i++)
        for (size_t j = 0; j < per[i].n && s == FTK_OK; j++)
            s = ftk_ids_push(out, per[i].ids[j]);
    for (size_t i = 0; per && i < k; i++)
        ftk_ids_free(&per[i]);
    free(per);
    free(cm);
    return s;
}

static ftk_status run_jsonl(struct gen_run *r, FILE *in, const char *name)
{
    FTK_FAIL_IF(!r->tok, FTK_E_NOTFOUND, "%s: text prompts need a tokenizer, and %s has no tokenizer.json (give --tokenizer)",
                name, r->o->model);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t lineno = 0, index = 0;
    ftk_status s = FTK_OK;
    while (s == FTK_OK && (len = getline(&line, &cap, in)) >= 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == (size_t)len)
            continue;
        char where[600];
        snprintf(where, sizeof where, "%s:%lld", name, (long long)lineno);
        cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
        if (!cJSON_IsObject(j)) {
            cJSON_Delete(j);
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: not a JSON object", where);
            break;
        }
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt"), *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
        const cJSON *sys = cJSON_GetObjectItemCaseSensitive(j, "system");
        struct ftk_ids ids = {0};
        const char *shown = NULL;
        if (cJSON_IsArray(msgs)) {
            s = encode_messages(r, msgs, cJSON_IsString(sys) ? sys->valuestring : NULL, &ids, where);
            const cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
            const cJSON *c = last ? cJSON_GetObjectItemCaseSensitive(last, "content") : NULL;
            shown = cJSON_IsString(c) ? c->valuestring : NULL;
        } else if (cJSON_IsString(p)) {
            shown = p->valuestring;
            if (r->tpl) {   /* a plain prompt with a template: one user turn */
                cJSON *one = cJSON_CreateArray(), *msg = cJSON_CreateObject();
                cJSON_AddStringToObject(msg, "role", "user");
                cJSON_AddStringToObject(msg, "content", p->valuestring);
                cJSON_AddItemToArray(one, msg);
                s = encode_messages(r, one, cJSON_IsString(sys) ? sys->valuestring : NULL, &ids, where);
                cJSON_Delete(one);
            } else if ((s = ftk_tokenizer_encode(r->tok, p->valuestring, strlen(p->valuestring), 1, &ids)) != FTK_OK) {
                s = ftk_error_wrap(s, "%s", where);
            }
        } else {
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: needs a \"prompt\" string or a \"messages\" list", where);
        }
        if (s == FTK_OK && ids.n == 0)
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: the prompt encodes to no tokens", where);
        if (s == FTK_OK)
            s = add_prompt(r, &ids, shown, index++, where);
        ftk_ids_free(&ids);
        cJSON_Delete(j);
    }
    free(line);
    if (s == FTK_OK && ferror(in))
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: read error", name);
    return s;
}

/* Example stream: the prompt is an example's ids before its first labelled token (all of
 * them for unlabelled text examples). */
static ftk_status run_stream(struct gen_run *r, FILE *in, const char *name)
{
    struct ftk_stream_reader *rd;
    FTK_TRY(ftk_stream_reader_open(in, name, &rd));
    struct ftk_message m;
    ftk_message_init(&m);
    ftk_status s;
    int64_t index = 0;
    while ((s = ftk_stream_read(rd, &m)) == FTK_OK) {
        const char *kind = ftk_message_kind(&m);
        if (strcmp(kind, "example"))
            continue;
        struct ftk_tensor *t, *lab = ftk_message_find(&m, "labels");
        if ((s = ftk_message_get(&m, "input_ids", FTK_DTYPE_I32, 1, &t)) != FTK_OK) {
            s = ftk_error_wrap(s, "%s: message %zu", name, ftk_stream_reader_index(rd));
            break;
        }
        const int32_t *id = t->data, *lb = lab && lab->dtype == FTK_DTYPE_I32 && lab->shape[0] == t->shape[0] ? lab->data : NULL;
        int64_t n = t->shape[0], cut = n;
        for (int64_t k = 0; lb && k < n; k++)
            if (lb[k] != FTK_IGNORE_INDEX) {
                cut = k;
                break;
            }
        if (cut == 0)
            cut = n;   /* every token labelled (pre-training text): the whole example prompts */
        struct ftk_ids ids = {0};
        for (int64_t k = 0; k < cut && s == FTK_OK; k++)
            s = ftk_ids_push(&ids, id[k]);
        char where[600];
        snprintf(where, sizeof where, "%s: message %zu", name, ftk_stream_reader_index(rd));
        if (s == FTK_OK)
            s = add_prompt(r, &ids, NULL, index++, where);
        ftk_ids_free(&ids);
        if (s != FTK_OK)
            break;
    }
    ftk_message_free(&m);
    ftk_stream_reader_close(rd);
    return s == FTK_E_EOF ? FTK_OK : s;
}

/* How much of the text t (n bytes) may be shown: up to the first stop string, and never the
 * start of a stop string or of a character (decoded as U+FFFD) that the next tokens may complete. */
static size_t shown_len(const struct ftk_gen_config *c, const char *t, size_t n)
{
    size_t lim = n;
    for (int k = 0; k < c->n_stop; k++) {
        const char *at = c->stop[k][0] ? strstr(t, c->stop[k]) : NULL;
        if (at && (size_t)(at - t) < lim)
            lim = (size_t)(at - t);
    }
    if (lim < n)
        return lim;
    while (lim >= 3 && !memcmp(t + lim - 3, "\xef\xbf\xbd", 3))   /* U+FFFD: a character whose bytes are still coming */
        lim -= 3;
    for (int k = 0; k < c->n_stop; k++)
        for (size_t m = strlen(c->stop[k]) - (c->stop[k][0] != 0); m > 0; m--)   /* the longest proper prefix at the end */
            if (m <= n && !memcmp(t + n - m, c->stop[k], m)) {
                if (n - m < lim)
                    lim = n - m;
                break;
            }
    return lim;
}

/* Streaming: decode everything generated so far and print what is new (decoding token by
 * token would lose the spaces SentencePiece decoders strip at the start). */
static void print_token(void *arg, int64_t i, int32_t id)
{
    (void)i;
    struct gen_run *r = arg;
    if (ftk_ids_push(&r->streamed, id) != FTK_OK)
        return;
    /* a run of byte-fallback tokens ("<0xE4>") at the end decodes as one group, U+FFFD per byte
     * until it is valid UTF-8 (tokenizers' ByteFallback): it is shown once a later token closes it */
    size_t k = r->streamed.n;
    for (const char *tk; k > 0 && (tk = ftk_tokenizer_id_to_token(r->tok, r->streamed.ids[k - 1])) && strlen(tk) == 6 &&
                         !strncmp(tk, "<0x", 3) && tk[5] == '>';)
        k--;
    char *t = NULL;
    size_t n;
    if (ftk_tokenizer_decode(r->tok, r->streamed.ids, k, 1, -1, &t, &n) == FTK_OK &&
        (n = shown_len(&r->gc, t, n)) > r->printed) {
        fwrite(t + r->printed, 1, n - r->printed, r->out);
        r->printed = n;
        fflush(r->out);
    }
    free(t);
}

/* After a streamed generation: what was held back (a stop string's start that stayed unfinished). */
static void print_rest(struct gen_run *r, const struct ftk_gen_result *res)
{
    size_t n = res->text ? strlen(res->text) : 0;
    if (n > r->printed)
        fwrite(res->text + r->printed, 1, n - r->printed, r->out);
    r->printed = n > r->printed ? n : r->printed;
}

static void stream_reset(struct gen_run *r)
{
    ftk_ids_free(&r->streamed);
    r->printed = 0;
}

/* The positions an adapter puts before the prompt in the KV cache (prefix tuning's keys and
 * values, prompt tuning's virtual tokens): one token prefilled, as ftk_generate counts them. */
static ftk_status adapter_positions(struct gen_run *r, int64_t ctx, int64_t *out)
{
    *out = 0;
    if (!ftk_model_peft(r->m))
        return FTK_OK;
    struct ftk_kv_cache *kc;
    const int32_t id = 0;
    FTK_TRY(ftk_kv_cache_create(r->m, 1, ctx, &kc));
    ftk_status s = ftk_model_prefill(r->m, kc, 0, &id, 1, NULL);
    if (s == FTK_OK)
        *out = ftk_kv_cache_len(kc, 0) - 1;
    ftk_kv_cache_free(kc);
    return s == FTK_OK ? FTK_OK : ftk_error_wrap(s, "chat");
}

/* A terminal: read a line, answer, keep the conversation (re-encoded every turn). */
static ftk_status run_chat(struct gen_run *r)
{
    cJSON *msgs = cJSON_CreateArray();
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    ftk_status s = FTK_OK;
    int64_t ctx = ftk_gen_context(r->m, &r->gc), extra = 0;
    fprintf(stderr, "ftk generate: chat with %s (empty line or Ctrl-D ends; /clear forgets)\n", r->o->model);
    s = adapter_positions(r, ctx, &extra);
    while (s == FTK_OK) {
        fputs("> ", stderr);
        if ((len = getline(&line, &cap, stdin)) < 0)
            break;
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            break;
        if (!strcmp(line, "/clear")) {
            cJSON_Delete(msgs);
            msgs = cJSON_CreateArray();
            continue;
        }
        cJSON *u = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "role", "user");
        cJSON_AddStringToObject(u, "content", line);
        cJSON_AddItemToArray(msgs, u);
        struct ftk_ids ids = {0};
        if (r->tpl)
            s = encode_messages(r, msgs, NULL, &ids, "chat");
        else
            s = ftk_tokenizer_encode(r->tok, line, strlen(line), 1, &ids);
        /* what ftk_generate refuses: a prompt of ctx tokens, or one the adapter's positions push
         * past the cache; the turn is taken back and the chat goes on */
        if (s == FTK_OK && ((int64_t)ids.n >= ctx || (int64_t)ids.n + extra > ctx)) {
            char with[96] = "";
            if (extra)
                snprintf(with, sizeof with, ", %lld positions with the adapter's %lld", (long long)((int64_t)ids.n + extra),
                         (long long)extra);
            fprintf(stderr, "ftk generate: the conversation is %zu tokens with this turn%s, the context %lld: /clear to start again\n",
                    ids.n, with, (long long)ctx);
            cJSON_DeleteItemFromArray(msgs, cJSON_GetArraySize(msgs) - 1);
            ftk_ids_free(&ids);
            continue;
        }
        struct ftk_gen_result res;
        const int32_t *p = ids.ids;
        int64_t n = (int64_t)ids.n;
        stream_reset(r);
        if (s == FTK_OK)
            s = ftk_generate(r->m, r->tok, &r->gc, 1, &p, &n, print_token, r, &res);
        ftk_ids_free(&ids);
        if (s != FTK_OK)
            break;
        print_rest(r, &res);
        putchar('\n');
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "role", "assistant");
        cJSON_AddStringToObject(a, "content", res.text ? res.text : "");
        cJSON_AddItemToArray(msgs, a);
        ftk_gen_result_free(&res);
    }
    free(line);
    cJSON_Delete(msgs);
    return s;
}

ftk_status ftk_generate_run(const struct ftk_generate_opts *o)
{
    const struct ftk_backend *be = ftk_backend_cpu();
    void *ctx = NULL;
    struct ftk_backend_opts bo = {.struct_size = sizeof bo, .threads = o->threads};
    FTK_TRY(be->create(&bo, &ctx));
    struct gen_run r = {.o = o, .out = stdout};
    ftk_status s = ftk_model_load(o->model, be, ctx, &r.m);
    if (s == FTK_OK && o->adapter)
        s = ftk_model_load_adapter(r.m, o->adapter, 0);
    if (s == FTK_OK) {   /* without a tokenizer only id prompts (example streams) can be served */
        s = ftk_tokenizer_load_path(o->tokenizer ? o->tokenizer : o->model, &r.tok);
        if (s == FTK_E_NOTFOUND && !o->tokenizer) {
            r.tok = NULL;
            s = FTK_OK;
        }
    }
    if (s == FTK_OK && o->template_name)
        s = ftk_template_load(o->template_name, &r.tpl);
    ftk_gen_config_init(&r.gc);
    if (s == FTK_OK)
        s = ftk_gen_config_load(&r.gc, o->model);
    if (s == FTK_OK) {
        struct ftk_gen_config *g = &r.gc;
        if (o->max_new_tokens > 0) g->max_new_tokens = o->max_new_tokens;
        if (o->do_sample >= 0) g->do_sample = o->do_sample;
        if (o->temperature >= 0) g->temperature = o->temperature;
        if (o->top_k >= 0) g->top_k = o->top_k;
        if (o->top_p >= 0) g->top_p = o->top_p;
        if (o->min_p >= 0) g->min_p = o->min_p;
        if (o->repetition_penalty > 0) g->repetition_penalty = o->repetition_penalty;
        g->seed = o->seed;
        g->context = o->context;
        int32_t eos = r.tok ? ftk_tokenizer_special_id(r.tok, "eos_token") : -1;
        if (eos >= 0 && g->n_eos < FTK_GEN_MAX_EOS)
            g->eos[g->n_eos++] = eos;
        const char *teos = r.tpl && r.tok ? ftk_template_eos_token(r.tpl) : NULL;
        if (teos && ftk_tokenizer_token_to_id(r.tok, teos) >= 0 && g->n_eos < FTK_GEN_MAX_EOS)
            g->eos[g->n_eos++] = ftk_tokenizer_token_to_id(r.tok, teos);
        for (int i = 0; i < o->n_eos && g->n_eos < FTK_GEN_MAX_EOS; i++)
            g->eos[g->n_eos++] = o->eos[i];
        if (o->ignore_eos)
            g->n_eos = 0;
        for (int i = 0; i < o->n_stop && g->n_stop < FTK_GEN_MAX_STOP; i++)
            g->stop[g->n_stop++] = o->stop[i];
        r.enc = (struct ftk_text_encoder){.ctx = r.tok, .encode = enc_encode, .token_to_id = enc_token_to_id,
                                          .bos_id = r.tok ? ftk_tokenizer_special_id(r.tok, "bos_token") : -1, .eos_id = eos};
        if (r.tpl && r.tok && ftk_template_eos_token(r.tpl))
            r.enc.eos_id = ftk_tokenizer_token_to_id(r.tok, ftk_template_eos_token(r.tpl));
        r.batch = calloc((size_t)(o->batch_size > 0 ? o->batch_size : 1), sizeof *r.batch);
        if (!r.batch)
            s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    }
    FILE *in = NULL, *src = NULL;   /* src: in, its first bytes sniffed and replayed */
    int is_stream = 0;
    const char *name = o->input && strcmp(o->input, "-") ? o->input : "<stdin>";
    ftk_progress_start(&r.prog, "generate", "prompts", 0, o->quiet || o->stream);
    if (s == FTK_OK) {
        if (!o->input && isatty(0))
            s = r.tok ? run_chat(&r) : ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "chat needs a tokenizer");
        else if (!(in = o->input && strcmp(o->input, "-") ? fopen(o->input, "rb") : stdin))
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", o->input, strerror(errno));
        else if ((s = ftk_input_sniff(in, &src, &is_stream)) == FTK_OK) {
            s = is_stream ? run_stream(&r, src, name) : run_jsonl(&r, src, name);
            if (s == FTK_OK && o->stream && !r.tok)
                s = ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "--stream needs a tokenizer");
            if (s == FTK_OK && o->stream && r.n_batch == 1 && r.n_done == 0) {   /* one prompt: tokens as they come */
                struct ftk_gen_result res;
                const int32_t *p = r.batch[0].ids;
                stream_reset(&r);
                s = ftk_generate(r.m, r.tok, &r.gc, 1, &p, &r.batch[0].n, print_token, &r, &res);
                if (s == FTK_OK) {
                    print_rest(&r, &res);
                    putchar('\n');
                }
                ftk_gen_result_free(&res);
                free(r.batch[0].ids);
                free(r.batch[0].text);
                r.n_batch = 0;
            }
            if (s == FTK_OK)
                s = flush_batch(&r);
            if (s == FTK_OK && r.n_done)
                ftk_progress_done(&r.prog);
        }
    }
    for (int64_t i = 0; i < r.n_batch; i++) {
        free(r.batch[i].ids);
        free(r.batch[i].text);
    }
    free(r.batch);
    stream_reset(&r);
    if (src)
        fclose(src);
    if (in && in != stdin)
        fclose(in);
    ftk_template_free(r.tpl);
    ftk_tokenizer_free(r.tok);
    ftk_model_free(r.m);
    be->destroy(ctx);
    return s;
}
