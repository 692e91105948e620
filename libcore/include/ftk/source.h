/* ftk/source.h: a model or adapter location that is a directory or an archive.
 *
 * Paths may be directories or archives (.tar, .tar.gz, .tar.zst, .tar.xz, .zip), read through
 * libarchive. In an archive whose entries all sit under one top-level folder, names are taken
 * relative to that folder, so "model.tar.zst" made with `tar -C parent model` works.
 * Ownership: buffers returned by ftk_source_read are malloc'd for the caller; the source owns
 * everything else and ftk_source_close frees it. */
#ifndef FTK_SOURCE_H
#define FTK_SOURCE_H

#include <stddef.h>
#include <stdint.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_source;

FTK_API ftk_status ftk_source_open(const char *path, struct ftk_source **out);
FTK_API void ftk_source_close(struct ftk_source *s);
FTK_API const char *ftk_source_path(const struct ftk_source *s);
FTK_API int ftk_source_is_archive(const struct ftk_source *s);
FTK_API int ftk_source_exists(const struct ftk_source *s, const char *name);
/* Reads file `name` (relative) whole; NUL-terminated. FTK_E_NOTFOUND names source and file. */
FTK_API ftk_status ftk_source_read(const struct ftk_source *s, const char *name, char **out, size_t *len);
/* Maps file `name` read-only without copying when the source is a directory (mmap), or returns
 * the archive member's buffer. The mapping lives as long as the source. */
FTK_API ftk_status ftk_source_map(struct ftk_source *s, const char *name, const uint8_t **data, size_t *len);
/* Number of files and the i-th name (for listings). */
FTK_API size_t ftk_source_count(const struct ftk_source *s);
FTK_API const char *ftk_source_name(const struct ftk_source *s, size_t i);

#ifdef __cplusplus
}
#endif
#endif
