/* libcore/input_sniff.c: telling a tensor stream from text on an input that may be a pipe
 * (ftk/fileio.h). A stream starts with the zstd magic 28 B5 2F FD, or, uncompressed, with its
 * first message's u64 little-endian header length, whose high bytes are zero for any header
 * under 4 GiB; JSON text and CSV never hold a NUL byte. One byte is not enough (a 123-byte header
 * starts with '{', a 32-byte one with ' '), and a pipe cannot seek back, so the first 8 bytes
 * are read and replayed by a FILE wrapping the input (glibc's fopencookie). The first 8 bytes
 * wait for 8 bytes or the end of the input (a shorter input is not a stream). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/fileio.h"

struct replay {
    FILE *in;                  /* the rest, after the replayed bytes; not closed here */
    unsigned char buf[8];
    size_t n, at;
};

/* Bytes `in` holds in its buffer, readable without blocking (glibc's FILE fields, as gnulib's
 * freadahead reads them). */
static size_t buffered(const FILE *in) { return (size_t)(in->_IO_read_end - in->_IO_read_ptr); }

/* Returns what is at hand rather than a full buffer: a prompt arriving on a pipe must be read
 * when it arrives, not when 4 KiB have (fread would wait for them). */
static ssize_t replay_read(void *cookie, char *out, size_t size)
{
    struct replay *r = cookie;
    size_t k = 0;
    while (k < size && r->at < r->n)
        out[k++] = (char)r->buf[r->at++];
    if (k == 0 && size > 0) {   /* nothing replayed: wait for one byte */
        int c = getc(r->in);
        if (c == EOF)
            return ferror(r->in) ? -1 : 0;
        out[k++] = (char)c;
    }
    size_t more = buffered(r->in);
    if (more > size - k)
        more = size - k;
    k += fread(out + k, 1, more, r->in);
    return (ssize_t)k;
}

static int replay_close(void *cookie)
{
    free(cookie);
    return 0;
}

ftk_status ftk_input_sniff(FILE *in, FILE **wrapped, int *is_stream)
{
    struct replay *r = calloc(1, sizeof *r);
    FTK_FAIL_IF(!r, FTK_E_NOMEM, "out of memory");
    r->in = in;
    r->n = fread(r->buf, 1, sizeof r->buf, in);
    if (r->n < sizeof r->buf && ferror(in)) {
        free(r);
        FTK_FAIL(FTK_E_IO, "reading the input failed");
    }
    static const unsigned char magic[4] = {0x28, 0xB5, 0x2F, 0xFD};
    *is_stream = (r->n >= 4 && !memcmp(r->buf, magic, 4)) ||
                 (r->n == 8 && !r->buf[4] && !r->buf[5] && !r->buf[6] && !r->buf[7]);
    cookie_io_functions_t io = {.read = replay_read, .close = replay_close};
    FILE *f = fopencookie(r, "rb", io);
    if (!f) {
        free(r);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    *wrapped = f;
    return FTK_OK;
}
