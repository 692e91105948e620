/* tests/unit/test_safetensors.c: safetensors files, sharded checkpoints, archive sources, and
 * crash-safe writes; the stream's bad-input faults in a file must name the file. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "ftk/fileio.h"
#include "ftk/safetensors.h"

static char dir[128];

static void path_of(char *out, size_t n, const char *name) { snprintf(out, n, "%.120s/%.200s", dir, name); }

static void write_raw(const char *name, const char *header, size_t data_len, int64_t claim)
{
    char p[512];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    uint64_t hl = claim >= 0 ? (uint64_t)claim : strlen(header);
    for (int i = 0; i < 8; i++)
        fputc((int)((hl >> (8 * i)) & 0xff), f);
    fputs(header, f);
    for (size_t i = 0; i < data_len; i++)
        fputc(0, f);
    fclose(f);
}

static ftk_status open_file(const char *name, struct ftk_st_model **m)
{
    char p[512];
    path_of(p, sizeof p, name);
    return ftk_st_file_open(p, m);
}

/* ftk_st_write_rows: each tensor's values are 100 * tensor + element index; the calls are logged. */
struct rows_log {
    const struct ftk_st_entry *e;
    char calls[512];
    int fail_at;   /* the call that fails (-1: none) */
    int n_calls;
};

static ftk_status fill_logged(void *arg, size_t i, void *dst, int64_t row0, int64_t nrows)
{
    struct rows_log *l = arg;
    size_t len = strlen(l->calls);
    snprintf(l->calls + len, sizeof l->calls - len, "%zu:%lld+%lld ", i, (long long)row0, (long long)nrows);
    if (l->n_calls++ == l->fail_at)
        return ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "fill failed on purpose");
    const struct ftk_st_entry *e = &l->e[i];
    int64_t rows = e->ndim ? e->shape[0] : 1, n = ftk_shape_numel(e->ndim, e->shape), row_el = rows ? n / rows : 0;
    for (int64_t k = 0; k < nrows * row_el; k++)
        ((float *)dst)[k] = (float)(100 * (int64_t)i + row0 * row_el + k);
    return FTK_OK;
}

static ftk_status fill_whole(void *arg, size_t i, void *dst, size_t nbytes)
{
    struct rows_log *l = arg;
    for (size_t k = 0; k < nbytes / sizeof(float); k++)
        ((float *)dst)[k] = (float)(100 * i + k);
    l->n_calls++;
    return FTK_OK;
}

static void small_message(struct ftk_message *m, float base)
{
    ftk_message_init(m);
    ftk_message_set_meta(m, "format", "pt");
    float w[6] = {base, base + 1, base + 2, base + 3, base + 4, base + 5};
    int64_t s[2] = {2, 3};
    ftk_message_add(m, "a.weight", FTK_DTYPE_F32, 2, s, w, NULL);
    uint16_t b[2] = {ftk_f32_to_bf16(base), ftk_f32_to_bf16(-base)};
    int64_t s1[1] = {2};
    ftk_message_add(m, "a.bias", FTK_DTYPE_BF16, 1, s1, b, NULL);
    uint16_t h[1] = {ftk_f32_to_f16(0.5f)};
    int64_t s0[1] = {1};
    ftk_message_add(m, "c.scale", FTK_DTYPE_F16, 1, s0, h, NULL);
}

static int count_tmp_files(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp."))
            n++;
    closedir(d);
    return n;
}

/* Writes the files of `names` from `dir` into an archive with the given format and filter. */
static void make_archive(const char *out, int zip, int zstd, const char **names, const char *prefix)
{
    struct archive *a = archive_write_new();
    if (zip) archive_write_set_format_zip(a); else archive_write_set_format_pax_restricted(a);
    if (zstd) archive_write_add_filter_zstd(a);
    archive_write_open_filename(a, out);
    for (int i = 0; names[i]; i++) {
        char p[512], *data;
        size_t len;
        path_of(p, sizeof p, names[i]);
        ftk_file_read_all(p, &data, &len);
        struct archive_entry *e = archive_entry_new();
        char an[512];
        snprintf(an, sizeof an, "%s%s", prefix, names[i]);
        archive_entry_set_pathname(e, an);
        archive_entry_set_size(e, (la_int64_t)len);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_write_header(a, e);
        archive_write_data(a, data, len);
        archive_entry_free(e);
        free(data);
    }
    archive_write_close(a);
    archive_write_free(a);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/ftk-test-st-%d", (int)getpid());
    mkdir(dir, 0777);
    char p[1024];

    TEST("write then read: dtypes, shapes, metadata, f32 conversion") {
        struct ftk_message m;
        small_message(&m, 1.0f);
        path_of(p, sizeof p, "model.safetensors");
        CHECK_OK(ftk_st_write(p, &m));
        ftk_message_free(&m);
        CHECK_INT(count_tmp_files(), 0);
        struct ftk_st_model *st;
        CHECK_OK(ftk_st_file_open(p, &st));
        CHECK_INT(ftk_st_model_count(st), 3);
        CHECK_STR(ftk_st_model_meta(st, "format"), "pt");
        const struct ftk_tensor *t = ftk_st_model_find(st, "a.weight");
        CHECK(t && t->dtype == FTK_DTYPE_F32 && t->ndim == 2 && t->shape[1] == 3);
        float f[6];
        CHECK_OK(ftk_st_model_read_f32(st, "a.bias", f, 2));
        CHECK_NEAR(f[1], -1.0, 0);
        CHECK_OK(ftk_st_model_read_f32(st, "c.scale", f, 1));
        CHECK_NEAR(f[0], 0.5, 0);
        CHECK_ERR(ftk_st_model_read_f32(st, "a.weight", f, 5), FTK_E_MISMATCH, "has 6 elements, expected 5");
        CHECK_ERR(ftk_st_model_read_f32(st, "nope", f, 1), FTK_E_NOTFOUND, "\"nope\"");
        ftk_st_model_close(st);
    }
    TEST("sharded checkpoint through model.safetensors.index.json") {
        char sub[256];
        path_of(sub, sizeof sub, "sharded");
        mkdir(sub, 0777);
        struct ftk_message a, b;
        small_message(&a, 1.0f);
        ftk_message_init(&b);
        float w[2] = {7, 8};
        int64_t s[1] = {2};
        ftk_message_add(&b, "z.weight", FTK_DTYPE_F32, 1, s, w, NULL);
        snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", sub);
        CHECK_OK(ftk_st_write(p, &a));
        snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", sub);
        CHECK_OK(ftk_st_write(p, &b));
        const char *idx = "{\"metadata\":{\"total_size\":40},\"weight_map\":{"
                          "\"a.weight\":\"model-00001-of-00002.safetensors\",\"a.bias\":\"model-00001-of-00002.safetensors\","
                          "\"c.scale\":\"model-00001-of-00002.safetensors\",\"z.weight\":\"model-00002-of-00002.safetensors\"}}";
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", sub);
        CHECK_OK(ftk_file_write_atomic(p, idx, strlen(idx)));
        struct ftk_source *src;
        CHECK_OK(ftk_source_open(sub, &src));
        struct ftk_st_model *st;
        CHECK_OK(ftk_st_model_open(src, "model", &st));
        CHECK_INT(ftk_st_model_count(st), 4);
        float f[2];
        CHECK_OK(ftk_st_model_read_f32(st, "z.weight", f, 2));
        CHECK_NEAR(f[1], 8, 0);
        ftk_st_model_close(st);
        /* An index naming a tensor its shard lacks. */
        const char *bad = "{\"weight_map\":{\"q.weight\":\"model-00002-of-00002.safetensors\"}}";
        CHECK_OK(ftk_file_write_atomic(p, bad, strlen(bad)));
        CHECK_ERR(ftk_st_model_open(src, "model", &st), FTK_E_FORMAT, "q.weight");
        CHECK_ERR(ftk_st_model_open(src, "adapter_model", &st), FTK_E_NOTFOUND, "adapter_model.safetensors");
        /* A tensor stored in two shards: which copy is meant is ambiguous, so it is refused. */
        struct ftk_message d;
        small_message(&d, 5.0f);
        snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", sub);
        CHECK_OK(ftk_st_write(p, &d));
        ftk_message_free(&d);
        const char *dup = "{\"weight_map\":{\"c.scale\":\"model-00001-of-00002.safetensors\","
                          "\"a.weight\":\"model-00002-of-00002.safetensors\"}}";
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", sub);
        CHECK_OK(ftk_file_write_atomic(p, dup, strlen(dup)));
        ftk_source_close(src);
        CHECK_OK(ftk_source_open(sub, &src));
        CHECK_ERR(ftk_st_model_open(src, "model", &st), FTK_E_FORMAT, "\"a.weight\" is in both");
        ftk_source_close(src);
        ftk_message_free(&a);
        ftk_message_free(&b);
    }
    TEST("archives: .tar, .tar.zst, .zip, with and without a top folder") {
        struct ftk_message m;
        small_message(&m, 3.0f);
        path_of(p, sizeof p, "model.safetensors");
        CHECK_OK(ftk_st_write(p, &m));
        ftk_message_free(&m);
        path_of(p, sizeof p, "config.json");
        CHECK_OK(ftk_file_write_atomic(p, "{\"x\":1}", 7));
        const char *names[] = {"model.safetensors", "config.json", NULL};
        const char *kinds[][2] = {{"m.tar", ""}, {"m.tar.zst", "mymodel/"}, {"m.zip", "./"}};
        for (int k = 0; k < 3; k++) {
            char ap[512];
            path_of(ap, sizeof ap, kinds[k][0]);
            make_archive(ap, k == 2, k == 1, names, kinds[k][1]);
            struct ftk_source *src;
            CHECK_OK(ftk_source_open(ap, &src));
            CHECK(ftk_source_is_archive(src));
            char *cfg;
            size_t len;
            CHECK_OK(ftk_source_read(src, "config.json", &cfg, &len));
            CHECK_STR(cfg, "{\"x\":1}");
            free(cfg);
            struct ftk_st_model *st;
            CHECK_OK(ftk_st_model_open(src, "model", &st));
            float f[6];
            CHECK_OK(ftk_st_model_read_f32(st, "a.weight", f, 6));
            CHECK_NEAR(f[5], 8.0, 0);
            ftk_st_model_close(st);
            ftk_source_close(src);
        }
        path_of(p, sizeof p, "config.json");
        struct ftk_source *src;
        CHECK_ERR(ftk_source_open(p, &src), FTK_E_FORMAT, "config.json: not a directory or a readable archive");
        path_of(p, sizeof p, "nonexistent");
        CHECK_ERR(ftk_source_open(p, &src), FTK_E_NOTFOUND, "nonexistent");
    }
    TEST("source reads NAME.zst when NAME is absent") {
        path_of(p, sizeof p, "z");
        mkdir(p, 0777);
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "printf 'hello zstd' | zstd -q -o %s/z/data.json.zst", dir);
        CHECK_INT(system(cmd), 0);
        struct ftk_source *src;
        CHECK_OK(ftk_source_open(p, &src));
        char *s;
        size_t n;
        CHECK_OK(ftk_source_read(src, "data.json", &s, &n));
        CHECK_STR(s, "hello zstd");
        free(s);
        CHECK_ERR(ftk_source_read(src, "other.json", &s, &n), FTK_E_NOTFOUND, "other.json");
        ftk_source_close(src);
    }
    TEST("bad files name the file") {
        struct ftk_st_model *st;
        write_raw("t1.safetensors", "{}", 0, 500);
        CHECK_ERR(open_file("t1.safetensors", &st), FTK_E_FORMAT, "t1.safetensors: header length 500 exceeds the 2 bytes");
        write_raw("t2.safetensors", "{}", 0, 200000000);
        CHECK_ERR(open_file("t2.safetensors", &st), FTK_E_FORMAT, "exceeds the 100000000-byte limit");
        write_raw("t3.safetensors", "{not json", 0, -1);
        CHECK_ERR(open_file("t3.safetensors", &st), FTK_E_FORMAT, "t3.safetensors: header is not valid JSON");
        write_raw("t4.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, -1);
        CHECK_ERR(open_file("t4.safetensors", &st), FTK_E_FORMAT, "beyond the 4-byte data buffer");
        write_raw("t5.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, -1);
        CHECK_ERR(open_file("t5.safetensors", &st), FTK_E_FORMAT, "overlaps");
        write_raw("t6.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, -1);
        CHECK_ERR(open_file("t6.safetensors", &st), FTK_E_FORMAT, "cover 4 of the 8");
        write_raw("t7.safetensors", "{\"a\":{\"dtype\":\"X9\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1);
        CHECK_ERR(open_file("t7.safetensors", &st), FTK_E_FORMAT, "unknown dtype");
        write_raw("t8.safetensors", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,4]}}", 4, -1);
        CHECK_ERR(open_file("t8.safetensors", &st), FTK_E_FORMAT, "shape holds 6 bytes of BF16");
        write_raw("t9.safetensors", "", 0, 0);
        path_of(p, sizeof p, "t9.safetensors");
        truncate(p, 5);
        CHECK_ERR(open_file("t9.safetensors", &st), FTK_E_FORMAT, "too short");
        write_raw("t10.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                                     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, -1);
        CHECK_ERR(open_file("t10.safetensors", &st), FTK_E_FORMAT, "appears twice");
    }
    TEST("ftk_st_write_rows: a few rows per call, the same file as whole tensors; a failing fill leaves nothing") {
        const struct ftk_st_entry e[] = {
            {.name = "w", .dtype = FTK_DTYPE_F32, .ndim = 2, .shape = {5, 3}},   /* 12-byte rows */
            {.name = "b", .dtype = FTK_DTYPE_F32, .ndim = 1, .shape = {7}},      /* 4-byte rows */
            {.name = "s", .dtype = FTK_DTYPE_F32, .ndim = 0},                    /* a scalar: one row */
            {.name = "z", .dtype = FTK_DTYPE_F32, .ndim = 2, .shape = {0, 4}},   /* empty */
        };
        struct ftk_message meta;
        ftk_message_init(&meta);
        CHECK_OK(ftk_message_set_meta(&meta, "format", "pt"));
        char whole[512], rows[512];
        path_of(whole, sizeof whole, "whole.safetensors");
        path_of(rows, sizeof rows, "rows.safetensors");
        struct rows_log l = {.e = e, .fail_at = -1};
        CHECK_OK(ftk_st_write_streaming(whole, &meta, e, 4, fill_whole, &l));
        CHECK_INT(l.n_calls, 4);
        l = (struct rows_log){.e = e, .fail_at = -1};
        CHECK_OK(ftk_st_write_rows(rows, &meta, e, 4, fill_logged, &l, 13));
        CHECK_STR(l.calls, "0:0+1 0:1+1 0:2+1 0:3+1 0:4+1 1:0+3 1:3+3 1:6+1 2:0+1 3:0+0 ");
        char *a, *b;
        size_t na, nb;
        CHECK_OK(ftk_file_read_all(whole, &a, &na));
        CHECK_OK(ftk_file_read_all(rows, &b, &nb));
        CHECK(na == nb && memcmp(a, b, na) == 0);
        free(a);
        free(b);
        l = (struct rows_log){.e = e, .fail_at = -1};   /* a chunk as large as the tensor: one call */
        CHECK_OK(ftk_st_write_rows(rows, &meta, e, 4, fill_logged, &l, 60));
        CHECK_STR(l.calls, "0:0+5 1:0+7 2:0+1 3:0+0 ");
        path_of(p, sizeof p, "failed.safetensors");
        l = (struct rows_log){.e = e, .fail_at = 3};
        CHECK_ERR(ftk_st_write_rows(p, &meta, e, 4, fill_logged, &l, 13), FTK_E_INVALID, "on purpose");
        CHECK(access(p, F_OK) != 0);
        CHECK_INT(count_tmp_files(), 0);
        ftk_message_free(&meta);
    }
    TEST("a failed write leaves no file behind; a good one replaces atomically") {
        struct ftk_message m;
        small_message(&m, 2.0f);
        path_of(p, sizeof p, "no/such/dir/x.safetensors");
        CHECK_ERR(ftk_st_write(p, &m), FTK_E_IO, "x.safetensors");
        CHECK(access(p, F_OK) != 0);
        path_of(p, sizeof p, "model.safetensors");
        CHECK_OK(ftk_st_write(p, &m));
        CHECK_INT(count_tmp_files(), 0);
        struct ftk_atomic_file af;
        CHECK_OK(ftk_atomic_open(&af, p));
        fputs("half", af.fp);
        ftk_atomic_abort(&af);   /* as a crash would: the old file stays whole */
        CHECK_INT(count_tmp_files(), 0);
        struct ftk_st_model *st;
        CHECK_OK(ftk_st_file_open(p, &st));
        ftk_st_model_close(st);
        ftk_message_free(&m);
        char d2[512];
        path_of(d2, sizeof d2, "a/b/c");
        CHECK_OK(ftk_mkdirs(d2));
        CHECK_OK(ftk_mkdirs(d2));
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        return 1;
    return check_summary();
}
