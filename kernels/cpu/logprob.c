/* kernels/cpu/logprob.c: the log-prob / cross-entropy head, chunked so that the (N,V) logits
 * never exist (DESIGN.md section 5): for `chunk` scored tokens at a time,
 *   logits (M,V) = h_chunk w^T  (cblas_sgemm),  logp = logits[label] - logsumexp(logits),
 * and for the gradient, dlogits = dlogp * (onehot(label) - softmax), then
 *   dh_chunk += dlogits w,  dw += dlogits^T h_chunk.
 * Only tokens whose label is not FTK_IGNORE_INDEX are gathered into chunks, so prompt tokens of
 * an SFT batch cost nothing. The op takes aligned pairs (h[n] predicts labels[n]); the HF shift
 * (labels[t+1] for hidden t) is the caller's.
 * Letters: N tokens, C channels, V vocabulary, M tokens in a chunk. */
#include "cpu.h"

#include <math.h>
#include <string.h>
#include "vexp.h"

/* Default chunk: logits of at most this many bytes at once. */
#define LOGPROB_CHUNK_BYTES ((size_t)64 << 20)

enum { LP_FWD = 1, LP_BWD = 2 };

struct lp_rows {
    float *logits;              /* (M,V), overwritten by dlogits when LP_BWD */
    const int64_t *idx;         /* (M) token index of each chunk row */
    const int32_t *labels;
    float *logp, *lse_out;
    const float *lse_in, *dlogp;
    int64_t V;
    int mode;
};

static inline __attribute__((always_inline)) void lp_row_body(void *arg, int64_t m0, int64_t m1, int tid)
{
    (void)tid;
    const struct lp_rows *a = arg;
    const int64_t V = a->V;
    for (int64_t m = m0; m < m1; m++) {
        const int64_t n = a->idx[m];
        float *z = a->logits + m * V;
        const int32_t y = a->labels[n];
        float lse;
        if (a->lse_in) {
            lse = a->lse_in[n];
        } else {
            float mx = cpu_row_max(z, V);
            lse = mx + (float)log(cpu_row_sum_exp(z, V, mx));
        }
        if (a->mode & LP_FWD) {
            if (a->logp)
                a->logp[n] = z[y] - lse;
            if (a->lse_out)
                a->lse_out[n] = lse;
        }
        if (a->mode & LP_BWD) {
            const float g = a->dlogp[n];
            cpu_row_scaled_exp(z, V, lse, -g);
            z[y] += g;
        }
    }
}

/* lp_row_range(): lp_row_body for the CPU at hand (AVX-512, AVX2 or baseline; vexp.h) */
CPU_RANGE_VARIANTS(lp_row_range, lp_row_body)

static ftk_status lp_run(struct cpu_ctx *c, int mode, float *logp, float *lse_out,
                         const float *lse_in, float *dh, float *dw, const float *dlogp,
                         const float *h, const float *w, const int32_t *labels, int64_t N,
                         int64_t C, int64_t V, int64_t chunk)
{
    FTK_FAIL_IF(V <= 0 || C <= 0, FTK_E_INVALID, "logprob: bad sizes C=%lld V=%lld",
                (long long)C, (long long)V);
    int64_t count = 0;
    for (int64_t n = 0; n < N; n++) {
        FTK_FAIL_IF(labels[n] != FTK_IGNORE_INDEX && (labels[n] < 0 || labels[n] >= V), FTK_E_INVALID,
                    "logprob: token %lld has label %d, outside the vocabulary [0,%lld) and not %d",
                    (long long)n, (int)labels[n], (long long)V, FTK_IGNORE_INDEX);
        if (labels[n] != FTK_IGNORE_INDEX)
            count++;
        else if (mode & LP_FWD) {
            if (logp)
                logp[n] = 0.0f;
            if (lse_out)
                lse_out[n] = 0.0f;
        }
    }
    if (count == 0)
        return FTK_OK;
    int64_t M = chunk > 0 ? chunk : (int64_t)(LOGPROB_CHUNK_BYTES / ((size_t)V * sizeof(float)));
    if (M < 1)
        M = 1;
    if (M > count)
        M = count;
    const int grads = (mode & LP_BWD) && (dh || dw);
    /* scratch: idx (count) | h chunk (M,C) | logits (M,V) | dh chunk (M,C) */
    size_t need = (size_t)count * sizeof(int64_t) +
                  ((size_t)M * (size_t)C * 2 + (size_t)M * (size_t)V) * sizeof(float);
    char *s = cpu_scratch(c, need);
    if (!s)
        return FTK_E_NOMEM;
    int64_t *idx = (int64_t *)s;
    float *hb = (float *)(s + (size_t)count * sizeof(int64_t));
    float *z = hb + M * C, *dhb = z + M * V;
    for (int64_t n = 0, k = 0; n < N; n++)
        if (labels[n] != FTK_IGNORE_INDEX)
            idx[k++] = n;

    for (int64_t m0 = 0; m0 < count; m0 += M) {
        const int64_t m = count - m0 < M ? count - m0 : M;
        for (int64_t i = 0; i < m; i++)
            memcpy(hb + i * C, h + idx[m0 + i] * C, (size_t)C * sizeof(float));
        FTK_TRY(cpu_gemm(c, 0, 1, m, V, C, 1.0f, hb, C, w, C, 0.0f, z, V));
        struct lp_rows a = { z, idx + m0, labels, logp, lse_out, lse_in, dlogp, V,
                             grads ? mode : (mode & LP_FWD) };
        cpu_for(c, m, 1, lp_row_range(), &a);
        if (!grads)
            continue;
        if (dh) {
            FTK_TRY(cpu_gemm(c, 0, 0, m, C, V, 1.0f, z, V, w, C, 0.0f, dhb, C));
            for (int64_t i = 0; i < m; i++) {
                float *dst = dh + idx[m0 + i] * C;
                for (int64_t j = 0; j < C; j++)
                    dst[j] += dhb[i * C + j];
            }
        }
        if (dw)
            FTK_TRY(cpu_gemm(c, 1, 0, V, C, m, 1.0f, z, V, hb, C, 1.0f, dw, C));
    }
    return FTK_OK;
}

/* h (N,C), w (V,C), labels (N) -> logp (N), lse (N) or NULL (0 where ignored) */
ftk_status cpu_logprob_forward(void *ctx, float *logp, float *lse, const float *h, const float *w,
                               const int32_t *labels, int64_t N, int64_t C, int64_t V, int64_t chunk)
{
    return lp_run(ctx, LP_FWD, logp, lse, NULL, NULL, NULL, NULL, h, w, labels, N, C, V, chunk);
}

/* dlogp (N), h (N,C), w (V,C), labels (N), lse (N) from the forward -> dh (N,C) +=, dw (V,C) += */
ftk_status cpu_logprob_backward(void *ctx, float *dh, float *dw, const float *dlogp, const float *h,
                                const float *w, const int32_t *labels, const float *lse, int64_t N,
                                int64_t C, int64_t V, int64_t chunk)
{
    return lp_run(ctx, LP_BWD, NULL, NULL, lse, dh, dw, dlogp, h, w, labels, N, C, V, chunk);
}

/* dlogp (N), h (N,C), w (V,C), labels (N) -> logp (N), dh (N,C) +=, dw (V,C) += in one pass */
ftk_status cpu_logprob_fused(void *ctx, float *logp, float *dh, float *dw, const float *dlogp,
                             const float *h, const float *w, const int32_t *labels, int64_t N,
                             int64_t C, int64_t V, int64_t chunk)
{
    return lp_run(ctx, LP_FWD | LP_BWD, logp, NULL, NULL, dh, dw, dlogp, h, w, labels, N, C, V, chunk);
}
