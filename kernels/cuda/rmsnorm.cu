// kernels/cuda/rmsnorm.cu: LlamaRMSNorm, y = w * (x * rsqrt(mean(x^2) + eps)), in F32; twin of
// kernels/cpu/rmsnorm.c. One block per row, block reductions in F32 (the CPU sums in f64; over
// C <= 16k terms of one row the F32 tree sum moves the result by a few ulps). The weight gradient
// is a column sum in two deterministic passes (row-group partials, then summed in order).
// Letters: N rows, C channels, G row groups.
#include "cuda-common.h"

#define DW_ROWS 64   // rows per partial of dw

// x (N,C), w (C) -> y (N,C) (may alias x), rstd (N) or NULL
static __global__ void rms_fwd_kernel(float *y, float *rstd, const float *x, const float *w, int64_t C, float eps)
{
    __shared__ float sh[32];
    const int64_t n = blockIdx.x;
    const float *xr = x + n * C;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        ss += xr[c] * xr[c];
    ss = cu_block_sum(ss, sh);
    const float r = 1.0f / sqrtf(ss / (float)C + eps);
    float *yr = y + n * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        yr[c] = w[c] * (xr[c] * r);
    if (rstd && threadIdx.x == 0)
        rstd[n] = r;
}

// dx_c += r w_c dy_c - r^3 x_c / C * sum_k dy_k w_k x_k   (r = rstd of the row)
static __global__ void rms_bwd_dx_kernel(float *dx, const float *dy, const float *x, const float *w,
                                         const float *rstd, int64_t C)
{
    __shared__ float sh[32];
    const int64_t n = blockIdx.x;
    const float *xr = x + n * C, *dyr = dy + n * C;
    const float r = rstd[n];
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        dot += dyr[c] * w[c] * xr[c];
    dot = cu_block_sum(dot, sh);
    const float k = dot * r * r * r / (float)C;
    float *dxr = dx + n * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        dxr[c] += r * w[c] * dyr[c] - k * xr[c];
}

// part (G,C): part[g,c] = sum over rows n of group g of dy[n,c] x[n,c] rstd[n]
static __global__ void rms_dw_part_kernel(float *part, const float *dy, const float *x, const float *rstd,
                                          int64_t N, int64_t C)
{
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, g = blockIdx.y;
    if (c >= C)
        return;
    const int64_t n1 = (g + 1) * DW_ROWS < N ? (g + 1) * DW_ROWS : N;
    float s = 0.0f;
    for (int64_t n = g * DW_ROWS; n < n1; n++)
        s += dy[n * C + c] * x[n * C + c] * rstd[n];
    part[g * C + c] = s;
}

ftk_status cu_rmsnorm_forward(void *ctx, float *y, float *rstd, const float *x, const float *w,
                              int64_t N, int64_t C, float eps)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (N <= 0 || C <= 0) return FTK_OK;
    FTK_FAIL_IF(N > INT32_MAX, FTK_E_UNSUPPORTED, "rmsnorm: %lld rows is beyond the grid", (long long)N);
    rms_fwd_kernel<<<(unsigned)N, CU_THREADS, 0, c->stream>>>(y, rstd, x, w, C, eps);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}

// dy (N,C), x (N,C), w (C), rstd (N) -> dx (N,C) +=, dw (C) += (either may be NULL)
ftk_status cu_rmsnorm_backward(void *ctx, float *dx, float *dw, const float *dy, const float *x,
                               const float *w, const float *rstd, int64_t N, int64_t C)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (N <= 0 || C <= 0) return FTK_OK;
    FTK_FAIL_IF(N > INT32_MAX, FTK_E_UNSUPPORTED, "rmsnorm: %lld rows is beyond the grid", (long long)N);
    if (dx) {
        rms_bwd_dx_kernel<<<(unsigned)N, CU_THREADS, 0, c->stream>>>(dx, dy, x, w, rstd, C);
        CUDA_CHECK_LAUNCH();
    }
    if (dw) {
        const int64_t G = (N + DW_ROWS - 1) / DW_ROWS;
        FTK_FAIL_IF(G > 65535, FTK_E_UNSUPPORTED, "rmsnorm: %lld rows is beyond the dw reduction's grid", (long long)N);
        void *part;
        FTK_TRY(cuda_scratch(c, (size_t)G * (size_t)C * sizeof(float), &part));
        dim3 grid((unsigned)((C + CU_THREADS - 1) / CU_THREADS), (unsigned)G);
        rms_dw_part_kernel<<<grid, CU_THREADS, 0, c->stream>>>((float *)part, dy, x, rstd, N, C);
        CUDA_CHECK_LAUNCH();
        FTK_TRY(cu_sum_rows_add(c, dw, (const float *)part, G, C));
    }
    return FTK_OK;
}
