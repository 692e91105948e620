/* ftk/optim.h: optimizer hyper-parameters and the host side of gradient clipping.
 *
 * The element-wise work (the AdamW update, sums of squares) is a backend op (ftk/backend.h);
 * what is here is the scalar arithmetic around it, the same for every backend.
 * Ownership: nothing is kept; arrays stay the caller's. */
#ifndef FTK_OPTIM_H
#define FTK_OPTIM_H

#include <stdint.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* torch.optim.AdamW (amsgrad=False, maximize=False) for one parameter tensor at step `step`:
 *   g  = grad * grad_scale                      (grad_scale: the clip coefficient, 1 if none)
 *   p  = p * (1 - lr * weight_decay)            (decoupled decay, applied before the update)
 *   m  = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
 *   p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)   (eps outside sqrt)
 * HF Trainer gives biases and norm weights weight_decay = 0: that choice is the caller's. */
struct ftk_adamw_params {
    float lr;
    float beta1, beta2;     /* torch defaults 0.9, 0.999 */
    float eps;              /* torch default 1e-8 */
    float weight_decay;     /* torch default 1e-2, HF TrainingArguments default 0 */
    int64_t step;           /* 1 on the first update (torch increments before use) */
    float grad_scale;       /* multiplies the gradient first (clipping); 1 for none */
};

/* torch.nn.utils.clip_grad_norm_(params, max_norm) (norm_type 2) from per-tensor sums of squares
 * sumsq (K), as the backend's `sumsq` op leaves them:
 *   total = sqrt(sum_k sumsq[k]),  coef = min(max_norm / (total + 1e-6), 1).
 * Writes total (what HF logs as grad_norm) and coef (multiply every gradient by it, or pass it as
 * ftk_adamw_params.grad_scale). max_norm <= 0 means no clipping: coef = 1. A non-finite total
 * gives coef = 1 and FTK_E_INVALID ("gradient norm is nan/inf"), so the caller can skip the step. */
FTK_API ftk_status ftk_clip_grad_norm_coef(const float *sumsq, int64_t K, float max_norm,
                                           float *total, float *coef);

#ifdef __cplusplus
}
#endif
#endif
