// kernels/cuda/logprob.cu: the log-prob / cross-entropy head, chunked so that the (N,V) logits
// never exist; twin of kernels/cpu/logprob.c (docs/backend.md, Log-prob head). Per chunk of M
// scored tokens:
//   gather h rows -> hb (M,C);  logits z (M,V) = hb w^T  (cuBLAS);
//   one block per row: lse = max + log(sum exp(z - max)) (f64 sum, as the CPU twin),
//   logp = z[label] - lse, and for the gradient z <- dlogp (onehot(label) - softmax) in place;
//   dhb (M,C) = z w  (cuBLAS), scattered into dh (the chunk's tokens are distinct: no races);
//   dw (V,C) += z^T hb  (cuBLAS, beta = 1).
// The labels are copied to the host (N ints), checked, and the scored tokens' indices uploaded:
// ignored tokens (FTK_IGNORE_INDEX) never enter a chunk and cost nothing.
// Letters: N tokens, C channels, V vocabulary, M tokens in a chunk.
#include "cuda-common.h"

#include <math.h>
#include <stdlib.h>

// Default chunk: logits of at most this many bytes at once (as the CPU twin).
#define LOGPROB_CHUNK_BYTES ((size_t)64 << 20)

enum { LP_FWD = 1, LP_BWD = 2 };

// ignored tokens: logp = 0, lse = 0 (forward)
static __global__ void lp_ignored_kernel(float *logp, float *lse, const int32_t *labels, int64_t N)
{
    for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x)
        if (labels[n] == FTK_IGNORE_INDEX) {
            if (logp) logp[n] = 0.0f;
            if (lse) lse[n] = 0.0f;
        }
}

// hb (M,C) = h rows idx[0..M)
static __global__ void lp_gather_kernel(float *hb, const float *h, const int32_t *idx, int64_t M, int64_t C)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < M * C; i += (int64_t)gridDim.x * blockDim.x)
        hb[i] = h[(int64_t)idx[i / C] * C + i % C];
}

// dh rows idx[0..M) += dhb (M,C)
static __global__ void lp_scatter_add_kernel(float *dh, const float *dhb, const int32_t *idx, int64_t M, int64_t C)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < M * C; i += (int64_t)gridDim.x * blockDim.x)
        dh[(int64_t)idx[i / C] * C + i % C] += dhb[i];
}

// One block (CU_THREADS) per chunk row i, token n = idx[i]: see the file comment.
static __global__ void lp_row_kernel(float *z, const int32_t *idx, const int32_t *labels, float *logp, float *lse_out,
                                     const float *lse_in, const float *dlogp, int64_t V, int mode)
{
    __shared__ float shm[32];
    __shared__ double shd[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int64_t n = idx[blockIdx.x];
    float *zr = z + (int64_t)blockIdx.x * V;
    const int32_t y = labels[n];
    // z[label], read by thread 0 before the row is overwritten with dlogits (the reductions'
    // barriers come first whenever the forward is wanted: lse_in is NULL then)
    const float zy = threadIdx.x == 0 ? zr[y] : 0.0f;
    float lse;
    if (lse_in) {
        lse = lse_in[n];
    } else {
        float mx = -INFINITY;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
            mx = fmaxf(mx, zr[v]);
        for (int o = 16; o > 0; o >>= 1)
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        if (lane == 0) shm[warp] = mx;
        __syncthreads();
        mx = lane < nw ? shm[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1)
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        double s = 0.0;   // f64: a float sum over 100k+ terms drifts (as the CPU twin)
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
            s += (double)expf(zr[v] - mx);
        for (int o = 16; o > 0; o >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) shd[warp] = s;
        __syncthreads();
        s = lane < nw ? shd[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, o);
        lse = mx + (float)log(s);
    }
    if ((mode & LP_FWD) && threadIdx.x == 0) {
        if (logp) logp[n] = zy - lse;
        if (lse_out) lse_out[n] = lse;
    }
    if (mode & LP_BWD) {
        const float g = dlogp[n];
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
            zr[v] = -g * expf(zr[v] - lse);
        __syncthreads();
        if (threadIdx.x == 0)
            zr[y] += g;
    }
}

static ftk_status lp_run(struct cuda_ctx *c, int mode, float *logp, float *lse_out, const float *lse_in,
                         float *dh, float *dw, const float *dlogp, const float *h, const float *w,
                         const int32_t *labels, int64_t N, int64_t C, int64_t V, int64_t chunk)
{
    FTK_FAIL_IF(V <= 0 || C <= 0, FTK_E_INVALID, "logprob: bad sizes C=%lld V=%lld", (long long)C, (long long)V);
    FTK_FAIL_IF(N > INT32_MAX, FTK_E_UNSUPPORTED, "logprob: %lld tokens is too many", (long long)N);
    if (N <= 0)
        return FTK_OK;
    int32_t *hl;
    FTK_TRY(cuda_fetch_i32(c, labels, N, &hl));
    int64_t count = 0;
    for (int64_t n = 0; n < N; n++) {
        if (hl[n] != FTK_IGNORE_INDEX && (hl[n] < 0 || hl[n] >= V)) {
            int32_t bad = hl[n];
            free(hl);
            FTK_FAIL(FTK_E_INVALID, "logprob: token %lld has label %d, outside the vocabulary [0,%lld) and not %d",
                     (long long)n, (int)bad, (long long)V, FTK_IGNORE_INDEX);
        }
        if (hl[n] != FTK_IGNORE_INDEX)
            hl[count++] = (int32_t)n;   // compacted in place: idx (count) of the scored tokens
    }
    if ((mode & LP_FWD) && count < N && (logp || lse_out)) {
        lp_ignored_kernel<<<cu_blocks(N), CU_THREADS, 0, c->stream>>>(logp, lse_out, labels, N);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) {
            free(hl);
            return ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: lp_ignored_kernel launch: %s at %s:%d",
                                 cudaGetErrorString(e), __FILE__, __LINE__);
        }
    }
    if (count == 0) {
        free(hl);
        return FTK_OK;
    }
    int64_t M = chunk > 0 ? chunk : (int64_t)(LOGPROB_CHUNK_BYTES / ((size_t)V * sizeof(float)));
    if (M < 1) M = 1;
    if (M > count) M = count;
    const int grads = (mode & LP_BWD) && (dh || dw);
    // scratch: idx (count, padded to 64 floats) | hb (M,C) | z (M,V) | dhb (M,C)
    const size_t idx_bytes = ((size_t)count * sizeof(int32_t) + 255) / 256 * 256;
    const size_t need = idx_bytes + ((size_t)M * (size_t)C * 2 + (size_t)M * (size_t)V) * sizeof(float);
    void *s;
    ftk_status st = cuda_scratch(c, need, &s);
    if (st == FTK_OK) {
        cudaError_t e = cudaMemcpyAsync(s, hl, (size_t)count * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(c->stream);   // hl is freed below
        if (e != cudaSuccess)
            st = ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: copying the scored token indices: %s at %s:%d",
                               cudaGetErrorString(e), __FILE__, __LINE__);
    }
    free(hl);
    FTK_TRY(st);
    const int32_t *idx = (const int32_t *)s;
    float *hb = (float *)((char *)s + idx_bytes), *z = hb + M * C, *dhb = z + M * V;
    for (int64_t m0 = 0; m0 < count; m0 += M) {
        const int64_t m = count - m0 < M ? count - m0 : M;
        lp_gather_kernel<<<cu_blocks(m * C), CU_THREADS, 0, c->stream>>>(hb, h, idx + m0, m, C);
        CUDA_CHECK_LAUNCH();
        FTK_TRY(cu_gemm(c, 0, 1, m, V, C, 1.0f, hb, C, w, C, 0.0f, z, V));
        lp_row_kernel<<<(unsigned)m, CU_THREADS, 0, c->stream>>>(z, idx + m0, labels, logp, lse_out, lse_in, dlogp, V,
                                                                 grads ? mode : (mode & LP_FWD));
        CUDA_CHECK_LAUNCH();
        if (!grads)
            continue;
        if (dh) {
            FTK_TRY(cu_gemm(c, 0, 0, m, C, V, 1.0f, z, V, w, C, 0.0f, dhb, C));
            lp_scatter_add_kernel<<<cu_blocks(m * C), CU_THREADS, 0, c->stream>>>(dh, dhb, idx + m0, m, C);
            CUDA_CHECK_LAUNCH();
        }
        if (dw)
            FTK_TRY(cu_gemm(c, 1, 0, V, C, m, 1.0f, z, V, hb, C, 1.0f, dw, C));
    }
    return FTK_OK;
}

// h (N,C), w (V,C), labels (N) -> logp (N), lse (N) or NULL (0 where ignored)
ftk_status cu_logprob_forward(void *ctx, float *logp, float *lse, const float *h, const float *w,
                              const int32_t *labels, int64_t N, int64_t C, int64_t V, int64_t chunk)
{
    return lp_run((struct cuda_ctx *)ctx, LP_FWD, logp, lse, NULL, NULL, NULL, NULL, h, w, labels, N, C, V, chunk);
}

// dlogp (N), h (N,C), w (V,C), labels (N), lse (N) from the forward -> dh (N,C) +=, dw (V,C) +=
ftk_status cu_logprob_backward(void *ctx, float *dh, float *dw, const float *dlogp, const float *h,
                               const float *w, const int32_t *labels, const float *lse, int64_t N,
                               int64_t C, int64_t V, int64_t chunk)
{
    return lp_run((struct cuda_ctx *)ctx, LP_BWD, NULL, NULL, lse, dh, dw, dlogp, h, w, labels, N, C, V, chunk);
}

// dlogp (N), h (N,C), w (V,C), labels (N) -> logp (N), dh (N,C) +=, dw (V,C) += in one pass
ftk_status cu_logprob_fused(void *ctx, float *logp, float *dh, float *dw, const float *dlogp,
                            const float *h, const float *w, const int32_t *labels, int64_t N,
                            int64_t C, int64_t V, int64_t chunk)
{
    return lp_run((struct cuda_ctx *)ctx, LP_FWD | LP_BWD, logp, NULL, NULL, dh, dw, dlogp, h, w, labels, N, C, V, chunk);
}
