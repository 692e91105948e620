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
    int recompute;              /* activation recomputation */
    int quiet;                  /* no progress on stderr */
    uint64_t seed;
    const char *save_dtype;     /* full fine-tuning: "float32", "bfloat16", "float16"; NULL: the base's */
    /* appended: reference log-probs for losses that need them (dpo, kto), used for batches
     * without ref_logps: this model (--ref-model); NULL: the trained model with its adapter off
     * (LoRA), none for full/freeze (an error when a batch lacks ref_logps) */
    const char *ref_model;
};

/* The batch stream's header must match the model (train-step, ref-logps): its vocab_size may
 * not exceed the model's vocabulary, and its tokenizer_hash must be the SHA-256 of the model's
 * tokenizer.json when the model has one. `name` names the stream in errors. */
FTK_API ftk_status ftk_stream_check_model(const struct ftk_message *header, const char *model_path,
                                          const struct ftk_model_config *c, const char *name);

FTK_API ftk_status ftk_train_run(const struct ftk_train_opts *o);

#ifdef __cplusplus
}
#endif
#endif
