// kernels/cuda/linear.cu: torch nn.Linear, y = x W^T + b, through cuBLAS (cu_gemm); twin of
// kernels/cpu/linear.c. The bias gradient is a column sum done in two deterministic passes
// (row-group partials, then the partials summed in order): no atomics, the same bits every run.
// Letters: N rows (tokens), I in features, O out features, G row groups.
#include "cuda-common.h"

#define DB_ROWS 256   // rows per partial of the bias gradient

// b (O) -> y (N,O) = b broadcast
static __global__ void bias_fill_kernel(float *y, const float *b, int64_t N, int64_t O)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * O; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = b[i % O];
}

// dy (N,O) -> part (G,O): part[g,o] = sum of dy[n,o] over rows n of group g
static __global__ void colsum_part_kernel(float *part, const float *dy, int64_t N, int64_t O)
{
    const int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, g = blockIdx.y;
    if (o >= O)
        return;
    const int64_t n1 = (g + 1) * DB_ROWS < N ? (g + 1) * DB_ROWS : N;
    float s = 0.0f;
    for (int64_t n = g * DB_ROWS; n < n1; n++)
        s += dy[n * O + o];
    part[g * O + o] = s;
}

// x (N,I), w (O,I), b (O) or NULL -> y (N,O)
ftk_status cu_linear_forward(void *ctx, float *y, const float *x, const float *w, const float *b,
                             int64_t N, int64_t I, int64_t O)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    float beta = 0.0f;
    if (b && N > 0 && O > 0) {   // y = b, then y += x W^T (as the CPU twin)
        bias_fill_kernel<<<cu_blocks(N * O), CU_THREADS, 0, c->stream>>>(y, b, N, O);
        CUDA_CHECK_LAUNCH();
        beta = 1.0f;
    }
    return cu_gemm(ctx, 0, 1, N, O, I, 1.0f, x, I, w, I, beta, y, O);
}

// dy (N,O), x (N,I), w (O,I) -> dx (N,I) += dy w, dw (O,I) += dy^T x, db (O) += sum_n dy
// (any of dx, dw, db may be NULL)
ftk_status cu_linear_backward(void *ctx, float *dx, float *dw, float *db, const float *dy,
                              const float *x, const float *w, int64_t N, int64_t I, int64_t O)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (dx)
        FTK_TRY(cu_gemm(ctx, 0, 0, N, I, O, 1.0f, dy, O, w, I, 1.0f, dx, I));
    if (dw)
        FTK_TRY(cu_gemm(ctx, 1, 0, O, I, N, 1.0f, dy, O, x, I, 1.0f, dw, I));
    if (db && N > 0 && O > 0) {
        const int64_t G = (N + DB_ROWS - 1) / DB_ROWS;
        FTK_FAIL_IF(G > 65535, FTK_E_UNSUPPORTED, "linear: %lld rows is beyond the bias reduction's grid", (long long)N);
        void *part;
        FTK_TRY(cuda_scratch(c, (size_t)G * (size_t)O * sizeof(float), &part));
        dim3 grid((unsigned)((O + CU_THREADS - 1) / CU_THREADS), (unsigned)G);
        colsum_part_kernel<<<grid, CU_THREADS, 0, c->stream>>>((float *)part, dy, N, O);
        CUDA_CHECK_LAUNCH();
        FTK_TRY(cu_sum_rows_add(c, db, (const float *)part, G, O));
    }
    return FTK_OK;
}
