/* ftk/trainer.h: the optimizer loop of `ftk train-step`: gradient accumulation, AdamW with
 * decoupled weight decay, gradient clipping and an LR schedule as transformers' Trainer does
 * them, plus the resumable trainer state.
 *
 * Semantics (HF Trainer): one optimizer step consumes `grad_accum` batches; the SFT token mean
 * divides by the labelled tokens of all of them (num_items_in_batch); grad_norm is the total
 * L2 norm before clipping; the LR of step s (0-based) is lr * schedule(s); biases and norm
 * weights get no weight decay.
 * Ownership: the trainer borrows the model and loss (they must outlive it) and owns its
 * optimizer state; batch messages passed in stay the caller's. */
#ifndef FTK_TRAINER_H
#define FTK_TRAINER_H

#include <stdint.h>
#include "message.h"
#include "model.h"
#include "schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_train_config {
    double lr;                 /* 5e-5 HF default */
    double weight_decay;       /* 0 */
    double beta1, beta2, eps;  /* 0.9, 0.999, 1e-8 */
    double max_grad_norm;      /* 1.0; <= 0: no clipping */
    int64_t grad_accum;        /* >= 1 */
    int64_t total_steps;       /* for the schedule */
    int64_t warmup_steps;
    enum ftk_schedule schedule;
};

/* What one optimizer step did. */
struct ftk_step_result {
    int64_t step;              /* 1-based, after the update */
    double loss;               /* the step's loss (sum of its micro-batch shares) */
    double lr;                 /* the LR the update used */
    double grad_norm;          /* before clipping */
    int64_t tokens;            /* non-padding tokens of the step's batches */
    int64_t labelled;          /* labelled (scored) tokens */
    struct ftk_metrics metrics;/* the loss plugin's, each averaged over the micro-batches that
                                  reported it (TRL logs the mean of what was appended) */
};

struct ftk_trainer;

FTK_API ftk_status ftk_trainer_create(struct ftk_model *m, struct ftk_loss *loss, const struct ftk_train_config *c,
                                      struct ftk_trainer **out);
FTK_API void ftk_trainer_free(struct ftk_trainer *t);
/* Where reference log-probs come from when the loss needs them (ftk_loss_needs_ref) and a
 * batch carries no `ref_logps` (KTO: `kl_ref_logps`): `ref` a separate model (--ref-model,
 * borrowed), or the trained model itself, whose PEFT deltas are switched off for the reference
 * forward (LLaMA-Factory's reference when no ref_model is given). NULL (the default): none, and
 * such a batch is an error. Reference forwards run without gradient (train = 0). */
FTK_API void ftk_trainer_set_reference(struct ftk_trainer *t, struct ftk_model *ref);
/* Takes one batch message (copied). When grad_accum batches are held, runs them and the
 * optimizer step: *stepped = 1 and *res filled. A batch that does not fit the model (ids,
 * shapes) is an error naming it. */
FTK_API ftk_status ftk_trainer_feed(struct ftk_trainer *t, const struct ftk_message *batch, int *stepped,
                                    struct ftk_step_result *res);
/* Runs an optimizer step on the batches held (fewer than grad_accum at the end of the data,
 * as HF does with a short last accumulation); *stepped = 0 when none are held. */
FTK_API ftk_status ftk_trainer_flush(struct ftk_trainer *t, int *stepped, struct ftk_step_result *res);
FTK_API int64_t ftk_trainer_step(const struct ftk_trainer *t);
/* Batches consumed by finished steps (the data position for resume). */
FTK_API int64_t ftk_trainer_batches_done(const struct ftk_trainer *t);

/* Writes trainer_state.safetensors into dir (moments, step, data position), crash-safely. */
FTK_API ftk_status ftk_trainer_save_state(const struct ftk_trainer *t, const char *dir);
/* Reads it back (after the model and its trainable parameters are set up the same way). */
FTK_API ftk_status ftk_trainer_load_state(struct ftk_trainer *t, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
