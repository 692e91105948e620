/* libcore/error.c: the per-thread error buffer (ftk/error.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/error.h"

#define ERR_CAP 2048
static _Thread_local char err_buf[ERR_CAP];

ftk_status ftk_error_set(ftk_status code, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err_buf, ERR_CAP, fmt, ap);
    va_end(ap);
#ifdef FTK_DEBUG
    if (n >= 0 && n < ERR_CAP)
        snprintf(err_buf + n, ERR_CAP - (size_t)n, " [%s:%d]", file, line);
#else
    (void)file; (void)line; (void)n;
#endif
    return code;
}

ftk_status ftk_error_wrap(ftk_status code, const char *fmt, ...)
{
    char ctx[512], old[ERR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    memcpy(old, err_buf, ERR_CAP);
    size_t c = strlen(ctx), o = strnlen(old, ERR_CAP - 1);
    if (c + 2 >= ERR_CAP)
        c = ERR_CAP - 3;
    memcpy(err_buf, ctx, c);
    memcpy(err_buf + c, ": ", 2);
    size_t room = ERR_CAP - 1 - (c + 2);
    if (o > room)
        o = room;
    memcpy(err_buf + c + 2, old, o);
    err_buf[c + 2 + o] = '\0';
    return code;
}

const char *ftk_last_error(void) { return err_buf; }
void ftk_error_clear(void) { err_buf[0] = '\0'; }

const char *ftk_status_name(ftk_status st)
{
    switch (st) {
    case FTK_OK: return "ok";
    case FTK_E_IO: return "i/o error";
    case FTK_E_FORMAT: return "format error";
    case FTK_E_TRUNCATED: return "truncated input";
    case FTK_E_NOMEM: return "out of memory";
    case FTK_E_INVALID: return "invalid argument";
    case FTK_E_UNSUPPORTED: return "unsupported";
    case FTK_E_NOTFOUND: return "not found";
    case FTK_E_MISMATCH: return "mismatch";
    case FTK_E_CUDA: return "cuda error";
    case FTK_E_ABI: return "plugin ABI mismatch";
    case FTK_E_EOF: return "end of input";
    }
    return "unknown status";
}

void ftk_assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "ftk: internal error: assertion %s failed at %s:%d\n", cond, file, line);
    abort();
}
