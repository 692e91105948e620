/* kernels/cpu/cpu.h: internal to the CPU backend. The context, its scratch memory, and the op
 * functions that kernels/cpu/backend.c puts into the ftk_backend table. Each op lives in its
 * own file (kernels/cpu/<op>.c) with its shapes written there; signatures are those of the
 * slots in ftk/backend.h, with the context typed. */
#ifndef FTK_KERNELS_CPU_H
#define FTK_KERNELS_CPU_H

#include <stddef.h>
#include <stdint.h>
#include "ftk/backend.h"
#include "ftk/threads.h"

struct cpu_ctx {
    int nthreads;
    struct ftk_threads *pool;   /* NULL when nthreads == 1 */
    void *scratch;              /* grow-only, reused by ops (one op runs at a time) */
    size_t scratch_size;
};

/* Scratch of at least nbytes (64-byte aligned), valid until the next cpu_scratch call.
 * NULL with FTK_E_NOMEM set if it cannot grow. */
void *cpu_scratch(struct cpu_ctx *c, size_t nbytes);

/* Parallel for over [0,n) on the context's pool (serial when it has none). */
static inline void cpu_for(struct cpu_ctx *c, int64_t n, int64_t grain, ftk_range_fn fn, void *arg)
{
    ftk_threads_for(c->pool, n, grain, fn, arg);
}

/* backend.c */
ftk_status cpu_gemm(void *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                    float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                    float beta, float *C, int64_t ldc);
/* linear.c */
ftk_status cpu_linear_forward(void *ctx, float *y, const float *x, const float *w, const float *b,
                              int64_t N, int64_t I, int64_t O);
ftk_status cpu_linear_backward(void *ctx, float *dx, float *dw, float *db, const float *dy,
                               const float *x, const float *w, int64_t N, int64_t I, int64_t O);
/* embedding.c */
ftk_status cpu_embedding_forward(void *ctx, float *y, const int32_t *ids, const float *wte,
                                 int64_t N, int64_t C, int64_t V);
ftk_status cpu_embedding_backward(void *ctx, float *dwte, const float *dy, const int32_t *ids,
                                  int64_t N, int64_t C, int64_t V);
/* rmsnorm.c */
ftk_status cpu_rmsnorm_forward(void *ctx, float *y, float *rstd, const float *x, const float *w,
                               int64_t N, int64_t C, float eps);
ftk_status cpu_rmsnorm_backward(void *ctx, float *dx, float *dw, const float *dy, const float *x,
                                const float *w, const float *rstd, int64_t N, int64_t C);
/* rope.c */
ftk_status cpu_rope_forward(void *ctx, float *x, const int32_t *pos, const float *inv_freq,
                            float scaling, int64_t N, int64_t H, int64_t D, int64_t R);
ftk_status cpu_rope_backward(void *ctx, float *dx, const int32_t *pos, const float *inv_freq,
                             float scaling, int64_t N, int64_t H, int64_t D, int64_t R);
/* attention.c */
ftk_status cpu_attention_forward(void *ctx, float *o, float *lse, const float *q, const float *k,
                                 const float *v, const int32_t *seg, int64_t B, int64_t T,
                                 int64_t H, int64_t Hkv, int64_t D, float scale);
ftk_status cpu_attention_decode(void *ctx, float *o, const float *q, const float *kc, const float *vc,
                                const int32_t *len, int64_t B, int64_t S, int64_t H, int64_t Hkv, int64_t D, float scale);
ftk_status cpu_attention_backward(void *ctx, float *dq, float *dk, float *dv, const float *dout,
                                  const float *q, const float *k, const float *v, const float *o,
                                  const float *lse, const int32_t *seg, int64_t B, int64_t T,
                                  int64_t H, int64_t Hkv, int64_t D, float scale);
/* swiglu.c */
ftk_status cpu_swiglu_forward(void *ctx, float *h, const float *gate, const float *up, int64_t n);
ftk_status cpu_swiglu_backward(void *ctx, float *dgate, float *dup, const float *dh,
                               const float *gate, const float *up, int64_t n);
/* logprob.c */
ftk_status cpu_logprob_forward(void *ctx, float *logp, float *lse, const float *h, const float *w,
                               const int32_t *labels, int64_t N, int64_t C, int64_t V, int64_t chunk);
ftk_status cpu_logprob_backward(void *ctx, float *dh, float *dw, const float *dlogp, const float *h,
                                const float *w, const int32_t *labels, const float *lse, int64_t N,
                                int64_t C, int64_t V, int64_t chunk);
ftk_status cpu_logprob_fused(void *ctx, float *logp, float *dh, float *dw, const float *dlogp,
                             const float *h, const float *w, const int32_t *labels, int64_t N,
                             int64_t C, int64_t V, int64_t chunk);
/* adamw.c */
ftk_status cpu_adamw_step(void *ctx, float *p, float *m, float *v, const float *g, int64_t n,
                          const struct ftk_adamw_params *hp);
/* reduce.c */
ftk_status cpu_sumsq(void *ctx, float *out, const float *x, int64_t n);
ftk_status cpu_scale(void *ctx, float *x, int64_t n, float a);
ftk_status cpu_axpy(void *ctx, float *y, const float *x, int64_t n, float a);
ftk_status cpu_add(void *ctx, float *y, const float *a, const float *b, int64_t n);

/* attention_prefix.c */
ftk_status cpu_attention_prefix_forward(void *ctx, float *o, float *lse, const float *q, const float *pk,
                                        const float *pv, int64_t N, int64_t R, int64_t P, int64_t H, int64_t Hkv,
                                        int64_t D, float scale);
ftk_status cpu_attention_prefix_backward(void *ctx, float *dq, float *dpk, float *dpv, const float *dout,
                                         const float *q, const float *pk, const float *pv, const float *o,
                                         const float *lse, int64_t N, int64_t R, int64_t P, int64_t H, int64_t Hkv,
                                         int64_t D, float scale);

#endif
