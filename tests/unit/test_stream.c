/* tests/unit/test_stream.c: the tensor stream and message codec, including every bad input
 * the foundation issue lists: each must be a clear error naming the message, never a crash. */
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include "check.h"
#include "ftk/stream.h"

/* A stream of `n_examples` example messages, encoded at `level` into a malloc'd buffer. */
static size_t make_stream(int level, int n_examples, int with_end, uint8_t **out)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    struct ftk_stream_writer *w;
    ftk_stream_writer_open(f, level, &w);
    struct ftk_message m;
    ftk_message_init(&m);
    ftk_stream_header_init(&m, "test");
    ftk_message_set_meta(&m, "tokenizer_hash", "abc");
    ftk_stream_write(w, &m);
    for (int i = 0; i < n_examples; i++) {
        ftk_message_free(&m);
        ftk_message_set_meta(&m, "kind", "example");
        ftk_message_set_meta_int(&m, "index", i);
        int32_t ids[5] = {i, i + 1, i + 2, i + 3, i + 4};
        int64_t shape[1] = {5};
        ftk_message_add(&m, "input_ids", FTK_DTYPE_I32, 1, shape, ids, NULL);
        uint16_t h[3] = {ftk_f32_to_bf16(1.5f), ftk_f32_to_bf16(-2.0f), ftk_f32_to_bf16((float)i)};
        int64_t s3[1] = {3};
        ftk_message_add(&m, "w", FTK_DTYPE_BF16, 1, s3, h, NULL);
        ftk_stream_write(w, &m);
    }
    ftk_message_free(&m);
    if (with_end)
        ftk_stream_writer_finish(w, NULL);
    ftk_stream_writer_close(w);
    fclose(f);
    *out = (uint8_t *)buf;
    return len;
}

/* Reads a whole stream from memory; returns the first non-OK status other than EOF. */
static ftk_status read_all(const uint8_t *p, size_t n, size_t *count)
{
    FILE *f = fmemopen((void *)p, n ? n : 1, "rb");
    if (n == 0) { fclose(f); f = fopen("/dev/null", "rb"); }
    struct ftk_stream_reader *r;
    ftk_status st = ftk_stream_reader_open(f, "mem", &r);
    *count = 0;
    if (st == FTK_OK) {
        struct ftk_message m;
        ftk_message_init(&m);
        while ((st = ftk_stream_read(r, &m)) == FTK_OK)
            ++*count;
        ftk_message_free(&m);
        ftk_stream_reader_close(r);
    }
    fclose(f);
    return st == FTK_E_EOF ? FTK_OK : st;
}

/* One raw (uncompressed) message with a hand-written header and `data_len` zero bytes. */
static size_t raw_message(uint8_t *out, const char *header, size_t data_len)
{
    uint64_t hl = strlen(header);
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(hl >> (8 * i));
    memcpy(out + 8, header, hl);
    memset(out + 8 + hl, 0, data_len);
    return 8 + hl + data_len;
}

static const char *HDR0 = "{\"__metadata__\":{\"kind\":\"stream\",\"format_version\":\"1\"}}";

/* A raw stream: a valid header message, then `bad` as message 1. */
static ftk_status bad_second(const char *bad, size_t data_len)
{
    static uint8_t buf[1 << 16];
    size_t n = raw_message(buf, HDR0, 0);
    n += raw_message(buf + n, bad, data_len);
    size_t count;
    return read_all(buf, n, &count);
}

int main(void)
{
    TEST("round trip, compressed and raw") {
        for (int level = 0; level <= 3; level += 3) {
            uint8_t *s;
            size_t n = make_stream(level, 4, 1, &s);
            CHECK(n > 0);
            CHECK_INT(s[0] == 0x28 && s[1] == 0xB5, level > 0);
            FILE *f = fmemopen(s, n, "rb");
            struct ftk_stream_reader *r;
            CHECK_OK(ftk_stream_reader_open(f, "mem", &r));
            struct ftk_message m;
            ftk_message_init(&m);
            CHECK_OK(ftk_stream_read(r, &m));
            CHECK_STR(ftk_message_kind(&m), "stream");
            CHECK_STR(ftk_message_get_meta(&m, "tokenizer_hash"), "abc");
            CHECK_STR(ftk_message_get_meta(&m, "format_version"), "1");
            for (int i = 0; i < 4; i++) {
                CHECK_OK(ftk_stream_read(r, &m));
                struct ftk_tensor *t;
                CHECK_OK(ftk_message_get(&m, "input_ids", FTK_DTYPE_I32, 1, &t));
                CHECK_INT(t->shape[0], 5);
                CHECK_INT(((int32_t *)t->data)[4], i + 4);
                CHECK_OK(ftk_message_get(&m, "w", FTK_DTYPE_BF16, 1, &t));
                CHECK_NEAR(ftk_bf16_to_f32(((uint16_t *)t->data)[1]), -2.0, 0);
                CHECK_INT(ftk_stream_reader_index(r), i + 1);
            }
            CHECK_OK(ftk_stream_read(r, &m));
            CHECK_STR(ftk_message_kind(&m), "end");
            CHECK_STR(ftk_message_get_meta(&m, "messages"), "6");
            CHECK_INT(ftk_stream_read(r, &m), FTK_E_EOF);
            ftk_message_free(&m);
            ftk_stream_reader_close(r);
            fclose(f);
            free(s);
        }
    }
    TEST("each message is flushed: a reader sees message 1 before the writer ends") {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        struct ftk_stream_writer *w;
        CHECK_OK(ftk_stream_writer_open(f, 3, &w));
        struct ftk_message m;
        ftk_message_init(&m);
        ftk_stream_header_init(&m, "test");
        CHECK_OK(ftk_stream_write(w, &m));
        fflush(f);
        /* Decompress what is out so far: the whole header message must be there. */
        uint8_t out[4096];
        ZSTD_DCtx *d = ZSTD_createDCtx();
        ZSTD_inBuffer in = {buf, len, 0};
        ZSTD_outBuffer o = {out, sizeof out, 0};
        ZSTD_decompressStream(d, &o, &in);
        ZSTD_freeDCtx(d);
        struct ftk_message back;
        ftk_message_init(&back);
        CHECK_OK(ftk_message_decode(&back, out, o.pos, 0, "flushed"));
        CHECK_STR(ftk_message_kind(&back), "stream");
        ftk_message_free(&back);
        ftk_stream_writer_finish(w, NULL);
        ftk_stream_writer_close(w);
        ftk_message_free(&m);
        fclose(f);
        free(buf);
    }
    TEST("writer enforces stream first and end by finish") {
        FILE *f = fopen("/dev/null", "wb");
        struct ftk_stream_writer *w;
        CHECK_OK(ftk_stream_writer_open(f, 1, &w));
        struct ftk_message m;
        ftk_message_init(&m);
        ftk_message_set_meta(&m, "kind", "example");
        CHECK_ERR(ftk_stream_write(w, &m), FTK_E_INVALID, "starts with");
        ftk_message_set_meta(&m, "kind", "end");
        CHECK_ERR(ftk_stream_write(w, &m), FTK_E_INVALID, "finish");
        ftk_message_free(&m);
        ftk_stream_writer_close(w);
        fclose(f);
    }
    TEST("truncated zstd") {
        uint8_t *s;
        size_t n = make_stream(3, 3, 1, &s), count;
        CHECK_ERR(read_all(s, n - 7, &count), FTK_E_TRUNCATED, "truncated");
        CHECK_ERR(read_all(s, n / 2, &count), FTK_E_TRUNCATED, "mem");
        free(s);
    }
    TEST("corrupted zstd: checksum and data") {
        uint8_t *s;
        size_t n = make_stream(3, 3, 1, &s), count;
        s[n - 1] ^= 0x55;   /* the frame's content checksum is its last 4 bytes */
        CHECK_ERR(read_all(s, n, &count), FTK_E_FORMAT, "checksum");
        s[n - 1] ^= 0x55;
        s[n / 2] ^= 0xff;
        ftk_status st = read_all(s, n, &count);
        CHECK(st == FTK_E_FORMAT || st == FTK_E_TRUNCATED);
        CHECK(strstr(ftk_last_error(), "message") != NULL);
        free(s);
    }
    TEST("missing end message, raw and compressed") {
        for (int level = 0; level <= 3; level += 3) {
            uint8_t *s;
            size_t n = make_stream(level, 2, 0, &s), count;
            ftk_status st = read_all(s, n, &count);
            if (level == 0)
                CHECK_ERR(st, FTK_E_TRUNCATED, "without an `end` message");
            else   /* no end: the writer never closed the zstd frame either */
                CHECK_INT(st, FTK_E_TRUNCATED);
            CHECK_INT(count, 3);
            free(s);
        }
    }
    TEST("empty input and garbage") {
        size_t count;
        CHECK_ERR(read_all((const uint8_t *)"", 0, &count), FTK_E_TRUNCATED, "empty stream");
        const char *g = "this is not a tensor stream at all, just text\n";
        CHECK_ERR(read_all((const uint8_t *)g, strlen(g), &count), FTK_E_FORMAT, "message 0: header length");
        CHECK_ERR(read_all((const uint8_t *)"abc", 3, &count), FTK_E_TRUNCATED, "message 0");
    }
    TEST("header length beyond the rest and beyond 100 MB") {
        uint8_t buf[64];
        size_t n = raw_message(buf, "{}", 0);
        buf[0] = 200;   /* claims 200 bytes, has 2 */
        size_t count;
        CHECK_ERR(read_all(buf, n, &count), FTK_E_TRUNCATED, "message 0: stream ends inside the header");
        uint64_t big = 100000001;
        for (int i = 0; i < 8; i++)
            buf[i] = (uint8_t)(big >> (8 * i));
        CHECK_ERR(read_all(buf, n, &count), FTK_E_FORMAT, "exceeds the 100000000-byte limit");
    }
    TEST("header that is not JSON / not an object") {
        CHECK_ERR(bad_second("{\"a\": [1, 2", 0), FTK_E_FORMAT, "message 1: header is not valid JSON");
        CHECK_ERR(bad_second("[1,2,3]", 0), FTK_E_FORMAT, "message 1: header is not a JSON object");
    }
    TEST("offsets out of bounds, overlapping, not covering") {
        /* In a stream the data length comes from the header, so offsets past the input read
         * as a truncated message; in a blob or file they are out of bounds. */
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8),
                  FTK_E_TRUNCATED, "message 1: stream ends inside the tensor data");
        {
            static uint8_t b2[256];
            size_t n2 = raw_message(b2, "{\"a\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8);
            struct ftk_message m2;
            ftk_message_init(&m2);
            CHECK_ERR(ftk_message_decode(&m2, b2, n2, 0, "blob"), FTK_E_FORMAT, "blob: tensor \"a\": data_offsets end 16 beyond the 8-byte data buffer");
        }
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                             "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12),
                  FTK_E_FORMAT, "overlaps");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12),
                  FTK_E_FORMAT, "unused bytes");
        /* A decoded blob with bytes after the last tensor: not covering the buffer. */
        static uint8_t buf[256];
        size_t n = raw_message(buf, "{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12);
        struct ftk_message m;
        ftk_message_init(&m);
        CHECK_ERR(ftk_message_decode(&m, buf, n, 0, "blob"), FTK_E_FORMAT, "cover 4 of the 12");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8),
                  FTK_E_FORMAT, "reversed");
    }
    TEST("unknown dtype, shape/byte mismatch, bad shape values") {
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
                  FTK_E_FORMAT, "unknown dtype \"Q7\"");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8),
                  FTK_E_FORMAT, "shape holds 12 bytes of F32 but data_offsets span 8");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8),
                  FTK_E_FORMAT, "shape[0]");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8),
                  FTK_E_FORMAT, "tensor \"a\"");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\"},\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0),
                  FTK_E_FORMAT, "data_offsets");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"x\",\"n\":3}}", 0), FTK_E_FORMAT, "metadata \"n\" is not a string");
    }
    TEST("kind rules: stream first, version, no kind, end count, data after end") {
        static uint8_t buf[4096];
        size_t n = raw_message(buf, "{\"__metadata__\":{\"kind\":\"example\"}}", 0), count;
        CHECK_ERR(read_all(buf, n, &count), FTK_E_FORMAT, "expected \"stream\"");
        n = raw_message(buf, "{\"__metadata__\":{\"kind\":\"stream\",\"format_version\":\"2\"}}", 0);
        CHECK_ERR(read_all(buf, n, &count), FTK_E_UNSUPPORTED, "version \"2\"");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"x\":\"y\"}}", 0), FTK_E_FORMAT, "message 1 has no \"kind\"");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"end\",\"messages\":\"5\"}}", 0), FTK_E_FORMAT, "end message says 5");
        CHECK_ERR(bad_second("{\"__metadata__\":{\"kind\":\"stream\",\"format_version\":\"1\"}}", 0), FTK_E_FORMAT, "second `stream`");
        n = raw_message(buf, HDR0, 0);
        n += raw_message(buf + n, "{\"__metadata__\":{\"kind\":\"end\",\"messages\":\"2\"}}", 0);
        CHECK_OK(read_all(buf, n, &count));
        CHECK_INT(count, 2);
        buf[n++] = 'x';
        CHECK_ERR(read_all(buf, n, &count), FTK_E_FORMAT, "data after the end message");
    }
    TEST("message encode: alignment, escaping, replace, remove") {
        struct ftk_message m, back;
        ftk_message_init(&m);
        ftk_message_init(&back);
        ftk_message_set_meta(&m, "kind", "x\"y\n");
        int64_t s1[1] = {3}, s2[2] = {2, 2};
        uint16_t h[3] = {1, 2, 3};
        double d[4] = {1, 2, 3, 4};
        CHECK_OK(ftk_message_add(&m, "h", FTK_DTYPE_BF16, 1, s1, h, NULL));
        CHECK_OK(ftk_message_add(&m, "d", FTK_DTYPE_F64, 2, s2, d, NULL));
        uint8_t *blob;
        size_t len;
        CHECK_OK(ftk_message_encode(&m, &blob, &len));
        CHECK_INT(len % 2, 0);
        CHECK_OK(ftk_message_decode(&back, blob, len, 1, "blob"));
        CHECK_STR(ftk_message_kind(&back), "x\"y\n");
        struct ftk_tensor *t;
        CHECK_OK(ftk_message_get(&back, "d", FTK_DTYPE_F64, 2, &t));
        CHECK_INT((uintptr_t)t->data % 8, 0);
        CHECK_NEAR(((double *)t->data)[3], 4.0, 0);
        CHECK_ERR(ftk_message_get(&back, "h", FTK_DTYPE_F32, 1, &t), FTK_E_FORMAT, "tensor \"h\" has dtype BF16");
        CHECK_ERR(ftk_message_get(&back, "zz", FTK_DTYPE_F32, 1, &t), FTK_E_NOTFOUND, "\"zz\" missing");
        CHECK_INT(ftk_message_remove(&back, "h"), 1);
        CHECK_INT(ftk_message_remove(&back, "h"), 0);
        CHECK_INT(back.n_tensors, 1);
        ftk_message_free(&m);
        ftk_message_free(&back);
    }
    TEST("bf16/f16 conversions") {
        CHECK_NEAR(ftk_bf16_to_f32(ftk_f32_to_bf16(1.0f)), 1.0, 0);
        CHECK_INT(ftk_f32_to_bf16(1.00390625f), 0x3f80);   /* tie rounds to even */
        CHECK_NEAR(ftk_f16_to_f32(ftk_f32_to_f16(65504.0f)), 65504.0, 0);
        CHECK_NEAR(ftk_f16_to_f32(ftk_f32_to_f16(5.9604645e-08f)), 5.9604645e-08, 1e-12);
        CHECK_NEAR(ftk_f16_to_f32(ftk_f32_to_f16(-0.333251953125f)), -0.333251953125, 0);
        CHECK(isinf(ftk_f16_to_f32(ftk_f32_to_f16(1e6f))));
        CHECK(isnan(ftk_bf16_to_f32(ftk_f32_to_bf16(NAN))));
    }
    return check_summary();
}
