// kernels/cuda/embedding.cu: token embedding lookup (nn.Embedding) and its scatter-add backward;
// twin of kernels/cpu/embedding.c.
//
// The ids are copied to the host first (N ints, one wait on the stream) and checked there, as
// the CPU twin does: an id outside [0,V) is FTK_E_INVALID before any device memory is touched.
// The backward is a sorted scatter rather than atomics: token indices stably sorted by id on the
// host, then one block per distinct id sums its rows in token order and adds once to dwte, so
// repeated ids never race and the result is the same bits every run (bit-identical resume).
// Letters: N tokens, C channels, V vocabulary, U distinct ids in the batch.
#include "cuda-common.h"

#include <stdlib.h>

static ftk_status check_ids(const int32_t *ids, int64_t N, int64_t V)
{
    for (int64_t n = 0; n < N; n++)
        FTK_FAIL_IF(ids[n] < 0 || ids[n] >= V, FTK_E_INVALID,
                    "embedding: token %lld has id %d, outside the vocabulary [0,%lld)",
                    (long long)n, (int)ids[n], (long long)V);
    return FTK_OK;
}

// ids (N), wte (V,C) -> y (N,C)
static __global__ void emb_fwd_kernel(float *y, const int32_t *ids, const float *wte, int64_t N, int64_t C)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N * C; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t n = i / C, c = i % C;
        y[i] = wte[(int64_t)ids[n] * C + c];
    }
}

// order (N) token indices sorted by id, uniq (U) the distinct ids, start (U+1) their ranges in
// order; block (u, column block) -> dwte[uniq[u], c] += sum of dy[order[k], c] in order
static __global__ void emb_bwd_kernel(float *dwte, const float *dy, const int32_t *order, const int32_t *uniq,
                                      const int32_t *start, int64_t C)
{
    const int64_t u = blockIdx.x, c = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
    if (c >= C)
        return;
    float s = 0.0f;
    for (int32_t k = start[u]; k < start[u + 1]; k++)
        s += dy[(int64_t)order[k] * C + c];
    dwte[(int64_t)uniq[u] * C + c] += s;
}

ftk_status cu_embedding_forward(void *ctx, float *y, const int32_t *ids, const float *wte,
                                int64_t N, int64_t C, int64_t V)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (N <= 0 || C <= 0) return FTK_OK;
    int32_t *hid;
    FTK_TRY(cuda_fetch_i32(c, ids, N, &hid));
    ftk_status st = check_ids(hid, N, V);
    free(hid);
    FTK_TRY(st);
    emb_fwd_kernel<<<cu_blocks(N * C), CU_THREADS, 0, c->stream>>>(y, ids, wte, N, C);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}

// Sorted order, distinct ids and ranges of the N host ids into one host array laid out as
// order (N) | uniq (U) | start (U+1); *U set. Counting sort: O(N + V) and no shared state.
static ftk_status sort_ids(const int32_t *hid, int64_t N, int64_t V, int32_t **out, int64_t *U)
{
    int32_t *cnt = (int32_t *)calloc((size_t)V + 1, sizeof(int32_t));
    int32_t *buf = (int32_t *)malloc((size_t)(3 * N + 1) * sizeof(int32_t));
    if (!cnt || !buf) {
        free(cnt);
        free(buf);
        FTK_FAIL(FTK_E_NOMEM, "embedding: out of host memory sorting %lld ids", (long long)N);
    }
    for (int64_t n = 0; n < N; n++)
        cnt[hid[n] + 1]++;
    int64_t u = 0;
    for (int64_t v = 0; v < V; v++)
        u += cnt[v + 1] > 0;
    for (int64_t v = 0; v < V; v++)   // prefix sums: cnt[v] = number of ids < v = first slot of v
        cnt[v + 1] += cnt[v];
    int32_t *order = buf, *uniq = buf + N, *start = uniq + u;
    int64_t k = 0;
    for (int64_t v = 0; v < V; v++)
        if (cnt[v + 1] > cnt[v]) {
            uniq[k] = (int32_t)v;
            start[k] = cnt[v];
            k++;
        }
    start[u] = (int32_t)N;
    for (int64_t n = 0; n < N; n++)   // stable: token order kept within an id
        order[cnt[hid[n]]++] = (int32_t)n;
    free(cnt);
    *out = buf;
    *U = u;
    return FTK_OK;
}

// dy (N,C), ids (N) -> dwte (V,C) += scatter-add of dy rows
ftk_status cu_embedding_backward(void *ctx, float *dwte, const float *dy, const int32_t *ids,
                                 int64_t N, int64_t C, int64_t V)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (N <= 0 || C <= 0) return FTK_OK;
    FTK_FAIL_IF(N > INT32_MAX / 3, FTK_E_UNSUPPORTED, "embedding: %lld tokens is too many", (long long)N);
    int32_t *hid, *tab = NULL;
    int64_t U = 0;
    FTK_TRY(cuda_fetch_i32(c, ids, N, &hid));
    ftk_status st = check_ids(hid, N, V);
    if (st == FTK_OK)
        st = sort_ids(hid, N, V, &tab, &U);
    free(hid);
    FTK_TRY(st);
    const size_t nb = (size_t)(N + 2 * U + 1) * sizeof(int32_t);
    void *d;
    st = cuda_scratch(c, nb, &d);
    if (st == FTK_OK) {
        cudaError_t e = cudaMemcpyAsync(d, tab, nb, cudaMemcpyHostToDevice, c->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(c->stream);   // tab is freed below
        if (e != cudaSuccess)
            st = ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cuda: copying the sorted ids: %s at %s:%d",
                               cudaGetErrorString(e), __FILE__, __LINE__);
    }
    free(tab);
    FTK_TRY(st);
    const int32_t *order = (const int32_t *)d, *uniq = order + N, *start = uniq + U;
    dim3 grid((unsigned)U, (unsigned)((C + CU_THREADS - 1) / CU_THREADS));
    emb_bwd_kernel<<<grid, CU_THREADS, 0, c->stream>>>(dwte, dy, order, uniq, start, C);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}
