/* tests/fuzz/fuzz_tokenizer.c: libFuzzer target for tokenizer.json parsing, encoding and
 * decoding. Input: tokenizer.json bytes, optionally a NUL and then a text to encode (and decode
 * back). Any input must end in FTK_OK or an error status, never a crash. */
#include <stdlib.h>
#include <string.h>
#include "ftk/tokenizer.h"
#include "tokenizer/tokenizer-impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *json = (const char *)data;
    const char *nul = memchr(data, 0, size);
    size_t jlen = nul ? (size_t)(nul - json) : size;
    struct ftk_tokenizer *t = NULL;
    if (tk_tokenizer_from_json(json, jlen, NULL, 0, "fuzz.json", &t) != FTK_OK)
        return 0;
    const char *text = nul ? nul + 1 : "Hello, world! 你好 123 <s>";
    size_t tlen = nul ? size - jlen - 1 : strlen(text);
    struct ftk_ids ids = {0};
    for (int special = 0; special < 2; special++) {
        ids.n = 0;
        if (ftk_tokenizer_encode(t, text, tlen, special, &ids) == FTK_OK) {
            char *out = NULL;
            if (ftk_tokenizer_decode(t, ids.ids, ids.n, special, special, &out, NULL) == FTK_OK)
                free(out);
        }
    }
    /* ids the vocab does not hold are dropped, never read out of bounds */
    int32_t odd[] = {-1, 0, 1, 2, 3, 1 << 20, (int32_t)ftk_tokenizer_vocab_size(t)};
    char *out = NULL;
    if (ftk_tokenizer_decode(t, odd, sizeof odd / sizeof *odd, 0, 1, &out, NULL) == FTK_OK)
        free(out);
    ftk_ids_free(&ids);
    ftk_tokenizer_free(t);
    return 0;
}
