/* libcore/rope.c: RoPE inverse frequencies (ftk/rope.h), following transformers
 * modeling_rope_utils.py operation by operation, in float32 wherever torch works on float32
 * tensors (Python-float scalars are rounded to float32 where they meet a float32 tensor). */
#include "ftk/rope.h"

#include <math.h>

/* 2*math.pi, as Python has it before it meets the float32 inv_freq tensor */
#define PY_TWO_PI 6.283185307179586

/* 1.0 / (base ** (arange(0, dim, 2).float() / dim)): torch.pow(float32 scalar, float32 tensor) */
static void default_inv_freq(float base, int64_t dim, float *inv_freq)
{
    for (int64_t i = 0; i < dim / 2; i++) {
        float e = (float)(2 * i) / (float)dim;
        inv_freq[i] = 1.0f / powf(base, e);
    }
}

ftk_status ftk_rope_inv_freq(const struct ftk_rope_config *c, int64_t seq_len, float *inv_freq,
                             int64_t *rot_dim, float *attention_scaling)
{
    FTK_FAIL_IF(!(c->theta > 0.0), FTK_E_INVALID, "rope_theta must be > 0, got %g", c->theta);
    FTK_FAIL_IF(c->head_dim <= 0, FTK_E_INVALID, "head_dim must be > 0, got %lld", (long long)c->head_dim);
    double prf = c->partial_rotary_factor > 0.0 ? c->partial_rotary_factor : 1.0;
    FTK_FAIL_IF(prf > 1.0, FTK_E_INVALID, "partial_rotary_factor must be in (0,1], got %g", prf);
    int64_t dim = (int64_t)((double)c->head_dim * prf);   /* int(head_dim * partial_rotary_factor) */
    FTK_FAIL_IF(dim < 2 || dim % 2 != 0, FTK_E_INVALID,
                "rotary dims int(head_dim * partial_rotary_factor) = %lld must be even and >= 2",
                (long long)dim);
    *rot_dim = dim;
    *attention_scaling = 1.0f;   /* "attention_factor = 1.0  # Unused in this type of RoPE" */

    switch (c->type) {
    case FTK_ROPE_DEFAULT:
        default_inv_freq((float)c->theta, dim, inv_freq);
        return FTK_OK;

    case FTK_ROPE_LINEAR: {
        FTK_FAIL_IF(!(c->factor > 0.0), FTK_E_INVALID, "rope_scaling.factor must be > 0, got %g", c->factor);
        default_inv_freq((float)c->theta, dim, inv_freq);
        for (int64_t i = 0; i < dim / 2; i++)
            inv_freq[i] /= (float)c->factor;   /* inv_freq /= factor */
        return FTK_OK;
    }

    case FTK_ROPE_DYNAMIC: {
        FTK_FAIL_IF(!(c->factor > 0.0), FTK_E_INVALID, "rope_scaling.factor must be > 0, got %g", c->factor);
        FTK_FAIL_IF(c->max_position_embeddings <= 0, FTK_E_INVALID,
                    "dynamic rope needs max_position_embeddings > 0");
        if (seq_len <= c->max_position_embeddings) {
            /* dynamic_rope_update keeps the inv_freq made at init (seq_len = max_position_
             * embeddings), where base * (factor - (factor - 1)) ** (...) is base. */
            default_inv_freq((float)c->theta, dim, inv_freq);
            return FTK_OK;
        }
        /* seq_len is a tensor there (max(position_ids) + 1), so this is float32 arithmetic:
         * base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2)),
         * except the power: torch raises a float32 tensor to a Python-float exponent in double. */
        float t = (float)c->factor * (float)seq_len;
        t = t / (float)c->max_position_embeddings;
        t = t - (float)(c->factor - 1.0);
        float base = (float)c->theta * (float)pow((double)t, (double)dim / (double)(dim - 2));
        default_inv_freq(base, dim, inv_freq);
        return FTK_OK;
    }

    case FTK_ROPE_LLAMA3: {
        FTK_FAIL_IF(!(c->factor > 0.0), FTK_E_INVALID, "rope_scaling.factor must be > 0, got %g", c->factor);
        FTK_FAIL_IF(!(c->low_freq_factor > 0.0) || !(c->high_freq_factor > 0.0) ||
                    c->high_freq_factor == c->low_freq_factor, FTK_E_INVALID,
                    "llama3 rope_scaling needs low_freq_factor, high_freq_factor > 0 and different "
                    "(got %g, %g)", c->low_freq_factor, c->high_freq_factor);
        FTK_FAIL_IF(c->original_max_position_embeddings <= 0, FTK_E_INVALID,
                    "llama3 rope_scaling needs original_max_position_embeddings > 0");
        default_inv_freq((float)c->theta, dim, inv_freq);
        const double old_ctx = (double)c->original_max_position_embeddings;
        const float low_wl = (float)(old_ctx / c->low_freq_factor);    /* low_freq_wavelen */
        const float high_wl = (float)(old_ctx / c->high_freq_factor);  /* high_freq_wavelen */
        const float factor = (float)c->factor;
        for (int64_t i = 0; i < dim / 2; i++) {
            float f = inv_freq[i];
            float wl = (float)PY_TWO_PI / f;                       /* wavelen */
            float fl = wl > low_wl ? f / factor : f;               /* inv_freq_llama */
            float smooth = ((float)old_ctx / wl - (float)c->low_freq_factor) /
                           (float)(c->high_freq_factor - c->low_freq_factor);
            float smoothed = (1.0f - smooth) * fl / factor + smooth * fl;
            int medium = !(wl < high_wl) && !(wl > low_wl);
            inv_freq[i] = medium ? smoothed : fl;
        }
        return FTK_OK;
    }
    }
    FTK_FAIL(FTK_E_UNSUPPORTED, "rope type %d is not supported", (int)c->type);
}
