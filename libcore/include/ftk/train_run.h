/* ftk/train_run.h: what `ftk train-step` does, as a library call: read batch messages, train
 * a model with a PEFT and a loss plugin, write metrics, checkpoints and the result
 * (docs/tools/train-step.md). */
#ifndef FTK_TRAIN_RUN_H
#define FTK_TRAIN_RUN_H

#include <stdio.h>
#include "plugin.h"
#include "trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_train_opts {
    const char *model;          /* HF model directory or archive */
    const char *peft;           /* plugin name or path ("lora") */
    const struct ftk_kv *peft_opts;
    const char *adapter;        /* start from this adapter (its config sets the PEFT options) */
    const char *loss;           /* "sft" */
    const struct ftk_kv *loss_opts;
    struct ftk_train_config train;
    double warmup_ratio;        /* used when warmup_steps < 0 */
    int64_t max_steps;          /* 0: from the stream header's batch count */
    const char *input;          /* NULL or "-": stdin */
    const char *output;         /* directory for the result (and checkpoints) */
    const char *metrics;        /* JSONL file; NULL: stdout */
    int64_t save_steps;         /* 0: only at the end */
    const char *resume;         /* a checkpoint directory */
    int threads;
    uint64_t seed;
    const char *save_dtype;     /* full fine-tuning: "float32", "bfloat16", "float16"; NULL: the base's */
};

FTK_API ftk_status ftk_train_run(const struct ftk_train_opts *o);

#ifdef __cplusplus
}
#endif
#endif
