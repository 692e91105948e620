// kernels/cuda/backend.cu: the CUDA backend's table, context, memory and gemm (ftk/backend.h).
//
// A context owns one device ordinal, one stream (every op and copy runs on it, in call order),
// one cuBLAS handle bound to that stream and a grow-only device scratch buffer. Memory comes from
// cudaMalloc (no managed memory): `alloc` zeroes it on the stream; `to_device`/`to_host` wait
// for their copy, so the host buffer may be reused or read when they return.
//
// Matmuls: row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so cuBLAS is called
// with the operands swapped (the usual transpose trick). The handle keeps CUBLAS_DEFAULT_MATH:
// F32 GEMMs stay F32 (no TF32), so results are comparable with the CPU backend's OpenBLAS.
#include "cuda-common.h"

#include <limits.h>
#include <stdlib.h>

ftk_status cuda_scratch(struct cuda_ctx *c, size_t nbytes, void **out)
{
    *out = NULL;
    if (nbytes <= c->scratch_size && c->scratch) {
        *out = c->scratch;
        return FTK_OK;
    }
    if (c->scratch) {
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        CUDA_CHECK(cudaFree(c->scratch));
    }
    c->scratch = NULL;
    c->scratch_size = 0;
    size_t sz = (nbytes + 255) / 256 * 256;
    cudaError_t e = cudaMalloc(&c->scratch, sz ? sz : 256);
    if (e != cudaSuccess) {
        c->scratch = NULL;
        cudaGetLastError();
        return ftk_error_set(e == cudaErrorMemoryAllocation ? FTK_E_NOMEM : FTK_E_CUDA, __FILE__,
                             __LINE__, "cuda: cannot allocate %zu bytes of scratch: %s", nbytes,
                             cudaGetErrorString(e));
    }
    c->scratch_size = sz;
    *out = c->scratch;
    return FTK_OK;
}

ftk_status cuda_fetch_i32(struct cuda_ctx *c, const int32_t *dev, int64_t n, int32_t **out)
{
    *out = (int32_t *)malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    FTK_FAIL_IF(!*out, FTK_E_NOMEM, "cuda: out of host memory for %lld ids", (long long)n);
    if (n > 0) {
        cudaError_t e = cudaMemcpyAsync(*out, dev, (size_t)n * sizeof(int32_t), cudaMemcpyDeviceToHost, c->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(c->stream);
        if (e != cudaSuccess) {
            free(*out);
            *out = NULL;
            return ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: copying %lld ids to the host: %s at %s:%d",
                                 (long long)n, cudaGetErrorString(e), __FILE__, __LINE__);
        }
    }
    return FTK_OK;
}

static void cuda_destroy(void *ctx);

static ftk_status cuda_create(const struct ftk_backend_opts *o, void **out)
{
    *out = NULL;
    int dev = 0, count = 0;
    if (o && o->struct_size >= offsetof(struct ftk_backend_opts, device) + sizeof o->device)
        dev = o->device;
    // No driver or no GPU: a clear "unsupported here", not a crash or a CUDA error.
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        cudaGetLastError();
        FTK_FAIL(FTK_E_UNSUPPORTED, "backend cuda: no CUDA device (cudaGetDeviceCount: %s); use --device cpu",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    FTK_FAIL_IF(dev < 0 || dev >= count, FTK_E_INVALID, "backend cuda: device %d does not exist (%d found)",
                dev, count);
    struct cuda_ctx *c = (struct cuda_ctx *)calloc(1, sizeof *c);
    FTK_FAIL_IF(!c, FTK_E_NOMEM, "backend cuda: out of memory");
    c->device = dev;
    ftk_status st = FTK_OK;
    do {
        // the calling thread drives this context (backend.h): ops run on the device set here
        cudaError_t e2 = cudaSetDevice(dev);
        if (e2 != cudaSuccess) { st = ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: cudaSetDevice(%d): %s", dev, cudaGetErrorString(e2)); break; }
        e2 = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
        if (e2 != cudaSuccess) { st = ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: cudaStreamCreateWithFlags: %s", cudaGetErrorString(e2)); break; }
        cublasStatus_t s = cublasCreate(&c->blas);
        if (s != CUBLAS_STATUS_SUCCESS) { c->blas = NULL; st = ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: cublasCreate: %s", cublasGetStatusName(s)); break; }
        s = cublasSetStream(c->blas, c->stream);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);   // no TF32: F32 stays F32
        if (s != CUBLAS_STATUS_SUCCESS) { st = ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: cublas setup: %s", cublasGetStatusName(s)); break; }
    } while (0);
    if (st != FTK_OK) {
        cuda_destroy(c);
        return st;
    }
    *out = c;
    return FTK_OK;
}

static void cuda_destroy(void *ctx)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (!c)
        return;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    if (c->blas)
        cublasDestroy(c->blas);
    cudaFree(c->scratch);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    cudaGetLastError();
    free(c);
}

static ftk_status cuda_sync(void *ctx)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return FTK_OK;
}

static ftk_status cuda_alloc(void *ctx, size_t nbytes, void **out)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    *out = NULL;
    size_t sz = (nbytes + 63) / 64 * 64;   // cudaMalloc aligns to 256 bytes, more than the 64 promised
    if (sz == 0)
        sz = 64;
    cudaError_t e = cudaMalloc(out, sz);
    if (e != cudaSuccess) {
        *out = NULL;
        cudaGetLastError();
        return ftk_error_set(e == cudaErrorMemoryAllocation ? FTK_E_NOMEM : FTK_E_CUDA, __FILE__, __LINE__,
                             "cuda: cannot allocate %zu bytes: %s", nbytes, cudaGetErrorString(e));
    }
    e = cudaMemsetAsync(*out, 0, sz, c->stream);
    if (e != cudaSuccess) {
        cudaFree(*out);
        *out = NULL;
        return ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: cudaMemsetAsync: %s", cudaGetErrorString(e));
    }
    return FTK_OK;
}

static void cuda_free(void *ctx, void *p)
{
    (void)ctx;
    if (p)
        cudaFree(p);   // waits for the device: no queued op still reads it
}

static ftk_status cuda_zero(void *ctx, void *p, size_t nbytes)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (nbytes)
        CUDA_CHECK(cudaMemsetAsync(p, 0, nbytes, c->stream));
    return FTK_OK;
}

static ftk_status cuda_to_device(void *ctx, void *dst, const void *host_src, size_t nbytes)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (!nbytes)
        return FTK_OK;
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, nbytes, cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return FTK_OK;
}

static ftk_status cuda_to_host(void *ctx, void *host_dst, const void *src, size_t nbytes)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (!nbytes)
        return FTK_OK;
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, nbytes, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return FTK_OK;
}

static ftk_status cuda_copy(void *ctx, void *dst, const void *src, size_t nbytes)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (nbytes && dst != src)
        CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, c->stream));
    return FTK_OK;
}

// C (M,N) row stride ldc: C = beta C (the K == 0 case, where BLASes differ)
__global__ void gemm_beta_kernel(float *C, int64_t M, int64_t N, int64_t ldc, float beta)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < M * N; i += (int64_t)gridDim.x * blockDim.x) {
        float *c = C + (i / N) * ldc + i % N;
        *c = beta == 0.0f ? 0.0f : beta * *c;
    }
}

ftk_status cu_gemm(void *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    FTK_FAIL_IF(M < 0 || N < 0 || K < 0, FTK_E_INVALID, "gemm: negative size (%lld,%lld,%lld)",
                (long long)M, (long long)N, (long long)K);
    FTK_FAIL_IF(M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX ||
                ldc > INT_MAX, FTK_E_UNSUPPORTED, "gemm: size beyond cuBLAS int range");
    if (M == 0 || N == 0)
        return FTK_OK;
    if (K == 0) {
        gemm_beta_kernel<<<cu_blocks(M * N), CU_THREADS, 0, c->stream>>>(C, M, N, ldc, beta);
        CUDA_CHECK_LAUNCH();
        return FTK_OK;
    }
    // column-major C^T (N,M) = op(B)^T (N,K) op(A)^T (K,M)
    CUBLAS_CHECK(cublasSgemm(c->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                             (int)N, (int)M, (int)K, &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc));
    return FTK_OK;
}

static const struct ftk_backend cuda_backend = {
    .struct_size = sizeof(struct ftk_backend),
    .api_version = FTK_BACKEND_API,
    .name = "cuda",
    .create = cuda_create,
    .destroy = cuda_destroy,
    .sync = cuda_sync,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .zero = cuda_zero,
    .to_device = cuda_to_device,
    .to_host = cuda_to_host,
    .copy = cuda_copy,
    .gemm = cu_gemm,
    .linear_forward = cu_linear_forward,
    .linear_backward = cu_linear_backward,
    .embedding_forward = cu_embedding_forward,
    .embedding_backward = cu_embedding_backward,
    .rmsnorm_forward = cu_rmsnorm_forward,
    .rmsnorm_backward = cu_rmsnorm_backward,
    .rope_forward = cu_rope_forward,
    .rope_backward = cu_rope_backward,
    .attention_forward = cu_attention_forward,
    .attention_backward = cu_attention_backward,
    .swiglu_forward = cu_swiglu_forward,
    .swiglu_backward = cu_swiglu_backward,
    .logprob_forward = cu_logprob_forward,
    .logprob_backward = cu_logprob_backward,
    .logprob_fused = cu_logprob_fused,
    .adamw_step = cu_adamw_step,
    .sumsq = cu_sumsq,
    .scale = cu_scale,
    .axpy = cu_axpy,
    .add = cu_add,
    .attention_decode = cu_attention_decode,
    /* prefix attention (prefix tuning) has no CUDA kernel yet: the model refuses it on cuda */
    .attention_prefix_forward = NULL,
    .attention_prefix_backward = NULL,
};

extern "C" FTK_API const struct ftk_backend *ftk_backend_cuda(void) { return &cuda_backend; }
