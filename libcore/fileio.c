/* libcore/fileio.c: whole-file reads and crash-safe writes (ftk/fileio.h). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ftk/fileio.h"

ftk_status ftk_file_read_all(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    FTK_FAIL_IF(!f, errno == ENOENT ? FTK_E_NOTFOUND : FTK_E_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            FTK_FAIL(FTK_E_NOMEM, "%s: out of memory", path);
        }
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1)
            break;
        cap *= 2;
        char *p = realloc(buf, cap);
        if (!p)
            free(buf);
        buf = p;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        FTK_FAIL(FTK_E_IO, "%s: read error", path);
    }
    buf[n] = '\0';
    *out = buf;
    if (len)
        *len = n;
    return FTK_OK;
}

void ftk_fsync_parent(const char *path)
{
    char *d = strdup(path);
    if (!d)
        return;
    int fd = open(dirname(d), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);   /* best effort: some filesystems refuse fsync on directories */
        close(fd);
    }
    free(d);
}

ftk_status ftk_atomic_open(struct ftk_atomic_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    size_t n = strlen(path) + 32;
    f->path = strdup(path);
    f->tmp_path = malloc(n);
    if (!f->path || !f->tmp_path) {
        ftk_atomic_abort(f);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    snprintf(f->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    f->fp = fopen(f->tmp_path, "wb");
    if (!f->fp) {
        int e = errno;
        ftk_atomic_abort(f);
        FTK_FAIL(FTK_E_IO, "%s: cannot create: %s", path, strerror(e));
    }
    return FTK_OK;
}

ftk_status ftk_atomic_commit(struct ftk_atomic_file *f)
{
    int bad = ferror(f->fp) || fflush(f->fp) != 0 || fsync(fileno(f->fp)) != 0;
    int e = errno;
    if (fclose(f->fp) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    f->fp = NULL;
    if (bad) {
        ftk_atomic_abort(f);
        FTK_FAIL(FTK_E_IO, "%s: write failed: %s", f->path ? f->path : "?", strerror(e));
    }
    if (rename(f->tmp_path, f->path) != 0) {
        e = errno;
        char p[512];
        snprintf(p, sizeof p, "%s", f->path);
        ftk_atomic_abort(f);
        FTK_FAIL(FTK_E_IO, "%s: rename failed: %s", p, strerror(e));
    }
    ftk_fsync_parent(f->path);
    free(f->path);
    free(f->tmp_path);
    memset(f, 0, sizeof *f);
    return FTK_OK;
}

void ftk_atomic_abort(struct ftk_atomic_file *f)
{
    if (f->fp)
        fclose(f->fp);
    if (f->tmp_path)
        unlink(f->tmp_path);
    free(f->path);
    free(f->tmp_path);
    memset(f, 0, sizeof *f);
}

ftk_status ftk_file_write_atomic(const char *path, const void *data, size_t len)
{
    struct ftk_atomic_file f;
    FTK_TRY(ftk_atomic_open(&f, path));
    if (len && fwrite(data, 1, len, f.fp) != len) {
        int e = errno;
        ftk_atomic_abort(&f);
        FTK_FAIL(FTK_E_IO, "%s: write failed: %s", path, strerror(e));
    }
    return ftk_atomic_commit(&f);
}

ftk_status ftk_mkdirs(const char *path)
{
    char buf[4096];
    FTK_FAIL_IF(strlen(path) >= sizeof buf, FTK_E_INVALID, "path too long: %.60s...", path);
    strcpy(buf, path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                FTK_FAIL(FTK_E_IO, "%s: cannot create directory: %s", buf, strerror(errno));
            *p = c;
            if (!c)
                break;
        }
    }
    struct stat st;
    FTK_FAIL_IF(stat(path, &st) != 0 || !S_ISDIR(st.st_mode), FTK_E_IO, "%s: not a directory", path);
    return FTK_OK;
}
