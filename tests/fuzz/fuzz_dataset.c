/* tests/fuzz/fuzz_dataset.c: libFuzzer target for the dataset readers of ftk tokenize: record
 * layouts (JSON array, JSON lines, text lines), the LLaMA-Factory converters, chat-template
 * rendering, and the template JSON parser. Any input must end in FTK_OK or an error status,
 * never a crash. The first byte picks the mode; the rest is the file. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "dataset/dataset-impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* qwen3.json as shipped (a reasoning template: the most code paths). */
static const char qwen3[] =
    "{\"name\":\"qwen3\",\"format_user\":[\"<|im_start|>user\\n{{content}}<|im_end|>\\n<|im_start|>assistant\\n\"],"
    "\"format_assistant\":[\"{{content}}<|im_end|>\\n\"],\"format_system\":[\"<|im_start|>system\\n{{content}}<|im_end|>\\n\"],"
    "\"format_prefix\":[{\"special\":\"bos_token\"}],\"stop_words\":[\"<|im_end|>\"],\"replace_eos\":true,"
    "\"template_class\":\"reasoning\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned mode = data[0];
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    size_t len = size - 1;
    if (mode & 0x80) {   /* a template file */
        struct ftk_template *t = NULL;
        if (ftk_template_parse(text, len, "fuzz.json", &t) == FTK_OK) {
            struct ftk_chat_message m[] = {{FTK_ROLE_USER, "q"}, {FTK_ROLE_ASSISTANT, "<think>\nx\n</think>\n\na"}};
            char *out = NULL;
            if (ftk_template_render(t, m, 2, "sys", "<s>", "</s>", &out) == FTK_OK)
                free(out);
            ftk_template_free(t);
        }
        free(text);
        return 0;
    }
    struct ftk_dataset_attr a;
    ftk_dataset_attr_init(&a, (enum ftk_data_format)(mode & 3));
    if (mode & 4)
        a.ranking = 1, snprintf(a.chosen, sizeof a.chosen, "chosen"), snprintf(a.rejected, sizeof a.rejected, "rejected");
    else if (mode & 8)
        snprintf(a.kto_tag, sizeof a.kto_tag, "kto_tag");
    struct ftk_template *t = NULL;
    if (ftk_template_parse(qwen3, sizeof qwen3 - 1, "qwen3", &t) != FTK_OK)
        abort();
    struct ds_records r;
    if (ds_records_begin(&r, (mode & 16) ? "f.txt" : "f.json", text, len, a.format == FTK_FORMAT_TEXT) == FTK_OK) {
        struct ds_record rec;
        ftk_status st;
        for (int i = 0; i < 10000 && (st = ds_records_next(&r, &rec)) != FTK_E_EOF; i++) {
            if (st != FTK_OK)
                continue;
            struct ds_conv c;
            if (ds_convert(&a, &rec, &c) == FTK_OK) {
                if (c.kind != FTK_EXAMPLE_TEXT) {
                    char *out = NULL;
                    size_t n = c.kind == FTK_EXAMPLE_PAIRWISE ? c.n_prompt + 1 : c.n_msgs;
                    if (ftk_template_render(t, c.msgs, n, c.system, "<s>", NULL, &out) == FTK_OK)
                        free(out);
                }
                (void)ds_utf8_invalid_at(c.text ? c.text : "", c.text_len);
                ds_conv_free(&c);
            }
            cJSON_Delete(rec.json);
        }
        ds_records_end(&r);
    }
    ftk_template_free(t);
    free(text);
    return 0;
}
