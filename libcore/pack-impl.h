/* libcore/pack-impl.h: internals of ftk pack shared by pack.c (the streaming pipeline),
 * pack_batch.c (building one batch from examples) and tests/unit/test_pack.c.
 *
 * Letters: B rows of a batch, T row length, T2 KL row length (KTO), n tokens of one sequence.
 * Ownership: an example is one malloc (struct + its arrays), made by ftk_pack_example_new and
 * freed with free(); a batch's arrays are one malloc freed by ftk_pack_batch_free. */
#ifndef FTK_PACK_IMPL_H
#define FTK_PACK_IMPL_H

#include <stdint.h>
#include "ftk/message.h"
#include "ftk/pack.h"

/* One input example. Plain (text/sft) and KTO examples have one sequence; pairwise examples
 * have two: seq 0 chosen, seq 1 rejected. */
struct ftk_pack_example {
    int64_t index;        /* 0-based position among the input's examples */
    int nseq;             /* 1 or 2 */
    int64_t n[2];         /* tokens of each sequence */
    int32_t *ids[2];      /* (n[s]) */
    int32_t *labels[2];   /* (n[s]), FTK_IGNORE_INDEX = no loss */
    int32_t kto_tag;      /* KTO: 1 desirable, 0 undesirable */
    int32_t prompt_len;   /* KTO: prompt tokens at the start of ids[0] */
};

/* Allocates an example with room for n[0] (and n[1]) tokens; NULL when out of memory. */
struct ftk_pack_example *ftk_pack_example_new(int nseq, const int64_t *n);
/* Longest sequence of an example (the length that decides its row length). */
static inline int64_t ftk_pack_example_len(const struct ftk_pack_example *e)
{
    return e->nseq == 2 && e->n[1] > e->n[0] ? e->n[1] : e->n[0];
}

/* What the batch builders need to know of the run. */
struct ftk_pack_params {
    int64_t seq_len;   /* fixed T, 0: per batch */
    int64_t multiple;  /* T rounded up to this (>= 1) */
    int32_t pad_id;
    int64_t kl_limit;  /* KTO: KL rows cut to this many tokens, 0: no cut */
    int kto;           /* build KTO batches (kto_tag + KL rows) */
    int neat;          /* packing: segments and positions restart per example */
};

/* Row length for a longest row of `maxlen` tokens: seq_len when fixed, else maxlen rounded up
 * to the multiple (at least one multiple, so an empty batch row is still a valid shape). */
int64_t ftk_pack_row_len(const struct ftk_pack_params *p, int64_t maxlen);

/* One batch as plain arrays. Row-major (B,T); padding: ids pad_id, labels FTK_IGNORE_INDEX,
 * positions 0, segment 0. */
struct ftk_pack_batch {
    int64_t B, T;
    int32_t *input_ids;      /* (B,T) */
    int32_t *labels;         /* (B,T) aligned with input_ids: HF convention, the model shifts */
    int32_t *position_ids;   /* (B,T) */
    int32_t *segment_ids;    /* (B,T) 1.. per example (neat) or 1 per row; 0 on padding */
    int pairwise;            /* rows [0,B/2) chosen, [B/2,B) rejected, pair i at i and i+B/2 */
    int kto;
    int32_t *kto_tag;        /* (B), KTO only */
    int64_t T2;
    int32_t *kl_input_ids;   /* (B,T2) KTO only: prompt of row i + response of row (i-1) mod B */
    int32_t *kl_labels;      /* (B,T2) */
    int32_t *kl_position_ids;/* (B,T2) */
    int32_t *kl_segment_ids; /* (B,T2) */
    int64_t examples;        /* examples in the batch */
    int64_t tokens;          /* real tokens in the main rows */
    void *mem_;              /* the one allocation */
};

/* Allocates the arrays, filled with padding. T2 > 0 only for KTO. */
ftk_status ftk_pack_batch_alloc(struct ftk_pack_batch *b, int64_t B, int64_t T, int64_t T2,
                                int kto, int32_t pad_id);
void ftk_pack_batch_free(struct ftk_pack_batch *b);

/* One example per row (per pair of rows for pairwise examples; KTO when p->kto), right-padded
 * to one T. The examples must all fit: ftk_pack_example_len(ex[i]) <= T. */
ftk_status ftk_pack_build_padded(struct ftk_pack_example *const *ex, int64_t n,
                                 const struct ftk_pack_params *p, struct ftk_pack_batch *b);

/* Appends n tokens of one example to row `r` (0 <= r < b->B) of a packed batch at column
 * `*used`, as segment `seg` (1-based). Positions restart at 0 when p->neat (and the segment's
 * first label becomes FTK_IGNORE_INDEX), else continue from *used (one causal sequence per
 * row). The caller checks *used + n <= b->T. */
void ftk_pack_row_append(struct ftk_pack_batch *b, int64_t r, int64_t *used, int32_t seg,
                         const int32_t *ids, const int32_t *labels, int64_t n,
                         const struct ftk_pack_params *p);

/* The batch as a `batch` message (kind "batch", metadata pairwise/kto, the I32 tensors). */
ftk_status ftk_pack_batch_to_message(const struct ftk_pack_batch *b, struct ftk_message *m);

/* Deterministic PRNG (xoshiro256**, seeded through splitmix64): never rand(), so a seed means
 * the same stream on every libc. */
struct ftk_pack_rng { uint64_t s[4]; };
void ftk_pack_rng_seed(struct ftk_pack_rng *r, uint64_t seed);
uint64_t ftk_pack_rng_next(struct ftk_pack_rng *r);
/* Uniform in [0, n), n >= 1 (rejection sampling, no modulo bias). */
uint64_t ftk_pack_rng_below(struct ftk_pack_rng *r, uint64_t n);

#endif
