/* libcore/peft_pattern.c: peft's per-module rank_pattern / alpha_pattern lookup (ftk/plugin.h).
 *
 * peft (utils/other.py get_pattern_key) takes the first key of the pattern dict, in its order,
 * for which re.match(rf"(.*\.)?({key})$", module) matches, and uses its value for that module;
 * the config's r / lora_alpha otherwise. Keys are Python regular expressions: they run here as
 * POSIX extended ones (glibc's, which knows \w \s \b), with the Python-only spellings that
 * module-name patterns use translated (\d, \D, (?:...)); any other (?...) construct is refused
 * rather than matched differently. Full-match semantics make Python's lazy quantifiers and
 * POSIX's leftmost-longest rule agree on whether a name matches. */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/plugin.h"

/* "(.*\.)?(KEY)$" anchored at the start, KEY translated to ERE; NULL-terminated in out. */
static ftk_status translate(const char *key, const char *option, char *out, size_t cap)
{
    size_t n = 0;
#define PUT(s)                                                                                                  \
    do {                                                                                                        \
        size_t l_ = strlen(s);                                                                                  \
        FTK_FAIL_IF(n + l_ + 1 > cap, FTK_E_UNSUPPORTED, "%s: key \"%.80s\" is too long", option, key);        \
        memcpy(out + n, s, l_ + 1);                                                                             \
        n += l_;                                                                                                \
    } while (0)
    PUT("^(.*\\.)?(");
    for (const char *c = key; *c; c++) {
        if (c[0] == '\\' && (c[1] == 'd' || c[1] == 'D')) {
            PUT(c[1] == 'd' ? "[0-9]" : "[^0-9]");
            c++;
        } else if (c[0] == '\\' && c[1]) {
            char two[3] = {c[0], c[1], 0};
            PUT(two);
            c++;
        } else if (c[0] == '(' && c[1] == '?') {
            FTK_FAIL_IF(c[2] != ':', FTK_E_UNSUPPORTED,
                        "%s: key \"%s\" uses a Python regex construct \"(?%c\" that ftk cannot match", option, key, c[2]);
            PUT("(");
            c += 2;
        } else {
            char one[2] = {c[0], 0};
            PUT(one);
        }
    }
    PUT(")$");
#undef PUT
    return FTK_OK;
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
        char re[1024];
        if ((s = translate(e->string, option, re, sizeof re)) != FTK_OK)
            break;
        regex_t rx;
        int rc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char msg[128];
            regerror(rc, &rx, msg, sizeof msg);
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: key \"%s\" is not a regular expression ftk can use: %s",
                              option, e->string, msg);
            break;
        }
        int hit = regexec(&rx, module, 0, NULL, 0) == 0;
        regfree(&rx);
        if (hit) {
            *out = e->valuedouble;
            break;
        }
    }
    cJSON_Delete(root);
    return s;
}
