/* libcore/eval_text.c: the record modes of ftk eval (ftk/eval.h): multiple choice and
 * generation, and the JSONL/JSON/CSV reader they share.
 *
 * Multiple choice follows LLaMA-Factory's evaluator (src/llamafactory/eval/evaluator.py and
 * eval/template.py): a question becomes "question\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:", the
 * few-shot examples are user/assistant turns before it, the subject line ("The following are
 * multiple choice questions (with answers) about SUBJECT.\n\n", or the zh text) opens the first
 * user turn; the chat template encodes the turns (Template.encode_oneturn: the prompt is every
 * turn but the last answer); the prediction is the letter whose token (the last id of encoding
 * "A" without special tokens) has the largest logit at the last prompt position. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "eval-impl.h"
#include "ftk/generate.h"
#include "ftk/template.h"
#include "ftk/tokenizer.h"

#define N_CHOICES 4
static const char *const letters[N_CHOICES] = {"A", "B", "C", "D"};

/* ---- records --------------------------------------------------------------------------------- */

static char *slurp(FILE *in, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t got = fread(b + n, 1, cap - n - 1, in);
        n += got;
        if (n + 1 < cap)
            break;
        char *g = realloc(b, cap *= 2);
        if (!g) {
            free(b);
            return NULL;
        }
        b = g;
    }
    if (b)
        b[n] = '\0';
    *len = n;
    return b;
}

/* One CSV row (RFC 4180: quotes, "" escapes, newlines inside quotes) starting at *p: 1, or 0 at
 * the end, -1 out of memory, -2 a quoted field that never closes. */
static int csv_row(const char **p, const char *end, char ***fields, int *n)
{
    *n = 0;
    *fields = NULL;
    if (*p >= end)
        return 0;
    int cap = 0;
    const char *s = *p;
    for (;;) {
        char *f = malloc((size_t)(end - s) + 1);
        size_t k = 0;
        if (!f)
            return -1;
        if (s < end && *s == '"') {
            int closed = 0;
            s++;
            while (s < end && !closed) {
                if (*s == '"' && s + 1 < end && s[1] == '"') {
                    f[k++] = '"';
                    s += 2;
                } else if (*s == '"') {
                    s++;
                    closed = 1;
                } else {
                    f[k++] = *s++;
                }
            }
            if (!closed) {
                free(f);
                return -2;
            }
        }
        while (s < end && *s != ',' && *s != '\n' && *s != '\r')
            f[k++] = *s++;
        f[k] = '\0';
        if (*n == cap) {
            cap = cap ? 2 * cap : 8;
            char **g = realloc(*fields, (size_t)cap * sizeof *g);
            if (!g) {
                free(f);
                return -1;
            }
            *fields = g;
        }
        (*fields)[(*n)++] = f;
        if (s < end && *s == ',') {
            s++;
            continue;
        }
        if (s < end && *s == '\r')
            s++;
        if (s < end && *s == '\n')
            s++;
        break;
    }
    *p = s;
    return 1;
}

static void free_fields(char **f, int n)
{
    for (int i = 0; i < n; i++)
        free(f[i]);
    free(f);
}

static ftk_status read_csv(const char *text, size_t len, const char *name, cJSON *arr)
{
    const char *p = text, *end = text + len;
    char **hdr = NULL, **row;
    int nh = 0, nr, header = 0;
    /* MMLU's csv files have no header: question,A,B,C,D,answer; CMMLU and C-Eval have one */
    static const char *const mmlu[] = {"question", "A", "B", "C", "D", "answer"};
    const char *q = p;
    int r = csv_row(&q, end, &hdr, &nh);
    if (r < 0) {
        free_fields(hdr, nh);
        FTK_FAIL(r == -1 ? FTK_E_NOMEM : FTK_E_FORMAT, r == -1 ? "out of memory" : "%s: row 1: a quoted field is not closed", name);
    }
    for (int i = 0; i < nh; i++)
        header |= !strcasecmp(hdr[i], "question") || !strcasecmp(hdr[i], "answer");
    if (header)
        p = q;
    else {
        free_fields(hdr, nh);
        hdr = NULL;
        nh = 0;
    }
    int64_t line = header ? 1 : 0;
    ftk_status s = FTK_OK;
    while (s == FTK_OK && (r = csv_row(&p, end, &row, &nr)) != 0) {
        line++;
        if (r < 0) {
            free_fields(row, nr);
            s = r == -1 ? ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory")
                        : ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: row %lld: a quoted field is not closed", name, (long long)line);
            break;
        }
        if (nr == 1 && !row[0][0]) {   /* blank line */
            free_fields(row, nr);
            continue;
        }
        if (!header && nr != 6)
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: row %lld has %d fields; a csv without a header must be question,A,B,C,D,answer",
                              name, (long long)line, nr);
        else if (header && nr != nh)
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: row %lld has %d fields, the header %d", name, (long long)line, nr, nh);
        if (s == FTK_OK) {
            cJSON *o = cJSON_CreateObject();
            for (int i = 0; i < nr; i++)
                cJSON_AddStringToObject(o, header ? hdr[i] : mmlu[i], row[i]);
            cJSON_AddItemToArray(arr, o);
        }
        free_fields(row, nr);
    }
    free_fields(hdr, nh);
    return s;
}

ftk_status eval_read_records(FILE *in, const char *name, cJSON **out)
{
    size_t len;
    char *text = slurp(in, &len);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    FTK_FAIL_IF(ferror(in), FTK_E_IO, "%s: read error", name);
    cJSON *arr = cJSON_CreateArray();
    ftk_status s = FTK_OK;
    size_t i = 0;
    if (len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3)) {   /* a UTF-8 BOM (Excel-saved C-Eval/CMMLU csv): skipped, as pandas does */
        memmove(text, text + 3, len - 2);
        len -= 3;
    }
    while (i < len && isspace((unsigned char)text[i]))
        i++;
    size_t nl = strlen(name);
    int csv = nl > 4 && !strcasecmp(name + nl - 4, ".csv");
    if (!csv && i < len && text[i] == '[') {   /* one JSON array */
        cJSON *j = cJSON_ParseWithLength(text + i, len - i);
        if (!cJSON_IsArray(j))
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: not a valid JSON array", name);
        else {
            cJSON_Delete(arr);
            arr = j;
            j = NULL;
        }
        cJSON_Delete(j);
    } else if (!csv && i < len && text[i] == '{') {   /* JSONL */
        char *line = text;
        int64_t lineno = 0;
        while (s == FTK_OK && line < text + len) {
            char *e = memchr(line, '\n', (size_t)(text + len - line));
            size_t n = e ? (size_t)(e - line) : (size_t)(text + len - line);
            lineno++;
            if (strspn(line, " \t\r") < n) {
                cJSON *j = cJSON_ParseWithLength(line, n);
                if (!cJSON_IsObject(j)) {
                    cJSON_Delete(j);
                    s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s:%lld: not a JSON object", name, (long long)lineno);
                } else {
                    cJSON_AddItemToArray(arr, j);
                }
            }
            line += n + 1;
        }
    } else {
        s = read_csv(text, len, name, arr);
    }
    free(text);
    int k = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) {
        if (s == FTK_OK && !cJSON_IsObject(x))
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: record %d is not an object", name, k);
        k++;
    }
    if (s != FTK_OK) {
        cJSON_Delete(arr);
        return s;
    }
    *out = arr;
    return FTK_OK;
}

/* A field as text: strings as they are, numbers in the fewest digits that read back the same
 * (Python's str: 0.1, not %.17g's 0.10000000000000001); NULL when absent. */
static const char *field(const cJSON *rec, const char *key, char *buf, size_t cap)
{
    const cJSON *v = cJSON_GetObjectItem(rec, key);   /* case-insensitive: Question, Answer */
    if (cJSON_IsString(v))
        return v->valuestring;
    if (cJSON_IsNumber(v)) {
        for (int p = 1; p <= 17; p++) {
            snprintf(buf, cap, "%.*g", p, v->valuedouble);
            if (strtod(buf, NULL) == v->valuedouble)
                break;
        }
        return buf;
    }
    return NULL;
}

/* ---- the tokenizer as the template's encoder -------------------------------------------------- */

static ftk_status enc_encode(void *ctx, const char *text, size_t len, struct ftk_ids *out)
{
    return ftk_tokenizer_encode(ctx, text, len, 0, out);
}
static int32_t enc_token_to_id(void *ctx, const char *token) { return ftk_tokenizer_token_to_id(ctx, token); }

struct text_setup {
    struct ftk_tokenizer *tok;
    struct ftk_template *tpl;
    struct ftk_text_encoder enc;
    int64_t context;
};

static ftk_status setup(struct eval_run *r, struct text_setup *t)
{
    memset(t, 0, sizeof *t);
    FTK_TRY(ftk_tokenizer_load_path(r->o->model, &t->tok));
    if (r->o->template_name)
        FTK_TRY(ftk_template_load(r->o->template_name, &t->tpl));
    int32_t eos = ftk_tokenizer_special_id(t->tok, "eos_token");
    if (t->tpl && ftk_template_eos_token(t->tpl))
        eos = ftk_tokenizer_token_to_id(t->tok, ftk_template_eos_token(t->tpl));
    t->enc = (struct ftk_text_encoder){.ctx = t->tok, .encode = enc_encode, .token_to_id = enc_token_to_id,
                                       .bos_id = ftk_tokenizer_special_id(t->tok, "bos_token"), .eos_id = eos};
    const struct ftk_model_config *c = ftk_model_get_config(r->m);
    t->context = r->o->context > 0 ? r->o->context : c->max_position_embeddings;
    FTK_FAIL_IF(t->context <= 0, FTK_E_INVALID, "the model's config.json has no max_position_embeddings: give --context");
    FTK_FAIL_IF(ftk_tokenizer_vocab_size(t->tok) > (size_t)c->V, FTK_E_MISMATCH,
                "the tokenizer has %zu tokens, the model's vocabulary %lld", ftk_tokenizer_vocab_size(t->tok), (long long)c->V);
    return FTK_OK;
}

static void text_free(struct text_setup *t)
{
    ftk_template_free(t->tpl);
    ftk_tokenizer_free(t->tok);
}

/* Concatenated ids of messages 0..n-2 (the prompt before the last turn). */
static ftk_status encode_prompt(const struct text_setup *t, const struct ftk_chat_message *msgs, size_t n, const char *system,
                                struct ftk_ids *out)
{
    struct ftk_ids *per = calloc(n, sizeof *per);
    FTK_FAIL_IF(!per, FTK_E_NOMEM, "out of memory");
    ftk_status s = ftk_template_encode(t->tpl, &t->enc, msgs, n, system, per);
    for (size_t i = 0; s == FTK_OK && i + 1 < n; i++)
        for (size_t j = 0; j < per[i].n && s == FTK_OK; j++)
            s = ftk_ids_push(out, per[i].ids[j]);
    for (size_t i = 0; i < n; i++)
        ftk_ids_free(&per[i]);
    free(per);
    return s;
}

/* ---- multiple choice ------------------------------------------------------------------------- */

struct eval_lang {
    const char *name, *system, *choice, *answer;
};
/* LLaMA-Factory eval/template.py */
static const struct eval_lang langs[] = {
    {"en", "The following are multiple choice questions (with answers) about %s.\n\n", "\n%s. %s", "\nAnswer:"},
    {"zh", "\xe4\xbb\xa5\xe4\xb8\x8b\xe6\x98\xaf\xe4\xb8\xad\xe5\x9b\xbd\xe5\x85\xb3\xe4\xba\x8e%s\xe8\x80\x83\xe8\xaf\x95\xe7\x9a\x84"
           "\xe5\x8d\x95\xe9\xa1\xb9\xe9\x80\x89\xe6\x8b\xa9\xe9\xa2\x98\xef\xbc\x8c\xe8\xaf\xb7\xe9\x80\x89\xe5\x87\xba\xe5\x85\xb6"
           "\xe4\xb8\xad\xe7\x9a\x84\xe6\xad\xa3\xe7\xa1\xae\xe7\xad\x94\xe6\xa1\x88\xe3\x80\x82\n\n",
     "\n%s. %s", "\n\xe7\xad\x94\xe6\xa1\x88\xef\xbc\x9a"},
};

/* One question as (prompt text, answer letter): EvalTemplate._parse_example. Also takes the
 * HF datasets layout {"question", "choices": [..], "answer": 0..3}. */
static ftk_status parse_question(const cJSON *rec, const struct eval_lang *L, const char *where, char **prompt, char *answer)
{
    char nb[64];
    const char *q = field(rec, "question", nb, sizeof nb);
    FTK_FAIL_IF(!q, FTK_E_FORMAT, "%s: no \"question\"", where);
    size_t cap = strlen(q) + strlen(L->answer) + 1;
    const char *opt[N_CHOICES] = {0};
    char ob[N_CHOICES][64];
    const cJSON *list = cJSON_GetObjectItem(rec, "choices");
    for (int k = 0; k < N_CHOICES; k++) {
        opt[k] = cJSON_IsArray(list) ? (cJSON_IsString(cJSON_GetArrayItem(list, k)) ? cJSON_GetArrayItem(list, k)->valuestring : NULL)
                                     : field(rec, letters[k], ob[k], sizeof ob[k]);
        if (opt[k])
            cap += strlen(opt[k]) + 8;
    }
    FTK_FAIL_IF(!opt[0] || !opt[1], FTK_E_FORMAT, "%s: a question needs choices A and B at least", where);
    char ab[64];   /* not nb: q may live there */
    const char *a = field(rec, "answer", ab, sizeof ab);
    const cJSON *an = cJSON_GetObjectItem(rec, "answer");
    answer[0] = '\0';
    if (cJSON_IsArray(list) && cJSON_IsNumber(an) && an->valuedouble >= 0 && an->valuedouble < N_CHOICES)
        snprintf(answer, 2, "%c", 'A' + (int)an->valuedouble);
    else if (a) {
        while (isspace((unsigned char)*a))
            a++;
        size_t n = strlen(a);
        while (n && isspace((unsigned char)a[n - 1]))
            n--;
        if (n == 1 && a[0] >= 'A' && a[0] < 'A' + N_CHOICES)
            snprintf(answer, 2, "%c", a[0]);
    }
    FTK_FAIL_IF(!answer[0], FTK_E_FORMAT, "%s: \"answer\" must be one of A, B, C, D", where);
    char *p = malloc(cap), *w = p;
    FTK_FAIL_IF(!p, FTK_E_NOMEM, "out of memory");
    w += sprintf(w, "%s", q);
    for (int k = 0; k < N_CHOICES; k++)
        if (opt[k])
            w += sprintf(w, L->choice, letters[k], opt[k]);
    sprintf(w, "%s", L->answer);
    *prompt = p;
    return FTK_OK;
}

/* "data/high_school_physics_test.csv" -> "high school physics" (MMLU file names). */
static void subject_from_name(const char *name, char *out, size_t cap)
{
    const char *b = strrchr(name, '/');
    b = b ? b + 1 : name;
    snprintf(out, cap, "%s", b);
    char *dot = strchr(out, '.');
    if (dot)
        *dot = '\0';
    static const char *const splits[] = {"_test", "_val", "_dev", "_validation", "_train"};
    size_t n = strlen(out);
    for (size_t i = 0; i < sizeof splits / sizeof *splits; i++) {
        size_t m = strlen(splits[i]);
        if (n > m && !strcmp(out + n - m, splits[i])) {
            out[n - m] = '\0';
            break;
        }
    }
    for (char *c = out; *c; c++)
        if (*c == '_')
            *c = ' ';
}

struct question {
    struct ftk_ids ids;
    char answer[2];
    char subject[256];
};

static ftk_status build_question(struct eval_run *r, const struct text_setup *t, const struct eval_lang *L, const cJSON *dev,
                                 int64_t shots, const cJSON *rec, const char *subject, struct question *q, const char *where)
{
    size_t n = (size_t)(2 * shots + 2);
    struct ftk_chat_message *msgs = calloc(n, sizeof *msgs);
    char **texts = calloc(n, sizeof *texts);
    char ans[N_CHOICES + 1][2];
    ftk_status s = msgs && texts ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    char dw[700];
    for (int64_t k = 0; k < shots && s == FTK_OK; k++) {
        snprintf(dw, sizeof dw, "--dev %s: record %lld", r->o->dev, (long long)k);
        char a[2];
        s = parse_question(cJSON_GetArrayItem(dev, (int)k), L, dw, &texts[2 * k], a);
        if (s == FTK_OK) {
            texts[2 * k + 1] = strdup(a);
            msgs[2 * k] = (struct ftk_chat_message){FTK_ROLE_USER, texts[2 * k]};
            msgs[2 * k + 1] = (struct ftk_chat_message){FTK_ROLE_ASSISTANT, texts[2 * k + 1]};
        }
    }
    (void)ans;
    if (s == FTK_OK)
        s = parse_question(rec, L, where, &texts[n - 2], q->answer);
    if (s == FTK_OK) {
        texts[n - 1] = strdup(q->answer);
        msgs[n - 2] = (struct ftk_chat_message){FTK_ROLE_USER, texts[n - 2]};
        msgs[n - 1] = (struct ftk_chat_message){FTK_ROLE_ASSISTANT, texts[n - 1]};
        /* the subject line opens the first user turn */
        size_t len = strlen(L->system) + strlen(subject) + strlen(texts[0]) + 1;
        char *first = malloc(len);
        if (!first)
            s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
        else {
            int k = snprintf(first, len, L->system, subject);
            snprintf(first + k, len - (size_t)k, "%s", texts[0]);
            free(texts[0]);
            texts[0] = first;
            msgs[0].content = first;
        }
    }
    if (s == FTK_OK && (s = encode_prompt(t, msgs, n, r->o->system, &q->ids)) != FTK_OK)
        s = ftk_error_wrap(s, "%s", where);
    if (s == FTK_OK && (int64_t)q->ids.n > t->context)
        s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s: the prompt has %zu tokens, longer than the context (%lld)%s", where,
                          q->ids.n, (long long)t->context, shots ? ": use a smaller --n-shot" : "");
    snprintf(q->subject, sizeof q->subject, "%s", subject);
    for (size_t i = 0; texts && i < n; i++)
        free(texts[i]);
    free(texts);
    free(msgs);
    return s;
}

ftk_status eval_choice(struct eval_run *r, cJSON *records, const char *name)
{
    const struct ftk_eval_opts *o = r->o;
    const struct eval_lang *L = NULL;
    for (size_t i = 0; i < sizeof langs / sizeof *langs; i++)
        if (!strcmp(o->lang ? o->lang : "en", langs[i].name))
            L = &langs[i];
    FTK_FAIL_IF(!L, FTK_E_INVALID, "--lang %s: use en or zh", o->lang);
    FTK_FAIL_IF(!o->template_name, FTK_E_INVALID,
                "--mode choice needs --template (LLaMA-Factory's evaluator renders the questions with the chat template)");
    FTK_FAIL_IF(o->n_shot > 0 && !o->dev, FTK_E_INVALID, "--n-shot %lld needs --dev FILE (the few-shot examples)", (long long)o->n_shot);
    struct text_setup t;
    cJSON *dev = NULL;
    int n = cJSON_GetArraySize(records);
    struct question *qs = calloc((size_t)n, sizeof *qs);
    float *logits = NULL;
    struct ftk_kv_cache *cache = NULL;
    ftk_status s = qs ? setup(r, &t) : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s == FTK_OK && o->dev) {
        FILE *f = fopen(o->dev, "rb");
        if (!f)
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "--dev %s: cannot open", o->dev);
        else {
            s = eval_read_records(f, o->dev, &dev);
            fclose(f);
        }
    }
    int64_t shots = o->n_shot;
    if (dev && shots > cJSON_GetArraySize(dev))
        shots = cJSON_GetArraySize(dev);   /* LLaMA-Factory: min(n_shot, len(dev)) */
    /* the letters' token ids: the last id of each letter encoded alone */
    int32_t cid[N_CHOICES];
    for (int k = 0; k < N_CHOICES && s == FTK_OK; k++) {
        struct ftk_ids ids = {0};
        s = ftk_tokenizer_encode(t.tok, letters[k], 1, 0, &ids);
        if (s == FTK_OK && ids.n == 0)
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "the tokenizer encodes \"%s\" to nothing", letters[k]);
        if (s == FTK_OK)
            cid[k] = ids.ids[ids.n - 1];
        ftk_ids_free(&ids);
    }
    char file_subject[256];
    subject_from_name(name, file_subject, sizeof file_subject);
    int64_t longest = 1;
    for (int i = 0; i < n && s == FTK_OK; i++) {
        const cJSON *rec = cJSON_GetArrayItem(records, i);
        char where[600], sb[64];
        snprintf(where, sizeof where, "%s: record %d", name, i);
        const char *subject = o->subject ? o->subject : field(rec, "subject", sb, sizeof sb);
        char subj[256];
        if (subject && !o->subject) {   /* "high_school_physics" as in HF's mmlu */
            snprintf(subj, sizeof subj, "%s", subject);
            for (char *c = subj; *c; c++)
                if (*c == '_')
                    *c = ' ';
            subject = subj;
        }
        s = build_question(r, &t, L, dev, shots, rec, subject ? subject : file_subject, &qs[i], where);
        if (s == FTK_OK && (int64_t)qs[i].ids.n > longest)
            longest = (int64_t)qs[i].ids.n;
    }
    const int64_t V = ftk_model_get_config(r->m)->V;
    if (s == FTK_OK && !(logits = malloc((size_t)V * sizeof *logits)))
        s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s == FTK_OK)
        s = ftk_kv_cache_create(r->m, 1, longest, &cache);
    int64_t correct = 0;
    cJSON *subjects = cJSON_CreateObject();
    for (int i = 0; i < n && s == FTK_OK; i++) {
        struct question *q = &qs[i];
        ftk_progress_update(&r->prog, i, NULL);
        ftk_kv_cache_reset(cache, 0);
        if ((s = ftk_model_prefill(r->m, cache, 0, q->ids.ids, (int64_t)q->ids.n, logits)) != FTK_OK) {
            s = ftk_error_wrap(s, "%s: record %d", name, i);
            break;
        }
        int best = 0;   /* torch.argmax: the first of equal maxima */
        for (int k = 1; k < N_CHOICES; k++)
            if (logits[cid[k]] > logits[cid[best]])
                best = k;
        int ok = letters[best][0] == q->answer[0];
        correct += ok;
        cJSON *sj = cJSON_GetObjectItemCaseSensitive(subjects, q->subject);
        if (!sj) {
            sj = cJSON_AddObjectToObject(subjects, q->subject);
            cJSON_AddNumberToObject(sj, "correct", 0);
            cJSON_AddNumberToObject(sj, "total", 0);
        }
        cJSON_SetNumberValue(cJSON_GetObjectItem(sj, "correct"), cJSON_GetObjectItem(sj, "correct")->valuedouble + ok);
        cJSON_SetNumberValue(cJSON_GetObjectItem(sj, "total"), cJSON_GetObjectItem(sj, "total")->valuedouble + 1);
        /* softmax over the letters, as LLaMA-Factory's batch_inference */
        double mx = logits[cid[0]], z = 0, pr[N_CHOICES];
        for (int k = 1; k < N_CHOICES; k++)
            mx = fmax(mx, logits[cid[k]]);
        for (int k = 0; k < N_CHOICES; k++)
            z += pr[k] = exp((double)logits[cid[k]] - mx);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "index", i);
        cJSON_AddStringToObject(e, "subject", q->subject);
        cJSON_AddStringToObject(e, "answer", q->answer);
        cJSON_AddStringToObject(e, "pred", letters[best]);
        cJSON_AddBoolToObject(e, "correct", ok);
        cJSON *pj = cJSON_AddObjectToObject(e, "probs");
        for (int k = 0; k < N_CHOICES; k++)
            cJSON_AddNumberToObject(pj, letters[k], pr[k] / z);
        cJSON_AddNumberToObject(e, "prompt_tokens", (double)q->ids.n);
        s = eval_per_example(r, e);
    }
    if (s == FTK_OK) {
        cJSON *it;
        cJSON_ArrayForEach(it, subjects)
            cJSON_AddNumberToObject(it, "accuracy", cJSON_GetObjectItem(it, "correct")->valuedouble /
                                                        cJSON_GetObjectItem(it, "total")->valuedouble);
        cJSON_AddNumberToObject(r->metrics, "accuracy", (double)correct / n);
        cJSON_AddNumberToObject(r->metrics, "correct", (double)correct);
        cJSON_AddNumberToObject(r->metrics, "total", n);
        cJSON_AddNumberToObject(r->metrics, "n_shot", (double)shots);
        cJSON_AddStringToObject(r->metrics, "lang", L->name);
        cJSON_AddStringToObject(r->metrics, "template", ftk_template_name(t.tpl));
        cJSON_AddItemToObject(r->metrics, "subjects", subjects);
        subjects = NULL;
    }
    cJSON_Delete(subjects);
    ftk_kv_cache_free(cache);
    free(logits);
    for (int i = 0; qs && i < n; i++)
        ftk_ids_free(&qs[i].ids);
    free(qs);
    cJSON_Delete(dev);
    if (qs)
        text_free(&t);
    return s;
}

/* ---- generation: exact match and contains ------------------------------------------------------ */

/* Trimmed copy, ASCII-lowercased when asked. */
static char *norm(const char *s, int lower)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    char *o = strndup(s, n);
    for (size_t i = 0; o && lower && i < n; i++)
        o[i] = (char)tolower((unsigned char)o[i]);
    return o;
}

/* The reference answers of a record: "answer", "answers", "output", "response" (a string or a
 * list of strings). */
static const cJSON *references(const cJSON *rec)
{
    static const char *const keys[] = {"answer", "answers", "output", "response"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(rec, keys[i]);
        if (cJSON_IsString(v) || cJSON_IsArray(v))
            return v;
    }
    return NULL;
}

/* Prompt ids of a record: "messages" (chat, needs the template), or a text prompt ("prompt",
 * "question", or alpaca's "instruction" + "\n" + "input") as one user turn with the template,
 * or encoded as it is (with the tokenizer's special tokens) without one. Same rendering as
 * ftk generate. */
static ftk_status gen_prompt(struct eval_run *r, const struct text_setup *t, const cJSON *rec, struct ftk_ids *out, const char *where)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(rec, "messages"), *sys = cJSON_GetObjectItemCaseSensitive(rec, "system");
    const char *system = cJSON_IsString(sys) ? sys->valuestring : r->o->system;
    if (cJSON_IsArray(msgs)) {
        FTK_FAIL_IF(!t->tpl, FTK_E_INVALID, "%s: \"messages\" need a chat template: give --template", where);
        int n = cJSON_GetArraySize(msgs);
        struct ftk_chat_message *cm = calloc((size_t)n + 1, sizeof *cm);
        FTK_FAIL_IF(!cm, FTK_E_NOMEM, "out of memory");
        size_t k = 0;
        const cJSON *x;
        ftk_status s = FTK_OK;
        cJSON_ArrayForEach(x, msgs) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(x, "role"), *content = cJSON_GetObjectItemCaseSensitive(x, "content");
            if (!cJSON_IsString(role) || !cJSON_IsString(content)) {
                s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: each message needs string \"role\" and \"content\"", where);
                break;
            }
            const char *rl = role->valuestring;
            if (!strcmp(rl, "system"))
                system = content->valuestring;
            else if (!strcmp(rl, "user") || !strcmp(rl, "human"))
                cm[k++] = (struct ftk_chat_message){FTK_ROLE_USER, content->valuestring};
            else if (!strcmp(rl, "assistant") || !strcmp(rl, "gpt"))
                cm[k++] = (struct ftk_chat_message){FTK_ROLE_ASSISTANT, content->valuestring};
            else {
                s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: role \"%s\" (use system, user, assistant)", where, rl);
                break;
            }
        }
        if (s == FTK_OK) {
            cm[k++] = (struct ftk_chat_message){FTK_ROLE_ASSISTANT, ""};
            if ((s = encode_prompt(t, cm, k, system, out)) != FTK_OK)
                s = ftk_error_wrap(s, "%s", where);
        }
        free(cm);
        return s;
    }
    char nb[64], *joined = NULL;
    const char *p = field(rec, "prompt", nb, sizeof nb);
    if (!p)
        p = field(rec, "question", nb, sizeof nb);
    if (!p && (p = field(rec, "instruction", nb, sizeof nb))) {
        char ib[64];
        const char *in = field(rec, "input", ib, sizeof ib);
        if (in && *in) {   /* LLaMA-Factory's alpaca converter: instruction + "\n" + input */
            size_t len = strlen(p) + strlen(in) + 2;
            joined = malloc(len);
            FTK_FAIL_IF(!joined, FTK_E_NOMEM, "out of memory");
            snprintf(joined, len, "%s\n%s", p, in);
            p = joined;
        }
    }
    FTK_FAIL_IF(!p, FTK_E_FORMAT, "%s: needs \"prompt\", \"question\", \"instruction\" or \"messages\"", where);
    ftk_status s;
    if (t->tpl) {
        struct ftk_chat_message cm[2] = {{FTK_ROLE_USER, p}, {FTK_ROLE_ASSISTANT, ""}};
        s = encode_prompt(t, cm, 2, system, out);
    } else {
        s = ftk_tokenizer_encode(t->tok, p, strlen(p), 1, out);
    }
    free(joined);
    return s == FTK_OK ? FTK_OK : ftk_error_wrap(s, "%s", where);
}

ftk_status eval_generation(struct eval_run *r, cJSON *records, const char *name)
{
    const struct ftk_eval_opts *o = r->o;
    struct text_setup t;
    int n = cJSON_GetArraySize(records);
    struct ftk_ids *ids = calloc((size_t)n, sizeof *ids);
    FTK_FAIL_IF(!ids, FTK_E_NOMEM, "out of memory");
    ftk_status s = setup(r, &t);
    struct ftk_gen_config gc;
    ftk_gen_config_init(&gc);
    if (s == FTK_OK)
        s = ftk_gen_config_load(&gc, o->model);
    gc.do_sample = 0;   /* greedy: the score must not depend on a seed */
    gc.repetition_penalty = 1.0;
    gc.max_new_tokens = o->max_new_tokens > 0 ? o->max_new_tokens : 64;
    gc.context = t.context;
    int32_t eos = ftk_tokenizer_special_id(t.tok, "eos_token");
    if (s == FTK_OK && eos >= 0 && gc.n_eos < FTK_GEN_MAX_EOS)
        gc.eos[gc.n_eos++] = eos;
    if (s == FTK_OK && t.enc.eos_id >= 0 && t.enc.eos_id != eos && gc.n_eos < FTK_GEN_MAX_EOS)
        gc.eos[gc.n_eos++] = t.enc.eos_id;   /* the template's replace_eos */
    for (int i = 0; i < n && s == FTK_OK; i++) {
        char where[600];
        ftk_progress_update(&r->prog, i, NULL);
        snprintf(where, sizeof where, "%s: record %d", name, i);
        const cJSON *rec = cJSON_GetArrayItem(records, i);
        if (!references(rec))
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: no reference \"answer\" (a string or a list of strings)", where);
        if (s == FTK_OK)
            s = gen_prompt(r, &t, rec, &ids[i], where);
        if (s == FTK_OK && ids[i].n == 0)
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: the prompt encodes to no tokens", where);
        if (s == FTK_OK && (int64_t)ids[i].n >= t.context)
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s: the prompt has %zu tokens, no room in the context (%lld)", where,
                              ids[i].n, (long long)t.context);
    }
    int64_t bs = o->batch_size > 0 ? o->batch_size : 8, exact = 0, contains = 0;
    const int32_t **pp = calloc((size_t)bs, sizeof *pp);
    int64_t *lens = calloc((size_t)bs, sizeof *lens);
    struct ftk_gen_result *res = calloc((size_t)bs, sizeof *res);
    if (s == FTK_OK && (!pp || !lens || !res))
        s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    for (int64_t b0 = 0; b0 < n && s == FTK_OK; b0 += bs) {
        int64_t nb = n - b0 < bs ? n - b0 : bs;
        for (int64_t k = 0; k < nb; k++) {
            pp[k] = ids[b0 + k].ids;
            lens[k] = (int64_t)ids[b0 + k].n;
        }
        if ((s = ftk_generate(r->m, t.tok, &gc, nb, pp, lens, NULL, NULL, res)) != FTK_OK) {
            s = ftk_error_wrap(s, "%s: records %lld..%lld", name, (long long)b0, (long long)(b0 + nb - 1));
            break;
        }
        for (int64_t k = 0; k < nb; k++) {
            const cJSON *ref = references(cJSON_GetArrayItem(records, (int)(b0 + k))), *x;
            char *got = norm(res[k].text ? res[k].text : "", o->ignore_case);
            int ex = 0, co = 0;
            cJSON *answers = cJSON_CreateArray();
            if (cJSON_IsString(ref))
                cJSON_AddItemToArray(answers, cJSON_CreateString(ref->valuestring));
            else
                cJSON_ArrayForEach(x, ref) if (cJSON_IsString(x)) cJSON_AddItemToArray(answers, cJSON_CreateString(x->valuestring));
            cJSON_ArrayForEach(x, answers) {
                char *want = norm(x->valuestring, o->ignore_case);
                if (got && want) {
                    ex |= !strcmp(got, want);
                    co |= strstr(got, want) != NULL;
                }
                free(want);
            }
            free(got);
            exact += ex;
            contains += co;
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "index", (double)(b0 + k));
            cJSON_AddStringToObject(e, "output", res[k].text ? res[k].text : "");
            cJSON_AddItemToObject(e, "answers", answers);
            cJSON_AddBoolToObject(e, "exact_match", ex);
            cJSON_AddBoolToObject(e, "contains", co);
            cJSON_AddStringToObject(e, "finish_reason", res[k].finish_reason ? res[k].finish_reason : "");
            cJSON_AddNumberToObject(e, "prompt_tokens", (double)res[k].prompt_tokens);
            cJSON_AddNumberToObject(e, "completion_tokens", (double)res[k].n);
            if (s == FTK_OK)
                s = eval_per_example(r, e);
            else
                cJSON_Delete(e);
            ftk_gen_result_free(&res[k]);
        }
    }
    if (s == FTK_OK) {
        cJSON_AddNumberToObject(r->metrics, "exact_match", (double)exact / n);
        cJSON_AddNumberToObject(r->metrics, "contains", (double)contains / n);
        cJSON_AddNumberToObject(r->metrics, "total", n);
        cJSON_AddNumberToObject(r->metrics, "max_new_tokens", (double)gc.max_new_tokens);
        if (t.tpl)
            cJSON_AddStringToObject(r->metrics, "template", ftk_template_name(t.tpl));
    }
    free(pp);
    free(lens);
    free(res);
    for (int i = 0; i < n; i++)
        ftk_ids_free(&ids[i]);
    free(ids);
    text_free(&t);
    return s;
}
