/* ftk/rope.h: RoPE inverse frequencies from a model config, as HuggingFace transformers
 * computes them (modeling_rope_utils.py: _compute_default_rope_parameters, _compute_linear_
 * scaling_rope_parameters, _compute_dynamic_ntk_parameters, _compute_llama3_parameters).
 *
 * The rotation itself is the backend's rope_forward/rope_backward op (ftk/backend.h), which takes
 * the inv_freq (R/2) computed here plus position_ids per token.
 * Letters: D head_dim, R rotary dims = int(D * partial_rotary_factor) (even).
 * Ownership: nothing is kept; inv_freq is the caller's buffer of at least D/2 floats. */
#ifndef FTK_ROPE_H
#define FTK_ROPE_H

#include <stdint.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* config.json rope_scaling.rope_type (or "type"); values fixed, appended only. */
enum ftk_rope_type {
    FTK_ROPE_DEFAULT = 0,   /* no rope_scaling */
    FTK_ROPE_LINEAR = 1,    /* inv_freq / factor */
    FTK_ROPE_DYNAMIC = 2,   /* NTK: base grows when the sequence is longer than max_position_embeddings */
    FTK_ROPE_LLAMA3 = 3,    /* Llama 3.1 wavelength-banded scaling */
};

struct ftk_rope_config {
    enum ftk_rope_type type;
    double theta;                 /* rope_theta (10000 when absent in config.json) */
    int64_t head_dim;             /* D: head_dim, or hidden_size / num_attention_heads */
    double partial_rotary_factor; /* 1.0 from ftk_model_config_parse: its four models rotate all of D */
    double factor;                /* rope_scaling.factor (linear, dynamic, llama3) */
    double low_freq_factor;       /* llama3 */
    double high_freq_factor;      /* llama3 */
    int64_t original_max_position_embeddings; /* llama3 */
    int64_t max_position_embeddings;          /* dynamic: config.max_position_embeddings */
};

/* Fills inv_freq[0 .. R/2) and returns R (rotary dims) and the cos/sin multiplier
 * (attention_scaling: 1.0 for all four types here). seq_len matters for `dynamic` only: pass
 * max(position_ids) + 1 over the batch, as transformers' dynamic_rope_update does (ftk is
 * stateless: transformers keeps the largest inv_freq seen until a short batch resets it; ftk
 * always recomputes from this batch's seq_len). Arithmetic is in float32 where torch's is.
 * FTK_E_INVALID on a bad config (theta <= 0, odd R, factor <= 0, high_freq_factor ==
 * low_freq_factor, ...), naming the field. */
FTK_API ftk_status ftk_rope_inv_freq(const struct ftk_rope_config *c, int64_t seq_len,
                                     float *inv_freq, int64_t *rot_dim, float *attention_scaling);

#ifdef __cplusplus
}
#endif
#endif
