/* tests/fuzz/fuzz_safetensors.c: libFuzzer target for safetensors parsing (the same header
 * validation the file reader uses) and re-encoding of what parsed. */
#include <stdlib.h>
#include <string.h>
#include "ftk/message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    void *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    struct ftk_message m;
    ftk_message_init(&m);
    if (ftk_message_decode(&m, copy, size, 1, "fuzz") == FTK_OK) {
        uint8_t *blob;
        size_t len;
        if (ftk_message_encode(&m, &blob, &len) == FTK_OK) {   /* what parsed must re-encode and re-parse */
            struct ftk_message back;
            ftk_message_init(&back);
            if (ftk_message_decode(&back, blob, len, 1, "re-encoded") != FTK_OK)
                abort();
            if (back.n_tensors != m.n_tensors)
                abort();
            ftk_message_free(&back);
        }
    } else {
        free(copy);
    }
    ftk_message_free(&m);
    return 0;
}
