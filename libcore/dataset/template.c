/* libcore/dataset/template.c: chat templates (ftk/template.h), after LLaMA-Factory's
 * src/llamafactory/data/template.py (Template._encode, Llama2Template._encode,
 * ReasoningTemplate.encode_oneturn) and formatter.py (StringFormatter, EmptyFormatter). */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/fileio.h"
#include "ftk/paths.h"
#include "ftk/template.h"
#include "dataset-impl.h"

enum slot_kind { SLOT_TEXT, SLOT_TOKEN, SLOT_BOS, SLOT_EOS };

struct slot {
    enum slot_kind kind;
    char *text;        /* SLOT_TEXT: may hold {{content}} and {{idx}}; SLOT_TOKEN: the token */
};

struct slots {
    struct slot *v;
    size_t n;
};

/* Template classes of template.py. */
enum tpl_class { CLASS_DEFAULT = 0, CLASS_LLAMA2 = 1, CLASS_REASONING = 2 };

struct ftk_template {
    char *name;
    struct slots user, assistant, system, function, observation, prefix, separator;
    char *default_system;
    char **stop_words;
    size_t n_stop;
    int efficient_eos, replace_eos;
    enum tpl_class cls;
    char *thought[2];      /* thought_words: ("<think>\n", "\n</think>\n\n") by default */
    int enable_thinking;   /* 1: the empty thought is part of the response (LLaMA-Factory's default) */
};

static void slots_free(struct slots *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].text);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static ftk_status slots_add(struct slots *s, enum slot_kind kind, const char *text)
{
    struct slot *v = realloc(s->v, (s->n + 1) * sizeof *v);
    FTK_FAIL_IF(!v, FTK_E_NOMEM, "out of memory");
    s->v = v;
    s->v[s->n].kind = kind;
    s->v[s->n].text = text ? strdup(text) : NULL;
    FTK_FAIL_IF(text && !s->v[s->n].text, FTK_E_NOMEM, "out of memory");
    s->n++;
    return FTK_OK;
}

static ftk_status slots_copy(struct slots *dst, const struct slots *src)
{
    for (size_t i = 0; i < src->n; i++)
        FTK_TRY(slots_add(dst, src->v[i].kind, src->v[i].text));
    return FTK_OK;
}

/* A slot list in JSON: an array of strings (text with {{content}}), {"token": "<x>"} (that
 * token's id) and {"special": "bos_token" | "eos_token"}. */
static ftk_status parse_slots(const cJSON *j, const char *where, const char *key, struct slots *out)
{
    FTK_FAIL_IF(!cJSON_IsArray(j), FTK_E_FORMAT, "%s: \"%s\" must be an array of slots", where, key);
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
        if (cJSON_IsString(e)) {
            FTK_TRY(slots_add(out, SLOT_TEXT, e->valuestring));
            continue;
        }
        const cJSON *tok = cJSON_GetObjectItemCaseSensitive(e, "token");
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "special");
        if (cJSON_IsString(tok)) {
            FTK_TRY(slots_add(out, SLOT_TOKEN, tok->valuestring));
        } else if (cJSON_IsString(sp) && strcmp(sp->valuestring, "bos_token") == 0) {
            FTK_TRY(slots_add(out, SLOT_BOS, NULL));
        } else if (cJSON_IsString(sp) && strcmp(sp->valuestring, "eos_token") == 0) {
            FTK_TRY(slots_add(out, SLOT_EOS, NULL));
        } else {
            FTK_FAIL(FTK_E_FORMAT, "%s: \"%s\": a slot is a string, {\"token\": \"...\"} or "
                     "{\"special\": \"bos_token\"|\"eos_token\"}", where, key);
        }
    }
    return FTK_OK;
}

static ftk_status opt_slots(const cJSON *root, const char *where, const char *key, struct slots *out, int *given)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    *given = j != NULL && !cJSON_IsNull(j);
    return *given ? parse_slots(j, where, key, out) : FTK_OK;
}

static ftk_status opt_bool(const cJSON *root, const char *where, const char *key, int *out)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j)
        return FTK_OK;
    FTK_FAIL_IF(!cJSON_IsBool(j), FTK_E_FORMAT, "%s: \"%s\" must be true or false", where, key);
    *out = cJSON_IsTrue(j);
    return FTK_OK;
}

static ftk_status opt_string(const cJSON *root, const char *where, const char *key, const char *dflt, char **out)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    FTK_FAIL_IF(j && !cJSON_IsString(j), FTK_E_FORMAT, "%s: \"%s\" must be a string", where, key);
    *out = strdup(j ? j->valuestring : dflt);
    FTK_FAIL_IF(!*out, FTK_E_NOMEM, "out of memory");
    return FTK_OK;
}

static ftk_status parse_template(const cJSON *root, const char *where, struct ftk_template *t)
{
    FTK_FAIL_IF(!cJSON_IsObject(root), FTK_E_FORMAT, "%s: a template is a JSON object", where);
    static const char *const known[] = {
        "name", "format_user", "format_assistant", "format_system", "format_function",
        "format_observation", "format_prefix", "format_separator", "default_system", "stop_words",
        "efficient_eos", "replace_eos", "template_class", "thought_words", "enable_thinking",
        "comment", "source",
    };
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        size_t k = 0;
        while (k < sizeof known / sizeof *known && strcmp(known[k], e->string) != 0)
            k++;
        FTK_FAIL_IF(k == sizeof known / sizeof *known, FTK_E_FORMAT, "%s: unknown key \"%s\"", where, e->string);
    }
    FTK_TRY(opt_string(root, where, "name", where, &t->name));
    FTK_TRY(opt_string(root, where, "default_system", "", &t->default_system));
    FTK_TRY(opt_bool(root, where, "efficient_eos", &t->efficient_eos));
    FTK_TRY(opt_bool(root, where, "replace_eos", &t->replace_eos));
    t->enable_thinking = 1;
    FTK_TRY(opt_bool(root, where, "enable_thinking", &t->enable_thinking));

    char *cls = NULL;
    FTK_TRY(opt_string(root, where, "template_class", "default", &cls));
    if (strcmp(cls, "default") == 0)
        t->cls = CLASS_DEFAULT;
    else if (strcmp(cls, "llama2") == 0)
        t->cls = CLASS_LLAMA2;
    else if (strcmp(cls, "reasoning") == 0)
        t->cls = CLASS_REASONING;
    else {
        ftk_status st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__,
                                      "%s: template_class \"%s\" is not default, llama2 or reasoning", where, cls);
        free(cls);
        return st;
    }
    free(cls);

    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "stop_words");
    if (sw) {
        FTK_FAIL_IF(!cJSON_IsArray(sw), FTK_E_FORMAT, "%s: \"stop_words\" must be an array of strings", where);
        size_t n = (size_t)cJSON_GetArraySize(sw);
        t->stop_words = calloc(n ? n : 1, sizeof *t->stop_words);
        FTK_FAIL_IF(!t->stop_words, FTK_E_NOMEM, "out of memory");
        cJSON_ArrayForEach(e, sw) {
            FTK_FAIL_IF(!cJSON_IsString(e), FTK_E_FORMAT, "%s: \"stop_words\" must be an array of strings", where);
            t->stop_words[t->n_stop] = strdup(e->valuestring);
            FTK_FAIL_IF(!t->stop_words[t->n_stop], FTK_E_NOMEM, "out of memory");
            t->n_stop++;
        }
    }
    FTK_FAIL_IF(t->replace_eos && t->n_stop == 0, FTK_E_FORMAT,
                "%s: replace_eos needs stop_words (the first one becomes the eos token)", where);

    const cJSON *tw = cJSON_GetObjectItemCaseSensitive(root, "thought_words");
    const char *t0 = "<think>\n", *t1 = "\n</think>\n\n";   /* template.py register_template */
    if (tw) {
        FTK_FAIL_IF(!cJSON_IsArray(tw) || cJSON_GetArraySize(tw) != 2 ||
                        !cJSON_IsString(cJSON_GetArrayItem(tw, 0)) || !cJSON_IsString(cJSON_GetArrayItem(tw, 1)),
                    FTK_E_FORMAT, "%s: \"thought_words\" must be two strings", where);
        t0 = cJSON_GetArrayItem(tw, 0)->valuestring;
        t1 = cJSON_GetArrayItem(tw, 1)->valuestring;
    }
    t->thought[0] = strdup(t0);
    t->thought[1] = strdup(t1);
    FTK_FAIL_IF(!t->thought[0] || !t->thought[1], FTK_E_NOMEM, "out of memory");

    /* Defaults as register_template: user "{{content}}", assistant "{{content}}" + eos (no eos
     * with efficient_eos), system like the default user slot, function like the assistant,
     * observation like the user. */
    int g_user, g_asst, g_sys, g_fn, g_obs, g_prefix, g_sep;
    FTK_TRY(opt_slots(root, where, "format_user", &t->user, &g_user));
    FTK_TRY(opt_slots(root, where, "format_assistant", &t->assistant, &g_asst));
    FTK_TRY(opt_slots(root, where, "format_system", &t->system, &g_sys));
    FTK_TRY(opt_slots(root, where, "format_function", &t->function, &g_fn));
    FTK_TRY(opt_slots(root, where, "format_observation", &t->observation, &g_obs));
    FTK_TRY(opt_slots(root, where, "format_prefix", &t->prefix, &g_prefix));
    FTK_TRY(opt_slots(root, where, "format_separator", &t->separator, &g_sep));
    if (!g_obs)
        FTK_TRY(g_user ? slots_copy(&t->observation, &t->user) : slots_add(&t->observation, SLOT_TEXT, "{{content}}"));
    if (!g_user)
        FTK_TRY(slots_add(&t->user, SLOT_TEXT, "{{content}}"));
    if (!g_sys)
        FTK_TRY(slots_add(&t->system, SLOT_TEXT, "{{content}}"));
    if (!g_asst) {
        FTK_TRY(slots_add(&t->assistant, SLOT_TEXT, "{{content}}"));
        if (!t->efficient_eos)
            FTK_TRY(slots_add(&t->assistant, SLOT_EOS, NULL));
    }
    if (!g_fn)
        FTK_TRY(slots_copy(&t->function, &t->assistant));
    if (t->cls == CLASS_LLAMA2)
        FTK_FAIL_IF(t->system.n == 0 || t->system.v[0].kind != SLOT_TEXT, FTK_E_FORMAT,
                    "%s: a llama2-class template needs a text first system slot", where);
    return FTK_OK;
}

ftk_status ftk_template_parse(const char *json, size_t len, const char *where, struct ftk_template **out)
{
    *out = NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t line = 1;
        for (const char *p = json; end && p < end && p < json + len; p++)
            line += *p == '\n';
        FTK_FAIL(FTK_E_FORMAT, "%s: line %zu: malformed JSON", where, line);
    }
    struct ftk_template *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    ftk_status st = parse_template(root, where, t);
    cJSON_Delete(root);
    if (st != FTK_OK) {
        ftk_template_free(t);
        return st;
    }
    *out = t;
    return FTK_OK;
}

ftk_status ftk_template_load(const char *name_or_path, struct ftk_template **out)
{
    *out = NULL;
    FTK_FAIL_IF(!name_or_path || !*name_or_path, FTK_E_INVALID, "empty template name");
    size_t n = strlen(name_or_path);
    char path[PATH_MAX];
    int is_path = strchr(name_or_path, '/') || (n > 5 && strcmp(name_or_path + n - 5, ".json") == 0);
    if (is_path)
        snprintf(path, sizeof path, "%s", name_or_path);
    else
        snprintf(path, sizeof path, "%s/templates/%s.json", ftk_data_dir(), name_or_path);
    char *text = NULL;
    size_t len = 0;
    if (ftk_file_read_all(path, &text, &len) != FTK_OK) {
        if (is_path)
            return ftk_error_wrap(FTK_E_NOTFOUND, "template file %s", path);
        FTK_FAIL(FTK_E_NOTFOUND, "no template \"%s\" (looked for %s; give a file with --template FILE, "
                 "or set FTK_DATA_DIR)", name_or_path, path);
    }
    ftk_status st = ftk_template_parse(text, len, path, out);
    free(text);
    return st;
}

void ftk_template_free(struct ftk_template *t)
{
    if (!t)
        return;
    slots_free(&t->user);
    slots_free(&t->assistant);
    slots_free(&t->system);
    slots_free(&t->function);
    slots_free(&t->observation);
    slots_free(&t->prefix);
    slots_free(&t->separator);
    for (size_t i = 0; i < t->n_stop; i++)
        free(t->stop_words[i]);
    free(t->stop_words);
    free(t->default_system);
    free(t->thought[0]);
    free(t->thought[1]);
    free(t->name);
    free(t);
}

const char *ftk_template_name(const struct ftk_template *t) { return t->name; }
const char *ftk_template_default_system(const struct ftk_template *t) { return t->default_system; }
int ftk_template_efficient_eos(const struct ftk_template *t) { return t->efficient_eos; }
const char *ftk_template_eos_token(const struct ftk_template *t)
{
    return t->replace_eos && t->n_stop ? t->stop_words[0] : NULL;
}

/* ---- rendering ------------------------------------------------------------------------------ */

/* Where elements go: ids (through the encoder) or text. */
struct sink {
    const struct ftk_text_encoder *enc;
    struct ftk_ids *ids;
    struct ds_buf *text;
    const char *bos_token, *eos_token;
};

static ftk_status emit_text(struct sink *s, const char *p, size_t n)
{
    if (n == 0)   /* _convert_elements_to_ids skips empty strings */
        return FTK_OK;
    if (s->text)
        return ds_buf_add(s->text, p, n);
    return s->enc->encode(s->enc->ctx, p, n, s->ids);
}

static ftk_status emit_slot(struct sink *s, const struct slot *sl)
{
    switch (sl->kind) {
    case SLOT_TEXT:
        return emit_text(s, sl->text, strlen(sl->text));
    case SLOT_TOKEN:
        if (s->text)
            return ds_buf_str(s->text, sl->text);
        else {
            int32_t id = s->enc->token_to_id(s->enc->ctx, sl->text);
            FTK_FAIL_IF(id < 0, FTK_E_MISMATCH, "template token %s is not in the tokenizer's vocabulary", sl->text);
            return ds_ids_push(s->ids, id);
        }
    case SLOT_BOS:
        if (s->text)
            return s->bos_token ? ds_buf_str(s->text, s->bos_token) : FTK_OK;
        return s->enc->bos_id >= 0 ? ds_ids_push(s->ids, s->enc->bos_id) : FTK_OK;
    case SLOT_EOS:
        if (s->text)
            return s->eos_token ? ds_buf_str(s->text, s->eos_token) : FTK_OK;
        return s->enc->eos_id >= 0 ? ds_ids_push(s->ids, s->enc->eos_id) : FTK_OK;
    }
    return FTK_OK;
}

/* StringFormatter.apply: every "{{content}}" and "{{idx}}" of a text slot replaced. */
static ftk_status substitute(const char *slot, const char *content, const char *idx, struct ds_buf *out)
{
    out->n = 0;
    FTK_TRY(ds_buf_add(out, "", 0));
    const char *p = slot;
    for (;;) {
        const char *c = strstr(p, "{{content}}"), *i = strstr(p, "{{idx}}");
        const char *q = c && (!i || c < i) ? c : i;
        if (!q)
            return ds_buf_str(out, p);
        FTK_TRY(ds_buf_add(out, p, (size_t)(q - p)));
        if (q == c) {
            FTK_TRY(ds_buf_str(out, content));
            p = q + 11;
        } else {
            FTK_TRY(ds_buf_str(out, idx));
            p = q + 7;
        }
    }
}

static ftk_status apply_slots(struct sink *s, const struct slots *sl, const char *content, size_t msg_idx)
{
    char idx[32];
    snprintf(idx, sizeof idx, "%zu", msg_idx / 2);
    struct ds_buf b = {0};
    ftk_status st = FTK_OK;
    for (size_t i = 0; i < sl->n && st == FTK_OK; i++) {
        if (sl->v[i].kind == SLOT_TEXT) {
            st = substitute(sl->v[i].text, content ? content : "", idx, &b);
            if (st == FTK_OK)
                st = emit_text(s, b.p, b.n);
        } else {
            st = emit_slot(s, &sl->v[i]);
        }
    }
    free(b.p);
    return st;
}

/* template.py remove_thought: every thought_words[0] ... thought_words[1] span removed, then
 * leading newlines stripped. */
static ftk_status remove_thought(const struct ftk_template *t, const char *content, struct ds_buf *out)
{
    out->n = 0;
    FTK_TRY(ds_buf_add(out, "", 0));
    const char *p = content;
    size_t l0 = strlen(t->thought[0]), l1 = strlen(t->thought[1]);
    for (;;) {
        const char *a = l0 ? strstr(p, t->thought[0]) : NULL;
        const char *b = a ? strstr(a + l0, t->thought[1]) : NULL;
        if (!b) {
            FTK_TRY(ds_buf_str(out, p));
            break;
        }
        FTK_TRY(ds_buf_add(out, p, (size_t)(a - p)));
        p = b + l1;
    }
    size_t k = 0;
    while (out->p[k] == '\n')
        k++;
    memmove(out->p, out->p + k, out->n - k + 1);
    out->n -= k;
    return FTK_OK;
}

/* The thought words without their surrounding whitespace ("<think>", "</think>"). */
static int has_thought(const struct ftk_template *t, const char *content)
{
    for (int w = 0; w < 2; w++) {
        const char *a = t->thought[w], *b = a + strlen(a);
        while (*a == ' ' || *a == '\n' || *a == '\t' || *a == '\r')
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\n' || b[-1] == '\t' || b[-1] == '\r'))
            b--;
        if (b > a) {
            char word[128];
            size_t n = (size_t)(b - a) < sizeof word - 1 ? (size_t)(b - a) : sizeof word - 1;
            memcpy(word, a, n);
            word[n] = '\0';
            if (strstr(content, word))
                return 1;
        }
    }
    return 0;
}

static const char *role_name(enum ftk_role r)
{
    switch (r) {
    case FTK_ROLE_USER: return "user";
    case FTK_ROLE_ASSISTANT: return "assistant";
    case FTK_ROLE_SYSTEM: return "system";
    case FTK_ROLE_FUNCTION: return "function";
    case FTK_ROLE_OBSERVATION: return "observation";
    }
    return "?";
}

/* sinks[i] receives message i. */
static ftk_status render(const struct ftk_template *t, struct sink *sinks, const struct ftk_chat_message *msgs,
                         size_t n, const char *system)
{
    FTK_FAIL_IF(n == 0, FTK_E_FORMAT, "empty conversation");
    for (size_t i = 0; i < n; i++) {
        enum ftk_role r = msgs[i].role;
        int ok = i % 2 == 0 ? (r == FTK_ROLE_USER || r == FTK_ROLE_OBSERVATION)
                            : (r == FTK_ROLE_ASSISTANT || r == FTK_ROLE_FUNCTION);
        FTK_FAIL_IF(!ok, FTK_E_FORMAT, "message %zu: a %s message cannot come %s (template %s renders "
                    "user/observation, then assistant/function, in turns)", i, role_name(r),
                    i == 0 ? "first" : i % 2 ? "after a user turn" : "after an assistant turn", t->name);
        FTK_FAIL_IF(!msgs[i].content, FTK_E_FORMAT, "message %zu: no content", i);
    }
    if (!system || !*system)
        system = t->default_system;

    struct ds_buf tmp = {0}, fused = {0};
    ftk_status st = FTK_OK;
    for (size_t i = 0; i < n && st == FTK_OK; i++) {
        struct sink *s = &sinks[i];
        const char *content = msgs[i].content;
        if (i == 0) {
            for (size_t k = 0; k < t->prefix.n && st == FTK_OK; k++)
                st = emit_slot(s, &t->prefix.v[k]);
            if (st == FTK_OK && *system) {
                if (t->cls == CLASS_LLAMA2) {
                    /* Llama2Template: format_system's first slot is glued to the first user content. */
                    st = substitute(t->system.v[0].text, system, "0", &fused);
                    if (st == FTK_OK)
                        st = ds_buf_str(&fused, content);
                    content = fused.p;
                } else {
                    st = apply_slots(s, &t->system, system, i);
                }
            }
        }
        if (st == FTK_OK && i > 0 && i % 2 == 0)
            st = apply_slots(s, &t->separator, "", i);
        if (st != FTK_OK)
            break;
        int reply = msgs[i].role == FTK_ROLE_ASSISTANT || msgs[i].role == FTK_ROLE_FUNCTION;
        if (t->cls == CLASS_REASONING && reply) {
            /* encode_oneturn: thoughts leave the history; the last reply gets an empty thought when
             * it has none, in the response (enable_thinking) or at the end of the prompt. This is
             * also what the Qwen3 chat template renders (docs/templates.md). */
            int last = i == n - 1;
            if (!last || !t->enable_thinking) {
                st = remove_thought(t, content, &tmp);
                content = tmp.p;
            }
            if (st == FTK_OK && last && !has_thought(t, content)) {
                struct ds_buf th = {0};
                st = ds_buf_str(&th, t->thought[0]);
                if (st == FTK_OK)
                    st = ds_buf_str(&th, t->thought[1]);
                if (st == FTK_OK)
                    st = emit_text(t->enable_thinking ? s : &sinks[i - 1], th.p, th.n);
                free(th.p);
            }
            if (st != FTK_OK)
                break;
        }
        switch (msgs[i].role) {
        case FTK_ROLE_USER: st = apply_slots(s, &t->user, content, i); break;
        case FTK_ROLE_ASSISTANT: st = apply_slots(s, &t->assistant, content, i); break;
        case FTK_ROLE_OBSERVATION: st = apply_slots(s, &t->observation, content, i); break;
        case FTK_ROLE_FUNCTION: st = apply_slots(s, &t->function, content, i); break;
        case FTK_ROLE_SYSTEM: break;   /* rejected above */
        }
    }
    free(tmp.p);
    free(fused.p);
    return st;
}

ftk_status ftk_template_encode(const struct ftk_template *t, const struct ftk_text_encoder *enc,
                               const struct ftk_chat_message *msgs, size_t n, const char *system,
                               struct ftk_ids *out)
{
    struct sink stack[16], *sinks = n <= 16 ? stack : calloc(n, sizeof *sinks);
    FTK_FAIL_IF(!sinks, FTK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        sinks[i] = (struct sink){.enc = enc, .ids = &out[i]};
    ftk_status st = render(t, sinks, msgs, n, system);
    if (sinks != stack)
        free(sinks);
    return st;
}

ftk_status ftk_template_render(const struct ftk_template *t, const struct ftk_chat_message *msgs, size_t n,
                               const char *system, const char *bos_token, const char *eos_token, char **out)
{
    *out = NULL;
    struct ds_buf b = {0};
    FTK_TRY(ds_buf_add(&b, "", 0));
    struct sink stack[16], *sinks = n <= 16 ? stack : calloc(n, sizeof *sinks);
    if (!sinks) {
        free(b.p);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    if (t->replace_eos)
        eos_token = t->stop_words[0];
    for (size_t i = 0; i < n; i++)
        sinks[i] = (struct sink){.text = &b, .bos_token = bos_token, .eos_token = eos_token};
    ftk_status st = render(t, sinks, msgs, n, system);
    if (sinks != stack)
        free(sinks);
    if (st != FTK_OK) {
        free(b.p);
        return st;
    }
    *out = b.p;
    return FTK_OK;
}
