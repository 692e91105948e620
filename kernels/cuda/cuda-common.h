// kernels/cuda/cuda-common.h: internal to the CUDA backend. The context, its scratch memory, the
// CUDA_CHECK/CUBLAS_CHECK pair, and the op functions that kernels/cuda/backend.cu puts into the
// ftk_backend table. Each op lives in its own file (kernels/cuda/<op>.cu) beside its CPU twin
// (kernels/cpu/<op>.c), shapes written there; signatures are those of the slots in ftk/backend.h.
//
// Every op runs on the context's stream, in call order. Ops that must look at ids or labels
// (embedding, the log-prob head, attention_decode) copy those small I32 arrays to the host and
// wait for the stream, as the CPU backend validates them before computing: bad data is
// FTK_E_INVALID, never an out-of-bounds read on the device.
#ifndef FTK_KERNELS_CUDA_COMMON_H
#define FTK_KERNELS_CUDA_COMMON_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include "ftk/backend.h"

struct cuda_ctx {
    int device;
    cudaStream_t stream;       // every op and copy of this context runs on it
    cublasHandle_t blas;       // bound to `stream`, CUBLAS_DEFAULT_MATH (no TF32)
    void *scratch;             // device, grow-only, reused by ops (one op runs at a time)
    size_t scratch_size;
};

// A failed CUDA runtime call: FTK_E_CUDA naming the call, the CUDA error and file:line.
#define CUDA_CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) \
    return ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: %s failed: %s (%s) at %s:%d", #call, \
                         cudaGetErrorString(e_), cudaGetErrorName(e_), __FILE__, __LINE__); } while (0)
// A failed cuBLAS call: the same with cuBLAS's status name.
#define CUBLAS_CHECK(call) do { cublasStatus_t s_ = (call); if (s_ != CUBLAS_STATUS_SUCCESS) \
    return ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: %s failed: %s at %s:%d", #call, \
                         cublasGetStatusName(s_), __FILE__, __LINE__); } while (0)
// After a kernel launch (bad configuration, no kernel image for this GPU).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

// Threads per block of the element-wise and row kernels.
#define CU_THREADS 256

// Blocks for n elements at CU_THREADS per block, capped for grid-stride loops.
static inline unsigned cu_blocks(int64_t n)
{
    int64_t b = (n + CU_THREADS - 1) / CU_THREADS;
    if (b < 1) b = 1;
    if (b > 65535LL * 16) b = 65535LL * 16;
    return (unsigned)b;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `sh` is 32 floats of shared memory; the call ends with a barrier, so sh may be reused after.
static __device__ __forceinline__ float cu_block_sum(float v, float *sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();   // sh may still be read by a previous call
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Device scratch of at least nbytes, valid until the next cuda_scratch call (it may cudaFree the
// old one, which waits for the device). *out NULL and a status set on failure.
ftk_status cuda_scratch(struct cuda_ctx *c, size_t nbytes, void **out);
// n I32 values of device memory to a malloc'd host array (waits for the stream). Free with free().
ftk_status cuda_fetch_i32(struct cuda_ctx *c, const int32_t *dev, int64_t n, int32_t **out);

// backend.cu
ftk_status cu_gemm(void *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc);
// reduce.cu: out (C) += sum over the G rows of part (G,C), in row order (deterministic).
ftk_status cu_sum_rows_add(struct cuda_ctx *c, float *out, const float *part, int64_t G, int64_t C);
// linear.cu
ftk_status cu_linear_forward(void *ctx, float *y, const float *x, const float *w, const float *b,
                             int64_t N, int64_t I, int64_t O);
ftk_status cu_linear_backward(void *ctx, float *dx, float *dw, float *db, const float *dy,
                              const float *x, const float *w, int64_t N, int64_t I, int64_t O);
// embedding.cu
ftk_status cu_embedding_forward(void *ctx, float *y, const int32_t *ids, const float *wte,
                                int64_t N, int64_t C, int64_t V);
ftk_status cu_embedding_backward(void *ctx, float *dwte, const float *dy, const int32_t *ids,
                                 int64_t N, int64_t C, int64_t V);
// rmsnorm.cu
ftk_status cu_rmsnorm_forward(void *ctx, float *y, float *rstd, const float *x, const float *w,
                              int64_t N, int64_t C, float eps);
ftk_status cu_rmsnorm_backward(void *ctx, float *dx, float *dw, const float *dy, const float *x,
                               const float *w, const float *rstd, int64_t N, int64_t C);
// rope.cu
ftk_status cu_rope_forward(void *ctx, float *x, const int32_t *pos, const float *inv_freq,
                           float scaling, int64_t N, int64_t H, int64_t D, int64_t R);
ftk_status cu_rope_backward(void *ctx, float *dx, const int32_t *pos, const float *inv_freq,
                            float scaling, int64_t N, int64_t H, int64_t D, int64_t R);
// attention.cu
ftk_status cu_attention_forward(void *ctx, float *o, float *lse, const float *q, const float *k,
                                const float *v, const int32_t *seg, int64_t B, int64_t T,
                                int64_t H, int64_t Hkv, int64_t D, float scale);
ftk_status cu_attention_backward(void *ctx, float *dq, float *dk, float *dv, const float *dout,
                                 const float *q, const float *k, const float *v, const float *o,
                                 const float *lse, const int32_t *seg, int64_t B, int64_t T,
                                 int64_t H, int64_t Hkv, int64_t D, float scale);
// attention_decode.cu
ftk_status cu_attention_decode(void *ctx, float *o, const float *q, const float *kc, const float *vc,
                               const int32_t *len, int64_t B, int64_t S, int64_t H, int64_t Hkv,
                               int64_t D, float scale);
// swiglu.cu
ftk_status cu_swiglu_forward(void *ctx, float *h, const float *gate, const float *up, int64_t n);
ftk_status cu_swiglu_backward(void *ctx, float *dgate, float *dup, const float *dh,
                              const float *gate, const float *up, int64_t n);
// logprob.cu
ftk_status cu_logprob_forward(void *ctx, float *logp, float *lse, const float *h, const float *w,
                              const int32_t *labels, int64_t N, int64_t C, int64_t V, int64_t chunk);
ftk_status cu_logprob_backward(void *ctx, float *dh, float *dw, const float *dlogp, const float *h,
                               const float *w, const int32_t *labels, const float *lse, int64_t N,
                               int64_t C, int64_t V, int64_t chunk);
ftk_status cu_logprob_fused(void *ctx, float *logp, float *dh, float *dw, const float *dlogp,
                            const float *h, const float *w, const int32_t *labels, int64_t N,
                            int64_t C, int64_t V, int64_t chunk);
// adamw.cu
ftk_status cu_adamw_step(void *ctx, float *p, float *m, float *v, const float *g, int64_t n,
                         const struct ftk_adamw_params *hp);
// reduce.cu
ftk_status cu_sumsq(void *ctx, float *out, const float *x, int64_t n);
ftk_status cu_scale(void *ctx, float *x, int64_t n, float a);
ftk_status cu_axpy(void *ctx, float *y, const float *x, int64_t n, float a);
ftk_status cu_add(void *ctx, float *y, const float *a, const float *b, int64_t n);

#endif
