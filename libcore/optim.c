/* libcore/optim.c: the host side of gradient clipping (ftk/optim.h). */
#include "ftk/optim.h"

#include <math.h>

/* torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1. */
#define CLIP_EPS 1e-6

ftk_status ftk_clip_grad_norm_coef(const float *sumsq, int64_t K, float max_norm, float *total,
                                   float *coef)
{
    double s = 0.0;
    for (int64_t k = 0; k < K; k++)
        s += (double)sumsq[k];
    *total = (float)sqrt(s);
    *coef = 1.0f;
    FTK_FAIL_IF(!isfinite(*total), FTK_E_INVALID, "gradient norm is %s", isnan(*total) ? "nan" : "inf");
    if (max_norm > 0.0f) {
        /* in float32, as torch computes it on float32 norms */
        float c = max_norm / (*total + (float)CLIP_EPS);
        *coef = c < 1.0f ? c : 1.0f;
    }
    return FTK_OK;
}
