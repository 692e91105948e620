/* libcore/eval-impl.h: shared by eval.c (streams: loss, preference) and eval_text.c (records:
 * choice, generation). Internal to libcore. */
#ifndef FTK_EVAL_IMPL_H
#define FTK_EVAL_IMPL_H

#include <stdio.h>
#include <cjson/cJSON.h>
#include "ftk/eval.h"
#include "ftk/progress.h"
#include "ftk/model.h"

struct eval_run {
    const struct ftk_eval_opts *o;
    struct ftk_model *m;
    FILE *per;          /* per-example JSONL, or NULL */
    cJSON *metrics;     /* the object printed at the end */
    struct ftk_progress prog;
};

/* Writes one per-example object (consumed) when --per-example is on. */
ftk_status eval_per_example(struct eval_run *r, cJSON *obj);

/* Records from JSONL, a JSON array, or CSV (by the .csv extension or a first line that is not
 * JSON): an array of objects; CSV rows use the header's names, or MMLU's headerless layout
 * question,A,B,C,D,answer. */
ftk_status eval_read_records(FILE *in, const char *name, cJSON **out);

ftk_status eval_choice(struct eval_run *r, cJSON *records, const char *name);
ftk_status eval_generation(struct eval_run *r, cJSON *records, const char *name);

#endif
