/* libcore/peft_pattern.c: peft's regular expressions over module names (ftk/plugin.h): the
 * per-module rank_pattern / alpha_pattern lookup, and target_modules / exclude_modules given as
 * one regex string (peft's match_target_against_key: re.fullmatch(regex, module)).
 *
 * peft (utils/other.py get_pattern_key) takes the first key of the pattern dict, in its order,
 * for which re.match(rf"(.*\.)?({key})$", module) matches, and uses its value for that module;
 * the config's r / lora_alpha otherwise. Keys are Python regular expressions: they run here as
 * POSIX extended ones (glibc's, which knows \w \s \b), with the Python-only spellings that
 * module-name patterns use translated (\d, \D, (?:...)); any other (?...) construct is refused
 * rather than matched differently. Full-match semantics make Python's lazy quantifiers and
 * POSIX's leftmost-longest rule agree on whether a name matches. */
#include <ctype.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/plugin.h"
#include "peft-impl.h"

/* head KEY ")$", KEY translated from Python's syntax to ERE; NUL-terminated in out. Outside
 * brackets glibc knows \w \W \s \S \b \B and escaped punctuation as Python does (but \< \> \' \`
 * are its anchors: written bare); \d, \D and (?:...) are rewritten. Inside brackets POSIX has no
 * escapes, so \d \w \s become classes and an escaped character itself. What would match differently is refused. */
static ftk_status translate(const char *head, const char *key, const char *option, char *out, size_t cap)
{
    size_t n = 0;
#define PUT(s)                                                                                                  \
    do {                                                                                                        \
        size_t l_ = strlen(s);                                                                                  \
        FTK_FAIL_IF(n + l_ + 1 > cap, FTK_E_UNSUPPORTED, "%s: key \"%.80s\" is too long", option, key);        \
        memcpy(out + n, s, l_ + 1);                                                                             \
        n += l_;                                                                                                \
    } while (0)
#define REFUSE(what) FTK_FAIL(FTK_E_UNSUPPORTED, "%s: key \"%s\" uses %s, which ftk cannot match as Python does", option, key, what)
    PUT(head);
    int bracket = 0, depth = 0;   /* depth: the key's own open groups; a ')' beyond them would close head's */
    int quant = 0;                /* the last character was a quantifier */
    for (const char *c = key; *c; c++) {
        char lit[3] = {c[0], 0, 0};
        if (bracket) {
            if (c[0] == ']' && bracket > 1) {
                bracket = 0;
            } else if (c[0] == '\\') {
                c++;
                if (*c == 'd')
                    PUT("0-9");
                else if (*c == 'w')
                    PUT("[:alnum:]_");
                else if (*c == 's')
                    PUT("[:space:]");
                else if (*c && (isalnum((unsigned char)*c) || strchr("-]^[\\", *c)))   /* \t \n \x41 ... are not the letter */
                    REFUSE("an escape inside [...] that POSIX brackets cannot hold");
                else if (*c) {
                    lit[0] = *c;
                    PUT(lit);
                } else
                    break;
                bracket++;
                continue;
            } else if (c[0] == '[' && (c[1] == ':' || c[1] == '=' || c[1] == '.')) {
                REFUSE("\"[:\", \"[=\" or \"[.\" inside [...]");
            }
            if (bracket)   /* still open; a '^' here follows "[^": a member */
                bracket++;
            PUT(lit);
            continue;
        }
        /* Python 3.11's possessive *+ ++ ?+ {m,n}+ give nothing back; glibc reads (x*)+ */
        if (c[0] == '+' && quant)
            REFUSE("a possessive quantifier");
        quant = strchr("*+?}", c[0]) != NULL;
        if (c[0] == '[') {
            bracket = 1;
            PUT("[");
            if (c[1] == '^') {
                PUT("^");
                c++;
            }
            if (c[1] == ']') {   /* a first ']' is a member, in both syntaxes */
                PUT("]");
                c++;
                bracket = 2;
            }
            continue;
        }
        if (c[0] == '\\') {
            c++;
            if (*c == 'd' || *c == 'D')
                PUT(*c == 'd' ? "[0-9]" : "[^0-9]");
            else if (isalnum((unsigned char)*c) && !strchr("wWsSbB", *c))   /* \A \n \x41 \1; \q: Python's bad escape */
                REFUSE("a backslash escape POSIX lacks");
            else if (*c && strchr("<>'`", *c)) {   /* plain characters in Python, anchors in glibc */
                lit[0] = *c;
                PUT(lit);
            } else if (*c) {
                lit[0] = '\\';
                lit[1] = *c;
                PUT(lit);
            } else
                REFUSE("a trailing backslash");
            continue;
        }
        if (c[0] == '(' && c[1] == '?') {
            if (c[2] != ':') {
                char what[48];
                snprintf(what, sizeof what, "the construct \"(?%c\"", c[2] ? c[2] : ' ');
                REFUSE(what);
            }
            PUT("(");
            depth++;
            c += 2;
            continue;
        }
        if (c[0] == '(')
            depth++;
        else if (c[0] == ')' && depth-- == 0)
            REFUSE("a ')' without its '(' (it would close the group the key is put in)");
        PUT(lit);
    }
    FTK_FAIL_IF(bracket, FTK_E_FORMAT, "%s: key \"%s\" is not a regular expression ftk can use: unmatched [", option, key);
    PUT(")$");
#undef REFUSE
#undef PUT
    return FTK_OK;
}

/* get_pattern_key's re.match(rf"(.*\.)?({key})$"), and match_target_against_key's re.fullmatch */
#define PATTERN_HEAD "^(.*\\.)?("
#define FULL_HEAD "^("

static ftk_status match(const char *head, const char *key, const char *option, const char *name, int *hit)
{
    size_t cap = strlen(head) + 6 * strlen(key) + 16;   /* a translation at most 5x as long ("\\w" in [...]) */
    char *re = malloc(cap);
    FTK_FAIL_IF(!re, FTK_E_NOMEM, "out of memory");
    ftk_status s = translate(head, key, option, re, cap);
    if (s != FTK_OK) {
        free(re);
        return s;
    }
    regex_t rx;
    int rc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB);
    free(re);
    if (rc != 0) {
        char msg[128];
        regerror(rc, &rx, msg, sizeof msg);
        FTK_FAIL(FTK_E_FORMAT, "%s: key \"%s\" is not a regular expression ftk can use: %s", option, key, msg);
    }
    *hit = regexec(&rx, name, 0, NULL, 0) == 0;
    regfree(&rx);
    return FTK_OK;
}

ftk_status ftk_peft_regex_fullmatch(const char *regex, const char *option, const char *name, int *hit)
{
    return match(FULL_HEAD, regex, option, name, hit);
}

ftk_status ftk_peft_pattern(const char *json, const char *option, const char *module, double def, double *out)
{
    *out = def;
    if (!json || !*json)
        return FTK_OK;
    cJSON *root = cJSON_Parse(json);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        FTK_FAIL(FTK_E_FORMAT, "%s is not a JSON object: %.80s", option, json);
    }
    ftk_status s = FTK_OK;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (!cJSON_IsNumber(e)) {
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s[\"%s\"] is not a number", option, e->string);
            break;
        }
        int hit;
        if ((s = match(PATTERN_HEAD, e->string, option, module, &hit)) != FTK_OK)
            break;
        if (hit) {
            *out = e->valuedouble;
            break;
        }
    }
    cJSON_Delete(root);
    return s;
}

/* peft: a list entry picks a module equal to it or ending with "." + entry. */
static int listed(const cJSON *list, const char *m)
{
    const cJSON *t;
    size_t lm = strlen(m);
    cJSON_ArrayForEach(t, list) {
        size_t n = cJSON_IsString(t) ? strlen(t->valuestring) : 0;
        if (n && (!strcmp(m, t->valuestring) || (lm > n && m[lm - n - 1] == '.' && !strcmp(m + lm - n, t->valuestring))))
            return 1;
    }
    return 0;
}

/* peft's modules_to_save rule: re.match(rf"(^|.*\.){m}($|\..*)", module) for an entry m. */
static int saved(const cJSON *mts, const char *m)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, mts) {
        const char *n = cJSON_IsString(e) ? e->valuestring : "";
        size_t ln = strlen(n);
        for (const char *at = strstr(m, n); ln && at; at = strstr(at + 1, n))
            if ((at == m || at[-1] == '.') && (at[ln] == '\0' || at[ln] == '.'))
                return 1;
    }
    return 0;
}

ftk_status peft_module_targeted(const cJSON *cfg, const char *module, int output_layer, int *hit)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "target_modules");
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(cfg, "exclude_modules");
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(cfg, "modules_to_save");
    int out = 0;
    *hit = 0;
    if (cJSON_IsString(x))
        FTK_TRY(ftk_peft_regex_fullmatch(x->valuestring, "exclude_modules", module, &out));
    else if (cJSON_IsArray(x))
        out = listed(x, module);
    if (out || (cJSON_IsArray(mts) && saved(mts, module)))
        return FTK_OK;
    if (cJSON_IsString(t) && !strcmp(t->valuestring, "all-linear"))
        *hit = !output_layer;
    else if (cJSON_IsString(t))
        return ftk_peft_regex_fullmatch(t->valuestring, "target_modules", module, hit);
    else
        *hit = !cJSON_IsArray(t) || listed(t, module);
    return FTK_OK;
}
