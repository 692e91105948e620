/* kernels/cpu/rope.c: rotary position embedding, transformers' convention (LlamaRotaryEmbedding
 * + apply_rotary_pos_emb): freqs = position * inv_freq in float32, emb = cat(freqs, freqs),
 * cos/sin(emb) * attention_scaling, x * cos + rotate_half(x) * sin with
 * rotate_half(x) = cat(-x[R/2:], x[:R/2]). In place, forward and backward.
 * Letters: N tokens, H heads, D head dim, R rotary dims (even, <= D; dims >= R pass through). */
#include "cpu.h"

#include <math.h>

struct rope_args {
    float *x; const int32_t *pos; const float *inv_freq; float *cs; /* (threads, R) scratch */
    float scaling; int64_t H, D, R; int backward;
};

static void rope_rows(void *arg, int64_t n0, int64_t n1, int tid)
{
    const struct rope_args *a = arg;
    const int64_t half = a->R / 2;
    float *cosv = a->cs + (int64_t)tid * a->R, *sinv = cosv + half;
    /* backward is the transpose of the rotation: the same with sin negated */
    const float sgn = a->backward ? -1.0f : 1.0f;
    for (int64_t n = n0; n < n1; n++) {
        const float p = (float)a->pos[n];
        for (int64_t i = 0; i < half; i++) {
            float f = p * a->inv_freq[i];
            cosv[i] = cosf(f) * a->scaling;
            sinv[i] = sgn * (sinf(f) * a->scaling);
        }
        for (int64_t h = 0; h < a->H; h++) {
            float *x = a->x + (n * a->H + h) * a->D;
            for (int64_t i = 0; i < half; i++) {
                float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * cosv[i] - x2 * sinv[i];
                x[i + half] = x2 * cosv[i] + x1 * sinv[i];
            }
        }
    }
}

static ftk_status rope_run(void *ctx, float *x, const int32_t *pos, const float *inv_freq,
                           float scaling, int64_t N, int64_t H, int64_t D, int64_t R, int backward)
{
    struct cpu_ctx *c = ctx;
    FTK_FAIL_IF(R < 0 || R > D || R % 2 != 0, FTK_E_INVALID,
                "rope: rotary dims %lld must be even and <= head_dim %lld", (long long)R, (long long)D);
    if (R == 0 || N == 0)
        return FTK_OK;
    float *cs = cpu_scratch(c, (size_t)c->nthreads * (size_t)R * sizeof(float));
    if (!cs)
        return FTK_E_NOMEM;
    struct rope_args a = { x, pos, inv_freq, cs, scaling, H, D, R, backward };
    cpu_for(c, N, 0, rope_rows, &a);
    return FTK_OK;
}

/* x (N,H,D) in place, pos (N), inv_freq (R/2) */
ftk_status cpu_rope_forward(void *ctx, float *x, const int32_t *pos, const float *inv_freq,
                            float scaling, int64_t N, int64_t H, int64_t D, int64_t R)
{
    return rope_run(ctx, x, pos, inv_freq, scaling, N, H, D, R, 0);
}

/* dx (N,H,D) in place: gradient w.r.t. the rotated x in, w.r.t. the unrotated x out */
ftk_status cpu_rope_backward(void *ctx, float *dx, const int32_t *pos, const float *inv_freq,
                             float scaling, int64_t N, int64_t H, int64_t D, int64_t R)
{
    return rope_run(ctx, dx, pos, inv_freq, scaling, N, H, D, R, 1);
}
