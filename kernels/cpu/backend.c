/* kernels/cpu/backend.c: the CPU backend's table, context, memory and gemm.
 *
 * Memory is host memory (64-byte aligned, zeroed). Matmuls go to OpenBLAS (cblas_sgemm); its
 * own thread count is set to the context's (OpenBLAS keeps that setting process-wide). */
#include "cpu.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define CPU_ALIGN 64

void *cpu_scratch(struct cpu_ctx *c, size_t nbytes)
{
    if (nbytes <= c->scratch_size)
        return c->scratch;
    free(c->scratch);
    c->scratch = NULL;
    c->scratch_size = 0;
    size_t sz = (nbytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    void *p = aligned_alloc(CPU_ALIGN, sz);
    if (!p) {
        ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "cpu: cannot allocate %zu bytes of scratch", nbytes);
        return NULL;
    }
    c->scratch = p;
    c->scratch_size = sz;
    return p;
}

static ftk_status cpu_create(const struct ftk_backend_opts *o, void **out)
{
    *out = NULL;
    int n = 0;
    if (o && o->struct_size >= offsetof(struct ftk_backend_opts, threads) + sizeof o->threads)
        n = o->threads;
    FTK_FAIL_IF(n < 0, FTK_E_INVALID, "cpu backend: threads must be >= 0, got %d", n);
    struct cpu_ctx *c = calloc(1, sizeof *c);
    FTK_FAIL_IF(!c, FTK_E_NOMEM, "cpu backend: out of memory");
    ftk_status st = ftk_threads_create(n, &c->pool);
    if (st != FTK_OK) {
        free(c);
        return st;
    }
    c->nthreads = ftk_threads_count(c->pool);
    if (c->nthreads == 1) {
        ftk_threads_free(c->pool);
        c->pool = NULL;
    }
    openblas_set_num_threads(c->nthreads);
    *out = c;
    return FTK_OK;
}

static void cpu_destroy(void *ctx)
{
    struct cpu_ctx *c = ctx;
    if (!c)
        return;
    ftk_threads_free(c->pool);
    free(c->scratch);
    free(c);
}

static ftk_status cpu_sync(void *ctx) { (void)ctx; return FTK_OK; }

static ftk_status cpu_alloc(void *ctx, size_t nbytes, void **out)
{
    (void)ctx;
    size_t sz = (nbytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    if (sz == 0)
        sz = CPU_ALIGN;
    void *p = aligned_alloc(CPU_ALIGN, sz);
    *out = p;
    FTK_FAIL_IF(!p, FTK_E_NOMEM, "cpu: cannot allocate %zu bytes", nbytes);
    memset(p, 0, sz);
    return FTK_OK;
}

static void cpu_free(void *ctx, void *p) { (void)ctx; free(p); }

static ftk_status cpu_zero(void *ctx, void *p, size_t nbytes)
{
    (void)ctx;
    if (nbytes)
        memset(p, 0, nbytes);
    return FTK_OK;
}

static ftk_status cpu_copy(void *ctx, void *dst, const void *src, size_t nbytes)
{
    (void)ctx;
    if (nbytes && dst != src)
        memmove(dst, src, nbytes);
    return FTK_OK;
}

ftk_status cpu_gemm(void *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                    float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                    float beta, float *C, int64_t ldc)
{
    (void)ctx;
    FTK_FAIL_IF(M < 0 || N < 0 || K < 0, FTK_E_INVALID, "gemm: negative size (%lld,%lld,%lld)",
                (long long)M, (long long)N, (long long)K);
    FTK_FAIL_IF(M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX ||
                ldc > INT_MAX, FTK_E_UNSUPPORTED, "gemm: size beyond BLAS int range");
    if (M == 0 || N == 0)
        return FTK_OK;
    if (K == 0) {   /* C = beta C; BLAS does this too, but not every BLAS when K == 0 */
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++)
                C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
        return FTK_OK;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
    return FTK_OK;
}

static const struct ftk_backend cpu_backend = {
    .struct_size = sizeof(struct ftk_backend),
    .api_version = FTK_BACKEND_API,
    .name = "cpu",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .sync = cpu_sync,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .to_device = cpu_copy,
    .to_host = cpu_copy,
    .copy = cpu_copy,
    .gemm = cpu_gemm,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .attention_decode = cpu_attention_decode,
    .attention_prefix_forward = cpu_attention_prefix_forward,
    .attention_prefix_backward = cpu_attention_prefix_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .logprob_forward = cpu_logprob_forward,
    .logprob_backward = cpu_logprob_backward,
    .logprob_fused = cpu_logprob_fused,
    .adamw_step = cpu_adamw_step,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .axpy = cpu_axpy,
    .add = cpu_add,
};

const struct ftk_backend *ftk_backend_cpu(void) { return &cpu_backend; }
