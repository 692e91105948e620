/* ftk/stream.h: the tensor stream (.fts), version 1 (docs/stream-format.md).
 *
 * A stream is messages (ftk/message.h) back to back: first kind "stream", last kind "end".
 * On the wire it is zstd-compressed with a flush after every message; readers also accept
 * uncompressed streams. A reader holds one message at a time.
 *
 * Ownership: reader and writer borrow the FILE*; the caller closes it after _close. */
#ifndef FTK_STREAM_H
#define FTK_STREAM_H

#include <stdio.h>
#include "message.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FTK_STREAM_FORMAT_VERSION "1"
/* Largest data buffer of one message: bounds what a corrupt header can make us allocate. */
#define FTK_STREAM_MAX_MESSAGE_BYTES ((uint64_t)16 << 30)

struct ftk_stream_reader;
struct ftk_stream_writer;

/* `name` is used in error messages ("<stdin>", a path). */
FTK_API ftk_status ftk_stream_reader_open(FILE *in, const char *name, struct ftk_stream_reader **out);
/* Reads the next message into `m` (freed and refilled). Returns FTK_OK for every message, the
 * `end` message included, then FTK_E_EOF. Checks that the first message is kind "stream" with
 * format version 1, that the `end` message's count matches, that nothing follows it, and
 * reports a stream that stops before `end` as FTK_E_TRUNCATED. Errors name the message index. */
FTK_API ftk_status ftk_stream_read(struct ftk_stream_reader *r, struct ftk_message *m);
/* Index of the last message returned (0 = the stream header). */
FTK_API size_t ftk_stream_reader_index(const struct ftk_stream_reader *r);
/* 1 if the input was zstd-compressed. */
FTK_API int ftk_stream_reader_compressed(const struct ftk_stream_reader *r);
FTK_API void ftk_stream_reader_close(struct ftk_stream_reader *r);

/* level: zstd level (1..19), 0 = write uncompressed (for debugging; readers accept both). */
FTK_API ftk_status ftk_stream_writer_open(FILE *out, int level, struct ftk_stream_writer **w);
/* Writes one message and flushes it to the FILE. The first must be kind "stream" (it gets
 * "format_version" if absent); writing kind "end" is ftk_stream_writer_finish's job. */
FTK_API ftk_status ftk_stream_write(struct ftk_stream_writer *w, const struct ftk_message *m);
/* Writes the `end` message (kind "end", "messages" = count including stream and end, plus
 * any extra metadata in `end`, which may be NULL), ends the zstd frame and flushes. */
FTK_API ftk_status ftk_stream_writer_finish(struct ftk_stream_writer *w, const struct ftk_message *end);
FTK_API void ftk_stream_writer_close(struct ftk_stream_writer *w);
/* Messages written so far. */
FTK_API size_t ftk_stream_writer_count(const struct ftk_stream_writer *w);

/* A stream header message: kind "stream", producer, producer_version, format_version. */
FTK_API ftk_status ftk_stream_header_init(struct ftk_message *m, const char *producer);

#ifdef __cplusplus
}
#endif
#endif
