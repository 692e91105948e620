// kernels/cuda/reduce.cu: the small element-wise and reduction ops, twin of kernels/cpu/reduce.c:
// sum of squares (for clip_grad_norm_), scale, axpy, add (the residual stream), and the
// row-sum of partials that the deterministic column reductions (linear db, rmsnorm dw) end with.
// Letters: n elements, G partial rows, C columns.
#include "cuda-common.h"

// Fixed grid for sumsq: the partials and their order depend on n only, never on the device, so
// the result is the same on every GPU and every run (bit-identical resume).
#define SUMSQ_BLOCKS 512

// x (n) -> part (SUMSQ_BLOCKS) f64: block b sums x[i]^2 over i = b*T + t + k*(blocks*T)
static __global__ void sumsq_part_kernel(double *part, const float *x, int64_t n)
{
    __shared__ double sh[CU_THREADS];
    double s = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)CU_THREADS + threadIdx.x; i < n; i += (int64_t)SUMSQ_BLOCKS * CU_THREADS)
        s += (double)x[i] * (double)x[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int w = CU_THREADS / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w)
            sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        part[blockIdx.x] = sh[0];
}

// part (SUMSQ_BLOCKS) -> out (1) = (float) sum, one block
static __global__ void sumsq_final_kernel(float *out, const double *part)
{
    __shared__ double sh[CU_THREADS];
    double s = 0.0;
    for (int i = threadIdx.x; i < SUMSQ_BLOCKS; i += CU_THREADS)
        s += part[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int w = CU_THREADS / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w)
            sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        *out = (float)sh[0];
}

// x (n) -> out (1, device) = sum x^2, accumulated in f64 as the CPU backend does
ftk_status cu_sumsq(void *ctx, float *out, const float *x, int64_t n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    void *part;
    FTK_TRY(cuda_scratch(c, SUMSQ_BLOCKS * sizeof(double), &part));
    sumsq_part_kernel<<<SUMSQ_BLOCKS, CU_THREADS, 0, c->stream>>>((double *)part, x, n);
    CUDA_CHECK_LAUNCH();
    sumsq_final_kernel<<<1, CU_THREADS, 0, c->stream>>>(out, (const double *)part);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

static __global__ void scale_kernel(float *x, int64_t n, float a) { GRID_STRIDE(i, n) x[i] *= a; }
static __global__ void axpy_kernel(float *y, const float *x, int64_t n, float a) { GRID_STRIDE(i, n) y[i] += a * x[i]; }
static __global__ void add_kernel(float *y, const float *a, const float *b, int64_t n) { GRID_STRIDE(i, n) y[i] = a[i] + b[i]; }

// x (n) *= a
ftk_status cu_scale(void *ctx, float *x, int64_t n, float a)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (n <= 0) return FTK_OK;
    scale_kernel<<<cu_blocks(n), CU_THREADS, 0, c->stream>>>(x, n, a);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}

// y (n) += a * x (n)
ftk_status cu_axpy(void *ctx, float *y, const float *x, int64_t n, float a)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (n <= 0) return FTK_OK;
    axpy_kernel<<<cu_blocks(n), CU_THREADS, 0, c->stream>>>(y, x, n, a);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}

// a (n) + b (n) -> y (n); y may alias a or b (each element is read before it is written)
ftk_status cu_add(void *ctx, float *y, const float *a, const float *b, int64_t n)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (n <= 0) return FTK_OK;
    add_kernel<<<cu_blocks(n), CU_THREADS, 0, c->stream>>>(y, a, b, n);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}

// part (G,C) -> out (C) += sum_g part[g], one thread per column, rows in order
static __global__ void sum_rows_add_kernel(float *out, const float *part, int64_t G, int64_t C)
{
    GRID_STRIDE(j, C) {
        float s = 0.0f;
        for (int64_t g = 0; g < G; g++)
            s += part[g * C + j];
        out[j] += s;
    }
}

ftk_status cu_sum_rows_add(struct cuda_ctx *c, float *out, const float *part, int64_t G, int64_t C)
{
    if (C <= 0) return FTK_OK;
    sum_rows_add_kernel<<<cu_blocks(C), CU_THREADS, 0, c->stream>>>(out, part, G, C);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}
