/* libcore/dataset/convert.c: dataset descriptions (LLaMA-Factory's DatasetAttr and
 * dataset_info.json, src/llamafactory/data/parser.py) and records to conversations
 * (converter.py: AlpacaDatasetConverter, SharegptDatasetConverter). Where LLaMA-Factory logs a
 * warning and drops a record, ftk reports a bad record (docs/tools/tokenize.md). */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/fileio.h"
#include "dataset-impl.h"

#define SET(field, value) snprintf(a->field, sizeof a->field, "%s", (value))

void ftk_dataset_attr_init(struct ftk_dataset_attr *a, enum ftk_data_format f)
{
    memset(a, 0, sizeof *a);
    a->format = f;
    /* sharegpt tags (parser.py defaults) */
    SET(role_tag, "from");
    SET(content_tag, "value");
    SET(user_tag, "human");
    SET(assistant_tag, "gpt");
    SET(observation_tag, "observation");
    SET(function_tag, "function_call");
    SET(system_tag, "system");
    switch (f) {
    case FTK_FORMAT_TEXT:
        SET(prompt, "text");
        break;
    case FTK_FORMAT_ALPACA:
        SET(prompt, "instruction");
        SET(query, "input");
        SET(response, "output");
        /* optional columns of the alpaca layout in data/README.md; dataset_info.json entries
         * name them explicitly instead (ftk_dataset_info_load clears these) */
        SET(system, "system");
        SET(history, "history");
        break;
    case FTK_FORMAT_SHAREGPT:
        SET(messages, "conversations");
        SET(system, "system");
        break;
    case FTK_FORMAT_OPENAI:
        SET(messages, "messages");
        SET(role_tag, "role");
        SET(content_tag, "content");
        SET(user_tag, "user");
        SET(assistant_tag, "assistant");
        SET(observation_tag, "tool");
        SET(function_tag, "function_call");
        SET(system, "system");
        break;
    }
}

static const char *const format_names[] = {"text", "alpaca", "sharegpt", "openai"};

ftk_status ftk_data_format_parse(const char *name, enum ftk_data_format *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, format_names[i]) == 0) {
            *out = (enum ftk_data_format)i;
            return FTK_OK;
        }
    FTK_FAIL(FTK_E_INVALID, "unknown format \"%s\" (text, alpaca, sharegpt, openai)", name);
}

const char *ftk_data_format_name(enum ftk_data_format f)
{
    return (unsigned)f < 4 ? format_names[f] : "?";
}

const char *ftk_example_kind_name(enum ftk_example_kind k)
{
    static const char *const names[] = {"text", "sft", "pairwise", "kto"};
    return (unsigned)k < 4 ? names[k] : "?";
}

/* The field of `a` a key names, or NULL. */
static char *attr_field(struct ftk_dataset_attr *a, const char *key)
{
    struct { const char *k; char *f; } map[] = {
        {"prompt", a->prompt}, {"text", a->prompt}, {"query", a->query}, {"response", a->response},
        {"history", a->history}, {"messages", a->messages}, {"system", a->system}, {"tools", a->tools},
        {"chosen", a->chosen}, {"rejected", a->rejected}, {"kto_tag", a->kto_tag},
        {"role_tag", a->role_tag}, {"content_tag", a->content_tag}, {"user_tag", a->user_tag},
        {"assistant_tag", a->assistant_tag}, {"observation_tag", a->observation_tag},
        {"function_tag", a->function_tag}, {"system_tag", a->system_tag},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (strcmp(map[i].k, key) == 0)
            return map[i].f;
    return NULL;
}

ftk_status ftk_dataset_attr_set(struct ftk_dataset_attr *a, const char *assignments)
{
    const char *p = assignments;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char item[2 * FTK_DATASET_NAME_MAX];
        FTK_FAIL_IF(n >= sizeof item, FTK_E_INVALID, "column assignment too long: %.40s...", p);
        memcpy(item, p, n);
        item[n] = '\0';
        char *eq = strchr(item, '=');
        FTK_FAIL_IF(!eq, FTK_E_INVALID, "\"%s\": expected KEY=COLUMN", item);
        *eq = '\0';
        char *f = attr_field(a, item);
        FTK_FAIL_IF(!f, FTK_E_INVALID, "unknown column or tag \"%s\" (prompt, query, response, history, "
                    "messages, system, tools, chosen, rejected, kto_tag, text, role_tag, content_tag, "
                    "user_tag, assistant_tag, observation_tag, function_tag, system_tag)", item);
        FTK_FAIL_IF(strlen(eq + 1) >= FTK_DATASET_NAME_MAX, FTK_E_INVALID, "column name too long: %s", eq + 1);
        snprintf(f, FTK_DATASET_NAME_MAX, "%s", eq + 1);
        p += n;
        if (*p == ',')
            p++;
    }
    return FTK_OK;
}

static ftk_status info_entry(const cJSON *e, const char *where, int format_override, struct ftk_dataset_attr *a,
                             const char *dir, char **file_path)
{
    FTK_FAIL_IF(!cJSON_IsObject(e), FTK_E_FORMAT, "%s: not an object", where);
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(e, "file_name");
    if (!cJSON_IsString(fn)) {
        int hub = cJSON_GetObjectItemCaseSensitive(e, "hf_hub_url") || cJSON_GetObjectItemCaseSensitive(e, "ms_hub_url") ||
                  cJSON_GetObjectItemCaseSensitive(e, "script_url") || cJSON_GetObjectItemCaseSensitive(e, "cloud_file_name");
        FTK_FAIL(hub ? FTK_E_UNSUPPORTED : FTK_E_FORMAT, "%s: %s", where,
                 hub ? "hub and cloud datasets are not read by ftk (download the file and give file_name)"
                     : "no file_name");
    }
    /* LLaMA-Factory's num_samples draws a random subset (or repeats the data): not read silently */
    const cJSON *ns = cJSON_GetObjectItemCaseSensitive(e, "num_samples");
    FTK_FAIL_IF(ns && !cJSON_IsNull(ns), FTK_E_UNSUPPORTED,
                "%s: num_samples (LLaMA-Factory's random subsample) is not supported: remove it, or keep the first N "
                "examples (the pipelines' MAX_SAMPLES)", where);
    enum ftk_data_format f = FTK_FORMAT_ALPACA;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(e, "formatting");
    if (cJSON_IsString(fmt)) {
        if (strcmp(fmt->valuestring, "alpaca") == 0)
            f = FTK_FORMAT_ALPACA;
        else if (strcmp(fmt->valuestring, "sharegpt") == 0)
            f = FTK_FORMAT_SHAREGPT;
        else if (strcmp(fmt->valuestring, "openai") == 0)
            f = FTK_FORMAT_OPENAI;
        else
            FTK_FAIL(FTK_E_UNSUPPORTED, "%s: formatting \"%s\" (alpaca, sharegpt, openai)", where, fmt->valuestring);
    }
    if (format_override >= 0)
        f = (enum ftk_data_format)format_override;
    ftk_dataset_attr_init(a, f);
    /* parser.py DatasetAttr: system and history are unused unless the columns name them */
    a->system[0] = '\0';
    a->history[0] = '\0';
    const cJSON *rk = cJSON_GetObjectItemCaseSensitive(e, "ranking");
    a->ranking = cJSON_IsTrue(rk);
    for (int pass = 0; pass < 2; pass++) {
        const char *key = pass ? "tags" : "columns";
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, key), *kv;
        if (!m)
            continue;
        FTK_FAIL_IF(!cJSON_IsObject(m), FTK_E_FORMAT, "%s: \"%s\" must be an object", where, key);
        cJSON_ArrayForEach(kv, m) {
            char *field = attr_field(a, kv->string);
            if (!field || strcmp(kv->string, "text") == 0)
                continue;   /* images, videos, audios: multimodal columns ftk does not read */
            FTK_FAIL_IF(!cJSON_IsString(kv), FTK_E_FORMAT, "%s: %s.%s must be a string", where, key, kv->string);
            snprintf(field, FTK_DATASET_NAME_MAX, "%s", kv->valuestring);
        }
    }
    size_t n = strlen(dir) + strlen(fn->valuestring) + 2;
    *file_path = malloc(n);
    FTK_FAIL_IF(!*file_path, FTK_E_NOMEM, "out of memory");
    if (fn->valuestring[0] == '/')
        snprintf(*file_path, n, "%s", fn->valuestring);
    else
        snprintf(*file_path, n, "%s/%s", dir, fn->valuestring);
    return FTK_OK;
}

ftk_status ftk_dataset_info_load(const char *json_path, const char *name, int format_override,
                                 struct ftk_dataset_attr *a, char **file_path)
{
    *file_path = NULL;
    char *text = NULL;
    size_t len = 0;
    FTK_TRY(ftk_file_read_all(json_path, &text, &len));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t line = 1;
        for (const char *p = text; end && p < end; p++)
            line += *p == '\n';
        free(text);
        FTK_FAIL(FTK_E_FORMAT, "%s: line %zu: malformed JSON", json_path, line);
    }
    free(text);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", json_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, name);
    ftk_status st;
    if (!e) {
        st = ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "%s: no dataset \"%s\"", json_path, name);
    } else {
        char where[PATH_MAX + 160];
        snprintf(where, sizeof where, "%s: dataset \"%s\"", json_path, name);
        st = info_entry(e, where, format_override, a, dir, file_path);
    }
    cJSON_Delete(root);
    return st;
}

/* ---- records -------------------------------------------------------------------------------- */

enum ftk_example_kind ds_example_kind(const struct ftk_dataset_attr *a)
{
    if (a->format == FTK_FORMAT_TEXT)
        return FTK_EXAMPLE_TEXT;
    if (a->ranking)
        return FTK_EXAMPLE_PAIRWISE;
    if (a->kto_tag[0])
        return FTK_EXAMPLE_KTO;
    return FTK_EXAMPLE_SFT;
}

void ds_conv_free(struct ds_conv *c)
{
    free(c->msgs);
    for (size_t i = 0; i < c->n_owned; i++)
        free(c->owned[i]);
    free(c->owned);
    memset(c, 0, sizeof *c);
}

static ftk_status add_msg(struct ds_conv *c, enum ftk_role role, const char *content)
{
    struct ftk_chat_message *m = realloc(c->msgs, (c->n_msgs + 1) * sizeof *m);
    FTK_FAIL_IF(!m, FTK_E_NOMEM, "out of memory");
    c->msgs = m;
    c->msgs[c->n_msgs++] = (struct ftk_chat_message){.role = role, .content = content};
    return FTK_OK;
}

static ftk_status own(struct ds_conv *c, char *s)
{
    char **o = realloc(c->owned, (c->n_owned + 1) * sizeof *o);
    if (!o) {
        free(s);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    c->owned = o;
    c->owned[c->n_owned++] = s;
    return FTK_OK;
}

/* A string column: required (error when absent or not a string) or optional (NULL when absent or null). */
static ftk_status str_field(const cJSON *obj, const char *col, int required, const char **out)
{
    *out = NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, col);
    if (!v || cJSON_IsNull(v)) {
        FTK_FAIL_IF(required, FTK_E_FORMAT, "missing field \"%s\"", col);
        return FTK_OK;
    }
    FTK_FAIL_IF(!cJSON_IsString(v), FTK_E_FORMAT, "field \"%s\" must be a string", col);
    *out = v->valuestring;
    return FTK_OK;
}

static ftk_status kto_field(const struct ftk_dataset_attr *a, const cJSON *obj, int *tag)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, a->kto_tag);
    FTK_FAIL_IF(!v, FTK_E_FORMAT, "missing field \"%s\" (the kto tag)", a->kto_tag);
    FTK_FAIL_IF(!cJSON_IsBool(v), FTK_E_FORMAT, "field \"%s\" (the kto tag) must be true or false", a->kto_tag);
    *tag = cJSON_IsTrue(v);
    return FTK_OK;
}

/* The tools column, when named, must be empty: ftk does not render tool descriptions, and
 * dropping them would train on prompts the data did not mean. A JSON list is tools too. */
static ftk_status refuse_tools(const struct ftk_dataset_attr *a, const cJSON *obj)
{
    if (!a->tools[0])
        return FTK_OK;
    const cJSON *tv = cJSON_GetObjectItemCaseSensitive(obj, a->tools);
    int empty = !tv || cJSON_IsNull(tv) || (cJSON_IsString(tv) && !*tv->valuestring) ||
                (cJSON_IsArray(tv) && !tv->child);
    FTK_FAIL_IF(!empty, FTK_E_UNSUPPORTED, "field \"%s\": tool descriptions are not rendered by ftk yet", a->tools);
    return FTK_OK;
}

static ftk_status convert_alpaca(const struct ftk_dataset_attr *a, const cJSON *obj, struct ds_conv *c)
{
    if (a->history[0]) {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(obj, a->history), *turn;
        if (h && !cJSON_IsNull(h)) {
            FTK_FAIL_IF(!cJSON_IsArray(h), FTK_E_FORMAT, "field \"%s\" must be a list of [prompt, response] pairs", a->history);
            int t = 0;
            cJSON_ArrayForEach(turn, h) {
                const cJSON *q = cJSON_GetArrayItem(turn, 0), *r = cJSON_GetArrayItem(turn, 1);
                FTK_FAIL_IF(!cJSON_IsArray(turn) || cJSON_GetArraySize(turn) != 2 || !cJSON_IsString(q) || !cJSON_IsString(r),
                            FTK_E_FORMAT, "field \"%s\"[%d] must be a [prompt, response] pair of strings", a->history, t);
                FTK_TRY(add_msg(c, FTK_ROLE_USER, q->valuestring));
                FTK_TRY(add_msg(c, FTK_ROLE_ASSISTANT, r->valuestring));
                t++;
            }
        }
    }
    /* the user turn: "prompt\nquery" (either may be empty) */
    const char *p = NULL, *q = NULL;
    FTK_TRY(str_field(obj, a->prompt, 1, &p));
    if (a->query[0])
        FTK_TRY(str_field(obj, a->query, 0, &q));
    if (p && *p && q && *q) {
        size_t n = strlen(p) + strlen(q) + 2;
        char *s = malloc(n);
        FTK_FAIL_IF(!s, FTK_E_NOMEM, "out of memory");
        snprintf(s, n, "%s\n%s", p, q);
        FTK_TRY(own(c, s));
        FTK_TRY(add_msg(c, FTK_ROLE_USER, s));
    } else {
        FTK_TRY(add_msg(c, FTK_ROLE_USER, p && *p ? p : q ? q : ""));
    }
    c->n_prompt = c->n_msgs;
    if (a->system[0])
        FTK_TRY(str_field(obj, a->system, 0, &c->system));
    FTK_TRY(refuse_tools(a, obj));
    const char *r1 = NULL, *r2 = NULL;
    switch (c->kind) {
    case FTK_EXAMPLE_PAIRWISE:
        FTK_FAIL_IF(!a->chosen[0] || !a->rejected[0], FTK_E_INVALID, "ranking data needs the chosen and rejected columns");
        FTK_TRY(str_field(obj, a->chosen, 1, &r1));
        FTK_TRY(str_field(obj, a->rejected, 1, &r2));
        FTK_TRY(add_msg(c, FTK_ROLE_ASSISTANT, r1));
        FTK_TRY(add_msg(c, FTK_ROLE_ASSISTANT, r2));
        break;
    case FTK_EXAMPLE_KTO:
        FTK_TRY(kto_field(a, obj, &c->kto_tag));
        /* fall through */
    default:
        FTK_FAIL_IF(!a->response[0], FTK_E_INVALID, "no response column");
        FTK_TRY(str_field(obj, a->response, 1, &r1));
        FTK_TRY(add_msg(c, FTK_ROLE_ASSISTANT, r1));
        break;
    }
    return FTK_OK;
}

static ftk_status share_role(const struct ftk_dataset_attr *a, const cJSON *m, size_t i, int odd,
                             enum ftk_role *role, const char **content)
{
    FTK_FAIL_IF(!cJSON_IsObject(m), FTK_E_FORMAT, "message %zu is not an object", i);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, a->role_tag);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, a->content_tag);
    FTK_FAIL_IF(!cJSON_IsString(r), FTK_E_FORMAT, "message %zu: missing \"%s\"", i, a->role_tag);
    FTK_FAIL_IF(!cJSON_IsString(v), FTK_E_FORMAT, "message %zu: \"%s\" missing or not a string", i, a->content_tag);
    const char *t = r->valuestring;
    *content = v->valuestring;
    if (!odd && strcmp(t, a->user_tag) == 0)
        *role = FTK_ROLE_USER;
    else if (!odd && a->observation_tag[0] && strcmp(t, a->observation_tag) == 0)
        *role = FTK_ROLE_OBSERVATION;
    else if (odd && strcmp(t, a->assistant_tag) == 0)
        *role = FTK_ROLE_ASSISTANT;
    else if (odd && a->function_tag[0] && strcmp(t, a->function_tag) == 0)
        *role = FTK_ROLE_FUNCTION;
    else
        FTK_FAIL(FTK_E_FORMAT, "message %zu: role \"%s\" where %s is expected (roles alternate)", i, t,
                 odd ? "an assistant or function message" : "a user or observation message");
    return FTK_OK;
}

static ftk_status convert_sharegpt(const struct ftk_dataset_attr *a, const cJSON *obj, struct ds_conv *c)
{
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(obj, a->messages), *m;
    FTK_FAIL_IF(!msgs, FTK_E_FORMAT, "missing field \"%s\"", a->messages);
    FTK_FAIL_IF(!cJSON_IsArray(msgs), FTK_E_FORMAT, "field \"%s\" must be a list of messages", a->messages);
    size_t i = 0, k = 0;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, a->role_tag);
        if (i == 0 && a->system_tag[0] && cJSON_IsString(r) && strcmp(r->valuestring, a->system_tag) == 0) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, a->content_tag);
            FTK_FAIL_IF(!cJSON_IsString(v), FTK_E_FORMAT, "message 0: \"%s\" missing or not a string", a->content_tag);
            c->system = v->valuestring;
            i++;
            continue;
        }
        enum ftk_role role;
        const char *content;
        FTK_TRY(share_role(a, m, i, (int)(k % 2), &role, &content));
        FTK_TRY(add_msg(c, role, content));
        i++;
        k++;
    }
    if (!c->system && a->system[0])
        FTK_TRY(str_field(obj, a->system, 0, &c->system));
    FTK_TRY(refuse_tools(a, obj));
    if (c->kind == FTK_EXAMPLE_PAIRWISE) {
        FTK_FAIL_IF(k % 2 == 0, FTK_E_FORMAT, "%zu messages: preference data needs a prompt ending with a user "
                    "message (an odd count)", k);
        FTK_FAIL_IF(!a->chosen[0] || !a->rejected[0], FTK_E_INVALID, "ranking data needs the chosen and rejected columns");
        c->n_prompt = c->n_msgs;
        const char *cols[2] = {a->chosen, a->rejected};
        for (int w = 0; w < 2; w++) {
            const cJSON *r = cJSON_GetObjectItemCaseSensitive(obj, cols[w]);
            FTK_FAIL_IF(!r, FTK_E_FORMAT, "missing field \"%s\"", cols[w]);
            enum ftk_role role;
            const char *content;
            ftk_status st = share_role(a, r, k, 1, &role, &content);
            if (st != FTK_OK)
                return ftk_error_wrap(st, "field \"%s\"", cols[w]);
            FTK_TRY(add_msg(c, role, content));
        }
        return FTK_OK;
    }
    FTK_FAIL_IF(k == 0, FTK_E_FORMAT, "no messages");
    FTK_FAIL_IF(k % 2 != 0, FTK_E_FORMAT, "%zu messages: a conversation must end with an assistant message "
                "(an even count)", k);
    c->n_prompt = c->n_msgs - 1;
    if (c->kind == FTK_EXAMPLE_KTO)
        FTK_TRY(kto_field(a, obj, &c->kto_tag));
    return FTK_OK;
}

ftk_status ds_convert(const struct ftk_dataset_attr *a, const struct ds_record *rec, struct ds_conv *c)
{
    memset(c, 0, sizeof *c);
    c->kind = ds_example_kind(a);
    if (c->kind == FTK_EXAMPLE_TEXT) {
        if (!rec->json) {
            c->text = rec->text;
            c->text_len = rec->text_len;
        } else {
            const char *t;
            FTK_TRY(str_field(rec->json, a->prompt, 1, &t));
            c->text = t;
            c->text_len = strlen(t);
        }
        FTK_FAIL_IF(c->text_len == 0, FTK_E_FORMAT, "empty text");
        return FTK_OK;
    }
    FTK_FAIL_IF(!rec->json, FTK_E_FORMAT, "not a JSON record");
    ftk_status st = a->format == FTK_FORMAT_ALPACA ? convert_alpaca(a, rec->json, c) : convert_sharegpt(a, rec->json, c);
    if (st != FTK_OK) {
        ds_conv_free(c);
        return st;
    }
    /* the reply must say something (pairwise: both) */
    for (size_t i = c->n_prompt; i < c->n_msgs; i++)
        if (!*c->msgs[i].content) {
            ds_conv_free(c);
            FTK_FAIL(FTK_E_FORMAT, "empty response");
        }
    return FTK_OK;
}
