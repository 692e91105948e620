// kernels/cuda/swiglu.cu: the Llama MLP's gate, h = silu(gate) * up; twin of kernels/cpu/swiglu.c
// (same expressions: sigmoid = 1 / (1 + expf(-g)), d silu/dg = s (1 + g (1 - s))).
// Letters: n elements (tokens * F).
#include "cuda-common.h"

static __device__ __forceinline__ float sigmoid_dev(float x) { return 1.0f / (1.0f + expf(-x)); }

// gate, up (n) -> h (n); h may alias gate or up
static __global__ void swiglu_fwd_kernel(float *h, const float *gate, const float *up, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        h[i] = g * sigmoid_dev(g) * up[i];
    }
}

// dh, gate, up (n) -> dgate (n) +=, dup (n) += (either may be NULL)
static __global__ void swiglu_bwd_kernel(float *dgate, float *dup, const float *dh, const float *gate,
                                         const float *up, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = gate[i], s = sigmoid_dev(g), d = dh[i];
        if (dgate)
            dgate[i] += d * up[i] * s * (1.0f + g * (1.0f - s));
        if (dup)
            dup[i] += d * g * s;
    }
}

ftk_status cu_swiglu_forward(void *ctx, float *h, const float *gate, const float *up, int64_t n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (n <= 0) return FTK_OK;
    swiglu_fwd_kernel<<<cu_blocks(n), CU_THREADS, 0, c->stream>>>(h, gate, up, n);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}

ftk_status cu_swiglu_backward(void *ctx, float *dgate, float *dup, const float *dh,
                              const float *gate, const float *up, int64_t n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (n <= 0 || (!dgate && !dup)) return FTK_OK;
    swiglu_bwd_kernel<<<cu_blocks(n), CU_THREADS, 0, c->stream>>>(dgate, dup, dh, gate, up, n);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}
