/* libcore/source.c: model/adapter locations that are directories or archives (ftk/source.h). */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>
#include "ftk/fileio.h"
#include "ftk/source.h"

struct entry {
    char *name;
    uint8_t *data;     /* archive member, or mmap of a directory file (mapped on demand) */
    size_t len;
    int mapped;        /* 1: data is an mmap to munmap */
};

struct ftk_source {
    char *path;
    int archive;
    struct entry *e;
    size_t n, cap;
};

static ftk_status add_entry(struct ftk_source *s, const char *name, uint8_t *data, size_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        struct entry *p = realloc(s->e, cap * sizeof *p);
        FTK_FAIL_IF(!p, FTK_E_NOMEM, "out of memory");
        s->e = p;
        s->cap = cap;
    }
    char *nm = strdup(name);
    FTK_FAIL_IF(!nm, FTK_E_NOMEM, "out of memory");
    s->e[s->n++] = (struct entry){nm, data, len, 0};
    return FTK_OK;
}

static ftk_status open_dir(struct ftk_source *s)
{
    DIR *d = opendir(s->path);
    FTK_FAIL_IF(!d, FTK_E_IO, "%s: cannot open directory: %s", s->path, strerror(errno));
    struct dirent *de;
    ftk_status st = FTK_OK;
    while ((de = readdir(d)) && st == FTK_OK)
        if (de->d_name[0] != '.')
            st = add_entry(s, de->d_name, NULL, 0);
    closedir(d);
    return st;
}

/* Drops a leading "dir/" shared by every entry (and "./"). */
static void strip_common_prefix(struct ftk_source *s)
{
    for (size_t i = 0; i < s->n; i++)
        if (strncmp(s->e[i].name, "./", 2) == 0)
            memmove(s->e[i].name, s->e[i].name + 2, strlen(s->e[i].name) - 1);
    if (s->n == 0)
        return;
    const char *slash = strchr(s->e[0].name, '/');
    if (!slash)
        return;
    size_t k = (size_t)(slash - s->e[0].name) + 1;
    for (size_t i = 1; i < s->n; i++)
        if (strncmp(s->e[i].name, s->e[0].name, k) != 0)
            return;
    for (size_t i = 0; i < s->n; i++)
        memmove(s->e[i].name, s->e[i].name + k, strlen(s->e[i].name) - k + 1);
}

static ftk_status open_archive(struct ftk_source *s)
{
    struct archive *a = archive_read_new();
    FTK_FAIL_IF(!a, FTK_E_NOMEM, "out of memory");
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_zip(a);
    archive_read_support_format_7zip(a);
    ftk_status st = FTK_OK;
    if (archive_read_open_filename(a, s->path, 1 << 16) != ARCHIVE_OK) {
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: not a directory or a readable archive: %s",
                           s->path, archive_error_string(a));
        archive_read_free(a);
        return st;
    }
    struct archive_entry *ae;
    int r;
    while ((r = archive_read_next_header(a, &ae)) == ARCHIVE_OK) {
        if (archive_entry_filetype(ae) != AE_IFREG)
            continue;
        const char *name = archive_entry_pathname(ae);
        int64_t size = archive_entry_size(ae);
        size_t cap = size > 0 ? (size_t)size : 1 << 16, n = 0;
        uint8_t *buf = malloc(cap);
        if (!buf) { st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "%s: out of memory reading %s", s->path, name); break; }
        for (;;) {
            if (n == cap) {
                uint8_t *p = realloc(buf, cap * 2);
                if (!p) { st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "%s: out of memory", s->path); break; }
                buf = p;
                cap *= 2;
            }
            la_ssize_t got = archive_read_data(a, buf + n, cap - n);
            if (got < 0) {
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: member %s: %s", s->path, name, archive_error_string(a));
                break;
            }
            if (got == 0)
                break;
            n += (size_t)got;
        }
        if (st == FTK_OK)
            st = add_entry(s, name, buf, n);
        if (st != FTK_OK) {
            free(buf);
            break;
        }
    }
    if (st == FTK_OK && r != ARCHIVE_EOF)
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: corrupt archive: %s", s->path, archive_error_string(a));
    archive_read_free(a);
    if (st == FTK_OK)
        strip_common_prefix(s);
    return st;
}

ftk_status ftk_source_open(const char *path, struct ftk_source **out)
{
    struct stat sb;
    FTK_FAIL_IF(stat(path, &sb) != 0, errno == ENOENT ? FTK_E_NOTFOUND : FTK_E_IO, "%s: %s", path, strerror(errno));
    struct ftk_source *s = calloc(1, sizeof *s);
    FTK_FAIL_IF(!s, FTK_E_NOMEM, "out of memory");
    s->path = strdup(path);
    s->archive = !S_ISDIR(sb.st_mode);
    ftk_status st = !s->path ? ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory")
                  : s->archive ? open_archive(s) : open_dir(s);
    if (st != FTK_OK) {
        ftk_source_close(s);
        return st;
    }
    *out = s;
    return FTK_OK;
}

void ftk_source_close(struct ftk_source *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        if (s->e[i].mapped)
            munmap(s->e[i].data, s->e[i].len);
        else
            free(s->e[i].data);
        free(s->e[i].name);
    }
    free(s->e);
    free(s->path);
    free(s);
}

const char *ftk_source_path(const struct ftk_source *s) { return s->path; }
int ftk_source_is_archive(const struct ftk_source *s) { return s->archive; }
size_t ftk_source_count(const struct ftk_source *s) { return s->n; }
const char *ftk_source_name(const struct ftk_source *s, size_t i) { return i < s->n ? s->e[i].name : NULL; }

static struct entry *find(const struct ftk_source *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->e[i].name, name) == 0)
            return &s->e[i];
    return NULL;
}

int ftk_source_exists(const struct ftk_source *s, const char *name)
{
    if (find(s, name))
        return 1;
    if (!s->archive) {   /* names with folders ("sub/x.json") are not in the listing */
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", s->path, name);
        return access(p, R_OK) == 0;
    }
    return 0;
}

static ftk_status map_file(struct ftk_source *s, struct entry *e)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", s->path, e->name);
    int fd = open(p, O_RDONLY);
    FTK_FAIL_IF(fd < 0, FTK_E_IO, "%s: %s", p, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int er = errno;
        close(fd);
        FTK_FAIL(FTK_E_IO, "%s: %s", p, strerror(er));
    }
    e->len = (size_t)sb.st_size;
    if (e->len == 0) {
        close(fd);
        e->data = malloc(1);
        FTK_FAIL_IF(!e->data, FTK_E_NOMEM, "out of memory");
        return FTK_OK;
    }
    void *m = mmap(NULL, e->len, PROT_READ, MAP_PRIVATE, fd, 0);
    int er = errno;
    close(fd);
    FTK_FAIL_IF(m == MAP_FAILED, FTK_E_IO, "%s: mmap failed: %s", p, strerror(er));
    e->data = m;
    e->mapped = 1;
    return FTK_OK;
}

ftk_status ftk_source_map(struct ftk_source *s, const char *name, const uint8_t **data, size_t *len)
{
    struct entry *e = find(s, name);
    if (!e && !s->archive && ftk_source_exists(s, name)) {
        FTK_TRY(add_entry(s, name, NULL, 0));
        e = &s->e[s->n - 1];
    }
    FTK_FAIL_IF(!e, FTK_E_NOTFOUND, "%s: no file %s", s->path, name);
    if (!e->data)
        FTK_TRY(map_file(s, e));
    *data = e->data;
    *len = e->len;
    return FTK_OK;
}

static ftk_status unzstd(const char *what, const uint8_t *src, size_t n, char **out, size_t *out_len)
{
    ZSTD_DCtx *d = ZSTD_createDCtx();
    FTK_FAIL_IF(!d, FTK_E_NOMEM, "out of memory");
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    ZSTD_inBuffer in = {src, n, 0};
    size_t ret = 1;
    ftk_status st = FTK_OK;
    while (buf && (in.pos < in.size || ret != 0)) {
        if (cap - len < (1 << 16)) {
            char *p = realloc(buf, cap * 2);
            if (!p) { free(buf); buf = NULL; break; }
            buf = p;
            cap *= 2;
        }
        ZSTD_outBuffer o = {buf + len, cap - len - 1, 0};
        size_t before = in.pos;
        ret = ZSTD_decompressStream(d, &o, &in);
        if (ZSTD_isError(ret)) {
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: corrupt zstd data: %s", what, ZSTD_getErrorName(ret));
            break;
        }
        len += o.pos;
        if (in.pos == in.size && ret != 0 && o.pos == 0 && before == in.pos) {
            st = ftk_error_set(FTK_E_TRUNCATED, __FILE__, __LINE__, "%s: truncated zstd data", what);
            break;
        }
    }
    ZSTD_freeDCtx(d);
    if (!buf)
        FTK_FAIL(FTK_E_NOMEM, "%s: out of memory", what);
    if (st != FTK_OK) {
        free(buf);
        return st;
    }
    buf[len] = '\0';
    *out = buf;
    if (out_len)
        *out_len = len;
    return FTK_OK;
}

ftk_status ftk_source_read(const struct ftk_source *cs, const char *name, char **out, size_t *len)
{
    struct ftk_source *s = (struct ftk_source *)cs;   /* mapping is a cache, not a change */
    if (!ftk_source_exists(s, name)) {
        char z[1024];
        snprintf(z, sizeof z, "%s.zst", name);
        FTK_FAIL_IF(!ftk_source_exists(s, z), FTK_E_NOTFOUND, "%s: no file %s", s->path, name);
        const uint8_t *d;
        size_t n;
        FTK_TRY(ftk_source_map(s, z, &d, &n));
        char what[1200];
        snprintf(what, sizeof what, "%s/%s", s->path, z);
        return unzstd(what, d, n, out, len);
    }
    if (!s->archive) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", s->path, name);
        return ftk_file_read_all(p, out, len);
    }
    struct entry *e = find(s, name);
    char *b = malloc(e->len + 1);
    FTK_FAIL_IF(!b, FTK_E_NOMEM, "out of memory");
    memcpy(b, e->data, e->len);
    b[e->len] = '\0';
    *out = b;
    if (len)
        *len = e->len;
    return FTK_OK;
}
