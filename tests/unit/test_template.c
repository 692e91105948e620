/* tests/unit/test_template.c: chat templates (libcore/dataset/template.c) and labels
 * (labels.c), with a fake tokenizer so no tokenizer.json is needed. Expected renderings are
 * written from LLaMA-Factory's template.py definitions; transformers' own renderings of the
 * llama3 and qwen3 chat templates are checked end to end in tests/tools/test_tokenize.sh. */
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "ftk/dataset.h"
#include "ftk/message.h"
#include "ftk/template.h"

/* Fake tokenizer: known special tokens get small ids, every other byte 1000 + its value. */
static const char *const specials[] = {
    "", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>",
    "<|im_end|>", "<s>", "</s>", "<think>", "</think>", "<|eom_id|>",
};
#define N_SPECIAL (sizeof specials / sizeof *specials)

static ftk_status push(struct ftk_ids *v, int32_t id)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 64;
        v->ids = realloc(v->ids, v->cap * sizeof *v->ids);
    }
    v->ids[v->n++] = id;
    return FTK_OK;
}

static ftk_status fake_encode(void *ctx, const char *text, size_t len, struct ftk_ids *out)
{
    int *calls = ctx;
    (*calls)++;
    for (size_t i = 0; i < len;) {
        size_t k = 1;
        for (; k < N_SPECIAL; k++) {
            size_t n = strlen(specials[k]);
            if (n <= len - i && memcmp(text + i, specials[k], n) == 0)
                break;
        }
        if (k < N_SPECIAL) {
            push(out, (int32_t)k);
            i += strlen(specials[k]);
        } else {
            push(out, 1000 + (unsigned char)text[i]);
            i++;
        }
    }
    return FTK_OK;
}

static int32_t fake_token_to_id(void *ctx, const char *tok)
{
    (void)ctx;
    for (size_t k = 1; k < N_SPECIAL; k++)
        if (strcmp(specials[k], tok) == 0)
            return (int32_t)k;
    return -1;
}

static void free_all(struct ftk_ids *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].ids);
        v[i] = (struct ftk_ids){0};
    }
}

static int ids_eq(const struct ftk_ids *v, const int32_t *want, size_t n)
{
    if (v->n != n) {
        printf("  length %zu, expected %zu\n", v->n, n);
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        if (v->ids[i] != want[i]) {
            printf("  [%zu] = %d, expected %d\n", i, v->ids[i], want[i]);
            return 0;
        }
    return 1;
}

static const struct ftk_chat_message conv[] = {
    {FTK_ROLE_USER, "hi"}, {FTK_ROLE_ASSISTANT, "hello"}, {FTK_ROLE_USER, "bye"}, {FTK_ROLE_ASSISTANT, "ciao"},
};

static void check_render(const char *name, const char *system, const char *bos, const char *eos, const char *want)
{
    struct ftk_template *t = NULL;
    char *got = NULL;
    CHECK_OK(ftk_template_load(name, &t));
    if (!t)
        return;
    CHECK_STR(ftk_template_name(t), name);
    CHECK_OK(ftk_template_render(t, conv, 4, system, bos, eos, &got));
    CHECK_STR(got, want);
    free(got);
    ftk_template_free(t);
}

static struct ftk_template *parse(const char *json)
{
    struct ftk_template *t = NULL;
    CHECK_OK(ftk_template_parse(json, strlen(json), "test", &t));
    return t;
}

int main(void)
{
    /* ---- every installed template renders a small conversation (template.py slots) ---- */
    TEST("template llama3") check_render("llama3", "SYS", "<|begin_of_text|>", "<|end_of_text|>",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        "hello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nbye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nciao<|eot_id|>");
    TEST("template qwen: Qwen2.5's default system prompt") check_render("qwen", NULL, NULL, "<|endoftext|>",
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\nciao<|im_end|>\n");
    TEST("template qwen3: empty thought in the last reply only") check_render("qwen3", "SYS", NULL, "<|im_end|>",
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nciao<|im_end|>\n");
    TEST("template llama2: system fused into the first user turn") check_render("llama2", "SYS", "<s>", "</s>",
        "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nhi [/INST]hello</s><s>[INST] bye [/INST]ciao</s>");
    TEST("template mistral") check_render("mistral", "SYS", "<s>", "</s>",
        "<s>[INST] SYS\n\nhi[/INST] hello</s>[INST] bye[/INST] ciao</s>");
    TEST("template chatml") check_render("chatml", "SYS", NULL, "</s>",
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\nciao<|im_end|>\n");
    TEST("template alpaca: default system, eos in the reply") check_render("alpaca", NULL, "<s>", "</s>",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nhi\n\n### Response:\nhello</s>\n\n### Instruction:\nbye\n\n### Response:\nciao</s>\n\n");
    TEST("template vicuna") check_render("vicuna", NULL, "<s>", "</s>",
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions.USER: hi ASSISTANT:hello</s>USER: bye ASSISTANT:ciao</s>");
    TEST("template empty") check_render("empty", "SYS", "<s>", "</s>", "SYShihellobyeciao");

    /* ---- ids: slots encoded one by one, special slots by id ---- */
    TEST("llama3 ids per message") {
        struct ftk_template *t = NULL;
        CHECK_OK(ftk_template_load("llama3", &t));
        int calls = 0;
        struct ftk_text_encoder enc = {.ctx = &calls, .encode = fake_encode, .token_to_id = fake_token_to_id,
                                       .bos_id = 1, .eos_id = 2};
        struct ftk_ids out[4] = {{0}};
        CHECK_OK(ftk_template_encode(t, &enc, conv, 4, NULL, out));
        /* message 0: bos + header + "hi" + eot + header */
        int32_t m1[] = {1000 + 'h', 1000 + 'e', 1000 + 'l', 1000 + 'l', 1000 + 'o', 2};
        CHECK(ids_eq(&out[1], m1, 6));
        CHECK_INT(out[0].ids[0], 1);
        CHECK_INT(out[0].ids[1], 3);
        CHECK_INT(out[0].ids[out[0].n - 1], 1000 + '\n');
        CHECK_INT(calls, 4);   /* one encode per text slot; no system: none for it */
        CHECK_STR(ftk_template_eos_token(t), "<|eot_id|>");
        free_all(out, 4);
        ftk_template_free(t);
    }
    TEST("{\"token\"} and {\"special\"} slots; unknown token is an error") {
        struct ftk_template *t = parse("{\"name\":\"x\",\"format_user\":[{\"token\":\"<s>\"},\"{{content}}\",{\"special\":\"eos_token\"}],"
                                       "\"format_assistant\":[\"{{content}}\",{\"token\":\"<nope>\"}]}");
        int calls = 0;
        struct ftk_text_encoder enc = {.ctx = &calls, .encode = fake_encode, .token_to_id = fake_token_to_id,
                                       .bos_id = -1, .eos_id = 8};
        struct ftk_ids out[2] = {{0}};
        CHECK_ERR(ftk_template_encode(t, &enc, conv, 2, NULL, out), FTK_E_MISMATCH, "<nope>");
        int32_t m0[] = {7, 1000 + 'h', 1000 + 'i', 8};
        CHECK(ids_eq(&out[0], m0, 4));
        free_all(out, 2);
        ftk_template_free(t);
    }
    TEST("{{idx}} and format_separator") {
        struct ftk_template *t = parse("{\"name\":\"x\",\"format_user\":[\"[{{idx}}]{{content}}:\"],"
                                       "\"format_assistant\":[\"{{content}}\"],\"format_separator\":[\"|\"]}");
        char *s = NULL;
        CHECK_OK(ftk_template_render(t, conv, 4, NULL, NULL, NULL, &s));
        CHECK_STR(s, "[0]hi:hello|[1]bye:ciao");
        free(s);
        ftk_template_free(t);
    }
    TEST("a {{content}} inside the content is not substituted again") {
        struct ftk_template *t = NULL;
        CHECK_OK(ftk_template_load("empty", &t));
        struct ftk_chat_message m[] = {{FTK_ROLE_USER, "I am {{name}} {{content}}"}, {FTK_ROLE_ASSISTANT, "ok"}};
        char *s = NULL;
        CHECK_OK(ftk_template_render(t, m, 2, NULL, NULL, NULL, &s));
        CHECK_STR(s, "I am {{name}} {{content}}ok");
        free(s);
        ftk_template_free(t);
    }

    /* ---- reasoning templates (ReasoningTemplate.encode_oneturn) ---- */
    TEST("qwen3: thoughts leave the history, a given thought stays in the reply") {
        struct ftk_template *t = NULL;
        CHECK_OK(ftk_template_load("qwen3", &t));
        struct ftk_chat_message m[] = {
            {FTK_ROLE_USER, "q1"}, {FTK_ROLE_ASSISTANT, "<think>\nr1\n</think>\n\na1"},
            {FTK_ROLE_USER, "q2"}, {FTK_ROLE_ASSISTANT, "<think>\nr2\n</think>\n\na2"},
        };
        char *s = NULL;
        CHECK_OK(ftk_template_render(t, m, 4, NULL, NULL, NULL, &s));
        CHECK_STR(s, "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
                     "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n<think>\nr2\n</think>\n\na2<|im_end|>\n");
        free(s);
        ftk_template_free(t);
    }
    TEST("reasoning with enable_thinking false: empty thought ends the prompt") {
        struct ftk_template *t = parse("{\"name\":\"nothink\",\"template_class\":\"reasoning\",\"enable_thinking\":false,"
                                       "\"format_assistant\":[\"{{content}}\"]}");
        int calls = 0;
        struct ftk_text_encoder enc = {.ctx = &calls, .encode = fake_encode, .token_to_id = fake_token_to_id,
                                       .bos_id = -1, .eos_id = -1};
        struct ftk_chat_message m[] = {{FTK_ROLE_USER, "q"}, {FTK_ROLE_ASSISTANT, "<think>\nx\n</think>\n\na"}};
        struct ftk_ids out[2] = {{0}};
        CHECK_OK(ftk_template_encode(t, &enc, m, 2, NULL, out));
        int32_t m1[] = {1000 + 'a'};
        CHECK(ids_eq(&out[1], m1, 1));   /* thought removed from the reply */
        CHECK_INT(out[0].n, 1 + 6);   /* "q", then <think> "\n\n" </think> "\n\n" */
        free_all(out, 2);
        ftk_template_free(t);
    }

    /* ---- bad input ---- */
    TEST("role sequences a template cannot render") {
        struct ftk_template *t = NULL;
        CHECK_OK(ftk_template_load("llama3", &t));
        char *s = NULL;
        struct ftk_chat_message a[] = {{FTK_ROLE_ASSISTANT, "x"}, {FTK_ROLE_USER, "y"}};
        CHECK_ERR(ftk_template_render(t, a, 2, NULL, NULL, NULL, &s), FTK_E_FORMAT, "message 0");
        struct ftk_chat_message b[] = {{FTK_ROLE_USER, "x"}, {FTK_ROLE_USER, "y"}};
        CHECK_ERR(ftk_template_render(t, b, 2, NULL, NULL, NULL, &s), FTK_E_FORMAT, "message 1");
        struct ftk_chat_message c[] = {{FTK_ROLE_USER, "x"}, {FTK_ROLE_SYSTEM, "y"}};
        CHECK_ERR(ftk_template_render(t, c, 2, NULL, NULL, NULL, &s), FTK_E_FORMAT, "system");
        CHECK_ERR(ftk_template_render(t, c, 0, NULL, NULL, NULL, &s), FTK_E_FORMAT, "empty conversation");
        CHECK(s == NULL);
        ftk_template_free(t);
    }
    TEST("malformed template files") {
        struct ftk_template *t = NULL;
        const char *bad[][2] = {
            {"{\"name\":\"x\",\n\"format_user\":[\"a\"", "line 2"},
            {"{\"nme\":\"x\"}", "unknown key \"nme\""},
            {"{\"format_user\":\"{{content}}\"}", "must be an array"},
            {"{\"format_user\":[{\"special\":\"pad\"}]}", "a slot is"},
            {"{\"replace_eos\":true}", "needs stop_words"},
            {"{\"template_class\":\"gemma\"}", "template_class"},
            {"[1]", "JSON object"},
        };
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
            CHECK_ERR(ftk_template_parse(bad[i][0], strlen(bad[i][0]), "t.json", &t), FTK_E_FORMAT, bad[i][1]);
        CHECK_ERR(ftk_template_load("no-such-template", &t), FTK_E_NOTFOUND, "no template \"no-such-template\"");
        CHECK_ERR(ftk_template_load("/nonexistent/x.json", &t), FTK_E_NOTFOUND, "/nonexistent/x.json");
        CHECK(t == NULL);
    }

    /* ---- labels and truncation (processor_utils.infer_seqlen, supervised.py) ---- */
    TEST("infer_seqlen") {
        int64_t s, t;
        ftk_infer_seqlen(10, 10, 8, &s, &t);   /* both: int(8 * 10/20) = 4 */
        CHECK_INT(s, 4); CHECK_INT(t, 4);
        ftk_infer_seqlen(100, 2, 10, &s, &t);  /* short target kept, source cut */
        CHECK_INT(s, 8); CHECK_INT(t, 2);
        ftk_infer_seqlen(2, 100, 10, &s, &t);  /* short source kept, target cut */
        CHECK_INT(s, 2); CHECK_INT(t, 8);
        ftk_infer_seqlen(3, 2, 100, &s, &t);
        CHECK_INT(s, 3); CHECK_INT(t, 2);
        ftk_infer_seqlen(7, 9, 5, &s, &t);     /* int(5 * 9/16) = 2 */
        CHECK_INT(s, 3); CHECK_INT(t, 2);
    }
    int32_t p1[] = {1, 2, 3}, r1[] = {4, 5}, p2[] = {6, 7}, r2[] = {8, 9, 10};
    struct ftk_ids turns[4] = {{p1, 3, 3}, {r1, 2, 2}, {p2, 2, 2}, {r2, 3, 3}};
    const int32_t I = FTK_IGNORE_INDEX;
    struct { const char *name; struct ftk_label_config c; int32_t ids[16], labels[16]; size_t n; int trunc; } cases[] = {
        {"supervised: prompts ignored, replies labelled", {0}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10},
         {I, I, I, 4, 5, I, I, 8, 9, 10}, 10, 0},
        {"supervised --train-on-prompt", {.train_on_prompt = 1}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10},
         {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 10, 0},
        {"supervised --mask-history", {.mask_history = 1}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10},
         {I, I, I, I, I, I, I, 8, 9, 10}, 10, 0},
        {"supervised --cutoff-len 6", {.cutoff_len = 6}, {1, 2, 3, 4, 5, 6}, {I, I, I, 4, 5, I}, 6, 1},
        {"supervised --cutoff-len 6 --mask-history: last turns first", {.cutoff_len = 6, .mask_history = 1},
         {1, 6, 7, 8, 9, 10}, {I, I, I, 8, 9, 10}, 6, 1},
        {"supervised --cutoff-len 5: later turns dropped", {.cutoff_len = 5}, {1, 2, 3, 4, 5}, {I, I, I, 4, 5}, 5, 1},
        {"supervised efficient_eos", {.efficient_eos = 1, .eos_id = 99}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99},
         {I, I, I, 4, 5, 99, I, 8, 9, 10, 99}, 11, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        TEST(cases[k].name) {
            struct ftk_ids ids = {0}, labels = {0};
            int trunc = -1;
            CHECK_OK(ftk_labels_supervised(&cases[k].c, turns, 4, &ids, &labels, &trunc));
            CHECK(ids_eq(&ids, cases[k].ids, cases[k].n));
            CHECK(ids_eq(&labels, cases[k].labels, cases[k].n));
            CHECK_INT(trunc, cases[k].trunc);
            free(ids.ids);
            free(labels.ids);
        }
    }
    TEST("supervised: odd message count is an error") {
        struct ftk_label_config c = {0};
        struct ftk_ids ids = {0}, labels = {0};
        int trunc;
        CHECK_ERR(ftk_labels_supervised(&c, turns, 3, &ids, &labels, &trunc), FTK_E_FORMAT, "3 messages");
    }
    TEST("pairwise: the longer reply decides the cut") {
        int32_t pp[] = {1, 2, 3, 4}, ch[] = {5, 6}, rj[] = {7, 8, 9};
        struct ftk_ids prompt = {pp, 4, 4}, chosen = {ch, 2, 2}, rejected = {rj, 3, 3};
        struct ftk_ids o[4] = {{0}};
        struct ftk_label_config c = {.cutoff_len = 5};
        int trunc = 0;
        CHECK_OK(ftk_labels_pairwise(&c, &prompt, &chosen, &rejected, &o[0], &o[1], &o[2], &o[3], &trunc));
        int32_t ci[] = {1, 2, 3, 5, 6}, cl[] = {I, I, I, 5, 6}, ri[] = {1, 2, 3, 7, 8}, rl[] = {I, I, I, 7, 8};
        CHECK(ids_eq(&o[0], ci, 5)); CHECK(ids_eq(&o[1], cl, 5));
        CHECK(ids_eq(&o[2], ri, 5)); CHECK(ids_eq(&o[3], rl, 5));
        CHECK_INT(trunc, 1);
        free_all(o, 4);
    }
    TEST("feedback (kto): prompt ignored, prompt_len kept") {
        int32_t pp[] = {1, 2}, rr[] = {3, 4, 5};
        struct ftk_ids prompt = {pp, 2, 2}, resp = {rr, 3, 3}, ids = {0}, labels = {0};
        struct ftk_label_config c = {.efficient_eos = 1, .eos_id = 99};
        int64_t pl = -1;
        int trunc = -1;
        CHECK_OK(ftk_labels_feedback(&c, &prompt, &resp, &ids, &labels, &pl, &trunc));
        int32_t wi[] = {1, 2, 3, 4, 5, 99}, wl[] = {I, I, 3, 4, 5, 99};
        CHECK(ids_eq(&ids, wi, 6)); CHECK(ids_eq(&labels, wl, 6));
        CHECK_INT(pl, 2); CHECK_INT(trunc, 0);
        free(ids.ids);
        free(labels.ids);
    }
    return check_summary();
}
