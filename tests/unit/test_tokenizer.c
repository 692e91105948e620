/* tests/unit/test_tokenizer.c: the HuggingFace tokenizer (ftk/tokenizer.h).
 * - every line of tests/fixtures/tokenizers/NAME/golden.jsonl (made by @lenml/tokenizers) and
 *   oracle.jsonl.zst (made by HF tokenizers, tests/oracle/tokenizer_cases.py): ids,
 *   ids_with_special and decoded must match exactly;
 * - normalizers, pre-tokenizers, decoders and added-token options on small hand-written
 *   tokenizer.json snippets (expected values from HF tokenizers, see each comment);
 * - error cases. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "check.h"
#include "ftk/hash.h"
#include "ftk/source.h"
#include "ftk/tokenizer.h"
#include "tokenizer/tokenizer-impl.h"

static const char *const NAMES[] = {"sp-bpe-32k", "llama3-128k", "qwen3-151k"};

static int ids_equal(const struct ftk_ids *got, const cJSON *want, char *why, size_t whylen)
{
    size_t n = (size_t)cJSON_GetArraySize(want);
    for (size_t i = 0; i < n || i < got->n; i++) {
        long w = i < n ? (long)cJSON_GetArrayItem(want, (int)i)->valuedouble : -999;
        long g = i < got->n ? (long)got->ids[i] : -999;
        if (w != g) {
            snprintf(why, whylen, "id %zu: got %ld, want %ld (lengths %zu, %zu)", i, g, w, got->n, n);
            return 0;
        }
    }
    return 1;
}

/* Checks every JSON line of `text`; returns the number of lines checked. */
static size_t check_cases(const struct ftk_tokenizer *t, const char *name, const char *file, char *text)
{
    size_t lineno = 0, cases = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        lineno++;
        if (!*line || *line == '#')
            continue;
        cJSON *o = cJSON_Parse(line);
        if (!o) {
            CHECK_FAIL_("%s/%s:%zu: bad JSON", name, file, lineno);
            continue;
        }
        const cJSON *jt = cJSON_GetObjectItem(o, "text");
        const char *s = cJSON_IsString(jt) ? jt->valuestring : NULL;
        /* "text" may carry NULs: the oracle writes them as \u0000, cJSON stops there, so such
         * cases are not generated. */
        if (!s) {
            CHECK_FAIL_("%s/%s:%zu: no text", name, file, lineno);
            cJSON_Delete(o);
            continue;
        }
        cases++;
        char why[256];
        struct ftk_ids ids = {0}, ids2 = {0};
        ftk_status st = ftk_tokenizer_encode(t, s, strlen(s), 0, &ids);
        if (st != FTK_OK)
            CHECK_FAIL_("%s/%s:%zu: encode: %s", name, file, lineno, ftk_last_error());
        else if (!ids_equal(&ids, cJSON_GetObjectItem(o, "ids"), why, sizeof why))
            CHECK_FAIL_("%s/%s:%zu: ids: %s; text %.80s", name, file, lineno, why, s);
        st = ftk_tokenizer_encode(t, s, strlen(s), 1, &ids2);
        if (st != FTK_OK)
            CHECK_FAIL_("%s/%s:%zu: encode: %s", name, file, lineno, ftk_last_error());
        else if (!ids_equal(&ids2, cJSON_GetObjectItem(o, "ids_with_special"), why, sizeof why))
            CHECK_FAIL_("%s/%s:%zu: ids_with_special: %s", name, file, lineno, why);
        const cJSON *wid = cJSON_GetObjectItem(o, "ids");
        const cJSON *dec = cJSON_GetObjectItem(o, "decoded");
        if (cJSON_IsString(dec)) {
            size_t n = (size_t)cJSON_GetArraySize(wid);
            int32_t *v = malloc((n + 1) * sizeof *v);
            for (size_t i = 0; i < n; i++)
                v[i] = (int32_t)cJSON_GetArrayItem(wid, (int)i)->valuedouble;
            char *out = NULL;
            size_t olen = 0;
            st = ftk_tokenizer_decode(t, v, n, 0, -1, &out, &olen);
            if (st != FTK_OK)
                CHECK_FAIL_("%s/%s:%zu: decode: %s", name, file, lineno, ftk_last_error());
            else if (olen != strlen(dec->valuestring) || memcmp(out, dec->valuestring, olen) != 0)
                CHECK_FAIL_("%s/%s:%zu: decoded \"%.80s\", want \"%.80s\"", name, file, lineno, out,
                            dec->valuestring);
            free(out);
            free(v);
        }
        ftk_ids_free(&ids);
        ftk_ids_free(&ids2);
        cJSON_Delete(o);
    }
    return cases;
}

static void fixture_tests(void)
{
    for (size_t k = 0; k < sizeof NAMES / sizeof *NAMES; k++) {
        char dir[256], title[256];
        snprintf(dir, sizeof dir, "tests/fixtures/tokenizers/%s", NAMES[k]);
        struct ftk_tokenizer *t = NULL;
        snprintf(title, sizeof title, "load %s", NAMES[k]);
        TEST(title) { CHECK_OK(ftk_tokenizer_load_path(dir, &t)); }
        if (!t)
            continue;
        struct ftk_source *src = NULL;
        if (ftk_source_open(dir, &src) != FTK_OK)
            continue;
        static const char *const files[] = {"golden.jsonl", "oracle.jsonl"};
        for (int f = 0; f < 2; f++) {
            char *text = NULL;
            size_t len = 0;
            snprintf(title, sizeof title, "%s %s", NAMES[k], files[f]);
            TEST(title) {
                ftk_status st = ftk_source_read(src, files[f], &text, &len);
                if (st == FTK_E_NOTFOUND && f == 1) {
                    printf("  (no %s yet)\n", files[f]);
                } else {
                    CHECK_OK(st);
                    if (text) {
                        size_t n = check_cases(t, NAMES[k], files[f], text);
                        printf("  %zu cases\n", n);
                        CHECK(n > 0);
                    }
                }
            }
            free(text);
        }
        /* the hash is sha256 of tokenizer.json's bytes */
        snprintf(title, sizeof title, "%s hash and accessors", NAMES[k]);
        TEST(title) {
            char *json = NULL;
            size_t len = 0;
            CHECK_OK(ftk_source_read(src, "tokenizer.json", &json, &len));
            char hex[65];
            ftk_sha256_hex(json, len, hex);
            CHECK_STR(ftk_tokenizer_hash(t), hex);
            free(json);
            if (k == 0) {
                CHECK_INT(ftk_tokenizer_vocab_size(t), 32000);
                CHECK_INT(ftk_tokenizer_special_id(t, "bos_token"), 1);
                CHECK_INT(ftk_tokenizer_special_id(t, "eos_token"), 2);
                CHECK_INT(ftk_tokenizer_special_id(t, "pad_token"), -1);
                CHECK_STR(ftk_tokenizer_id_to_token(t, 0), "<unk>");
                CHECK(ftk_tokenizer_is_special(t, 1));
                CHECK(!ftk_tokenizer_is_special(t, 100));
            } else if (k == 1) {
                CHECK_INT(ftk_tokenizer_vocab_size(t), 128256);
                CHECK_INT(ftk_tokenizer_special_id(t, "bos_token"), 128000);
                CHECK_INT(ftk_tokenizer_token_to_id(t, "<|eot_id|>"), 128009);
                CHECK(ftk_tokenizer_chat_template(t) != NULL);
            } else {
                CHECK_INT(ftk_tokenizer_vocab_size(t), 151669);
                CHECK_INT(ftk_tokenizer_special_id(t, "eos_token"), 151645);
                CHECK_INT(ftk_tokenizer_special_id(t, "pad_token"), 151643);
                CHECK(ftk_tokenizer_special(t, "bos_token") == NULL);
                CHECK_STR(ftk_tokenizer_id_to_token(t, 151644), "<|im_start|>");
                CHECK(ftk_tokenizer_chat_template(t) != NULL);
            }
            CHECK(ftk_tokenizer_id_to_token(t, -1) == NULL);
            CHECK(ftk_tokenizer_id_to_token(t, (int32_t)ftk_tokenizer_vocab_size(t)) == NULL);
        }
        ftk_source_close(src);
        ftk_tokenizer_free(t);
    }
}

/* ---- variants: a fixture tokenizer.json with parts replaced (tests/oracle/tokenizer_cases.py) */

static void variant_tests(void)
{
    static const char *const vs[] = {"sp-metaspace-first", "sp-metaspace-always-split-nfkd",
                                     "llama3-nfkc-lower-digits-punct", "llama3-whitespace-contiguous",
                                     "qwen3-gpt2-bytelevel", "qwen3-split-removed-invert"};
    struct ftk_source *vsrc = NULL;
    if (ftk_source_open("tests/fixtures/tokenizers/variants", &vsrc) != FTK_OK) {
        TEST("variants") { CHECK(0); }
        return;
    }
    for (size_t k = 0; k < sizeof vs / sizeof *vs; k++) {
        char title[256], name[256];
        snprintf(title, sizeof title, "variant %s", vs[k]);
        snprintf(name, sizeof name, "%s.jsonl", vs[k]);
        TEST(title) {
            char *text = NULL, *json = NULL, *patched = NULL;
            size_t len = 0, jlen = 0;
            struct ftk_source *bsrc = NULL;
            struct ftk_tokenizer *t = NULL;
            cJSON *hdr = NULL, *root = NULL;
            CHECK_OK(ftk_source_read(vsrc, name, &text, &len));
            char *nl = text ? strchr(text, '\n') : NULL;
            if (nl) {
                *nl = '\0';
                hdr = cJSON_Parse(text);
            }
            const cJSON *base = cJSON_GetObjectItem(hdr, "base");
            if (cJSON_IsString(base)) {
                char dir[256];
                snprintf(dir, sizeof dir, "tests/fixtures/tokenizers/%s", base->valuestring);
                CHECK_OK(ftk_source_open(dir, &bsrc));
                if (bsrc)
                    CHECK_OK(ftk_source_read(bsrc, "tokenizer.json", &json, &jlen));
            }
            if (json)
                root = cJSON_ParseWithLength(json, jlen);
            if (root) {
                const cJSON *set = cJSON_GetObjectItem(hdr, "set"), *it;
                cJSON_ArrayForEach(it, set) {
                    cJSON_DeleteItemFromObjectCaseSensitive(root, it->string);
                    cJSON_AddItemToObject(root, it->string, cJSON_Duplicate(it, 1));
                }
                const cJSON *added = cJSON_GetObjectItem(hdr, "added"), *a;
                cJSON *toks = cJSON_GetObjectItem(root, "added_tokens");
                cJSON_ArrayForEach(a, added) {
                    cJSON *tk;
                    cJSON_ArrayForEach(tk, toks) {
                        if (strcmp(cJSON_GetObjectItem(tk, "content")->valuestring,
                                   cJSON_GetObjectItem(a, "content")->valuestring) != 0)
                            continue;
                        const cJSON *f;
                        cJSON_ArrayForEach(f, a) {
                            cJSON_DeleteItemFromObjectCaseSensitive(tk, f->string);
                            cJSON_AddItemToObject(tk, f->string, cJSON_Duplicate(f, 1));
                        }
                    }
                }
                patched = cJSON_PrintUnformatted(root);
                CHECK_OK(tk_tokenizer_from_json(patched, strlen(patched), NULL, 0, vs[k], &t));
            }
            CHECK(t != NULL);
            if (t) {
                size_t n = check_cases(t, vs[k], name, nl + 1);
                printf("  %zu cases\n", n);
                CHECK(n > 100);
            }
            ftk_tokenizer_free(t);
            cJSON_free(patched);
            cJSON_Delete(root);
            cJSON_Delete(hdr);
            ftk_source_close(bsrc);
            free(json);
            free(text);
        }
    }
    ftk_source_close(vsrc);
}

/* ---- threads: one const tokenizer, several encoding threads (each with its own cache) ---- */

struct thr_case { char *text; int32_t *ids; size_t n; };
struct thr_arg { const struct ftk_tokenizer *t; const struct thr_case *c; size_t nc; int start, bad; };

static void *thr_main(void *p)
{
    struct thr_arg *a = p;
    struct ftk_ids ids = {0};
    for (int round = 0; round < 3; round++) /* later rounds hit the thread's cache */
        for (size_t k = 0; k < a->nc; k++) {
            const struct thr_case *c = &a->c[(k + (size_t)a->start) % a->nc];
            ids.n = 0;
            if (ftk_tokenizer_encode(a->t, c->text, strlen(c->text), 0, &ids) != FTK_OK ||
                ids.n != c->n || memcmp(ids.ids, c->ids, c->n * sizeof *c->ids) != 0)
                a->bad++;
        }
    ftk_ids_free(&ids);
    return NULL;
}

static void thread_tests(void)
{
    TEST("threads: 4 threads encode the oracle cases at once") {
        struct ftk_tokenizer *t = NULL;
        struct ftk_source *src = NULL;
        char *text = NULL;
        size_t len = 0;
        CHECK_OK(ftk_tokenizer_load_path("tests/fixtures/tokenizers/llama3-128k", &t));
        CHECK_OK(ftk_source_open("tests/fixtures/tokenizers/llama3-128k", &src));
        if (!t || !src || ftk_source_read(src, "oracle.jsonl", &text, &len) != FTK_OK) {
            CHECK(0);
        } else {
            struct thr_case *cs = calloc(2000, sizeof *cs);
            size_t nc = 0;
            for (char *line = strtok(text, "\n"); line && nc < 2000; line = strtok(NULL, "\n")) {
                cJSON *o = cJSON_Parse(line);
                const cJSON *ids = cJSON_GetObjectItem(o, "ids");
                const cJSON *tx = cJSON_GetObjectItem(o, "text");
                if (cJSON_IsString(tx) && cJSON_IsArray(ids)) {
                    cs[nc].text = strdup(tx->valuestring);
                    cs[nc].n = (size_t)cJSON_GetArraySize(ids);
                    cs[nc].ids = malloc((cs[nc].n + 1) * sizeof *cs[nc].ids);
                    for (size_t i = 0; i < cs[nc].n; i++)
                        cs[nc].ids[i] = (int32_t)cJSON_GetArrayItem(ids, (int)i)->valuedouble;
                    nc++;
                }
                cJSON_Delete(o);
            }
            pthread_t th[4];
            struct thr_arg args[4];
            for (int i = 0; i < 4; i++) {
                args[i] = (struct thr_arg){t, cs, nc, i * 97, 0};
                pthread_create(&th[i], NULL, thr_main, &args[i]);
            }
            for (int i = 0; i < 4; i++) {
                pthread_join(th[i], NULL);
                CHECK_INT(args[i].bad, 0);
            }
            CHECK(nc > 100);
            for (size_t i = 0; i < nc; i++) {
                free(cs[i].text);
                free(cs[i].ids);
            }
            free(cs);
        }
        free(text);
        ftk_source_close(src);
        ftk_tokenizer_free(t);
    }
}

/* ---- hand-written snippets ------------------------------------------------------------------- */

/* With FTK_TOK_DUMP=FILE, every snippet check is written there as JSON lines
 * ({"json", "text"|"ids", "special"|"skip", "got"}) for tests/oracle/check_snippets.py to
 * replay through HF tokenizers. */
static char last_json[8192];
static void dump(const char *kind, const char *in, int flag, const char *got)
{
    const char *path = getenv("FTK_TOK_DUMP");
    if (!path)
        return;
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "json", last_json);
    cJSON_AddStringToObject(o, kind, in);
    cJSON_AddNumberToObject(o, "flag", flag);
    cJSON_AddStringToObject(o, "got", got);
    char *s = cJSON_PrintUnformatted(o);
    fprintf(f, "%s\n", s);
    free(s);
    cJSON_Delete(o);
    fclose(f);
}

/* A tiny byte-level-free BPE over the letters it needs; PARTS fill in the pipeline. */
static struct ftk_tokenizer *snippet(const char *vocab, const char *merges, const char *added,
                                     const char *rest)
{
    char json[8192];
    snprintf(json, sizeof json,
             "{\"version\":\"1.0\",\"added_tokens\":[%s],"
             "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":false,"
             "\"byte_fallback\":false,\"vocab\":{%s},\"merges\":[%s]}%s%s}",
             added ? added : "", vocab, merges ? merges : "", rest && *rest ? "," : "", rest ? rest : "");
    struct ftk_tokenizer *t = NULL;
    snprintf(last_json, sizeof last_json, "%s", json);
    if (tk_tokenizer_from_json(json, strlen(json), NULL, 0, "snippet.json", &t) != FTK_OK) {
        printf("  snippet failed: %s\n", ftk_last_error());
        return NULL;
    }
    return t;
}

/* ids of `text` as "1 2 3" */
static const char *enc(const struct ftk_tokenizer *t, const char *text, int special)
{
    static char buf[1024];
    struct ftk_ids ids = {0};
    if (!t)
        return "(no tokenizer)";
    if (ftk_tokenizer_encode(t, text, strlen(text), special, &ids) != FTK_OK) {
        snprintf(buf, sizeof buf, "error: %s", ftk_last_error());
        return buf;
    }
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < ids.n && o < sizeof buf - 16; i++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, i ? " %d" : "%d", ids.ids[i]);
    ftk_ids_free(&ids);
    dump("text", text, special, buf);
    return buf;
}

static const char *dec(const struct ftk_tokenizer *t, const int32_t *ids, size_t n, int skip)
{
    static char buf[1024];
    char *out = NULL;
    if (!t)
        return "(no tokenizer)";
    if (ftk_tokenizer_decode(t, ids, n, skip, -1, &out, NULL) != FTK_OK) {
        snprintf(buf, sizeof buf, "error: %s", ftk_last_error());
        return buf;
    }
    snprintf(buf, sizeof buf, "%s", out);
    free(out);
    char in[512];
    size_t o = 0;
    in[0] = '\0';
    for (size_t i = 0; i < n && o < sizeof in - 16; i++)
        o += (size_t)snprintf(in + o, sizeof in - o, i ? " %d" : "%d", ids[i]);
    dump("ids", in, skip, buf);
    return buf;
}

/* vocab: <unk>=0 a=1 b=2 c=3 " "=4 ab=5 abc=6 "▁"=7 "▁a"=8 A=9 1=10 2=11 3=12 "."=13 "!"=14 */
#define V "\"<unk>\":0,\"a\":1,\"b\":2,\"c\":3,\" \":4,\"ab\":5,\"abc\":6,\"\\u2581\":7,\"\\u2581a\":8," \
          "\"A\":9,\"1\":10,\"2\":11,\"3\":12,\".\":13,\"!\":14,\"<s>\":15,\"</s>\":16"
#define M "\"a b\",\"ab c\",\"\\u2581 a\""

static void snippet_tests(void)
{
    struct ftk_tokenizer *t;
    TEST("bpe: merges, unk") {
        t = snippet(V, M, NULL, NULL);
        CHECK_STR(enc(t, "abc", 0), "6");
        CHECK_STR(enc(t, "abcab", 0), "6 5");
        CHECK_STR(enc(t, "axb", 0), "1 0 2"); /* x unknown, not fused */
        ftk_tokenizer_free(t);
    }
    TEST("bpe: fuse_unk") {
        char json[4096];
        snprintf(json, sizeof json, "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,"
                 "\"vocab\":{%s},\"merges\":[%s]}}", V, M);
        snprintf(last_json, sizeof last_json, "%s", json);
        CHECK_OK(tk_tokenizer_from_json(json, strlen(json), NULL, 0, "s.json", &t));
        CHECK_STR(enc(t, "axyzb", 0), "1 0 2");
        ftk_tokenizer_free(t);
    }
    TEST("normalizer: Lowercase, Strip, Replace, Prepend, Sequence") {
        t = snippet(V, M, NULL, "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":["
                    "{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true},"
                    "{\"type\":\"Lowercase\"},"
                    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"},"
                    "{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"}]}");
        CHECK_STR(enc(t, "  AB C ", 0), "7 5 7 3"); /* "▁ab▁c" */
        CHECK_STR(enc(t, "A", 0), "8");
        CHECK_STR(enc(t, "   ", 0), ""); /* empty after Strip: Prepend adds nothing */
        ftk_tokenizer_free(t);
    }
    TEST("normalizer: NFKC, NFD, NFC, NFKD") {
        /* "ａ" (U+FF41) NFKC -> a; "á" NFD -> a + U+0301 (unknown) */
        t = snippet(V, M, NULL, "\"normalizer\":{\"type\":\"NFKC\"}");
        CHECK_STR(enc(t, "\xEF\xBD\x81" "b", 0), "5");
        ftk_tokenizer_free(t);
        t = snippet(V, M, NULL, "\"normalizer\":{\"type\":\"NFD\"}");
        CHECK_STR(enc(t, "\xC3\xA1", 0), "1 0");
        ftk_tokenizer_free(t);
        t = snippet(V ",\"\\u00e1\":20", M, NULL, "\"normalizer\":{\"type\":\"NFC\"}");
        CHECK_STR(enc(t, "a\xCC\x81", 0), "20");
        ftk_tokenizer_free(t);
        t = snippet(V, M, NULL, "\"normalizer\":{\"type\":\"NFKD\"}");
        CHECK_STR(enc(t, "\xEF\xBD\x81\xC3\xA1", 0), "1 1 0");
        ftk_tokenizer_free(t);
    }
    TEST("normalizer: ByteLevel, StripAccents") {
        /* byte alphabet: ' ' -> U+0120; "é" (C3 A9) -> U+00C3 U+00A9 */
        t = snippet("\"a\":0,\"\\u0120\":1,\"\\u00c3\":2,\"\\u00a9\":3,\"\\u0120a\":4", "\"\\u0120 a\"", NULL,
                    "\"normalizer\":{\"type\":\"ByteLevel\"}");
        CHECK_STR(enc(t, " a\xC3\xA9", 0), "4 2 3");
        ftk_tokenizer_free(t);
        t = snippet(V, M, NULL, "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFD\"},"
                    "{\"type\":\"StripAccents\"}]}");
        CHECK_STR(enc(t, "\xC3\xA1" "b", 0), "5");
        ftk_tokenizer_free(t);
    }
    TEST("pre-tokenizer: Split behaviours") {
        /* "ab.ab" split on "." */
        static const struct { const char *beh; int invert; const char *want; } cases[] = {
            {"Removed", 0, "5 5"}, {"Isolated", 0, "5 13 5"}, {"MergedWithPrevious", 0, "5 13 5"},
            {"MergedWithNext", 0, "5 13 5"}, {"Contiguous", 0, "5 13 5"}, {"Removed", 1, "13"},
        };
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            char rest[512];
            snprintf(rest, sizeof rest, "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":\".\"},"
                     "\"behavior\":\"%s\",\"invert\":%s}", cases[i].beh, cases[i].invert ? "true" : "false");
            t = snippet(V, M, NULL, rest);
            CHECK_STR(enc(t, "ab.ab", 0), cases[i].want);
            ftk_tokenizer_free(t);
        }
        /* merges across a piece boundary show where the pieces are: with "b ." merged */
        static const struct { const char *beh; const char *want; } c2[] = {
            {"Isolated", "5 13 13 5"}, {"MergedWithPrevious", "21 13 5"},
            {"MergedWithNext", "5 13 22"}, {"Contiguous", "5 23 5"},
        };
        for (size_t i = 0; i < sizeof c2 / sizeof *c2; i++) {
            char rest[512];
            snprintf(rest, sizeof rest, "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\.\"},"
                     "\"behavior\":\"%s\",\"invert\":false}", c2[i].beh);
            t = snippet(V ",\"ab.\":21,\".ab\":22,\"..\":23", M ",\"ab .\",\". ab\",\". .\"",
                        NULL, rest);
            CHECK_STR(enc(t, "ab..ab", 0), c2[i].want);
            ftk_tokenizer_free(t);
        }
    }
    TEST("pre-tokenizer: Whitespace, WhitespaceSplit, Digits, Punctuation, Sequence") {
        t = snippet(V, M, NULL, "\"pre_tokenizer\":{\"type\":\"WhitespaceSplit\"}");
        CHECK_STR(enc(t, " ab\t c ", 0), "5 3");
        ftk_tokenizer_free(t);
        t = snippet(V, M, NULL, "\"pre_tokenizer\":{\"type\":\"Whitespace\"}");
        CHECK_STR(enc(t, "ab. c", 0), "5 13 3");
        ftk_tokenizer_free(t);
        t = snippet(V ",\"12\":30", M ",\"1 2\"", NULL,
                    "\"pre_tokenizer\":{\"type\":\"Digits\",\"individual_digits\":true}");
        CHECK_STR(enc(t, "a12", 0), "1 10 11");
        ftk_tokenizer_free(t);
        t = snippet(V ",\"12\":30", M ",\"1 2\"", NULL,
                    "\"pre_tokenizer\":{\"type\":\"Digits\",\"individual_digits\":false}");
        CHECK_STR(enc(t, "a12", 0), "1 30");
        ftk_tokenizer_free(t);
        t = snippet(V, M, NULL, "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
                    "{\"type\":\"WhitespaceSplit\"},{\"type\":\"Punctuation\",\"behavior\":\"Isolated\"}]}");
        CHECK_STR(enc(t, "ab!.c a", 0), "5 14 13 3 1");
        ftk_tokenizer_free(t);
    }
    TEST("pre-tokenizer: Metaspace prepend_scheme and split") {
        const char *rest = "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
                           "\"prepend_scheme\":\"first\",\"split\":true},"
                           "\"decoder\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
                           "\"prepend_scheme\":\"first\",\"split\":true}";
        t = snippet(V, M, "{\"id\":15,\"content\":\"<s>\",\"special\":true,\"normalized\":false}", rest);
        CHECK_STR(enc(t, "a a", 0), "8 8");
        CHECK_STR(enc(t, "<s>a a", 0), "15 1 8"); /* not at offset 0: no prepend */
        int32_t ids[] = {8, 8};
        CHECK_STR(dec(t, ids, 2, 0), "a a");
        ftk_tokenizer_free(t);
        t = snippet(V, M, NULL, "\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
                    "\"prepend_scheme\":\"never\",\"split\":false}");
        CHECK_STR(enc(t, "a a", 0), "1 8");
        ftk_tokenizer_free(t);
    }
    TEST("pre-tokenizer: ByteLevel add_prefix_space, use_regex") {
        /* byte-level alphabet: ' ' is U+0120 */
        const char *bv = "\"a\":0,\"b\":1,\"\\u0120\":2,\"\\u0120a\":3,\"ab\":4,\"\\u0120ab\":5";
        const char *bm = "\"\\u0120 a\",\"a b\",\"\\u0120a b\"";
        t = snippet(bv, bm, NULL, "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,"
                    "\"use_regex\":true},\"decoder\":{\"type\":\"ByteLevel\"}");
        CHECK_STR(enc(t, "ab ab", 0), "5 5");
        int32_t ids[] = {5, 5};
        CHECK_STR(dec(t, ids, 2, 0), " ab ab");
        ftk_tokenizer_free(t);
        t = snippet(bv, bm, NULL, "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
                    "\"use_regex\":false}");
        CHECK_STR(enc(t, "ab ab", 0), "4 5");
        ftk_tokenizer_free(t);
    }
    TEST("added tokens: lstrip, rstrip, single_word, normalized") {
        t = snippet(V ",\"<m>\":40,\"AB!\":41", M, "{\"id\":40,\"content\":\"<m>\",\"lstrip\":true,\"rstrip\":true,"
                    "\"special\":true,\"normalized\":false},"
                    "{\"id\":41,\"content\":\"AB!\",\"single_word\":true,\"special\":false,\"normalized\":true}",
                    "\"normalizer\":{\"type\":\"Lowercase\"}");
        CHECK_STR(enc(t, "a <m> b", 0), "1 40 2");
        CHECK_STR(enc(t, "ab! c", 0), "41 4 3");    /* normalized: matches the lowercased text */
        CHECK_STR(enc(t, "cab!", 0), "3 5 14");     /* single_word: inside a word, no match */
        int32_t ids[] = {1, 40, 2};
        CHECK_STR(dec(t, ids, 3, 0), "a <m> b");  /* no decoder: tokens joined by spaces */
        CHECK_STR(dec(t, ids, 3, 1), "a b");
        ftk_tokenizer_free(t);
    }
    TEST("post-processors: TemplateProcessing, RobertaProcessing, Sequence") {
        t = snippet(V, M, NULL, "\"post_processor\":{\"type\":\"TemplateProcessing\","
                    "\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},"
                    "{\"SpecialToken\":{\"id\":\"</s>\",\"type_id\":0}}],\"pair\":[],"
                    "\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[15],\"tokens\":[\"<s>\"]},"
                    "\"</s>\":{\"id\":\"</s>\",\"ids\":[16],\"tokens\":[\"</s>\"]}}}");
        CHECK_STR(enc(t, "ab", 1), "15 5 16");
        CHECK_STR(enc(t, "ab", 0), "5");
        ftk_tokenizer_free(t);
        t = snippet(V, M, NULL, "\"post_processor\":{\"type\":\"Sequence\",\"processors\":["
                    "{\"type\":\"ByteLevel\",\"trim_offsets\":false},"
                    "{\"type\":\"RobertaProcessing\",\"sep\":[\"</s>\",16],\"cls\":[\"<s>\",15],"
                    "\"trim_offsets\":true,\"add_prefix_space\":false}]}");
        CHECK_STR(enc(t, "ab", 1), "15 5 16");
        ftk_tokenizer_free(t);
    }
    TEST("decoders: Replace, ByteFallback, Fuse, Strip; clean_up") {
        const char *d = "\"decoder\":{\"type\":\"Sequence\",\"decoders\":["
                        "{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},\"content\":\" \"},"
                        "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
                        "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]}";
        t = snippet(V ",\"<0xE2>\":50,\"<0x82>\":51,\"<0xAC>\":52,\"<0xFF>\":53", M, NULL, d);
        int32_t a[] = {8, 50, 51, 52, 7, 53, 1};
        CHECK_STR(dec(t, a, 7, 0), "a\xE2\x82\xAC \xEF\xBF\xBD" "a");
        int32_t b[] = {7, 13, 50, 51};
        CHECK_STR(dec(t, b, 4, 0), ".\xEF\xBF\xBD\xEF\xBF\xBD");
        char *out = NULL;
        int32_t c[] = {1, 4, 13, 4, 14};
        CHECK_OK(ftk_tokenizer_decode(t, c, 5, 0, 1, &out, NULL));
        CHECK_STR(out, "a.!");
        free(out);
        ftk_tokenizer_free(t);
    }
    TEST("bpe: byte_fallback") {
        char json[4096];
        snprintf(json, sizeof json, "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,"
                 "\"byte_fallback\":true,\"vocab\":{%s,\"<0xE2>\":50,\"<0x82>\":51,\"<0xAC>\":52},"
                 "\"merges\":[%s]}}", V, M);
        snprintf(last_json, sizeof last_json, "%s", json);
        CHECK_OK(tk_tokenizer_from_json(json, strlen(json), NULL, 0, "s.json", &t));
        CHECK_STR(enc(t, "a\xE2\x82\xAC" "b", 0), "1 50 51 52 2");
        CHECK_STR(enc(t, "a\xC3\xA9\xC3\xA9" "b", 0), "1 0 2"); /* é has no byte tokens: fused unk */
        ftk_tokenizer_free(t);
    }
}

static void error_tests(void)
{
    struct ftk_tokenizer *t = NULL;
    TEST("error: unsupported model type") {
        const char *j = "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}";
        CHECK_ERR(tk_tokenizer_from_json(j, strlen(j), NULL, 0, "tokenizer.json", &t), FTK_E_UNSUPPORTED,
                  "Unigram");
        const char *w = "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}";
        CHECK_ERR(tk_tokenizer_from_json(w, strlen(w), NULL, 0, "tokenizer.json", &t), FTK_E_UNSUPPORTED,
                  "WordPiece");
        const char *n = "{\"normalizer\":{\"type\":\"Precompiled\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}";
        CHECK_ERR(tk_tokenizer_from_json(n, strlen(n), NULL, 0, "tokenizer.json", &t), FTK_E_UNSUPPORTED,
                  "Precompiled");
    }
    TEST("error: sparse ids") {
        const char *j = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1797042030},\"merges\":[]}}";
        CHECK_ERR(tk_tokenizer_from_json(j, strlen(j), NULL, 0, "tokenizer.json", &t), FTK_E_UNSUPPORTED,
                  "sparse ids");
    }
    TEST("error: malformed JSON names file and line") {
        const char *j = "{\n\"model\": {\n\"type\": \"BPE\",,\n}";
        CHECK_ERR(tk_tokenizer_from_json(j, strlen(j), NULL, 0, "tokenizer.json", &t), FTK_E_FORMAT,
                  "tokenizer.json: malformed JSON at line 3");
        const char *m = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a q\"]}}";
        CHECK_ERR(tk_tokenizer_from_json(m, strlen(m), NULL, 0, "tokenizer.json", &t), FTK_E_FORMAT,
                  "model.merges[0]");
    }
    TEST("load: a tokenizer.json path (stored as .zst) finds tokenizer_config.json beside it") {
        struct ftk_tokenizer *u = NULL;
        CHECK_OK(ftk_tokenizer_load_path("tests/fixtures/tokenizers/qwen3-151k/tokenizer.json.zst", &u));
        if (u) {
            CHECK_INT(ftk_tokenizer_special_id(u, "eos_token"), 151645);
            ftk_tokenizer_free(u);
        }
    }
    TEST("error: missing file") {
        CHECK_ERR(ftk_tokenizer_load_path("tests/fixtures/tokenizers/no-such-dir", &t), FTK_E_NOTFOUND, "");
        CHECK_ERR(ftk_tokenizer_load_path("tests/fixtures/tokenizers", &t), FTK_E_NOTFOUND, "tokenizer.json");
    }
    TEST("error: invalid UTF-8 names the byte offset") {
        t = snippet(V, M, NULL, NULL);
        struct ftk_ids ids = {0};
        CHECK_ERR(ftk_tokenizer_encode(t, "abc\xC3(", 5, 0, &ids), FTK_E_FORMAT, "byte offset 3");
        CHECK_ERR(ftk_tokenizer_encode(t, "ab\xED\xA0\x80", 5, 0, &ids), FTK_E_FORMAT, "byte offset 2");
        CHECK_INT(ids.n, 0);
        ftk_ids_free(&ids);
        ftk_tokenizer_free(t);
    }
}

int main(void)
{
    fixture_tests();
    variant_tests();
    thread_tests();
    snippet_tests();
    error_tests();
    return check_summary();
}
