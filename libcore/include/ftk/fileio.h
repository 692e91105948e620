/* ftk/fileio.h: whole-file reads and crash-safe writes.
 *
 * Writes go to "<path>.tmp.<pid>" in the same directory, are fsynced, renamed over `path`,
 * and the directory is fsynced, so a crash leaves either the old file or the new one. */
#ifndef FTK_FILEIO_H
#define FTK_FILEIO_H

#include <stddef.h>
#include <stdio.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reads a whole file; *out is malloc'd with a NUL after the last byte. */
FTK_API ftk_status ftk_file_read_all(const char *path, char **out, size_t *len);
FTK_API ftk_status ftk_file_write_atomic(const char *path, const void *data, size_t len);

/* Incremental atomic write: open, write through the FILE*, then commit (fsync + rename) or
 * abort (unlink the temporary). Exactly one of commit/abort must be called. */
struct ftk_atomic_file {
    FILE *fp;
    char *path;
    char *tmp_path;
};
FTK_API ftk_status ftk_atomic_open(struct ftk_atomic_file *f, const char *path);
FTK_API ftk_status ftk_atomic_commit(struct ftk_atomic_file *f);
FTK_API void ftk_atomic_abort(struct ftk_atomic_file *f);

/* Reads the first bytes of `in` (a file or a pipe) and sets *is_stream: 1 for a tensor stream
 * (the zstd magic, or an uncompressed stream's u64 header length), 0 for text (JSON lines, a
 * JSON array, CSV) or an input of fewer than 8 bytes that is not compressed. *wrapped reads
 * those bytes again and then the rest of `in`; fclose it when done (that leaves `in` open). */
FTK_API ftk_status ftk_input_sniff(FILE *in, FILE **wrapped, int *is_stream);

/* fsyncs the directory holding `path`, so that a rename into it survives a crash (best
 * effort: some filesystems refuse fsync on a directory). */
FTK_API void ftk_fsync_parent(const char *path);

/* mkdir -p */
FTK_API ftk_status ftk_mkdirs(const char *path);

#ifdef __cplusplus
}
#endif
#endif
