/* ftk/error.h: status codes and the per-thread error message.
 *
 * Every libcore function that can fail on input (a file, a flag, the system) returns an
 * ftk_status and leaves a message describing what and where in a per-thread buffer, read with
 * ftk_last_error(). libcore never prints and never exits. FTK_ASSERT guards our own invariants
 * only, never input. */
#ifndef FTK_ERROR_H
#define FTK_ERROR_H

#include <stdarg.h>

#if defined(FTK_BUILDING_LIB)
#define FTK_API __attribute__((visibility("default")))
#else
#define FTK_API
#endif
/* Plugins export their one struct with this. */
#define FTK_EXPORT __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

/* Values are fixed; new codes are appended only. */
typedef enum ftk_status {
    FTK_OK = 0,
    FTK_E_IO = 1,          /* open/read/write/rename failed */
    FTK_E_FORMAT = 2,      /* malformed input: stream, safetensors, JSON, archive */
    FTK_E_TRUNCATED = 3,   /* input ended early (no `end` message, short read) */
    FTK_E_NOMEM = 4,       /* allocation failed */
    FTK_E_INVALID = 5,     /* bad argument or option value */
    FTK_E_UNSUPPORTED = 6, /* valid input that ftk does not implement */
    FTK_E_NOTFOUND = 7,    /* missing file, tensor, key or plugin */
    FTK_E_MISMATCH = 8,    /* inputs that do not belong together (tokenizer hash, shapes) */
    FTK_E_CUDA = 9,        /* CUDA or cuBLAS call failed */
    FTK_E_ABI = 10,        /* plugin ABI version differs */
    FTK_E_EOF = 11,        /* clean end of input where more was optional */
} ftk_status;

/* Sets the thread's message (printf-style) and returns `code`. `file`/`line` are kept for
 * FTK_DEBUG builds, where they are appended to the message. */
FTK_API ftk_status ftk_error_set(ftk_status code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Prefixes the thread's current message with "<context>: " and returns `code`. */
FTK_API ftk_status ftk_error_wrap(ftk_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The last message set on this thread ("" when none). Valid until the next ftk_error_set. */
FTK_API const char *ftk_last_error(void);
/* A short fixed name for a status ("format error", ...). */
FTK_API const char *ftk_status_name(ftk_status st);
FTK_API void ftk_error_clear(void);

#define FTK_TRY(expr) do { ftk_status st_ = (expr); if (st_ != FTK_OK) return st_; } while (0)
#define FTK_FAIL(code, ...) return ftk_error_set((code), __FILE__, __LINE__, __VA_ARGS__)
#define FTK_FAIL_IF(cond, code, ...) \
    do { if (cond) return ftk_error_set((code), __FILE__, __LINE__, __VA_ARGS__); } while (0)

/* For invariants of ftk itself. Input errors must never reach one. */
FTK_API void ftk_assert_fail(const char *cond, const char *file, int line) __attribute__((noreturn));
#define FTK_ASSERT(cond) do { if (!(cond)) ftk_assert_fail(#cond, __FILE__, __LINE__); } while (0)

#ifdef __cplusplus
}
#endif
#endif
