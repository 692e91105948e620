/* ftk/ref_logps.h: what `ftk ref-logps` does, as a library call (docs/tools/ref-logps.md): a
 * filter over a batch stream that runs a reference model (a base model, optionally with an
 * adapter) in inference and adds to every batch `ref_logps` F32[B], the per-row sums of label
 * log-probs, and for KTO batches `kl_ref_logps` F32[B_kl] of the KL rows. Everything else
 * passes through unchanged. One batch in memory at a time.
 *
 * Ownership: the FILEs stay the caller's. */
#ifndef FTK_REF_LOGPS_H
#define FTK_REF_LOGPS_H

#include <stdio.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_ref_logps_opts {
    const char *model;         /* HF model directory or archive (required) */
    const char *adapter;       /* NULL, or a peft adapter applied to it */
    int threads;               /* 0: all cores */
    int zstd_level;            /* of the output; 0 uncompressed */
    int quiet;                 /* no progress on stderr */
};

/* Counts of a run, for the caller's summary. */
struct ftk_ref_logps_stats {
    int64_t batches, rows, kl_rows, tokens;
};

FTK_API ftk_status ftk_ref_logps_run(const struct ftk_ref_logps_opts *o, FILE *in, const char *name, FILE *out,
                                     struct ftk_ref_logps_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
