/* kernels/cpu/swiglu.c: the Llama MLP's gate, h = silu(gate) * up (LlamaMLP:
 * down_proj(act_fn(gate_proj(x)) * up_proj(x)) with hidden_act "silu").
 * Letters: n elements (tokens * F, F the MLP width). */
#include "cpu.h"

#include <math.h>

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

struct swiglu_args { float *h, *dgate, *dup; const float *dh, *gate, *up; };

static void swiglu_fwd_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    const struct swiglu_args *a = arg;
    for (int64_t i = i0; i < i1; i++) {
        float g = a->gate[i];
        a->h[i] = g * sigmoidf(g) * a->up[i];
    }
}

/* gate (n), up (n) -> h (n); h may alias gate or up */
ftk_status cpu_swiglu_forward(void *ctx, float *h, const float *gate, const float *up, int64_t n)
{
    struct swiglu_args a = { .h = h, .gate = gate, .up = up };
    cpu_for(ctx, n, 1 << 14, swiglu_fwd_range, &a);
    return FTK_OK;
}

/* d silu(g)/dg = s (1 + g (1 - s)), s = sigmoid(g) */
static void swiglu_bwd_range(void *arg, int64_t i0, int64_t i1, int tid)
{
    (void)tid;
    const struct swiglu_args *a = arg;
    for (int64_t i = i0; i < i1; i++) {
        float g = a->gate[i], s = sigmoidf(g), dh = a->dh[i];
        if (a->dgate)
            a->dgate[i] += dh * a->up[i] * s * (1.0f + g * (1.0f - s));
        if (a->dup)
            a->dup[i] += dh * g * s;
    }
}

/* dh, gate, up (n) -> dgate (n) +=, dup (n) += (either may be NULL) */
ftk_status cpu_swiglu_backward(void *ctx, float *dgate, float *dup, const float *dh,
                               const float *gate, const float *up, int64_t n)
{
    struct swiglu_args a = { .dgate = dgate, .dup = dup, .dh = dh, .gate = gate, .up = up };
    cpu_for(ctx, n, 1 << 14, swiglu_bwd_range, &a);
    return FTK_OK;
}
