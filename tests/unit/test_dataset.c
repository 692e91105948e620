/* tests/unit/test_dataset.c: dataset records (libcore/dataset/input.c) and their conversion to
 * conversations (convert.c), as LLaMA-Factory's converter.py reads alpaca, sharegpt, openai,
 * pairwise and kto records. Compressed files and archives are tested through the tool
 * (tests/tools/test_tokenize.sh). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "dataset/dataset-impl.h"

/* Converts the first record of `json` with `a`; returns the status. */
static ftk_status conv1(const struct ftk_dataset_attr *a, const char *json, struct ds_conv *c, cJSON **keep)
{
    struct ds_records r;
    struct ds_record rec;
    FTK_TRY(ds_records_begin(&r, "t.jsonl", json, strlen(json), a->format == FTK_FORMAT_TEXT));
    ftk_status st = ds_records_next(&r, &rec);
    if (st == FTK_OK) {
        st = ds_convert(a, &rec, c);
        *keep = rec.json;
    }
    ds_records_end(&r);
    return st;
}

static const char *role_s(enum ftk_role r)
{
    static const char *const n[] = {"user", "assistant", "system", "function", "observation"};
    return n[r];
}

/* "role:content|role:content..." */
static void dump(const struct ds_conv *c, char *out, size_t cap)
{
    out[0] = '\0';
    for (size_t i = 0; i < c->n_msgs; i++) {
        size_t n = strlen(out);
        snprintf(out + n, cap - n, "%s%s:%s", i ? "|" : "", role_s(c->msgs[i].role), c->msgs[i].content);
    }
}

static void expect_conv(const struct ftk_dataset_attr *a, const char *json, const char *want, size_t n_prompt,
                        const char *system)
{
    struct ds_conv c;
    cJSON *keep = NULL;
    CHECK_OK(conv1(a, json, &c, &keep));
    char got[2048];
    dump(&c, got, sizeof got);
    CHECK_STR(got, want);
    CHECK_INT(c.n_prompt, n_prompt);
    if (system)
        CHECK_STR(c.system, system);
    else
        CHECK(c.system == NULL);
    ds_conv_free(&c);
    cJSON_Delete(keep);
}

static void expect_bad(const struct ftk_dataset_attr *a, const char *json, const char *substr)
{
    struct ds_conv c;
    cJSON *keep = NULL;
    CHECK_ERR(conv1(a, json, &c, &keep), FTK_E_FORMAT, substr);
    cJSON_Delete(keep);
}

int main(void)
{
    struct ftk_dataset_attr al, sg, oa, tx;
    ftk_dataset_attr_init(&al, FTK_FORMAT_ALPACA);
    ftk_dataset_attr_init(&sg, FTK_FORMAT_SHAREGPT);
    ftk_dataset_attr_init(&oa, FTK_FORMAT_OPENAI);
    ftk_dataset_attr_init(&tx, FTK_FORMAT_TEXT);

    /* ---- layouts ---- */
    TEST("JSON array, JSON lines and text lines are told apart") {
        struct ds_records r;
        struct ds_record rec;
        const char *arr = " \n[{\"a\":1},\n {\"a\":2}]\n";
        CHECK_OK(ds_records_begin(&r, "x.json", arr, strlen(arr), 0));
        CHECK_INT(r.layout, DS_JSON_ARRAY);
        CHECK_OK(ds_records_next(&r, &rec));
        CHECK_INT(rec.index, 0);
        cJSON_Delete(rec.json);
        CHECK_OK(ds_records_next(&r, &rec));
        CHECK_INT(rec.index, 1);
        cJSON_Delete(rec.json);
        CHECK_INT(ds_records_next(&r, &rec), FTK_E_EOF);
        ds_records_end(&r);

        const char *jl = "\xEF\xBB\xBF{\"a\":1}\n\n  \n{\"a\":2}\r\n";
        CHECK_OK(ds_records_begin(&r, "x.json", jl, strlen(jl), 0));
        CHECK_INT(r.layout, DS_JSONL);
        CHECK_OK(ds_records_next(&r, &rec));
        CHECK_INT(rec.line, 1);
        cJSON_Delete(rec.json);
        CHECK_OK(ds_records_next(&r, &rec));
        CHECK_INT(rec.line, 4);   /* blank lines are no records */
        CHECK_INT(rec.index, 1);
        cJSON_Delete(rec.json);
        CHECK_INT(ds_records_next(&r, &rec), FTK_E_EOF);
        ds_records_end(&r);

        const char *tl = "first line\r\n\nsecond {line}\n";
        CHECK_OK(ds_records_begin(&r, "x", tl, strlen(tl), 1));
        CHECK_INT(r.layout, DS_LINES);
        CHECK_OK(ds_records_next(&r, &rec));
        CHECK_INT(rec.text_len, 10);
        CHECK(rec.json == NULL);
        CHECK_OK(ds_records_next(&r, &rec));
        CHECK_INT(rec.line, 3);
        CHECK(memcmp(rec.text, "second {line}", 13) == 0 && rec.text_len == 13);
        ds_records_end(&r);

        const char *js = "{\"text\": \"x\"}\n";
        CHECK_OK(ds_records_begin(&r, "wiki.txt", js, strlen(js), 1));
        CHECK_INT(r.layout, DS_LINES);   /* .txt: lines even when a line looks like JSON */
        ds_records_end(&r);
        CHECK_ERR(ds_records_begin(&r, "x.json", tl, strlen(tl), 0), FTK_E_FORMAT, "plain text needs --format text");
    }
    TEST("malformed JSON names the file and the line") {
        struct ds_records r;
        struct ds_record rec;
        const char *arr = "[\n{\"a\": 1},\n{\"a\": 2,,}\n]";
        CHECK_ERR(ds_records_begin(&r, "data.json", arr, strlen(arr), 0), FTK_E_FORMAT, "data.json: line 3: malformed JSON");
        const char *trail = "[{\"a\":1}] x";
        CHECK_ERR(ds_records_begin(&r, "data.json", trail, strlen(trail), 0), FTK_E_FORMAT, "text after the JSON array");
        const char *jl = "{\"a\":1}\n{\"a\":\n{\"a\":3}\n[1]\n{\"a\":1} {\"b\":2}\n";
        CHECK_OK(ds_records_begin(&r, "data.jsonl", jl, strlen(jl), 0));
        CHECK_OK(ds_records_next(&r, &rec));
        cJSON_Delete(rec.json);
        CHECK_ERR(ds_records_next(&r, &rec), FTK_E_FORMAT, "data.jsonl: line 2: malformed JSON");
        CHECK_INT(rec.index, 1);
        CHECK_OK(ds_records_next(&r, &rec));   /* the reader went past the bad line */
        CHECK_INT(rec.line, 3);
        cJSON_Delete(rec.json);
        CHECK_ERR(ds_records_next(&r, &rec), FTK_E_FORMAT, "line 4: expected a JSON object");
        CHECK_ERR(ds_records_next(&r, &rec), FTK_E_FORMAT, "line 5: malformed JSON");
        ds_records_end(&r);
        const char *arr2 = "[{\"a\":1}, 2]";
        CHECK_OK(ds_records_begin(&r, "d.json", arr2, strlen(arr2), 0));
        CHECK_OK(ds_records_next(&r, &rec));
        cJSON_Delete(rec.json);
        CHECK_ERR(ds_records_next(&r, &rec), FTK_E_FORMAT, "record 1: expected a JSON object");
        ds_records_end(&r);
    }
    TEST("UTF-8 validation") {
        CHECK_INT(ds_utf8_invalid_at("abc", 3), 3);
        CHECK_INT(ds_utf8_invalid_at("h\xC3\xA9llo \xF0\x9F\x98\x80", 11), 11);
        CHECK_INT(ds_utf8_invalid_at("ab\xFF", 3), 2);
        CHECK_INT(ds_utf8_invalid_at("a\xC0\xAF", 3), 1);          /* overlong */
        CHECK_INT(ds_utf8_invalid_at("a\xED\xA0\x80", 4), 1);      /* surrogate */
        CHECK_INT(ds_utf8_invalid_at("a\xE2\x82", 3), 1);          /* cut short */
        CHECK_INT(ds_utf8_invalid_at("\xF4\x90\x80\x80", 4), 0);   /* past U+10FFFF */
    }

    /* ---- alpaca (AlpacaDatasetConverter) ---- */
    TEST("alpaca: instruction + \"\\n\" + input, system, history") {
        expect_conv(&al, "{\"instruction\":\"Sum\",\"input\":\"1 2\",\"output\":\"3\",\"system\":\"S\","
                         "\"history\":[[\"q0\",\"a0\"]]}", "user:q0|assistant:a0|user:Sum\n1 2|assistant:3", 3, "S");
        expect_conv(&al, "{\"instruction\":\"Hi\",\"input\":\"\",\"output\":\"Hello\"}", "user:Hi|assistant:Hello", 1, NULL);
        expect_conv(&al, "{\"instruction\":\"Hi\",\"output\":\"Hello\",\"system\":null}", "user:Hi|assistant:Hello", 1, NULL);
    }
    TEST("alpaca bad records") {
        expect_bad(&al, "{\"input\":\"x\",\"output\":\"y\"}", "missing field \"instruction\"");
        expect_bad(&al, "{\"instruction\":\"x\"}", "missing field \"output\"");
        expect_bad(&al, "{\"instruction\":\"x\",\"output\":\"\"}", "empty response");
        expect_bad(&al, "{\"instruction\":\"x\",\"output\":3}", "\"output\" must be a string");
        expect_bad(&al, "{\"instruction\":\"x\",\"output\":\"y\",\"history\":[[\"a\"]]}", "[prompt, response] pair");
    }
    TEST("alpaca pairwise and kto") {
        struct ftk_dataset_attr a = al;
        a.ranking = 1;
        CHECK_OK(ftk_dataset_attr_set(&a, "chosen=good,rejected=bad"));
        CHECK_INT(ds_example_kind(&a), FTK_EXAMPLE_PAIRWISE);
        expect_conv(&a, "{\"instruction\":\"q\",\"good\":\"A\",\"bad\":\"B\"}", "user:q|assistant:A|assistant:B", 1, NULL);
        expect_bad(&a, "{\"instruction\":\"q\",\"good\":\"A\"}", "missing field \"bad\"");
        expect_bad(&a, "{\"instruction\":\"q\",\"good\":\"A\",\"bad\":\"\"}", "empty response");
        struct ftk_dataset_attr k = al;
        CHECK_OK(ftk_dataset_attr_set(&k, "kto_tag=label"));
        CHECK_INT(ds_example_kind(&k), FTK_EXAMPLE_KTO);
        struct ds_conv c;
        cJSON *keep = NULL;
        CHECK_OK(conv1(&k, "{\"instruction\":\"q\",\"output\":\"A\",\"label\":false}", &c, &keep));
        CHECK_INT(c.kto_tag, 0);
        ds_conv_free(&c);
        cJSON_Delete(keep);
        expect_bad(&k, "{\"instruction\":\"q\",\"output\":\"A\",\"label\":\"yes\"}", "must be true or false");
        expect_bad(&k, "{\"instruction\":\"q\",\"output\":\"A\"}", "missing field \"label\"");
    }

    /* ---- sharegpt / openai (SharegptDatasetConverter) ---- */
    TEST("sharegpt: roles, system message, function and observation") {
        expect_conv(&sg, "{\"conversations\":[{\"from\":\"system\",\"value\":\"S\"},{\"from\":\"human\",\"value\":\"q\"},"
                         "{\"from\":\"function_call\",\"value\":\"f\"},{\"from\":\"observation\",\"value\":\"o\"},"
                         "{\"from\":\"gpt\",\"value\":\"a\"}]}",
                    "user:q|function:f|observation:o|assistant:a", 3, "S");
        expect_conv(&sg, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"},{\"from\":\"gpt\",\"value\":\"a\"}],"
                         "\"system\":\"col\"}", "user:q|assistant:a", 1, "col");
    }
    TEST("sharegpt bad records") {
        expect_bad(&sg, "{\"conversations\":[{\"from\":\"gpt\",\"value\":\"a\"}]}", "message 0: role \"gpt\"");
        expect_bad(&sg, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"},{\"from\":\"human\",\"value\":\"q\"}]}",
                   "message 1: role \"human\"");
        expect_bad(&sg, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"}]}", "an even count");
        expect_bad(&sg, "{\"conversations\":[]}", "no messages");
        expect_bad(&sg, "{\"messages\":[]}", "missing field \"conversations\"");
        expect_bad(&sg, "{\"conversations\":[{\"from\":\"human\"}]}", "\"value\" missing");
        expect_bad(&sg, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"},{\"from\":\"gpt\",\"value\":\"\"}]}",
                   "empty response");
        expect_bad(&sg, "{\"conversations\":{}}", "must be a list");
    }
    TEST("sharegpt tools are refused, not dropped") {
        struct ftk_dataset_attr a = sg;
        CHECK_OK(ftk_dataset_attr_set(&a, "tools=tools"));
        struct ds_conv c;
        cJSON *keep = NULL;
        CHECK_ERR(conv1(&a, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"},{\"from\":\"gpt\",\"value\":\"a\"}],"
                            "\"tools\":\"[{}]\"}", &c, &keep), FTK_E_UNSUPPORTED, "tool descriptions");
        cJSON_Delete(keep);
        expect_conv(&a, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"},{\"from\":\"gpt\",\"value\":\"a\"}],"
                        "\"tools\":\"\"}", "user:q|assistant:a", 1, NULL);
        /* tools given as a JSON list rather than a JSON string are tools all the same */
        CHECK_ERR(conv1(&a, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"},{\"from\":\"gpt\",\"value\":\"a\"}],"
                            "\"tools\":[{\"name\":\"f\"}]}", &c, &keep), FTK_E_UNSUPPORTED, "tool descriptions");
        cJSON_Delete(keep);
        expect_conv(&a, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"},{\"from\":\"gpt\",\"value\":\"a\"}],"
                        "\"tools\":[]}", "user:q|assistant:a", 1, NULL);
    }
    TEST("alpaca tools are refused, not dropped") {
        struct ftk_dataset_attr a = al;
        CHECK_OK(ftk_dataset_attr_set(&a, "tools=tools"));
        struct ds_conv c;
        cJSON *keep = NULL;
        CHECK_ERR(conv1(&a, "{\"instruction\":\"q\",\"output\":\"a\",\"tools\":\"[{}]\"}", &c, &keep),
                  FTK_E_UNSUPPORTED, "tool descriptions");
        cJSON_Delete(keep);
        expect_conv(&a, "{\"instruction\":\"q\",\"output\":\"a\",\"tools\":\"\"}", "user:q|assistant:a", 1, NULL);
    }
    TEST("sharegpt pairwise (dpo_en_demo layout) and kto (kto_en_demo layout)") {
        struct ftk_dataset_attr a = sg;
        a.ranking = 1;
        CHECK_OK(ftk_dataset_attr_set(&a, "chosen=chosen,rejected=rejected"));
        expect_conv(&a, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"}],\"chosen\":{\"from\":\"gpt\",\"value\":\"A\"},"
                        "\"rejected\":{\"from\":\"gpt\",\"value\":\"B\"}}", "user:q|assistant:A|assistant:B", 1, NULL);
        expect_bad(&a, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"},{\"from\":\"gpt\",\"value\":\"a\"}],"
                       "\"chosen\":{\"from\":\"gpt\",\"value\":\"A\"},\"rejected\":{\"from\":\"gpt\",\"value\":\"B\"}}", "odd count");
        expect_bad(&a, "{\"conversations\":[{\"from\":\"human\",\"value\":\"q\"}],\"chosen\":{\"from\":\"human\",\"value\":\"A\"},"
                       "\"rejected\":{\"from\":\"gpt\",\"value\":\"B\"}}", "field \"chosen\"");
        struct ftk_dataset_attr k = oa;
        CHECK_OK(ftk_dataset_attr_set(&k, "kto_tag=label"));
        struct ds_conv c;
        cJSON *keep = NULL;
        CHECK_OK(conv1(&k, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}],"
                           "\"label\":true}", &c, &keep));
        CHECK_INT(c.kto_tag, 1);
        CHECK_INT(c.n_prompt, 1);
        ds_conv_free(&c);
        cJSON_Delete(keep);
    }
    TEST("openai: role/content with a system message") {
        expect_conv(&oa, "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"q\"},"
                         "{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"tool\",\"content\":\"t\"},"
                         "{\"role\":\"assistant\",\"content\":\"b\"}]}",
                    "user:q|assistant:a|observation:t|assistant:b", 3, "S");
        expect_bad(&oa, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":null}]}",
                   "\"content\" missing or not a string");
    }
    TEST("text: lines and the text column") {
        struct ds_conv c;
        cJSON *keep = NULL;
        CHECK_OK(conv1(&tx, "{\"text\":\"doc\"}", &c, &keep));
        CHECK_INT(c.kind, FTK_EXAMPLE_TEXT);
        CHECK(c.text_len == 3 && memcmp(c.text, "doc", 3) == 0);
        ds_conv_free(&c);
        cJSON_Delete(keep);
        expect_bad(&tx, "{\"content\":\"doc\"}", "missing field \"text\"");
        expect_bad(&tx, "{\"text\":\"\"}", "empty text");
    }

    /* ---- column flags and dataset_info.json ---- */
    TEST("--columns assignments") {
        struct ftk_dataset_attr a = al;
        CHECK_OK(ftk_dataset_attr_set(&a, "prompt=q,response=a,user_tag=user"));
        CHECK_STR(a.prompt, "q");
        CHECK_STR(a.response, "a");
        CHECK_STR(a.user_tag, "user");
        CHECK_ERR(ftk_dataset_attr_set(&a, "answer=x"), FTK_E_INVALID, "unknown column or tag \"answer\"");
        CHECK_ERR(ftk_dataset_attr_set(&a, "prompt"), FTK_E_INVALID, "expected KEY=COLUMN");
        enum ftk_data_format f;
        CHECK_ERR(ftk_data_format_parse("parquet", &f), FTK_E_INVALID, "unknown format");
    }
    TEST("dataset_info.json of LLaMA-Factory's demos") {
        const char *info = "tests/fixtures/data/llamafactory/dataset_info.json";
        struct ftk_dataset_attr a;
        char *file = NULL;
        CHECK_OK(ftk_dataset_info_load(info, "kto_en_demo", -1, &a, &file));
        CHECK_STR(file, "tests/fixtures/data/llamafactory/kto_en_demo.json");
        CHECK_INT(a.format, FTK_FORMAT_SHAREGPT);
        CHECK_STR(a.messages, "messages");
        CHECK_STR(a.kto_tag, "label");
        CHECK_STR(a.role_tag, "role");
        CHECK_STR(a.user_tag, "user");
        CHECK_STR(a.observation_tag, "observation");
        free(file);
        CHECK_OK(ftk_dataset_info_load(info, "dpo_en_demo", -1, &a, &file));
        CHECK_INT(a.ranking, 1);
        CHECK_STR(a.chosen, "chosen");
        free(file);
        CHECK_OK(ftk_dataset_info_load(info, "identity", -1, &a, &file));
        CHECK_INT(a.format, FTK_FORMAT_ALPACA);
        CHECK_STR(a.prompt, "instruction");
        CHECK_STR(a.system, "");   /* parser.py: unused unless named */
        free(file);
        CHECK_OK(ftk_dataset_info_load(info, "c4_demo", FTK_FORMAT_TEXT, &a, &file));
        CHECK_INT(a.format, FTK_FORMAT_TEXT);
        CHECK_STR(a.prompt, "text");
        free(file);
        CHECK_ERR(ftk_dataset_info_load(info, "nope", -1, &a, &file), FTK_E_NOTFOUND, "no dataset \"nope\"");
        CHECK_ERR(ftk_dataset_info_load(info, "alpaca_en", -1, &a, &file), FTK_E_UNSUPPORTED, "hub");
        CHECK_ERR(ftk_dataset_info_load("tests/fixtures/none.json", "x", -1, &a, &file), FTK_E_NOTFOUND, "none.json");
    }
    return check_summary();
}
