/* ftk/pack.h: `example` messages into training `batch` messages (docs/tools/pack.md).
 *
 * ftk_pack_run reads an example stream (ftk tokenize), groups examples into batches (padded,
 * packed or neat-packed; plain, pairwise or KTO), and writes a batch stream. It streams: memory
 * is bounded by the shuffle buffer, the sort window and one batch, never by the input's length.
 * The output depends only on the input, the config and the seed (byte-identical reruns).
 *
 * Ownership: the config and FILEs stay the caller's; nothing is kept after the call. */
#ifndef FTK_PACK_H
#define FTK_PACK_H

#include <stdint.h>
#include <stdio.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values are fixed; appended only. */
enum ftk_pack_mode {
    FTK_PACK_PAD = 0,     /* one example per row, right-padded */
    FTK_PACK_PACKING = 1, /* several examples per row of seq_len (LLaMA-Factory `packing`) */
    FTK_PACK_NEAT = 2,    /* packing, segment/position ids restart per example (`neat_packing`) */
};

/* What to do with an example longer than the row limit. */
enum ftk_pack_overlong {
    FTK_PACK_OVERLONG_ERROR = 0,    /* fail, naming the example index */
    FTK_PACK_OVERLONG_TRUNCATE = 1, /* keep the first `limit` tokens */
    FTK_PACK_OVERLONG_DROP = 2,     /* skip it (counted in `dropped`) */
};

struct ftk_pack_config {
    int64_t batch_size;          /* rows per batch (pairs for pairwise streams); 0: unset */
    int64_t max_tokens;          /* padded tokens per batch, B*T <= max_tokens; 0: unset */
    int64_t pad_to_multiple_of;  /* T rounded up to this; 1: no rounding */
    int64_t seq_len;             /* fixed T (required by packing); 0: per batch */
    int64_t pad_id;              /* < 0: from the stream header */
    enum ftk_pack_mode mode;
    enum ftk_pack_overlong overlong;
    int shuffle;                 /* shuffle examples through a buffer of shuffle_buffer */
    uint64_t seed;
    int64_t shuffle_buffer;
    int sort_by_length;          /* sort windows of sort_buffer examples by length */
    int64_t sort_buffer;
    const char *expect_tokenizer; /* NULL or the tokenizer_hash the stream header must carry */
    int zstd_level;              /* output compression, 0 = uncompressed */
    int quiet;                   /* no progress on stderr */
};

/* Defaults: batch_size 8, pad_to_multiple_of 8, shuffle_buffer 10000, sort_buffer 1024,
 * zstd level 3, everything else off. */
FTK_API void ftk_pack_config_init(struct ftk_pack_config *c);

/* What a run did (also written into the `end` message). */
struct ftk_pack_stats {
    int64_t examples;    /* examples read */
    int64_t batches;
    int64_t rows;        /* rows written over all batches (B summed) */
    int64_t tokens;      /* real (non-padding) tokens in the rows */
    int64_t slots;       /* rows * T summed: tokens + padding */
    int64_t truncated;   /* examples cut to the row limit */
    int64_t dropped;     /* examples skipped as too long */
};

/* Checks the config alone (before any input is read): FTK_E_INVALID naming the option. */
FTK_API ftk_status ftk_pack_config_check(const struct ftk_pack_config *c);

/* Reads the example stream `in` (`in_name` for messages), writes the batch stream to `out`.
 * `stats` may be NULL. */
FTK_API ftk_status ftk_pack_run(const struct ftk_pack_config *c, FILE *in, const char *in_name,
                                FILE *out, struct ftk_pack_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
