/* libcore/stream.c: reading and writing tensor streams (ftk/stream.h, docs/stream-format.md).
 *
 * The reader decodes zstd incrementally and holds one message at a time; how much it reads is
 * bounded by the header it has already validated, and buffers grow only as bytes arrive, so a
 * lying length field cannot make it allocate what the input does not contain. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include "ftk/stream.h"

#define IN_CHUNK ((size_t)1 << 17)
#define GROW_STEP ((size_t)1 << 24)   /* read at most 16 MiB beyond what has arrived */

struct ftk_stream_reader {
    FILE *in;
    char name[256];
    int compressed;
    ZSTD_DCtx *dctx;
    uint8_t *inbuf;            /* raw bytes from the FILE */
    ZSTD_inBuffer zin;
    uint8_t *outbuf;           /* decoded bytes not yet consumed: outbuf[out_pos..out_len) */
    size_t out_cap, out_pos, out_len;
    size_t frame_left;         /* last ZSTD_decompressStream hint: 0 = at a frame boundary */
    int in_eof;
    size_t index;              /* messages returned so far */
    int done;                  /* `end` seen and the tail checked */
};

struct ftk_stream_writer {
    FILE *out;
    int level;
    ZSTD_CCtx *cctx;
    uint8_t *outbuf;
    size_t out_cap;
    size_t count;
    int finished;
};

/* ---- reader --------------------------------------------------------------------------- */

static ftk_status fill_raw(struct ftk_stream_reader *r)
{
    if (r->in_eof)
        return FTK_OK;
    size_t n = fread(r->inbuf, 1, IN_CHUNK, r->in);
    if (n == 0) {
        FTK_FAIL_IF(ferror(r->in), FTK_E_IO, "%s: read error: %s", r->name, strerror(errno));
        r->in_eof = 1;
    }
    r->zin = (ZSTD_inBuffer){r->inbuf, n, 0};
    return FTK_OK;
}

/* Makes decoded bytes available in outbuf; leaves out_pos == out_len only at end of input. */
static ftk_status refill(struct ftk_stream_reader *r)
{
    r->out_pos = r->out_len = 0;
    while (r->out_len == 0) {
        if (r->zin.pos == r->zin.size) {
            FTK_TRY(fill_raw(r));
            if (r->in_eof) {
                FTK_FAIL_IF(r->compressed && r->frame_left != 0, FTK_E_TRUNCATED,
                            "%s: message %zu: zstd data ends in the middle of a frame (truncated)", r->name, r->index);
                return FTK_OK;
            }
        }
        if (!r->compressed) {
            size_t n = r->zin.size - r->zin.pos;
            memcpy(r->outbuf, r->inbuf + r->zin.pos, n);
            r->zin.pos += n;
            r->out_len = n;
            continue;
        }
        ZSTD_outBuffer zo = {r->outbuf, r->out_cap, 0};
        size_t ret = ZSTD_decompressStream(r->dctx, &zo, &r->zin);
        FTK_FAIL_IF(ZSTD_isError(ret), FTK_E_FORMAT, "%s: message %zu: corrupt zstd data: %s", r->name, r->index,
                    ZSTD_getErrorName(ret));
        r->frame_left = ret;
        r->out_len = zo.pos;
    }
    return FTK_OK;
}

/* Copies up to n decoded bytes into dst; *got < n only at end of input. */
static ftk_status read_bytes(struct ftk_stream_reader *r, uint8_t *dst, size_t n, size_t *got)
{
    *got = 0;
    while (*got < n) {
        if (r->out_pos == r->out_len) {
            FTK_TRY(refill(r));
            if (r->out_len == 0)
                return FTK_OK;
        }
        size_t k = r->out_len - r->out_pos;
        if (k > n - *got)
            k = n - *got;
        memcpy(dst + *got, r->outbuf + r->out_pos, k);
        r->out_pos += k;
        *got += k;
    }
    return FTK_OK;
}

/* Reads n bytes into (*buf)[at..at+n), growing *buf as data arrives. */
static ftk_status read_grow(struct ftk_stream_reader *r, uint8_t **buf, size_t *cap, size_t at, size_t n,
                            const char *what)
{
    size_t done = 0;
    while (done < n) {
        size_t step = n - done < GROW_STEP ? n - done : GROW_STEP;
        if (at + done + step > *cap) {
            size_t nc = at + done + step;
            uint8_t *p = realloc(*buf, nc);
            FTK_FAIL_IF(!p, FTK_E_NOMEM, "%s: message %zu: out of memory (%zu bytes)", r->name, r->index, nc);
            *buf = p;
            *cap = nc;
        }
        size_t got;
        FTK_TRY(read_bytes(r, *buf + at + done, step, &got));
        done += got;
        FTK_FAIL_IF(got < step, FTK_E_TRUNCATED, "%s: message %zu: stream ends inside the %s (%zu of %zu bytes)",
                    r->name, r->index, what, done, n);
    }
    return FTK_OK;
}

ftk_status ftk_stream_reader_open(FILE *in, const char *name, struct ftk_stream_reader **out)
{
    struct ftk_stream_reader *r = calloc(1, sizeof *r);
    FTK_FAIL_IF(!r, FTK_E_NOMEM, "out of memory");
    r->in = in;
    snprintf(r->name, sizeof r->name, "%s", name ? name : "<stream>");
    r->inbuf = malloc(IN_CHUNK);
    r->out_cap = ZSTD_DStreamOutSize();
    r->outbuf = malloc(r->out_cap > IN_CHUNK ? r->out_cap : IN_CHUNK);
    if (r->out_cap < IN_CHUNK)
        r->out_cap = IN_CHUNK;
    if (!r->inbuf || !r->outbuf) {
        ftk_stream_reader_close(r);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    ftk_status st = fill_raw(r);
    /* Gather at least 4 bytes to tell zstd from a raw stream. */
    while (st == FTK_OK && !r->in_eof && r->zin.size < 4) {
        size_t n = fread(r->inbuf + r->zin.size, 1, IN_CHUNK - r->zin.size, in);
        if (n == 0) {
            if (ferror(in))
                st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: read error: %s", r->name, strerror(errno));
            break;
        }
        r->zin.size += n;
    }
    if (st != FTK_OK) {
        ftk_stream_reader_close(r);
        return st;
    }
    static const uint8_t magic[4] = {0x28, 0xB5, 0x2F, 0xFD};
    r->compressed = r->zin.size >= 4 && memcmp(r->inbuf, magic, 4) == 0;
    if (r->compressed) {
        r->dctx = ZSTD_createDCtx();
        if (!r->dctx) {
            ftk_stream_reader_close(r);
            FTK_FAIL(FTK_E_NOMEM, "out of memory");
        }
    }
    *out = r;
    return FTK_OK;
}

/* After `end`: nothing may follow, and a zstd frame must close (its checksum is checked then). */
static ftk_status check_tail(struct ftk_stream_reader *r)
{
    uint8_t b;
    size_t got;
    FTK_TRY(read_bytes(r, &b, 1, &got));
    FTK_FAIL_IF(got, FTK_E_FORMAT, "%s: data after the end message (message %zu)", r->name, r->index - 1);
    return FTK_OK;
}

ftk_status ftk_stream_read(struct ftk_stream_reader *r, struct ftk_message *m)
{
    ftk_message_free(m);
    if (r->done)
        return FTK_E_EOF;
    size_t idx = r->index;
    uint8_t *blob = NULL;
    size_t cap = 0, got;
    uint8_t lenb[8];
    ftk_status st = read_bytes(r, lenb, 8, &got);
    if (st != FTK_OK)
        return st;
    if (got == 0) {
        FTK_FAIL_IF(idx == 0, FTK_E_TRUNCATED, "%s: empty stream (no `stream` message)", r->name);
        FTK_FAIL(FTK_E_TRUNCATED, "%s: stream ends after %zu messages without an `end` message (truncated)", r->name, idx);
    }
    FTK_FAIL_IF(got < 8, FTK_E_TRUNCATED, "%s: message %zu: stream ends inside the 8-byte header length", r->name, idx);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)lenb[i] << (8 * i);
    FTK_FAIL_IF(hl > FTK_MAX_HEADER_BYTES, FTK_E_FORMAT,
                "%s: message %zu: header length %" PRIu64 " exceeds the %" PRIu64 "-byte limit (not an ftk stream? first bytes %02x %02x %02x %02x)",
                r->name, idx, hl, FTK_MAX_HEADER_BYTES, lenb[0], lenb[1], lenb[2], lenb[3]);
    char where[64];
    snprintf(where, sizeof where, "message %zu", idx);
    blob = malloc(8);
    FTK_FAIL_IF(!blob, FTK_E_NOMEM, "out of memory");
    cap = 8;
    memcpy(blob, lenb, 8);
    uint64_t data_len = 0;
    if ((st = read_grow(r, &blob, &cap, 8, (size_t)hl, "header")) != FTK_OK)
        goto fail;
    if ((st = ftk_message_header_data_len((const char *)blob + 8, (size_t)hl, &data_len, where)) != FTK_OK)
        goto fail;
    if (data_len > FTK_STREAM_MAX_MESSAGE_BYTES) {
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message %zu: data of %" PRIu64 " bytes exceeds the limit",
                           r->name, idx, data_len);
        goto fail;
    }
    if ((st = read_grow(r, &blob, &cap, 8 + (size_t)hl, (size_t)data_len, "tensor data")) != FTK_OK)
        goto fail;
    if ((st = ftk_message_decode(m, blob, 8 + (size_t)hl + (size_t)data_len, 1, where)) != FTK_OK)
        goto fail;
    blob = NULL;
    r->index++;
    const char *kind = ftk_message_kind(m);
    if (!kind) {
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message %zu has no \"kind\" metadata", r->name, idx);
        goto fail_msg;
    }
    if (idx == 0) {
        if (strcmp(kind, "stream") != 0) {
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message 0 has kind \"%s\", expected \"stream\"", r->name, kind);
            goto fail_msg;
        }
        const char *v = ftk_message_get_meta(m, "format_version");
        if (!v || strcmp(v, FTK_STREAM_FORMAT_VERSION) != 0) {
            st = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "%s: stream format version \"%s\" is not supported (this is version %s)",
                               r->name, v ? v : "(missing)", FTK_STREAM_FORMAT_VERSION);
            goto fail_msg;
        }
    } else if (strcmp(kind, "stream") == 0) {
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message %zu: a second `stream` header (concatenated streams are not one stream)",
                           r->name, idx);
        goto fail_msg;
    }
    if (strcmp(kind, "end") == 0) {
        int64_t count;
        if (ftk_message_get_meta_int(m, "messages", &count) != FTK_OK) {
            st = ftk_error_wrap(FTK_E_FORMAT, "%s: message %zu (end)", r->name, idx);
            goto fail_msg;
        }
        if (count != (int64_t)idx + 1) {
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: end message says %" PRId64 " messages, but it is message %zu of %zu",
                               r->name, count, idx, idx + 1);
            goto fail_msg;
        }
        r->done = 1;
        if ((st = check_tail(r)) != FTK_OK)
            goto fail_msg;
    }
    return FTK_OK;
fail:
    free(blob);
    return st;
fail_msg:
    ftk_message_free(m);
    return st;
}

size_t ftk_stream_reader_index(const struct ftk_stream_reader *r) { return r->index ? r->index - 1 : 0; }
int ftk_stream_reader_compressed(const struct ftk_stream_reader *r) { return r->compressed; }

void ftk_stream_reader_close(struct ftk_stream_reader *r)
{
    if (!r)
        return;
    ZSTD_freeDCtx(r->dctx);
    free(r->inbuf);
    free(r->outbuf);
    free(r);
}

/* ---- writer --------------------------------------------------------------------------- */

ftk_status ftk_stream_writer_open(FILE *out, int level, struct ftk_stream_writer **wp)
{
    FTK_FAIL_IF(level < 0 || level > ZSTD_maxCLevel(), FTK_E_INVALID, "zstd level %d out of range 0..%d", level, ZSTD_maxCLevel());
    struct ftk_stream_writer *w = calloc(1, sizeof *w);
    FTK_FAIL_IF(!w, FTK_E_NOMEM, "out of memory");
    w->out = out;
    w->level = level;
    if (level > 0) {
        w->cctx = ZSTD_createCCtx();
        w->out_cap = ZSTD_CStreamOutSize();
        w->outbuf = malloc(w->out_cap);
        if (!w->cctx || !w->outbuf) {
            ftk_stream_writer_close(w);
            FTK_FAIL(FTK_E_NOMEM, "out of memory");
        }
        ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, level);
        ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
    }
    *wp = w;
    return FTK_OK;
}

static ftk_status put(struct ftk_stream_writer *w, const void *p, size_t n)
{
    FTK_FAIL_IF(n && fwrite(p, 1, n, w->out) != n, FTK_E_IO, "writing stream: %s", strerror(errno));
    return FTK_OK;
}

static ftk_status emit(struct ftk_stream_writer *w, const uint8_t *p, size_t n, ZSTD_EndDirective mode)
{
    if (!w->cctx) {
        FTK_TRY(put(w, p, n));
    } else {
        ZSTD_inBuffer in = {p, n, 0};
        size_t left;
        do {
            ZSTD_outBuffer o = {w->outbuf, w->out_cap, 0};
            left = ZSTD_compressStream2(w->cctx, &o, &in, mode);
            FTK_FAIL_IF(ZSTD_isError(left), FTK_E_IO, "zstd compression failed: %s", ZSTD_getErrorName(left));
            FTK_TRY(put(w, w->outbuf, o.pos));
        } while (left != 0 || in.pos < in.size);
    }
    FTK_FAIL_IF(fflush(w->out) != 0, FTK_E_IO, "writing stream: %s", strerror(errno));
    return FTK_OK;
}

static ftk_status write_message(struct ftk_stream_writer *w, const struct ftk_message *m, ZSTD_EndDirective mode)
{
    uint8_t *blob;
    size_t len;
    FTK_TRY(ftk_message_encode(m, &blob, &len));
    ftk_status st = emit(w, blob, len, mode);
    free(blob);
    if (st == FTK_OK)
        w->count++;
    return st;
}

ftk_status ftk_stream_write(struct ftk_stream_writer *w, const struct ftk_message *m)
{
    FTK_FAIL_IF(w->finished, FTK_E_INVALID, "stream already finished");
    const char *kind = ftk_message_kind(m);
    FTK_FAIL_IF(!kind, FTK_E_INVALID, "message %zu has no kind", w->count);
    FTK_FAIL_IF(strcmp(kind, "end") == 0, FTK_E_INVALID, "the end message is written by ftk_stream_writer_finish");
    FTK_FAIL_IF((w->count == 0) != (strcmp(kind, "stream") == 0), FTK_E_INVALID,
                "message %zu has kind \"%s\": a stream starts with exactly one \"stream\" message", w->count, kind);
    if (w->count == 0 && !ftk_message_get_meta(m, "format_version")) {
        struct ftk_message h;
        ftk_message_init(&h);
        ftk_status st = ftk_message_copy(&h, m);
        if (st == FTK_OK)
            st = ftk_message_set_meta(&h, "format_version", FTK_STREAM_FORMAT_VERSION);
        if (st == FTK_OK)
            st = write_message(w, &h, ZSTD_e_flush);
        ftk_message_free(&h);
        return st;
    }
    return write_message(w, m, ZSTD_e_flush);
}

ftk_status ftk_stream_writer_finish(struct ftk_stream_writer *w, const struct ftk_message *extra)
{
    FTK_FAIL_IF(w->finished, FTK_E_INVALID, "stream already finished");
    FTK_FAIL_IF(w->count == 0, FTK_E_INVALID, "cannot end a stream that has no stream header");
    struct ftk_message e;
    ftk_message_init(&e);
    ftk_status st = FTK_OK;
    if (extra)
        st = ftk_message_copy(&e, extra);
    if (st == FTK_OK)
        st = ftk_message_set_meta(&e, "kind", "end");
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&e, "messages", (int64_t)w->count + 1);
    if (st == FTK_OK)
        st = write_message(w, &e, ZSTD_e_end);
    ftk_message_free(&e);
    if (st == FTK_OK)
        w->finished = 1;
    return st;
}

size_t ftk_stream_writer_count(const struct ftk_stream_writer *w) { return w->count; }

void ftk_stream_writer_close(struct ftk_stream_writer *w)
{
    if (!w)
        return;
    ZSTD_freeCCtx(w->cctx);
    free(w->outbuf);
    free(w);
}

ftk_status ftk_stream_header_init(struct ftk_message *m, const char *producer)
{
    FTK_TRY(ftk_message_set_meta(m, "kind", "stream"));
    FTK_TRY(ftk_message_set_meta(m, "format_version", FTK_STREAM_FORMAT_VERSION));
    FTK_TRY(ftk_message_set_meta(m, "producer", producer));
    FTK_TRY(ftk_message_set_meta(m, "producer_version", FTK_VERSION));
    return FTK_OK;
}
