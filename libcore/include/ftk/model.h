/* ftk/model.h: a Llama-family causal LM on a backend, with a PEFT plugin attached, forward to
 * per-row label log-probs and hand-written backward (DESIGN.md section 5).
 *
 * Numerics follow transformers: F32 compute; labels are shifted inside (hidden t predicts
 * labels[t+1] of the same row, the last position predicts nothing), so a batch's labels are
 * aligned with input_ids exactly as HF's `model(input_ids, labels=labels)` takes them.
 * Attention honours segment_ids (a token sees earlier tokens of its own segment only) and RoPE
 * uses position_ids, so neat-packed rows equal their documents run alone.
 *
 * Ownership: ftk_model_load makes the model, ftk_model_free frees it with its PEFT instance.
 * The backend and its context stay the caller's and must outlive the model. */
#ifndef FTK_MODEL_H
#define FTK_MODEL_H

#include <stdint.h>
#include "backend.h"
#include "model_config.h"
#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_model;

/* A parameter: a base weight (HF name) or a plugin's (its saved name). */
struct ftk_param {
    char *name;
    int ndim;
    int64_t shape[2];
    int64_t numel;
    float *w;          /* backend memory */
    float *g;          /* gradient, backend memory; NULL when frozen */
    int decay;         /* 1: weight decay applies */
    int base;          /* 1: a weight of the base model */
    float lr_scale;    /* the learning rate is multiplied by this (1; LoRA+ sets lora_B's) */
};

/* One batch as the model reads it (host memory, I32 (B,T) each; segment_ids may be NULL). */
struct ftk_batch_view {
    int64_t B, T;
    const int32_t *input_ids, *labels, *position_ids, *segment_ids;
};

/* Loads config.json and the safetensors weights (BF16/F16/F32, converted to F32) from a
 * directory or archive. */
FTK_API ftk_status ftk_model_load(const char *path, const struct ftk_backend *be, void *ctx,
                                  struct ftk_model **out);
FTK_API void ftk_model_free(struct ftk_model *m);
FTK_API const struct ftk_model_config *ftk_model_get_config(const struct ftk_model *m);
FTK_API const struct ftk_backend *ftk_model_backend(const struct ftk_model *m, void **ctx);

/* Attaches a PEFT method (replacing none: call once). Without one, nothing trains. */
FTK_API ftk_status ftk_model_set_peft(struct ftk_model *m, const struct ftk_peft_plugin *pl,
                                      const struct ftk_kv *opts, uint64_t seed, struct ftk_peft **out);
FTK_API struct ftk_peft *ftk_model_peft(struct ftk_model *m);
/* Attaches the PEFT method an adapter directory or archive names (adapter_config.json's
 * peft_type: "LORA" -> the lora plugin) with its options, and loads its weights. */
FTK_API ftk_status ftk_model_load_adapter(struct ftk_model *m, const char *path, uint64_t seed);
/* The PEFT method's deltas on (1, default) or off (0: the base model, LLaMA-Factory's reference
 * when no ref model is given). */
FTK_API void ftk_model_enable_adapter(struct ftk_model *m, int on);
/* Activation recomputation (--recompute): a train forward keeps only each layer's input and
 * backward runs every layer's forward again before its backward: less memory, ~1/3 more work,
 * the same numbers. */
FTK_API void ftk_model_set_recompute(struct ftk_model *m, int on);
/* Tells plugins which optimizer step comes next (dropout masks). */
FTK_API void ftk_model_set_step(struct ftk_model *m, int64_t step);
/* The micro-batch (0-based) of the step under way, with gradient accumulation: dropout-like
 * randomness draws anew for each (ftk_peft_noise_step). */
FTK_API void ftk_model_set_micro(struct ftk_model *m, int64_t micro);

/* Trainable parameters, base first, then the plugin's in registration order. */
FTK_API size_t ftk_model_n_trainable(const struct ftk_model *m);
FTK_API struct ftk_param *ftk_model_trainable(struct ftk_model *m, size_t i);
/* Any parameter by name (base HF name or plugin name), NULL if none. */
FTK_API struct ftk_param *ftk_model_find_param(struct ftk_model *m, const char *name);
FTK_API ftk_status ftk_model_zero_grad(struct ftk_model *m);

/* Forward: logps (B) = per row, sum of log p(labels[t+1] | tokens <= t) over labelled t;
 * n_tokens (B) their count (host memory, may be NULL). train = 1 keeps the activations for
 * ftk_model_backward and applies dropout. A token id outside the vocab, or a row longer than a
 * sliding window, is an error naming it. */
FTK_API ftk_status ftk_model_forward(struct ftk_model *m, const struct ftk_batch_view *b, int train,
                                     float *logps, int64_t *n_tokens);
/* Backward of the last train forward from dlogps (B) = d loss / d logps (host): gradients of
 * the trainable parameters +=. */
FTK_API ftk_status ftk_model_backward(struct ftk_model *m, const float *dlogps);
/* Writes the model in HF layout into `dir` (created): model.safetensors in `dtype` (F32, BF16,
 * F16), one tensor at a time, and config/generation/tokenizer files copied from `src_path`.
 * merge = 1 folds the PEFT method's deltas into the weights (merge-lora). */
FTK_API ftk_status ftk_model_save(struct ftk_model *m, const char *src_path, const char *dir, enum ftk_dtype dtype,
                                  int merge);
/* ---- generation with a KV cache (model_infer.c) -------------------------------------- */
struct ftk_kv_cache;
/* A cache for B rows of up to S positions each (the context length). */
FTK_API ftk_status ftk_kv_cache_create(struct ftk_model *m, int64_t B, int64_t S, struct ftk_kv_cache **out);
FTK_API void ftk_kv_cache_free(struct ftk_kv_cache *c);
FTK_API int64_t ftk_kv_cache_len(const struct ftk_kv_cache *c, int64_t row);
FTK_API int64_t ftk_kv_cache_capacity(const struct ftk_kv_cache *c);
FTK_API void ftk_kv_cache_reset(struct ftk_kv_cache *c, int64_t row);
/* Runs the n tokens of a prompt into empty row `row` (positions 0..n-1); logits (V) of its last
 * token into host memory (may be NULL). */
FTK_API ftk_status ftk_model_prefill(struct ftk_model *m, struct ftk_kv_cache *c, int64_t row, const int32_t *ids,
                                     int64_t n, float *logits);
/* One step for every row of the cache: ids (B) appended at each row's next position; logits
 * (B,V) into host memory. Rows that are done may be fed any valid id and ignored (reset them
 * first: a full row is an error). */
FTK_API ftk_status ftk_model_decode(struct ftk_model *m, struct ftk_kv_cache *c, const int32_t *ids, float *logits);
/* 0 when the enabled adapter's plugin says a decode step cannot reproduce its forward
 * (decode_recomputes): generate by prefilling the whole sequence for each new token instead. */
FTK_API int ftk_model_decode_exact(struct ftk_model *m);

/* Forward and backward in one call when dlogps (B) is known before the forward (losses linear
 * in the log-probs, such as SFT's token mean): the log-prob head computes each chunk's logits
 * once for both directions. logps/n_tokens as ftk_model_forward; gradients += as backward. */
FTK_API ftk_status ftk_model_forward_backward(struct ftk_model *m, const struct ftk_batch_view *b, const float *dlogps,
                                              float *logps, int64_t *n_tokens);
/* Full logits (B,T,V) into host memory (tests and small evals; training never makes these). */
FTK_API ftk_status ftk_model_logits(struct ftk_model *m, const struct ftk_batch_view *b, float *logits);

#ifdef __cplusplus
}
#endif
#endif
