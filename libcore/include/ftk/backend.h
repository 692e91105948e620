/* ftk/backend.h: the compute backend interface (DESIGN.md section 5).
 *
 * A backend is a const struct of function pointers, one slot per op and direction, plus context
 * and memory slots. `cpu` (kernels/cpu, always built) is the reference; `cuda` (kernels/cuda) will
 * implement the same slots. docs/backend.md describes every op with its conventions.
 *
 * Versioning (STYLE.md, as sqlite3_vfs): `struct_size` and `api_version` come first, forever.
 * New slots are appended (struct_size grows); changing a slot bumps FTK_BACKEND_API. Use a slot
 * only through FTK_BACKEND_HAS(be, slot), which checks that struct_size covers it and that it is
 * non-NULL: slots marked (optional) may be NULL.
 *
 * Conventions for every op slot:
 * - The first argument is the context made by `create`; a context is driven by one thread at a
 *   time and ops on it run in call order.
 * - Pointers are backend memory (from `alloc`; host memory for cpu), F32 row-major contiguous
 *   unless stated, I32 for ids, labels, positions and segments. Scalars are host values.
 * - Forward ops overwrite their outputs. Backward ops ACCUMULATE (+=) into every gradient they
 *   write (as llm.c: residual branches and gradient accumulation come free; zero them first when
 *   you want a plain gradient); a gradient pointer given as NULL is not computed (frozen weight).
 *   Exception: rope works in place in both directions.
 * - Ops return FTK_OK, or an ftk_status with the message set: bad ids/labels (FTK_E_INVALID,
 *   they can come from data), allocation (FTK_E_NOMEM), device failures (FTK_E_CUDA).
 *
 * Letters (shapes): N tokens (= B*T where a batch matters), B batch rows, T sequence length,
 * C channels, I/O in/out features of a linear, V vocabulary, H query heads, Hkv key/value heads
 * (H % Hkv == 0), D head dim, R rotary dims (even, <= D), F MLP width, n element count.
 *
 * Ownership: ftk_backend_cpu()/ftk_backend_get() return static tables (never freed); `create`
 * makes a context that `destroy` frees (NULL is fine); `alloc` memory is freed with `free`. */
#ifndef FTK_BACKEND_H
#define FTK_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "error.h"
#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FTK_BACKEND_API 1
#define FTK_IGNORE_INDEX (-100)   /* HF CrossEntropyLoss ignore_index: label of a token not scored */

/* Options for `create`, versioned by struct_size like the table (zero-initialise, set struct_size). */
struct ftk_backend_opts {
    uint32_t struct_size;
    int threads;        /* cpu: worker threads incl. the caller (0: one per online CPU) */
    int device;         /* cuda: device ordinal */
};

struct ftk_backend {
    uint32_t struct_size;   /* sizeof(struct ftk_backend) the backend was built with */
    uint32_t api_version;   /* FTK_BACKEND_API */
    const char *name;       /* "cpu", "cuda" */

    /* ---- context ---------------------------------------------------------------------- */
    ftk_status (*create)(const struct ftk_backend_opts *opts, void **ctx);
    void (*destroy)(void *ctx);
    /* Waits for all queued work (cuda); no-op on cpu. */
    ftk_status (*sync)(void *ctx);

    /* ---- memory (bytes) --------------------------------------------------------------- */
    ftk_status (*alloc)(void *ctx, size_t nbytes, void **out);   /* zeroed, 64-byte aligned */
    void (*free)(void *ctx, void *p);                              /* NULL is fine */
    ftk_status (*zero)(void *ctx, void *p, size_t nbytes);
    ftk_status (*to_device)(void *ctx, void *dst, const void *host_src, size_t nbytes);
    ftk_status (*to_host)(void *ctx, void *host_dst, const void *src, size_t nbytes);
    ftk_status (*copy)(void *ctx, void *dst, const void *src, size_t nbytes);

    /* ---- matmul ----------------------------------------------------------------------- */
    /* Row-major C (M,N) = alpha * op(A) op(B) + beta * C; op(A) (M,K), op(B) (K,N).
     * trans_a: A is stored (K,M); trans_b: B is stored (N,K). lda/ldb/ldc: row strides.
     * For the PEFT plugins (LoRA's x A^T B^T) and anything not covered by `linear`. */
    ftk_status (*gemm)(void *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                       float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                       float beta, float *C, int64_t ldc);

    /* ---- linear: torch nn.Linear, y = x W^T + b ------------------------------------------ */
    /* x (N,I), w (O,I), b (O) or NULL -> y (N,O) */
    ftk_status (*linear_forward)(void *ctx, float *y, const float *x, const float *w,
                                 const float *b, int64_t N, int64_t I, int64_t O);
    /* dy (N,O), x (N,I), w (O,I) -> dx (N,I) += dy w, dw (O,I) += dy^T x, db (O) += sum_n dy */
    ftk_status (*linear_backward)(void *ctx, float *dx, float *dw, float *db, const float *dy,
                                  const float *x, const float *w, int64_t N, int64_t I, int64_t O);

    /* ---- embedding ------------------------------------------------------------------------ */
    /* ids (N) in [0,V), wte (V,C) -> y (N,C). An id outside [0,V) is FTK_E_INVALID. */
    ftk_status (*embedding_forward)(void *ctx, float *y, const int32_t *ids, const float *wte,
                                    int64_t N, int64_t C, int64_t V);
    /* dy (N,C), ids (N) -> dwte (V,C) += scatter-add of dy rows */
    ftk_status (*embedding_backward)(void *ctx, float *dwte, const float *dy, const int32_t *ids,
                                     int64_t N, int64_t C, int64_t V);

    /* ---- RMSNorm (LlamaRMSNorm): y = x * rsqrt(mean(x^2) + eps) * w, in F32 ------------------ */
    /* x (N,C), w (C) -> y (N,C), rstd (N) (NULL: not saved). Qwen3's q/k norm is this op over
     * head_dim: N = tokens*heads, C = D. y may alias x. */
    ftk_status (*rmsnorm_forward)(void *ctx, float *y, float *rstd, const float *x, const float *w,
                                  int64_t N, int64_t C, float eps);
    /* dy (N,C), x (N,C), w (C), rstd (N) -> dx (N,C) +=, dw (C) += */
    ftk_status (*rmsnorm_backward)(void *ctx, float *dx, float *dw, const float *dy, const float *x,
                                   const float *w, const float *rstd, int64_t N, int64_t C);

    /* ---- RoPE, HF rotate_half convention, in place ------------------------------------------ */
    /* x (N,H,D) rotated in place at positions pos (N): for i < R/2, with
     * f = (float)pos * inv_freq[i], c = cos(f) * scaling, s = sin(f) * scaling:
     *   x[i] , x[i+R/2]  <-  x[i] c - x[i+R/2] s , x[i+R/2] c + x[i] s.   Dims >= R pass through.
     * inv_freq (R/2, backend memory) from ftk_rope_inv_freq (ftk/rope.h). Called for q (H heads)
     * and k (Hkv heads) separately; pos are the batch's position_ids (B,T) flattened. */
    ftk_status (*rope_forward)(void *ctx, float *x, const int32_t *pos, const float *inv_freq,
                               float scaling, int64_t N, int64_t H, int64_t D, int64_t R);
    /* dx (N,H,D): gradient w.r.t. the rotated x in, w.r.t. the input x out (the transpose). */
    ftk_status (*rope_backward)(void *ctx, float *dx, const int32_t *pos, const float *inv_freq,
                                float scaling, int64_t N, int64_t H, int64_t D, int64_t R);

    /* ---- causal self-attention, GQA, packed segments -------------------------------------- */
    /* q (B,T,H,D), k v (B,T,Hkv,D), seg (B,T) or NULL -> o (B,T,H,D), lse (B,T,H) (saved for
     * backward: log-sum-exp of the scaled scores of each query row).
     * Query t of head h sees keys t' <= t of kv head h / (H/Hkv) with seg[t'] == seg[t]
     * (packing: documents never see each other; NULL seg: plain causal). Segment 0 (padding) is
     * just another segment: its rows are finite and meaningless (their labels are ignored).
     * scores = scale * q.k (scale = 1/sqrt(D) for Llama). */
    ftk_status (*attention_forward)(void *ctx, float *o, float *lse, const float *q,
                                    const float *k, const float *v, const int32_t *seg,
                                    int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                    float scale);
    /* dout (B,T,H,D) and the forward's q k v o lse -> dq (B,T,H,D) +=, dk dv (B,T,Hkv,D) += */
    ftk_status (*attention_backward)(void *ctx, float *dq, float *dk, float *dv, const float *dout,
                                     const float *q, const float *k, const float *v,
                                     const float *o, const float *lse, const int32_t *seg,
                                     int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                     float scale);

    /* ---- SwiGLU: h = silu(gate) * up -------------------------------------------------------- */
    /* gate, up (n) -> h (n)   (n = N*F) */
    ftk_status (*swiglu_forward)(void *ctx, float *h, const float *gate, const float *up, int64_t n);
    /* dh, gate, up (n) -> dgate (n) +=, dup (n) += */
    ftk_status (*swiglu_backward)(void *ctx, float *dgate, float *dup, const float *dh,
                                  const float *gate, const float *up, int64_t n);

    /* ---- the log-prob head: lm_head + log_softmax + gather, chunked ----------------------- */
    /* Takes already-aligned pairs: row n of h predicts labels[n] (the caller applies HF's shift,
     * labels[t+1] for hidden t, and puts FTK_IGNORE_INDEX where no prediction is scored).
     * Works on `chunk` scored tokens at a time (0: a default keeping chunk*V*4 bytes <= 64 MiB),
     * so the (N,V) logits never exist; ignored tokens cost nothing.
     * h (N,C), w (V,C) (lm_head, or the tied embedding), labels (N) ->
     *   logp (N) = log_softmax(h w^T)[n, labels[n]] (0 where ignored), lse (N) (NULL: not saved).
     * A label outside [0,V) other than FTK_IGNORE_INDEX is FTK_E_INVALID. */
    ftk_status (*logprob_forward)(void *ctx, float *logp, float *lse, const float *h,
                                  const float *w, const int32_t *labels, int64_t N, int64_t C,
                                  int64_t V, int64_t chunk);
    /* dlogp (N): d loss / d logp[n], the per-token upstream weight (SFT: -1/n_scored; DPO: the
     * sequence's coefficient on each of its tokens). Recomputes each chunk's logits, then
     * dlogits = dlogp[n] * (onehot(labels[n]) - softmax) and
     * dh (N,C) += dlogits w, dw (V,C) += dlogits^T h.  lse from logprob_forward. */
    ftk_status (*logprob_backward)(void *ctx, float *dh, float *dw, const float *dlogp,
                                   const float *h, const float *w, const int32_t *labels,
                                   const float *lse, int64_t N, int64_t C, int64_t V,
                                   int64_t chunk);
    /* Forward and backward in one pass (one logits matmul per chunk instead of two) when dlogp
     * is known before the forward (SFT/PT): logp (N) as logprob_forward, dh, dw as
     * logprob_backward. The loss sum_n dlogp[n] * logp[n] is the caller's (from logp). */
    ftk_status (*logprob_fused)(void *ctx, float *logp, float *dh, float *dw, const float *dlogp,
                                const float *h, const float *w, const int32_t *labels, int64_t N,
                                int64_t C, int64_t V, int64_t chunk);

    /* ---- optimizer and reductions ------------------------------------------------------- */
    /* p, m, v, g (n): one torch.optim.AdamW step (struct ftk_adamw_params, ftk/optim.h) */
    ftk_status (*adamw_step)(void *ctx, float *p, float *m, float *v, const float *g, int64_t n,
                             const struct ftk_adamw_params *hp);
    /* x (n) -> out (1) = sum x^2 (accumulated in f64). For clip_grad_norm_: one out per tensor,
     * then ftk_clip_grad_norm_coef on the host. */
    ftk_status (*sumsq)(void *ctx, float *out, const float *x, int64_t n);
    /* x (n) *= a */
    ftk_status (*scale)(void *ctx, float *x, int64_t n, float a);
    /* y (n) += a * x (n) */
    ftk_status (*axpy)(void *ctx, float *y, const float *x, int64_t n, float a);
    /* y (n) = a (n) + b (n); y may alias a or b (the residual stream) */
    ftk_status (*add)(void *ctx, float *y, const float *a, const float *b, int64_t n);

    /* ---- inference with a KV cache (appended slots) --------------------------------------- */
    /* One new query per row against that row's cached keys: q (B,H,D), kc vc (B,S,Hkv,D) with
     * row b's first len[b] positions valid (its new token's key already written at len[b]-1)
     * -> o (B,H,D). Plain causal attention of the row's last token; S is the cache capacity. */
    ftk_status (*attention_decode)(void *ctx, float *o, const float *q, const float *kc,
                                   const float *vc, const int32_t *len, int64_t B, int64_t S,
                                   int64_t H, int64_t Hkv, int64_t D, float scale);

    /* ---- prefix keys and values (prefix tuning; appended slots, optional) ------------------- */
    /* P keys and values pk pv (R,P,Hkv,D) that the queries see (no mask), merged into the
     * result of attention_forward: q (N,H,D), and o (N,H,D), lse (N,H) from attention_forward
     * over the causal keys, become in place the attention over [prefix; causal keys]:
     *   lse' = logaddexp(lse, lse_p), o' = exp(lse - lse') o + exp(lse_p - lse') o_p
     * where lse_p, o_p are the softmax normaliser and output over the prefix alone. R = 1: one
     * prefix for all N tokens; else the tokens are R rows of N/R (R divides N), row r seeing
     * prefix set r (UniPELT's gated prefix, one per example). */
    ftk_status (*attention_prefix_forward)(void *ctx, float *o, float *lse, const float *q,
                                           const float *pk, const float *pv, int64_t N, int64_t R,
                                           int64_t P, int64_t H, int64_t Hkv, int64_t D, float scale);
    /* The prefix's part of the backward, from dout and the merged o', lse' (the same o' and
     * lse' passed to attention_backward give the causal keys' part): dq (N,H,D) +=,
     * dpk dpv (R,P,Hkv,D) += (NULL: not computed). */
    ftk_status (*attention_prefix_backward)(void *ctx, float *dq, float *dpk, float *dpv,
                                            const float *dout, const float *q, const float *pk,
                                            const float *pv, const float *o, const float *lse,
                                            int64_t N, int64_t R, int64_t P, int64_t H, int64_t Hkv,
                                            int64_t D, float scale);
};

/* Does `be` have a usable `slot`: covered by struct_size and non-NULL. */
#define FTK_BACKEND_HAS(be, slot) \
    ((be)->struct_size >= offsetof(struct ftk_backend, slot) + sizeof((be)->slot) && (be)->slot != NULL)

/* The CPU backend (always built). */
FTK_API const struct ftk_backend *ftk_backend_cpu(void);
/* The OPENBLAS_CORETYPE to start a process with when OpenBLAS fell back to generic kernels on a
 * CPU it did not recognise although the CPU has AVX2/AVX-512 ("SkylakeX", "Haswell"); NULL when
 * its choice stands. tools/blas_env.h acts on it. */
FTK_API const char *ftk_blas_better_core(void);
/* "cpu" or "cuda". FTK_E_UNSUPPORTED for cuda in a build without it (FTK_HAVE_CUDA), naming the
 * fix; FTK_E_NOTFOUND for an unknown name; FTK_E_ABI if the table's api_version differs. */
FTK_API ftk_status ftk_backend_get(const char *name, const struct ftk_backend **out);


#ifdef __cplusplus
}
#endif
#endif
