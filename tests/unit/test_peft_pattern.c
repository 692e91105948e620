/* tests/unit/test_peft_pattern.c: ftk_peft_pattern (peft's rank_pattern / alpha_pattern lookup)
 * picks the value peft's get_pattern_key picks, on the cases of
 * tests/fixtures/peft_pattern_cases.json (tests/oracle/lora_patterns.py): first matching key,
 * "." boundaries, regex keys with \d, (?:...), classes and alternation; ftk_peft_regex_fullmatch
 * (target_modules as one regex) agrees with peft's match_target_against_key on the same file;
 * both refuse what they cannot match the same way. */
#include <stdio.h>
#include <stdlib.h>
#include <cjson/cJSON.h>
#include "check.h"
#include "ftk/fileio.h"
#include "ftk/plugin.h"

int main(void)
{
    TEST("peft get_pattern_key's choices (peft_pattern_cases.json)") {
        char *text;
        size_t len;
        CHECK_OK(ftk_file_read_all("tests/fixtures/peft_pattern_cases.json", &text, &len));
        cJSON *root = cJSON_ParseWithLength(text, len);
        free(text);
        const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases"), *c;
        int n = 0, bad = 0;
        cJSON_ArrayForEach(c, cases) {
            char *pat = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(c, "pattern"));
            const char *module = cJSON_GetObjectItemCaseSensitive(c, "module")->valuestring;
            double want = cJSON_GetObjectItemCaseSensitive(c, "value")->valuedouble, got = 0;
            CHECK_OK(ftk_peft_pattern(pat, "rank_pattern", module, -1, &got));
            if (got != want && bad++ < 5)
                CHECK_FAIL_("%s on %s: %g, peft %g", pat, module, got, want);
            free(pat);
            n++;
        }
        printf("  %d cases, %d differ from peft\n", n, bad);
        CHECK(n >= 100);
        CHECK_INT(bad, 0);
        n = bad = 0;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(root, "fullmatch")) {
            const char *rx = cJSON_GetObjectItemCaseSensitive(c, "regex")->valuestring;
            const char *module = cJSON_GetObjectItemCaseSensitive(c, "module")->valuestring;
            int want = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "match")), got = -1;
            CHECK_OK(ftk_peft_regex_fullmatch(rx, "target_modules", module, &got));
            if (got != want && bad++ < 5)
                CHECK_FAIL_("re.fullmatch(%s, %s): %d, peft %d", rx, module, got, want);
            n++;
        }
        printf("  %d fullmatch cases, %d differ from peft\n", n, bad);
        CHECK(n >= 50);
        CHECK_INT(bad, 0);
        cJSON_Delete(root);
    }
    TEST("a long regex (every module spelled out) is run, not refused as too long") {
        char key[4096];
        size_t n = 0;
        for (int l = 0; l < 60; l++)
            n += (size_t)snprintf(key + n, sizeof key - n, "%smodel\\.layers\\.%d\\.self_attn\\.q_proj", l ? "|" : "", l);
        int hit = 0;
        CHECK(n > 1500);
        CHECK_OK(ftk_peft_regex_fullmatch(key, "target_modules", "model.layers.37.self_attn.q_proj", &hit));
        CHECK_INT(hit, 1);
        CHECK_OK(ftk_peft_regex_fullmatch(key, "target_modules", "model.layers.37.self_attn.k_proj", &hit));
        CHECK_INT(hit, 0);
    }
    TEST("no pattern: the default") {
        double v = 0;
        CHECK_OK(ftk_peft_pattern(NULL, "rank_pattern", "model.layers.0.self_attn.q_proj", 8, &v));
        CHECK(v == 8);
        CHECK_OK(ftk_peft_pattern("{}", "rank_pattern", "model.layers.0.self_attn.q_proj", 8, &v));
        CHECK(v == 8);
    }
    TEST("bad patterns: clear errors naming the option and key") {
        double v;
        CHECK_ERR(ftk_peft_pattern("[1]", "alpha_pattern", "q_proj", 8, &v), FTK_E_FORMAT, "alpha_pattern is not a JSON object");
        CHECK_ERR(ftk_peft_pattern("{\"q_proj\": \"4\"}", "rank_pattern", "q_proj", 8, &v), FTK_E_FORMAT,
                  "rank_pattern[\"q_proj\"] is not a number");
        CHECK_ERR(ftk_peft_pattern("{\"(?<=x)q\": 4}", "rank_pattern", "q_proj", 8, &v), FTK_E_UNSUPPORTED, "(?<");
        CHECK_ERR(ftk_peft_pattern("{\"q_proj(\": 4}", "rank_pattern", "q_proj", 8, &v), FTK_E_FORMAT, "key \"q_proj(\"");
        int hit;
        CHECK_ERR(ftk_peft_regex_fullmatch("[\\D]_proj", "target_modules", "q_proj", &hit), FTK_E_UNSUPPORTED, "inside [...]");
        CHECK_ERR(ftk_peft_regex_fullmatch("q_proj\\Z", "target_modules", "q_proj", &hit), FTK_E_UNSUPPORTED, "backslash escape");
        CHECK_ERR(ftk_peft_regex_fullmatch("[a-z_proj", "target_modules", "q_proj", &hit), FTK_E_FORMAT, "unmatched [");
        CHECK_ERR(ftk_peft_regex_fullmatch("(?P<x>q)_proj", "target_modules", "q_proj", &hit), FTK_E_UNSUPPORTED, "(?P");
    }
    TEST("a key's ')' cannot close the group the key is put in") {
        /* peft: re.match(r"(.*\.)?(a)|(b)$", "model.xb") is None (the second branch is anchored
         * at the start too); as POSIX "^(.*\.)?(a)|(b)$" it would match */
        double v = 0;
        CHECK_ERR(ftk_peft_pattern("{\"a)|(b\": 4}", "rank_pattern", "model.xb", 8, &v), FTK_E_UNSUPPORTED, "key \"a)|(b\"");
        int hit = -1;
        CHECK_ERR(ftk_peft_regex_fullmatch("q_proj)(", "target_modules", "q_proj", &hit), FTK_E_UNSUPPORTED, "')'");
        CHECK_OK(ftk_peft_regex_fullmatch("(q|v)_proj", "target_modules", "v_proj", &hit));
        CHECK_INT(hit, 1);
    }
    TEST("escapes: Python's meaning or a refusal, never glibc's") {
        int hit = -1;
        /* \< \> \' \` are plain characters in Python, word and buffer anchors in glibc */
        static const char *const plain[] = {"q_proj\\'", "\\<q_proj", "q_proj\\>", "\\`q_proj"};
        for (int i = 0; i < 4; i++) {
            CHECK_OK(ftk_peft_regex_fullmatch(plain[i], "target_modules", "q_proj", &hit));
            CHECK_INT(hit, 0);   /* re.fullmatch: None */
        }
        CHECK_OK(ftk_peft_regex_fullmatch("q_proj\\'", "target_modules", "q_proj'", &hit));
        CHECK_INT(hit, 1);
        /* \n \t ... are control characters in Python (a letter in glibc); \q is Python's "bad escape" */
        CHECK_ERR(ftk_peft_regex_fullmatch("q\\nproj", "target_modules", "qnproj", &hit), FTK_E_UNSUPPORTED, "escape");
        CHECK_ERR(ftk_peft_regex_fullmatch("[\\t]_proj", "target_modules", "t_proj", &hit), FTK_E_UNSUPPORTED, "escape");
        CHECK_ERR(ftk_peft_regex_fullmatch("\\q_proj", "target_modules", "q_proj", &hit), FTK_E_UNSUPPORTED, "escape");
        CHECK_OK(ftk_peft_regex_fullmatch("\\w_proj", "target_modules", "q_proj", &hit));
        CHECK_INT(hit, 1);
        CHECK_OK(ftk_peft_regex_fullmatch("[\\w.]+", "target_modules", "model.q_proj", &hit));
        CHECK_INT(hit, 1);
    }
    TEST("brackets: '^' after \"[^\" is a member") {
        int hit = -1;
        CHECK_OK(ftk_peft_regex_fullmatch("[^^]_proj", "target_modules", "q_proj", &hit));
        CHECK_INT(hit, 1);
        CHECK_OK(ftk_peft_regex_fullmatch("[^^]_proj", "target_modules", "^_proj", &hit));
        CHECK_INT(hit, 0);
    }
    TEST("possessive quantifiers (Python 3.11) are refused, not matched as greedy ones") {
        int hit = -1;
        /* re.fullmatch(".*+_proj", "q_proj") is None: .*+ gives nothing back */
        CHECK_ERR(ftk_peft_regex_fullmatch(".*+_proj", "target_modules", "q_proj", &hit), FTK_E_UNSUPPORTED, "possessive");
        CHECK_ERR(ftk_peft_regex_fullmatch("q{1,2}+_proj", "target_modules", "q_proj", &hit), FTK_E_UNSUPPORTED, "possessive");
        CHECK_OK(ftk_peft_regex_fullmatch("q+_proj", "target_modules", "qq_proj", &hit));
        CHECK_INT(hit, 1);
        CHECK_OK(ftk_peft_regex_fullmatch("q_pro[+]+j", "target_modules", "q_pro++j", &hit));
        CHECK_INT(hit, 1);
        CHECK_OK(ftk_peft_regex_fullmatch("q\\++_proj", "target_modules", "q++_proj", &hit));
        CHECK_INT(hit, 1);
    }
    return check_summary();
}
