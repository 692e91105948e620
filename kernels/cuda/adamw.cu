// kernels/cuda/adamw.cu: one torch.optim.AdamW step, twin of kernels/cpu/adamw.c: the same order
// of operations per element (see there and torch/optim/adamw.py _single_tensor_adamw), the
// scalars (bias corrections, decay) computed on the host in double as Python does.
// Letters: n elements.
#include "cuda-common.h"

#include <math.h>

struct adamw_k { float decay, w1, b2, c2, bc2_sqrt, step_size, eps, gscale; };

// p, m, v, g (n): in place
static __global__ void adamw_kernel(float *p, float *m, float *v, const float *g, int64_t n, struct adamw_k a)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float gi = g[i] * a.gscale;
        float pi = p[i] * a.decay;
        float mi = m[i];
        mi = a.w1 < 0.5f ? mi + a.w1 * (gi - mi) : gi - (gi - mi) * (1.0f - a.w1);   // torch lerp
        float vi = v[i] * a.b2 + gi * gi * a.c2;
        float denom = sqrtf(vi) / a.bc2_sqrt + a.eps;
        p[i] = pi + (-a.step_size) * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

ftk_status cu_adamw_step(void *ctx, float *p, float *m, float *v, const float *g, int64_t n,
                         const struct ftk_adamw_params *hp)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    FTK_FAIL_IF(hp->step < 1, FTK_E_INVALID, "adamw: step must be >= 1, got %lld", (long long)hp->step);
    FTK_FAIL_IF(!(hp->beta1 >= 0.0f && hp->beta1 < 1.0f && hp->beta2 >= 0.0f && hp->beta2 < 1.0f),
                FTK_E_INVALID, "adamw: betas must be in [0,1), got (%g, %g)", hp->beta1, hp->beta2);
    if (n <= 0) return FTK_OK;
    double bc1 = 1.0 - pow((double)hp->beta1, (double)hp->step);
    double bc2 = 1.0 - pow((double)hp->beta2, (double)hp->step);
    struct adamw_k a;
    a.decay = (float)(1.0 - (double)hp->lr * (double)hp->weight_decay);
    a.w1 = (float)(1.0 - (double)hp->beta1);
    a.b2 = hp->beta2;
    a.c2 = (float)(1.0 - (double)hp->beta2);
    a.bc2_sqrt = (float)sqrt(bc2);
    a.step_size = (float)((double)hp->lr / bc1);
    a.eps = hp->eps;
    a.gscale = hp->grad_scale;
    adamw_kernel<<<cu_blocks(n), CU_THREADS, 0, c->stream>>>(p, m, v, g, n, a);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}
