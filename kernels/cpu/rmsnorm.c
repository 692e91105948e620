/* kernels/cpu/rmsnorm.c: LlamaRMSNorm, y = w * (x * rsqrt(mean(x^2) + eps)), all in F32 as
 * transformers computes it (hidden_states.to(float32) first). The mean is accumulated in f64.
 * Qwen3's q_norm/k_norm are the same op over head_dim (N = tokens*heads, C = D).
 * Letters: N rows, C channels (the normalised dimension). */
#include "cpu.h"

#include <math.h>
#include <string.h>

/* sum_c a[c] * b[c] * (w ? w[c] : 1) in f64, four partial sums (a single chain of dependent
 * double adds costs ~4 cycles per element) */
static inline double dot_f64(const float *a, const float *b, const float *w, int64_t C)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t c = 0;
    for (; c + 4 <= C; c += 4) {
        s0 += (double)a[c] * b[c] * (w ? w[c] : 1.0f);
        s1 += (double)a[c + 1] * b[c + 1] * (w ? w[c + 1] : 1.0f);
        s2 += (double)a[c + 2] * b[c + 2] * (w ? w[c + 2] : 1.0f);
        s3 += (double)a[c + 3] * b[c + 3] * (w ? w[c + 3] : 1.0f);
    }
    for (; c < C; c++)
        s0 += (double)a[c] * b[c] * (w ? w[c] : 1.0f);
    return (s0 + s1) + (s2 + s3);
}

struct rms_fwd { float *y, *rstd; const float *x, *w; int64_t C; float eps; };

static void rms_fwd_rows(void *arg, int64_t n0, int64_t n1, int tid)
{
    (void)tid;
    const struct rms_fwd *a = arg;
    const int64_t C = a->C;
    for (int64_t n = n0; n < n1; n++) {
        const float *x = a->x + n * C;
        float *y = a->y + n * C;
        double ss = dot_f64(x, x, NULL, C);
        float r = 1.0f / sqrtf((float)(ss / (double)C) + a->eps);
        for (int64_t c = 0; c < C; c++)
            y[c] = a->w[c] * (x[c] * r);
        if (a->rstd)
            a->rstd[n] = r;
    }
}

/* x (N,C), w (C) -> y (N,C) (may alias x), rstd (N) or NULL */
ftk_status cpu_rmsnorm_forward(void *ctx, float *y, float *rstd, const float *x, const float *w,
                               int64_t N, int64_t C, float eps)
{
    struct rms_fwd a = { y, rstd, x, w, C, eps };
    cpu_for(ctx, N, 0, rms_fwd_rows, &a);
    return FTK_OK;
}

/* dw is summed over rows in fixed blocks, each block's partial sum to its own slot, and the slots
 * in block order afterwards: the result does not depend on which thread took which rows (the pool
 * hands chunks out dynamically) nor on the thread count, so runs and resumes are bit-identical. */
#define RMS_DW_ROWS ((int64_t)64)

struct rms_bwd {
    float *dx;
    float *dw_part;          /* (blocks, C) partial sums of dw per block of RMS_DW_ROWS rows, or NULL */
    const float *dy, *x, *w, *rstd;
    int64_t C;
};

/* With r = rstd: dx_c = r w_c dy_c - r^3 x_c / C * sum_k dy_k w_k x_k;  dw_c = sum_n dy_c x_c r */
static void rms_bwd_rows(void *arg, int64_t n0, int64_t n1, int tid)
{
    (void)tid;
    const struct rms_bwd *a = arg;
    const int64_t C = a->C;
    for (int64_t n = n0; n < n1; n++) {
        float *dwp = a->dw_part ? a->dw_part + (n / RMS_DW_ROWS) * C : NULL;
        const float *x = a->x + n * C, *dy = a->dy + n * C;
        const float r = a->rstd[n];
        if (a->dx) {
            double dot = dot_f64(dy, x, a->w, C);
            float k = (float)(dot * r * r * r / (double)C);
            float *dx = a->dx + n * C;
            for (int64_t c = 0; c < C; c++)
                dx[c] += r * a->w[c] * dy[c] - k * x[c];
        }
        if (dwp)
            for (int64_t c = 0; c < C; c++)
                dwp[c] += dy[c] * x[c] * r;
    }
}

/* dy (N,C), x (N,C), w (C), rstd (N) -> dx (N,C) +=, dw (C) += (either may be NULL) */
ftk_status cpu_rmsnorm_backward(void *ctx, float *dx, float *dw, const float *dy, const float *x,
                                const float *w, const float *rstd, int64_t N, int64_t C)
{
    struct cpu_ctx *c = ctx;
    struct rms_bwd a = { dx, NULL, dy, x, w, rstd, C };
    int64_t blocks = (N + RMS_DW_ROWS - 1) / RMS_DW_ROWS;
    if (dw) {
        a.dw_part = cpu_scratch(c, (size_t)(blocks > 0 ? blocks : 1) * (size_t)C * sizeof(float));
        if (!a.dw_part)
            return FTK_E_NOMEM;
        memset(a.dw_part, 0, (size_t)blocks * (size_t)C * sizeof(float));
    }
    cpu_for(c, N, dw ? RMS_DW_ROWS : 0, rms_bwd_rows, &a);   /* a chunk is whole blocks: one writer per slot */
    if (dw)
        for (int64_t b = 0; b < blocks; b++)
            for (int64_t j = 0; j < C; j++)
                dw[j] += a.dw_part[b * C + j];
    return FTK_OK;
}
