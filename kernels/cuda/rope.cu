// kernels/cuda/rope.cu: rotary position embedding in place, transformers' rotate_half convention;
// twin of kernels/cpu/rope.c (f = (float)pos * inv_freq[i] in float32, c = cosf(f) * scaling,
// s = sinf(f) * scaling; the backward is the transpose: sin negated). Every rope_scaling kind
// (default, linear, dynamic, llama3) arrives as inv_freq (ftk_rope_inv_freq), so one kernel.
// Letters: N tokens, H heads, D head dim, R rotary dims (even, <= D; dims >= R pass through).
#include "cuda-common.h"

// x (N,H,D) in place: one thread per (n, h, i < R/2) pair of rotated values
static __global__ void rope_kernel(float *x, const int32_t *pos, const float *inv_freq, float scaling,
                                   int64_t N, int64_t H, int64_t D, int64_t R, float sgn)
{
    const int64_t half = R / 2, total = N * H * half;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = t % half, nh = t / half, n = nh / H;
        float f = (float)pos[n] * inv_freq[i];
        float cv = cosf(f) * scaling, sv = sgn * (sinf(f) * scaling);
        float *xr = x + nh * D;
        float x1 = xr[i], x2 = xr[i + half];
        xr[i] = x1 * cv - x2 * sv;
        xr[i + half] = x2 * cv + x1 * sv;
    }
}

static ftk_status rope_run(void *ctx, float *x, const int32_t *pos, const float *inv_freq, float scaling,
                           int64_t N, int64_t H, int64_t D, int64_t R, float sgn)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    FTK_FAIL_IF(R < 0 || R > D || R % 2 != 0, FTK_E_INVALID,
                "rope: rotary dims %lld must be even and <= head_dim %lld", (long long)R, (long long)D);
    if (R == 0 || N == 0 || H == 0)
        return FTK_OK;
    rope_kernel<<<cu_blocks(N * H * (R / 2)), CU_THREADS, 0, c->stream>>>(x, pos, inv_freq, scaling, N, H, D, R, sgn);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}

// x (N,H,D) in place, pos (N), inv_freq (R/2)
ftk_status cu_rope_forward(void *ctx, float *x, const int32_t *pos, const float *inv_freq,
                           float scaling, int64_t N, int64_t H, int64_t D, int64_t R)
{
    return rope_run(ctx, x, pos, inv_freq, scaling, N, H, D, R, 1.0f);
}

// dx (N,H,D) in place: gradient w.r.t. the rotated x in, w.r.t. the unrotated x out
ftk_status cu_rope_backward(void *ctx, float *dx, const int32_t *pos, const float *inv_freq,
                            float scaling, int64_t N, int64_t H, int64_t D, int64_t R)
{
    return rope_run(ctx, dx, pos, inv_freq, scaling, N, H, D, R, -1.0f);
}
