/* tests/fuzz/fuzz_stream.c: libFuzzer target for the stream reader (zstd and raw paths) and
 * the message codec. Any input must end in FTK_OK or an error status, never a crash. */
#include <stdio.h>
#include <stdlib.h>
#include "ftk/stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    FILE *f = fmemopen((void *)data, size, "rb");
    if (!f)
        return 0;
    struct ftk_stream_reader *r;
    if (ftk_stream_reader_open(f, "fuzz", &r) == FTK_OK) {
        struct ftk_message m;
        ftk_message_init(&m);
        for (int i = 0; i < 1000 && ftk_stream_read(r, &m) == FTK_OK; i++) {
            /* Touch every tensor byte so a bad view would be caught by ASan. */
            unsigned sum = 0;
            for (size_t t = 0; t < m.n_tensors; t++)
                for (size_t b = 0; b < m.tensors[t].t.nbytes; b++)
                    sum += ((const uint8_t *)m.tensors[t].t.data)[b];
            (void)sum;
        }
        ftk_message_free(&m);
        ftk_stream_reader_close(r);
    }
    fclose(f);
    return 0;
}
