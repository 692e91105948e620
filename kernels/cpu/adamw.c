/* kernels/cpu/adamw.c: one torch.optim.AdamW step (torch/optim/adamw.py, _single_tensor_adamw,
 * amsgrad=False), element by element in the same order of operations:
 *   param.mul_(1 - lr * weight_decay)
 *   exp_avg.lerp_(grad, 1 - beta1)
 *   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
 *   step_size = lr / (1 - beta1**step);  bc2_sqrt = (1 - beta2**step) ** 0.5   (Python floats)
 *   denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps);  param.addcdiv_(exp_avg, denom, -step_size)
 * The gradient is first multiplied by grad_scale (clip_grad_norm_'s clip coefficient).
 * Letters: n elements. */
#include "cpu.h"

#include <math.h>

struct adamw_args {
    float *p, *m, *v; const float *g;
    float decay, w1, b2, c2, bc2_sqrt, step_size, eps, gscale;
};

static void adamw_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    const struct adamw_args *a = arg;
    for (int64_t i = i0; i < i1; i++) {
        float g = a->g[i] * a->gscale;
        float p = a->p[i] * a->decay;
        float m = a->m[i];
        /* torch lerp: start + weight * (end - start) for weight < 0.5, else
         * end - (end - start) * (1 - weight) */
        m = a->w1 < 0.5f ? m + a->w1 * (g - m) : g - (g - m) * (1.0f - a->w1);
        float v = a->v[i] * a->b2 + g * g * a->c2;
        float denom = sqrtf(v) / a->bc2_sqrt + a->eps;
        a->p[i] = p + (-a->step_size) * (m / denom);
        a->m[i] = m;
        a->v[i] = v;
    }
}

/* p, m, v, g (n) */
ftk_status cpu_adamw_step(void *ctx, float *p, float *m, float *v, const float *g, int64_t n,
                          const struct ftk_adamw_params *hp)
{
    FTK_FAIL_IF(hp->step < 1, FTK_E_INVALID, "adamw: step must be >= 1, got %lld", (long long)hp->step);
    FTK_FAIL_IF(!(hp->beta1 >= 0.0f && hp->beta1 < 1.0f && hp->beta2 >= 0.0f && hp->beta2 < 1.0f),
                FTK_E_INVALID, "adamw: betas must be in [0,1), got (%g, %g)", hp->beta1, hp->beta2);
    /* Python float (double) arithmetic for the scalars, as torch does with step as a number */
    double bc1 = 1.0 - pow((double)hp->beta1, (double)hp->step);
    double bc2 = 1.0 - pow((double)hp->beta2, (double)hp->step);
    struct adamw_args a = {
        .p = p, .m = m, .v = v, .g = g,
        .decay = (float)(1.0 - (double)hp->lr * (double)hp->weight_decay),
        .w1 = (float)(1.0 - (double)hp->beta1),
        .b2 = hp->beta2,
        .c2 = (float)(1.0 - (double)hp->beta2),
        .bc2_sqrt = (float)sqrt(bc2),
        .step_size = (float)((double)hp->lr / bc1),
        .eps = hp->eps,
        .gscale = hp->grad_scale,
    };
    cpu_for(ctx, n, 1 << 14, adamw_range, &a);
    return FTK_OK;
}
